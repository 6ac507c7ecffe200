"""The training recipe: what trains in each stage, LoRA, metrics, evaluation and checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from regiongpt import RegionGPTForConditionalGeneration, RegionGPTProcessor
from regiongpt.data.synth import write_world
from regiongpt.errors import InvalidInputError
from regiongpt.training.builders import build_train_loader
from regiongpt.training.checkpointing import load_training_state
from regiongpt.training.config import load_config
from regiongpt.training.phrase_pointer import phrase_pointers
from regiongpt.training.recipe import TrainingRecipe

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models train faster on one thread, and 2-core CI shares its cores between test workers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    write_world(out, images=12, seed=2, width=64, height=64, val_fraction=0.25, progress=False)
    return out


def make_recipe(world: Path, run_dir: Path, *overrides: str) -> TrainingRecipe:
    config = load_config(TINY, [
        f"data.train=native:{world}/native/train.jsonl", f"data.val=native:{world}/native/val.jsonl",
        f"train.output_dir={run_dir}", "train.progress=false", "data.max_length=160",
        "data.tasks=[classify, brief, existence, rec]", "data.task_schedule=[]", "optim.warmup_steps=0",
        "checkpoint.every_steps=100", "eval.every_steps=0", *overrides])
    recipe = TrainingRecipe(config)
    recipe.setup()
    return recipe


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _changed(model, before) -> set[str]:
    return {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}


@pytest.mark.parametrize(
    "stage, trainable, prefixes",
    [
        ("stage1", "[feature_refiner, connector]",
         ("model.feature_refiner.", "model.connector.", "model.region_connector.")),
        ("stage2", "[feature_refiner, connector, language_model]",
         ("model.feature_refiner.", "model.connector.", "model.region_connector.", "model.language_model.", "lm_head.")),
    ],
)
def test_exactly_the_trainable_parameters_train(world, tmp_path, stage, trainable, prefixes):
    recipe = make_recipe(world, tmp_path / stage, f"train.trainable={trainable}", "train.max_steps=2",
                         "model.overrides.share_connector=false", "data.val=[]")
    model = recipe.model
    expected = {name for name, _ in model.named_parameters() if name.startswith(prefixes)}
    assert set(recipe.trainable) == expected and any(n.startswith("model.region_connector.") for n in expected)
    before = _snapshot(model)

    recipe.train(stop_after=1)
    after_one = _changed(model, before)
    assert after_one and after_one <= expected  # one step moves nothing frozen
    # The refiner's last layer starts at zero, so the layers before it get their first
    # gradient in step 2 (SPEC §1): check every gradient after one optimiser step.
    recipe.train(stop_after=2)
    assert _changed(model, before) == expected
    for name, param in model.named_parameters():
        if name in expected:
            assert param.grad is not None and param.grad.abs().sum() > 0, f"{name} got no gradient"
        else:
            assert param.grad is None and not param.requires_grad, name


def test_lora_trains_only_adapters_and_saves_merged_weights(world, tmp_path):
    recipe = make_recipe(world, tmp_path / "lora", "train.trainable=[connector]", "train.max_steps=2",
                         "train.lora={r: 4, alpha: 8, target_modules: [q_proj, v_proj]}", "data.val=[]")
    model = recipe.model
    lora = {n for n, _ in model.named_parameters() if "lora_" in n}
    assert lora and all(".q_proj." in n or ".v_proj." in n for n in lora)
    assert set(recipe.trainable) == lora | {n for n, _ in model.named_parameters() if n.startswith("model.connector.")}
    before = _snapshot(model)
    recipe.train()
    assert _changed(model, before) == set(recipe.trainable)

    from regiongpt.training.data import RegionCollator

    checkpoint = tmp_path / "lora" / "ckpt-000002"
    loaded = AutoModelForImageTextToText.from_pretrained(checkpoint).eval()
    assert not any("lora" in n for n, _ in loaded.named_parameters())
    processor = AutoProcessor.from_pretrained(checkpoint)
    item = recipe.train_dataset[0]
    inputs = {k: v for k, v in RegionCollator(processor)([item]).inputs.items() if k != "labels"}
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, atol=1e-4, rtol=1e-4)
    # Resuming restores the unmerged adapters exactly.
    resumed = make_recipe(world, tmp_path / "lora", "train.trainable=[connector]", "train.max_steps=2",
                          "train.lora={r: 4, alpha: 8, target_modules: [q_proj, v_proj]}", "data.val=[]")
    assert resumed.step == 2
    for name, param in resumed.model.named_parameters():
        assert torch.equal(param, dict(model.named_parameters())[name]), name


def test_metrics_log_eval_per_task_and_loadable_checkpoints(world, tmp_path):
    run = tmp_path / "run"
    recipe = make_recipe(world, run, "train.max_steps=4", "eval.every_steps=2", "checkpoint.every_steps=1",
                         "checkpoint.keep_last=2", "data.task_schedule=[{until_step: 2, tasks: [classify]}]")
    final = recipe.train()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in train] == [1, 2, 3, 4] and [r["step"] for r in val] == [2, 4]
    for r in train:
        assert r["loss"] > 0 and r["samples_per_s"] > 0 and r["tokens_per_s"] > 0 and "lr" in r and "grad_norm" in r
    for task in ("classify", "brief", "existence", "rec", "all"):
        for metric in ("token_acc", "exact_match"):
            assert 0.0 <= val[-1][f"{task}/{metric}"] <= 1.0
        assert val[-1][f"{task}/answers"] > 0
    assert final["val/all/answers"] == val[-1]["all/answers"]
    # checkpoints: the last two, loadable by plain transformers, with a weights-only training state
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("ckpt-")) == ["ckpt-000003", "ckpt-000004"]
    model = AutoModelForImageTextToText.from_pretrained(run / "ckpt-000004")
    assert isinstance(model, RegionGPTForConditionalGeneration)
    assert isinstance(AutoProcessor.from_pretrained(run / "ckpt-000004"), RegionGPTProcessor)
    state = load_training_state(run / "ckpt-000004" / "training_state.pt")
    assert state["step"] == 4 and state["micro_batches"] == 4 * recipe.config.optim.grad_accum
    assert set(state["rng"]) >= {"torch", "numpy", "python"}
    assert (run / "config.yaml").exists() and (run / "ckpt-000004" / "training_config.yaml").exists()
    lines = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4] and all(r["sequences"] for r in lines)


@pytest.mark.parametrize("freeze", [False, True])
def test_frozen_batchnorm_statistics_stay_while_the_norms_weights_train(world, tmp_path, freeze):
    """train.freeze_batchnorm_stats: a CNN tower's BatchNorm layers keep their running statistics through
    the language-model phase (and its evaluations) while their weights still learn."""
    recipe = make_recipe(world, tmp_path / "run", "model.preset=tiny-resnet-llama", "model.vision_overrides={}",
                         "train.trainable=[vision_tower, feature_refiner, connector, language_model]",
                         "train.max_steps=3", "eval.every_steps=1", f"train.freeze_batchnorm_stats={str(freeze).lower()}")
    norms = {name: m for name, m in recipe.model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert norms
    means = {name: m.running_mean.clone() for name, m in norms.items()}
    weights = {name: m.weight.detach().clone() for name, m in norms.items()}
    recipe.train()
    kept = [torch.equal(m.running_mean, means[name]) for name, m in norms.items()]
    assert all(kept) if freeze else not any(kept)
    assert any(not torch.equal(m.weight.detach(), weights[name]) for name, m in norms.items())


def test_bf16_autocast_step(world, tmp_path):
    recipe = make_recipe(world, tmp_path / "bf16", "train.dtype=bf16", "train.max_steps=1", "data.val=[]")
    metrics = recipe.train()
    assert torch.isfinite(torch.tensor(metrics["loss"]))
    assert next(recipe.model.parameters()).dtype == torch.float32  # master weights stay fp32


def test_unknown_task_fails_before_training(world, tmp_path):
    with pytest.raises(InvalidInputError, match=r"'data.tasks' names task 'clasify'.*did you mean 'classify'"):
        make_recipe(world, tmp_path / "bad", "data.tasks=[clasify]", "train.max_steps=1")


def test_resume_never_refuses_a_run_folder_with_checkpoints(world, tmp_path):
    make_recipe(world, tmp_path / "r", "train.max_steps=1", "data.val=[]").train()
    with pytest.raises(InvalidInputError, match="train.resume is 'never'"):
        make_recipe(world, tmp_path / "r", "train.max_steps=1", "data.val=[]", "train.resume=never")


def test_region_pretraining_changes_only_the_region_path(world, tmp_path):
    recipe = make_recipe(world, tmp_path / "pre", "train.region_pretrain_steps=3", "train.max_steps=1", "data.val=[]",
                         "train.trainable=[feature_refiner,connector,language_model,vision_tower]",
                         "model.overrides={region_shape_encoder: true}")
    before = {n: p.detach().clone() for n, p in recipe.model.named_parameters()}
    from regiongpt.training.region_pretrain import pretrain_region_path

    losses = pretrain_region_path(recipe.model, recipe.processor, recipe.train_samples, 3, 1e-3, 2, 0, recipe.device)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    changed = {n for n, p in recipe.model.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("model.vision_tower.") for n in changed)
    assert any(n.startswith("model.region_shape_encoder.") for n in changed)
    assert not any(n.startswith(("model.language_model.", "lm_head", "model.connector.")) for n in changed)
    # through the recipe: it runs before step 1 and is logged
    recipe.train()
    lines = [json.loads(line) for line in (tmp_path / "pre" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["split"] == "region_pretrain" and lines[0]["steps"] == 3


def test_region_pretraining_with_a_loader_worker_trains_on_the_same_batches(world, tmp_path):
    from regiongpt.training.region_pretrain import pretrain_region_path

    results = []
    for workers in (0, 1):
        recipe = make_recipe(world, tmp_path / f"w{workers}", "train.max_steps=1", "data.val=[]",
                             "train.trainable=[feature_refiner,connector,language_model,vision_tower]")
        losses = pretrain_region_path(recipe.model, recipe.processor, recipe.train_samples, 3, 1e-3, 2, 5,
                                      recipe.device, attributes=["colour"], num_workers=workers)
        results.append((losses, {n: p.detach().clone() for n, p in recipe.model.named_parameters()}))
    (serial, serial_params), (prefetched, prefetched_params) = results
    assert len(serial) == 3 and serial == pytest.approx(prefetched, rel=1e-5)
    assert all(torch.allclose(serial_params[n], prefetched_params[n], atol=1e-6) for n in serial_params)
    # the recipe passes train.region_pretrain_workers on
    make_recipe(world, tmp_path / "recipe", "train.max_steps=1", "data.val=[]", "train.region_pretrain_steps=2",
                "train.region_pretrain_workers=1",
                "train.trainable=[feature_refiner,connector,language_model,vision_tower]").train()


def test_region_pretraining_cache_gives_the_same_batches_and_keeps_to_its_budget(world, tmp_path):
    from regiongpt.training.region_pretrain import PretrainBatches, PreparedImages, pretrain_region_path

    recipe = make_recipe(world, tmp_path / "cache", "train.max_steps=1", "data.val=[]",
                         "train.trainable=[feature_refiner,connector,language_model,vision_tower]")
    samples = [s for s in recipe.train_samples if s.regions]
    batches = [samples[:3], samples[1:4], samples[:3]]  # samples seen again, in other batches
    plain, cached = PretrainBatches(recipe.processor, batches), PretrainBatches(recipe.processor, batches, 2**30)
    for step in (0, 1, 2, 0):  # first preparation, then from the cache
        fresh, kept = plain[step], cached[step]
        assert set(fresh) == set(kept)
        for key in fresh:  # value for value, dtype too
            assert fresh[key].dtype == kept[key].dtype and torch.equal(fresh[key], kept[key]), key
    assert len(cached.cache.entries) == 4 and cached.cache.used_bytes > 0
    slabs = cached.cache.storage.slabs[torch.float32]
    assert len(slabs) == 1  # every kept tensor in one buffer, not one allocation each
    assert all(crop.untyped_storage().data_ptr() == slabs[0].untyped_storage().data_ptr()
               for _, crops, _ in cached.cache.entries.values() for _, _, crop in crops)
    cached.cache.clear()
    assert not cached.cache.entries and not cached.cache.storage.slabs and cached.cache.used_bytes == 0
    for step in (2, 0):  # filled again after clearing, still the same batches
        assert all(torch.equal(plain[step][key], cached[step][key]) for key in plain[step])
    one = PreparedImages(recipe.processor, cached.cache.used_bytes // 4)  # room for about one sample, not four
    for step in (0, 1):
        one.prepare(batches[step])
    assert len(one.entries) <= 1 and one.used_bytes <= cached.cache.used_bytes // 4
    # pretraining with the cache trains on the same batches
    results = []
    for budget in (0, 2**30):
        recipe = make_recipe(world, tmp_path / f"c{budget}", "train.max_steps=1", "data.val=[]",
                             "train.trainable=[feature_refiner,connector,language_model,vision_tower]")
        results.append(pretrain_region_path(recipe.model, recipe.processor, recipe.train_samples, 3, 1e-3, 2, 5,
                                            recipe.device, attributes=["colour"], cache_bytes=budget))
    assert results[0] == pytest.approx(results[1], rel=1e-6)
    make_recipe(world, tmp_path / "recipe", "train.max_steps=1", "data.val=[]", "train.region_pretrain_steps=2",
                "train.region_pretrain_cache_gb=0.5",
                "train.trainable=[feature_refiner,connector,language_model,vision_tower]").train()
    with pytest.raises(InvalidInputError, match=r"'train.region_pretrain_cache_gb' must be >= 0"):
        make_recipe(world, tmp_path / "bad", "train.max_steps=1", "train.region_pretrain_cache_gb=-1")


def test_slabs_keep_copies_in_few_large_buffers():
    from regiongpt.training.region_pretrain import Slabs

    slabs = Slabs(slab_bytes=64)  # 16 float32 a slab
    a, b, c = torch.arange(6.0).view(2, 3), torch.ones(8), torch.arange(5.0)
    kept = [slabs.keep(t) for t in (a, b, c)]
    for original, copy in zip((a, b, c), kept):
        assert torch.equal(original, copy) and copy.data_ptr() != original.data_ptr()
    assert len(slabs.slabs[torch.float32]) == 2  # 6 + 8 fit in the first, 5 more start a second
    big = torch.arange(20.0)
    assert torch.equal(slabs.keep(big), big) and len(slabs.slabs[torch.float32]) == 2  # larger than a slab: alone
    a.zero_()
    assert kept[0].sum() == 15  # copies, not views of the originals
    flags = slabs.keep(torch.tensor([True, False]))
    assert flags.dtype == torch.bool and flags.tolist() == [True, False]
    slabs.clear()
    assert not slabs.slabs


def test_region_pretraining_learning_rate_falls_to_its_floor_along_a_half_cosine(world, tmp_path, monkeypatch):
    from regiongpt.training.region_pretrain import pretrain_lr_factor

    assert [pretrain_lr_factor(s, 5, 1.0) for s in range(5)] == [1.0] * 5  # constant: the old behaviour
    factors = [pretrain_lr_factor(s, 5, 0.1) for s in range(5)]
    assert factors[0] == 1.0 and factors[-1] == pytest.approx(0.1) and factors[2] == pytest.approx(0.55)
    assert all(a > b for a, b in zip(factors, factors[1:]))
    assert pretrain_lr_factor(0, 1, 0.1) == 1.0  # a single step trains at the full rate
    # the optimiser's steps take those rates: the recipe passes train.region_pretrain_min_lr_ratio on
    seen = []
    real_step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    recipe = make_recipe(world, tmp_path / "decay", "train.max_steps=1", "data.val=[]", "train.region_pretrain_steps=3",
                         "train.region_pretrain_lr=2e-3", "train.region_pretrain_min_lr_ratio=0.25",
                         "train.trainable=[feature_refiner,connector,language_model,vision_tower]")
    recipe._pretrain_region_path()
    assert seen == pytest.approx([2e-3, 2e-3 * 0.625, 2e-3 * 0.25])
    with pytest.raises(InvalidInputError, match=r"'train.region_pretrain_min_lr_ratio' must be in \[0, 1\]"):
        make_recipe(world, tmp_path / "bad", "train.max_steps=1", "train.region_pretrain_min_lr_ratio=1.5")


def test_region_pretraining_attribute_and_image_heads(world, tmp_path):
    from regiongpt.training.region_pretrain import PretrainLabels, pretrain_region_path

    recipe = make_recipe(world, tmp_path / "pre", "train.max_steps=1", "data.val=[]",
                         "train.trainable=[feature_refiner,connector,language_model,vision_tower]")
    labels = PretrainLabels.from_samples(recipe.train_samples, ["colour", "texture", "size"], ["colour", "category"])
    assert labels.region_fields == ["category", "colour", "texture", "size"]
    assert set(labels.region_classes["size"]) <= {"small", "medium", "large"}
    assert all(len(label.split()) == 2 for label in labels.image_classes)  # "red heart"
    before = {n: p.detach().clone() for n, p in recipe.model.named_parameters()}
    losses = pretrain_region_path(recipe.model, recipe.processor, recipe.train_samples, 4, 1e-3, 2, 0, recipe.device,
                                  attributes=["colour", "texture", "size"], image_labels=["colour", "category"])
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    changed = {n for n, p in recipe.model.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("model.vision_tower.") for n in changed)
    assert not any(n.startswith(("model.connector.", "model.language_model.", "lm_head")) for n in changed)
    # heads on the region embeddings: the connector is pretrained too, the language model never
    before = {n: p.detach().clone() for n, p in recipe.model.named_parameters()}
    pretrain_region_path(recipe.model, recipe.processor, recipe.train_samples, 2, 1e-3, 2, 0, recipe.device,
                         attributes=["colour"], heads_on="embeddings")
    changed = {n for n, p in recipe.model.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("model.connector.") for n in changed)
    assert not any(n.startswith(("model.language_model.", "lm_head")) for n in changed)
    with pytest.raises(InvalidInputError, match="no 'shininess'.*train.region_pretrain_attributes"):
        pretrain_region_path(recipe.model, recipe.processor, recipe.train_samples, 1, 1e-3, 2, 0, recipe.device,
                             attributes=["shininess"])


def test_region_aux_heads_train_with_the_language_model_and_resume(world, tmp_path):
    overrides = ("train.region_aux_weight=1.0", "train.region_pretrain_attributes=[colour, size]", "data.val=[]",
                 "train.region_pretrain_image_labels=[category]",
                 "train.trainable=[feature_refiner,connector,language_model,vision_tower]", "checkpoint.every_steps=2")
    recipe = make_recipe(world, tmp_path / "aux", "train.max_steps=2", *overrides)
    assert recipe.region_aux.fields == ["category", "colour", "size"]
    heads_before = {k: v.clone() for k, v in recipe.region_aux.state_dict().items()}
    metrics = recipe.train()
    assert metrics["region_aux_loss"] > 0
    assert any(not torch.equal(v, heads_before[k]) for k, v in recipe.region_aux.state_dict().items())
    assert not torch.equal(recipe.region_aux.image_head.weight, heads_before["image_head.weight"])
    state = load_training_state(tmp_path / "aux" / "ckpt-000002" / "training_state.pt")
    saved = state["region_aux"]["heads"]
    assert all(torch.equal(saved[k], v) for k, v in recipe.region_aux.state_dict().items())
    # the heads are not part of the exported model
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "aux" / "ckpt-000002")
    assert not any("aux" in name for name in reloaded.state_dict())
    # resuming restores them (and continues)
    resumed = make_recipe(world, tmp_path / "aux", "train.max_steps=3", *overrides)
    assert all(torch.equal(resumed.region_aux.state_dict()[k], v.to(resumed.device)) for k, v in saved.items())
    assert resumed.step == 2
    resumed.train()
    assert resumed.step == 3


def test_region_aux_heads_see_every_region_in_row_order(world, tmp_path):
    from regiongpt.training.region_aux import RegionAuxiliaryHeads

    recipe = make_recipe(world, tmp_path / "rows", "train.max_steps=1", "data.val=[]")
    from regiongpt.training.builders import build_train_loader

    loader = build_train_loader(recipe.train_dataset, recipe.processor, recipe.config, 0, 1, 0, 1)
    batch = next(iter(loader))
    assert len(batch.region_labels) == batch.inputs["region_masks"].shape[0]
    assert all("category" in r and "colour" in r for r in batch.region_labels)
    heads = RegionAuxiliaryHeads.from_samples(recipe.train_samples, ["colour"], 8)
    embeds = torch.randn(len(batch.region_labels), 8)
    loss = heads.loss(embeds, batch.region_labels)
    assert torch.isfinite(loss) and loss > 0
    with pytest.raises(RuntimeError, match="region embeddings but"):
        heads.loss(embeds[:1], batch.region_labels)
    grid = recipe.model.config.image_grid_size
    with_image = RegionAuxiliaryHeads.from_samples(recipe.train_samples, [], 8, ["category"], 0.5, grid)
    n_images = batch.inputs["pixel_values"].shape[0]
    image_loss = with_image.image_loss(torch.randn(n_images, grid * grid, 8), batch.inputs["region_masks"],
                                       batch.inputs["region_image_index"], batch.region_labels)
    assert torch.isfinite(image_loss) and image_loss > 0


def test_region_aux_weight_must_not_be_negative(world, tmp_path):
    with pytest.raises(InvalidInputError, match="region_aux_weight' must be >= 0"):
        make_recipe(world, tmp_path / "neg", "train.max_steps=1", "train.region_aux_weight=-1")


def test_segmentation_trains_the_vision_tower_in_pretraining_and_with_the_language_model(world, tmp_path):
    recipe = make_recipe(world, tmp_path / "seg", "train.max_steps=2", "data.val=[]", "train.segmentation_weight=1.0",
                         "train.region_aux_weight=0.5", "checkpoint.every_steps=2",
                         "train.trainable=[feature_refiner,connector,language_model,vision_tower]")
    head = recipe.region_aux.segmentation
    assert head is not None and head.head.in_channels == recipe.model.config.vision_feature_dim
    before = head.head.weight.detach().clone()
    recipe.train()
    assert not torch.equal(head.head.weight, before)  # the head trains beside the language model
    saved = recipe.region_aux.state_dict()
    assert any(k.startswith("segmentation.") for k in saved)  # kept in the training state for resuming

    from regiongpt.training.region_pretrain import pretrain_region_path

    tower = {n: p.detach().clone() for n, p in recipe.model.named_parameters() if n.startswith("model.vision_tower.")}
    losses = pretrain_region_path(recipe.model, recipe.processor, recipe.train_samples, 2, 1e-3, 2, 0, recipe.device,
                                  segmentation_weight=1.0)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(p, tower[n]) for n, p in recipe.model.named_parameters() if n in tower)


def test_image_labels_train_the_models_own_head_and_travel_with_the_checkpoint(world, tmp_path):
    from regiongpt.data.synth.world import CATEGORIES

    labels = ",".join(CATEGORIES)
    recipe = make_recipe(world, tmp_path / "lab", "train.max_steps=2", "data.val=[]", "train.segmentation_weight=1.0",
                         "train.region_aux_weight=0.5", "train.region_pretrain_steps=1", "checkpoint.every_steps=2",
                         f"model.image_labels=[{labels}]",
                         "train.trainable=[feature_refiner,connector,language_model,vision_tower]")
    config = recipe.model.config
    assert config.image_label_names == list(CATEGORIES)
    words = [recipe.processor.tokenizer.decode(ids) for ids in config.image_label_token_ids]
    assert words == [f" {c}" for c in CATEGORIES]  # as a question writes them, after a space
    head = recipe.model.model.image_label_head
    assert recipe.region_aux.segmentation.head is None  # the loss trains the model's head, not one of its own
    before = head.head.weight.detach().clone()
    recipe.train()
    assert not torch.equal(head.head.weight, before)
    saved = AutoModelForImageTextToText.from_pretrained(tmp_path / "lab" / "ckpt-000002")
    torch.testing.assert_close(saved.model.image_label_head.head.weight, head.head.weight)
    assert saved.config.image_label_names == list(CATEGORIES)
    pixels = torch.rand(2, 3, config.image_size, config.image_size)
    recipe.model.eval()
    with torch.no_grad():  # the reloaded model marks its image tokens as the trained one does
        torch.testing.assert_close(saved.model.encode_images(pixels).image_embeds,
                                   recipe.model.model.encode_images(pixels).image_embeds)


def test_image_attributes_train_the_models_colour_classifier_in_pretraining_and_with_the_language_model(world, tmp_path):
    from regiongpt.data.synth.world import CATEGORIES, COLOUR_NAMES
    from regiongpt.training.region_pretrain import pretrain_region_path

    recipe = make_recipe(world, tmp_path / "col", "train.max_steps=2", "data.val=[]", "train.segmentation_weight=1.0",
                         "train.region_aux_weight=0.5", "checkpoint.every_steps=2",
                         f"model.image_labels=[{','.join(CATEGORIES)}]",
                         f"model.image_attributes={{colour: [{','.join(COLOUR_NAMES)}]}}",
                         "train.trainable=[feature_refiner,connector,language_model,vision_tower]")
    config = recipe.model.config
    assert config.image_attribute_names == {"colour": list(COLOUR_NAMES)}
    words = [recipe.processor.tokenizer.decode(ids) for ids in config.image_attribute_token_ids["colour"]]
    assert words == [f" {c}" for c in COLOUR_NAMES]
    classifier = recipe.model.model.image_label_head.attribute_heads["colour"]
    assert set(recipe.region_aux.attribute_segmentation) == {"colour"}
    from regiongpt.training.builders import build_train_loader

    batch = next(iter(build_train_loader(recipe.train_dataset, recipe.processor, recipe.config, 0, 1, 0, 1)))
    vision = recipe.model.model.encode_images(batch.inputs["pixel_values"])
    with_colour = recipe.region_aux.segmentation_loss(vision.region_maps, batch.inputs["region_masks"],
                                                      batch.inputs["region_image_index"], batch.region_labels,
                                                      vision.image_label_logits, vision.image_attribute_logits)
    no_colour = recipe.region_aux.segmentation_loss(
        vision.region_maps, batch.inputs["region_masks"], batch.inputs["region_image_index"],
        [{k: v for k, v in r.items() if k != "colour"} for r in batch.region_labels], vision.image_label_logits,
        vision.image_attribute_logits)
    assert with_colour > no_colour  # regions' colours are targets of the colour classifier
    with_colour.backward()
    assert classifier.weight.grad is not None and classifier.weight.grad.abs().sum() > 0
    recipe.model.zero_grad(set_to_none=True)

    before = classifier.weight.detach().clone()
    recipe.train()
    assert not torch.equal(classifier.weight, before)  # trained beside the language model
    saved = AutoModelForImageTextToText.from_pretrained(tmp_path / "col" / "ckpt-000002")
    torch.testing.assert_close(saved.model.image_label_head.attribute_heads["colour"].weight, classifier.weight)
    assert saved.config.image_attribute_names == {"colour": list(COLOUR_NAMES)}

    before = classifier.weight.detach().clone()
    pretrain_region_path(recipe.model, recipe.processor, recipe.train_samples, 2, 1e-3, 2, 0, recipe.device,
                         segmentation_weight=1.0)
    assert not torch.equal(classifier.weight, before)  # and in the region-path pretraining


def test_image_attributes_need_image_labels_and_value_lists(world, tmp_path):
    with pytest.raises(InvalidInputError, match="'model.image_attributes' adds classifiers to the image label head"):
        make_recipe(world, tmp_path / "a", "train.max_steps=1", "train.segmentation_weight=1.0",
                    "train.region_aux_weight=0.5", "model.image_attributes={colour: [red, blue]}")
    with pytest.raises(InvalidInputError, match="'model.image_attributes' maps each region attribute"):
        make_recipe(world, tmp_path / "b", "train.max_steps=1", "train.segmentation_weight=1.0",
                    "train.region_aux_weight=0.5", "model.image_labels=[circle, star]",
                    "model.image_attributes={colour: [red]}")


def test_region_labels_train_the_models_own_head_from_pretraining_on_and_travel_with_the_checkpoint(world, tmp_path):
    from regiongpt.data.synth.world import CATEGORIES, COLOUR_NAMES

    recipe = make_recipe(world, tmp_path / "reg", "train.max_steps=2", "data.val=[]", "train.region_pretrain_steps=2",
                         "checkpoint.every_steps=2", f"model.region_labels={{category: [{','.join(CATEGORIES)}], "
                         f"colour: [{','.join(COLOUR_NAMES)}]}}",
                         "train.trainable=[feature_refiner,connector,language_model,vision_tower]")
    config = recipe.model.config
    assert config.region_label_names == {"category": list(CATEGORIES), "colour": list(COLOUR_NAMES)}
    words = [recipe.processor.tokenizer.decode(ids) for ids in config.region_label_token_ids["colour"]]
    assert words == [f" {c}" for c in COLOUR_NAMES]  # as a phrase writes them, after a space
    head = recipe.model.model.region_label_head
    before = {k: v.clone() for k, v in head.state_dict().items()}
    from regiongpt.training.region_pretrain import pretrain_region_path

    pretrain_region_path(recipe.model, recipe.processor, recipe.train_samples, 2, 1e-3, 2, 0, recipe.device)
    assert all(not torch.equal(v, before[k]) for k, v in head.state_dict().items())  # pretraining teaches it
    assert not head._forward_hooks or len(head._forward_hooks) == 1  # its hook is gone, the recipe's stays
    before = {k: v.clone() for k, v in head.state_dict().items()}
    metrics = recipe.train()
    assert metrics["region_label_loss"] > 0
    assert all(not torch.equal(v, before[k]) for k, v in head.state_dict().items())  # so does training
    saved = AutoModelForImageTextToText.from_pretrained(tmp_path / "reg" / "ckpt-000002")
    assert saved.config.region_label_names == config.region_label_names
    processor = AutoProcessor.from_pretrained(tmp_path / "reg" / "ckpt-000002")
    sample = recipe.train_samples[0]
    inputs = processor(images=str(sample.image_path()), text="<image>\n<region1>",
                       regions=[{"segmentation": sample.regions[0].mask} if sample.regions[0].mask
                                else sample.regions[0].box])
    recipe.model.eval()
    with torch.no_grad():  # the reloaded model marks its region tokens as the trained one does
        torch.testing.assert_close(saved(**inputs).region_embeds, recipe.model(**inputs).region_embeds)
    with pytest.raises(InvalidInputError, match="at least two value names"):
        make_recipe(world, tmp_path / "bad", "model.region_labels={colour: [red]}")
    with pytest.raises(InvalidInputError, match="region label head that its label loss trains"):
        make_recipe(world, tmp_path / "bad", "model.region_labels={colour: [red, blue]}",
                    "train.region_pretrain_steps=0", "train.region_label_weight=0")


def test_region_pretraining_takes_its_own_batch_size_and_segmentation_weight(world, tmp_path, monkeypatch):
    import regiongpt.training.recipe as recipe_module

    seen = []
    real = recipe_module.pretrain_region_path

    def spy(model, processor, samples, steps, lr, batch_size, *args, **kwargs):
        seen.append((batch_size, kwargs["segmentation_weight"]))
        return real(model, processor, samples, steps, lr, batch_size, *args, **kwargs)

    monkeypatch.setattr(recipe_module, "pretrain_region_path", spy)
    for i, (extra, wanted) in enumerate((
            ([], (2, 1.0)),
            (["train.region_pretrain_batch_size=5", "train.region_pretrain_segmentation_weight=8"], (5, 8.0)))):
        recipe = make_recipe(world, tmp_path / f"pre{i}", "train.max_steps=1", "data.val=[]", "data.batch_size=2",
                             "train.region_pretrain_steps=1", "train.segmentation_weight=1", *extra)
        recipe.train()
        assert seen[-1] == wanted
        assert recipe.region_aux is None or recipe.region_aux.segmentation_weight == 1.0  # training keeps its own
    for bad, message in (("train.region_pretrain_batch_size=-1", "region_pretrain_batch_size' must be >= 0"),
                         ("train.region_pretrain_segmentation_weight=-1", "region_pretrain_segmentation_weight' must")):
        with pytest.raises(InvalidInputError, match=message):
            make_recipe(world, tmp_path / "bad", "train.max_steps=1", bad)


@pytest.mark.parametrize("overrides, message", [
    (["model.image_labels=[star]", "train.segmentation_weight=0"], "only the per-cell category loss trains"),
    (["model.image_labels=[star]", "train.segmentation_weight=1", "train.region_aux_weight=0.5"],
     "categories the model's image labels do not name"),
])
def test_image_label_settings_are_checked(world, tmp_path, overrides, message):
    with pytest.raises(InvalidInputError, match=message):
        make_recipe(world, tmp_path / "bad", "train.max_steps=1", *overrides)


@pytest.mark.parametrize("overrides, message", [
    (["train.segmentation_weight=-1"], "segmentation_weight' must be >= 0"),
    (["train.segmentation_weight=1", "train.region_aux_weight=0", "train.region_pretrain_steps=0"],
     "set 'train.region_pretrain_steps' or 'train.region_aux_weight'"),
])
def test_segmentation_settings_are_checked(world, tmp_path, overrides, message):
    with pytest.raises(InvalidInputError, match=message):
        make_recipe(world, tmp_path / "bad", "train.max_steps=1", *overrides)


def test_image_cell_targets_mark_the_cells_a_region_covers():
    from regiongpt.training.region_pretrain import image_cell_targets

    masks = torch.zeros(2, 8, 8)
    masks[0, :4, :4] = 1  # top-left quarter of image 0
    masks[1, 4:, :] = 1  # bottom half of image 1
    targets = image_cell_targets(masks, torch.tensor([0, 1]), torch.tensor([2, 0]), n_images=2, grid=2, n_classes=3)
    assert targets.shape == (2, 4, 3)
    assert targets[0, :, 2].tolist() == [1, 0, 0, 0] and targets[0].sum() == 1
    assert targets[1, :, 0].tolist() == [0, 0, 1, 1] and targets[1].sum() == 2
    # a small object (1% of the image) lies in one cell of a one-cell grid: still present there
    small = torch.zeros(1, 20, 20)
    small[0, 2:4, 2:4] = 1
    assert image_cell_targets(small, torch.tensor([0]), torch.tensor([1]), n_images=1, grid=1, n_classes=2)[0, 0].tolist() == [0, 1]
    # a sliver of a large region (under the threshold of a cell and under half of the region) is not
    edge = torch.zeros(1, 20, 20)
    edge[0, :, :10] = 1
    edge[0, 0, 10] = 1
    assert image_cell_targets(edge, torch.tensor([0]), torch.tensor([0]), n_images=1, grid=2, n_classes=1)[0, :, 0].tolist() \
        == [1, 0, 1, 0]


def test_evaluation_warns_when_validation_images_are_missing(world, tmp_path):
    val = tmp_path / "val.jsonl"
    lines = (world / "native" / "val.jsonl").read_text().splitlines()
    val.write_text("\n".join(line.replace('"image": "', '"image": "missing/') for line in lines) + "\n")
    recipe = make_recipe(world, tmp_path / "v", "train.max_steps=1", f"data.val=native:{val}")
    with pytest.warns(UserWarning, match=r"evaluation skipped \d+ validation sample\(s\); nothing was left"):
        recipe.evaluate()


def test_answer_averaged_loss_weighs_each_answer_equally():
    from regiongpt.training.metrics import answer_loss_sum

    torch.manual_seed(0)
    logits = torch.randn(1, 6, 5)
    labels = torch.tensor([[-100, 1, -100, 2, 3, 4]])  # answer 0: token 1; answer 1: tokens 3..5
    answer_index = torch.tensor([[-1, 0, -1, 1, 1, 1]])
    ce = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100, reduction="none")
    per_token = answer_loss_sum(logits, labels)
    per_answer = answer_loss_sum(logits, labels, answer_index, average_answers=True)
    torch.testing.assert_close(per_token, ce.sum())
    torch.testing.assert_close(per_answer, ce[0] + ce[2:5].mean())
    weights = torch.tensor([3.0, 0.5])  # task weights of answers 0 and 1
    torch.testing.assert_close(answer_loss_sum(logits, labels, answer_index, True, weights),
                               3 * ce[0] + 0.5 * ce[2:5].mean())
    torch.testing.assert_close(answer_loss_sum(logits, labels, answer_index, False, weights),
                               3 * ce[0] + 0.5 * ce[2:5].sum())


def test_task_weights_name_tasks_of_the_data(world, tmp_path):
    with pytest.raises(InvalidInputError, match=r"'optim.task_weights' names task 'recc'.*did you mean 'rec'"):
        make_recipe(world, tmp_path / "tw", "train.max_steps=1", "optim.task_weights={recc: 2}")
    with pytest.raises(InvalidInputError, match=r"'optim.task_weights.rec' must be a number >= 0"):
        make_recipe(world, tmp_path / "tw", "train.max_steps=1", "optim.task_weights={rec: -1}")


def test_answer_averaged_loss_trains_through_the_recipe(world, tmp_path):
    recipe = make_recipe(world, tmp_path / "ans", "train.max_steps=2", "data.val=[]", "optim.loss_average=answer",
                         "optim.task_weights={rec: 3.0}")
    metrics = recipe.train()
    assert metrics["answers"] >= 1 and "answer_tokens" not in metrics
    assert torch.isfinite(torch.tensor(metrics["loss"]))


def test_independent_turns_train_and_evaluate_through_the_recipe(world, tmp_path):
    """data.independent_tasks: the recipe trains (fp32 and bf16) and evaluates with the turn mask."""
    recipe = make_recipe(world, tmp_path / "ind", "train.max_steps=2", "eval.every_steps=2",
                         "data.independent_tasks=[rec, existence]", "train.dtype=bf16")
    loader = build_train_loader(recipe.train_dataset, recipe.processor, recipe.config, 0, 1)
    batch = next(iter(loader))
    assert batch.inputs["attention_mask"].dim() == 4 and "position_ids" in batch.inputs
    metrics = recipe.train()
    assert torch.isfinite(torch.tensor(metrics["loss"])) and metrics["val/rec/answers"] > 0
    with pytest.raises(InvalidInputError, match=r"'data.independent_tasks' names task 'existance'.*'existence'"):
        make_recipe(world, tmp_path / "bad", "train.max_steps=1", "data.independent_tasks=[existance]")


def test_padding_free_steps_equal_padded_ones_with_every_pointer(world, tmp_path):
    """train.padding_free (the default with independent turns) changes how much the language model
    computes, not what a step learns: the same batch gives the same losses, pointer losses and
    gradient norm as the padded batch."""
    from regiongpt.data.synth.world import CATEGORIES

    common = ["train.max_steps=1", "data.val=[]", "data.independent_tasks=[rec, existence]",
              f"model.image_labels=[{','.join(CATEGORIES)}]", "model.region_number_tokens=9",
              "train.segmentation_weight=1.0", "train.region_aux_weight=0.5", "train.rec_pointer_weight=1.0",
              "train.rec_pointer_attribute_head=1", "train.existence_pointer_weight=1.0",
              "train.describe_pointer_weight=1.0", "train.describe_pointer_head=2", "train.phrase_pointer_weight=1.0"]
    metrics = []
    for free in (False, True):
        recipe = make_recipe(world, tmp_path / f"free-{free}", *common, f"train.padding_free={str(free).lower()}")
        batch = next(iter(build_train_loader(recipe.train_dataset, recipe.processor, recipe.config, 0, 1)))
        assert not batch.padding_mask.all() and recipe._padding_free(batch) == free
        metrics.append(recipe.train_step([batch]))
    padded, free = metrics
    compared = [k for k in padded if k.endswith("_loss") or k in ("loss", "grad_norm")]
    assert {"rec_pointer_attention_loss", "existence_pointer_attention_loss", "describe_pointer_attention_loss",
            "phrase_pointer_attention_loss", "region_aux_loss", "grad_norm"} <= set(compared)
    for key in compared:
        assert free[key] == pytest.approx(padded[key], rel=1e-4, abs=1e-5), key


def test_rec_pointer_supervision_trains_through_the_recipe(world, tmp_path):
    recipe = make_recipe(world, tmp_path / "ptr", "train.max_steps=2", "data.val=[]", "train.rec_pointer_weight=1.0",
                         "model.region_number_tokens=9")
    tokens = recipe.processor.tokenizer.convert_ids_to_tokens(recipe.model.config.region_number_token_ids)
    assert tokens == [str(k) for k in range(1, 10)]
    metrics = recipe.train()
    assert metrics["rec_pointer_attention_loss"] > 0 and metrics["rec_pointer_readout_loss"] > 0
    assert 0 <= metrics["rec_pointer_acc"] <= 1
    # the marks travel with the checkpoint
    saved = AutoModelForImageTextToText.from_pretrained(tmp_path / "ptr" / "ckpt-000002")
    assert saved.config.region_number_token_ids == recipe.model.config.region_number_token_ids
    shared = make_recipe(world, tmp_path / "ptr2", "train.max_steps=2", "data.val=[]", "train.rec_pointer_weight=1.0",
                         "model.region_number_tokens=9", "train.rec_pointer_second_head=1")
    assert shared.pointers["rec"].head == (0, 1)
    assert shared.train()["rec_pointer_attention_loss"] > 0
    attribute = make_recipe(world, tmp_path / "ptr3", "train.max_steps=2", "data.val=[]", "train.rec_pointer_weight=1.0",
                            "model.region_number_tokens=9", "train.rec_pointer_attribute_head=1")
    assert attribute.rec_attribute_head == 1
    metrics = attribute.train()
    assert metrics["rec_pointer_attention_loss"] > 0 and metrics["rec_pointer_readout_loss"] > 0


def test_existence_pointer_supervision_trains_through_the_recipe(world, tmp_path):
    recipe = make_recipe(world, tmp_path / "eptr", "train.max_steps=2", "data.val=[]",
                         "train.existence_pointer_weight=1.0", "data.independent_tasks=[existence]")
    loader = build_train_loader(recipe.train_dataset, recipe.processor, recipe.config, 0, 1)
    batch = next(iter(loader))
    existence = [(a, e) for a, (task, e) in enumerate(zip(batch.answer_tasks, batch.answer_evidence))
                 if task == "existence"]
    assert existence and len(batch.answer_evidence) == len(batch.answer_tasks)
    tokenizer = recipe.processor.tokenizer
    for a, evidence in existence:  # the world's evidence travels with its answer: "Yes." has regions, "No." none
        answer = tokenizer.decode(batch.inputs["input_ids"][batch.answer_index == a]).strip()
        assert answer.startswith("Yes") == bool(evidence), (answer, evidence)
    metrics = recipe.train()
    assert metrics["existence_pointer_attention_loss"] > 0 and metrics["existence_pointer_readout_loss"] > 0
    assert 0 <= metrics["existence_pointer_acc"] <= 1 and "rec_pointer_acc" not in metrics


def test_describe_pointer_supervision_trains_through_the_recipe(world, tmp_path):
    recipe = make_recipe(world, tmp_path / "dptr", "train.max_steps=2", "data.val=[]",
                         "train.describe_pointer_weight=1.0", "train.describe_pointer_head=2")
    metrics = recipe.train()
    assert metrics["describe_pointer_attention_loss"] > 0 and metrics["describe_pointer_readout_loss"] > 0
    assert 0 <= metrics["describe_pointer_acc"] <= 1 and "rec_pointer_acc" not in metrics
    with pytest.raises(InvalidInputError, match=r"'train.describe_pointer_weight' must be >= 0"):
        make_recipe(world, tmp_path / "bad", "train.max_steps=1", "train.describe_pointer_weight=-1")


def test_segmentation_presence_term_trains_in_pretraining_and_training(world, tmp_path):
    from regiongpt.data.synth.world import CATEGORIES

    recipe = make_recipe(world, tmp_path / "pres", "train.max_steps=2", "data.val=[]", "train.segmentation_weight=1.0",
                         "train.segmentation_presence_weight=2.0", "train.region_aux_weight=0.5",
                         "train.region_pretrain_steps=1", f"model.image_labels=[{','.join(CATEGORIES)}]")
    assert recipe.region_aux.segmentation.presence_weight == 2.0
    metrics = recipe.train()
    assert torch.isfinite(torch.tensor(metrics["loss"]))
    with pytest.raises(InvalidInputError, match=r"'train.segmentation_presence_weight' must be >= 0"):
        make_recipe(world, tmp_path / "bad", "train.max_steps=1", "train.segmentation_presence_weight=-1")
    with pytest.raises(InvalidInputError, match=r"segmentation_presence_weight' is a term of the per-cell category "
                                                r"loss: set 'train.segmentation_weight'"):
        make_recipe(world, tmp_path / "bad2", "train.max_steps=1", "train.segmentation_presence_weight=1")


def test_phrase_pointer_supervision_trains_through_the_recipe(world, tmp_path):
    from regiongpt.data.synth.world import CATEGORIES

    recipe = make_recipe(world, tmp_path / "pptr", "train.max_steps=2", "data.val=[]",
                         "train.phrase_pointer_weight=1.0", "data.independent_tasks=[rec, existence]",
                         f"model.image_labels=[{','.join(CATEGORIES)}]", "train.segmentation_weight=1.0",
                         "train.region_aux_weight=0.5")
    loader = build_train_loader(recipe.train_dataset, recipe.processor, recipe.config, 0, 1)
    batch = next(iter(loader))
    rows = phrase_pointers(batch.inputs["input_ids"], batch.answer_index, batch.answer_tasks, recipe.label_words,
                           recipe.rec_digits)
    asked = sum(task in ("rec", "existence") for task in batch.answer_tasks)
    assert 0 < len(rows) <= asked  # one row per REC or yes/no answer that names a category
    tokenizer = recipe.processor.tokenizer
    for row in rows:  # the words it points at are category names of the question
        words = tokenizer.decode(batch.inputs["input_ids"][row.row, list(row.targets)]).split()
        assert words and set(words) <= set(CATEGORIES), words
    metrics = recipe.train()
    assert metrics["phrase_pointer_attention_loss"] > 0 and metrics["phrase_pointer_readout_loss"] == 0
    assert 0 <= metrics["phrase_pointer_acc"] <= 1
    spread = make_recipe(world, tmp_path / "pptr-spread", "train.max_steps=2", "data.val=[]",
                         "train.phrase_pointer_weight=1.0", "train.phrase_pointer_spread=true",
                         "data.independent_tasks=[rec, existence]", f"model.image_labels=[{','.join(CATEGORIES)}]",
                         "train.segmentation_weight=1.0", "train.region_aux_weight=0.5")
    assert spread.train()["phrase_pointer_attention_loss"] > 0
    with pytest.raises(InvalidInputError, match=r"phrase_pointer_weight points at the question's label words.*"
                                                r"neither"):
        make_recipe(world, tmp_path / "bad", "train.max_steps=1", "train.phrase_pointer_weight=1.0")
    with pytest.raises(InvalidInputError, match=r"'train.phrase_pointer_weight' must be >= 0"):
        make_recipe(world, tmp_path / "bad2", "train.max_steps=1", "train.phrase_pointer_weight=-1")


def test_phrase_attribute_pointer_points_rec_answers_at_their_attribute_words(world, tmp_path):
    from regiongpt.data.synth.world import CATEGORIES, COLOUR_NAMES, SIZES

    labels = (f"model.region_labels={{category: [{','.join(CATEGORIES)}], colour: [{','.join(COLOUR_NAMES)}], "
              f"size: [{','.join(SIZES)}]}}")
    common = ["train.max_steps=2", "data.val=[]", "train.region_pretrain_steps=1", labels,
              "data.independent_tasks=[rec, existence]", "train.phrase_pointer_weight=1.0"]
    recipe = make_recipe(world, tmp_path / "attr", *common, "train.phrase_attribute_pointer_weight=1.0",
                         "train.phrase_attribute_fields=[colour, size]")
    assert recipe.pointers["phrase_attribute"].head == 1
    loader = build_train_loader(recipe.train_dataset, recipe.processor, recipe.config, 0, 1)
    rows, asked = [], 0
    for batch, _ in zip(loader, range(4)):
        rows += [(batch, r) for r in phrase_pointers(
            batch.inputs["input_ids"], batch.answer_index, batch.answer_tasks, recipe.label_words, recipe.rec_digits,
            tasks=("rec",), target_words=recipe.attribute_words)]
        asked += sum(task == "rec" for task in batch.answer_tasks)
    assert 0 < len(rows) <= asked
    tokenizer = recipe.processor.tokenizer
    for batch, row in rows:  # only colour and size names, never the category
        words = tokenizer.decode(batch.inputs["input_ids"][row.row, list(row.targets)]).split()
        assert words and set(words) <= set(COLOUR_NAMES) | set(SIZES), words
    metrics = recipe.train()
    assert metrics["phrase_attribute_pointer_attention_loss"] > 0
    assert metrics["phrase_attribute_pointer_readout_loss"] == 0
    with pytest.raises(InvalidInputError, match=r"list the fields"):
        make_recipe(world, tmp_path / "bad", *common, "train.phrase_attribute_pointer_weight=1.0")
    with pytest.raises(InvalidInputError, match=r"names \['texture'\], which 'model.region_labels' does not have"):
        make_recipe(world, tmp_path / "bad2", *common, "train.phrase_attribute_pointer_weight=1.0",
                    "train.phrase_attribute_fields=[texture]")
    with pytest.raises(InvalidInputError, match=r"is the phrase pointer's head of the same layer"):
        make_recipe(world, tmp_path / "bad3", *common, "train.phrase_attribute_pointer_weight=1.0",
                    "train.phrase_attribute_fields=[colour]", "train.phrase_attribute_pointer_head=0")
    with pytest.raises(InvalidInputError, match=r"'train.phrase_attribute_pointer_weight' must be >= 0"):
        make_recipe(world, tmp_path / "bad4", *common, "train.phrase_attribute_pointer_weight=-1")


@pytest.mark.parametrize("override, message", [
    ("train.existence_pointer_layer=-3", r"existence_pointer_layer is -3 but the language model has \d+ layers"),
    ("train.existence_pointer_head=-1", r"'train.existence_pointer_head' must be >= 0"),
])
def test_existence_pointer_settings_are_checked(world, tmp_path, override, message):
    with pytest.raises(InvalidInputError, match=message):
        make_recipe(world, tmp_path / "bad", "train.max_steps=1", "train.existence_pointer_weight=1.0", override)


@pytest.mark.parametrize("override, message", [
    ("train.rec_pointer_layer=7", r"rec_pointer_layer is 7 but the language model has \d+ layers"),
    ("train.rec_pointer_head=31", r"rec_pointer_head is 31 but the language model has \d+ attention heads"),
    ("train.activation_checkpointing=true", "set train.activation_checkpointing=false"),
    ("train.rec_pointer_head=-1", r"'train.rec_pointer_head' must be >= 0"),
    ("train.rec_pointer_second_head=0", r"rec_pointer_second_head is 0: use another head .* \(0\), 0..\d+, or null"),
    ("train.rec_pointer_second_head=9", r"rec_pointer_second_head is 9"),
    ("train.rec_pointer_attribute_head=0", r"rec_pointer_attribute_head is 0: use another head .* \(0\)"),
    ("train.rec_pointer_attribute_head=-2", r"rec_pointer_attribute_head is -2"),
])
def test_rec_pointer_settings_are_checked(world, tmp_path, override, message):
    with pytest.raises(InvalidInputError, match=message):
        make_recipe(world, tmp_path / "bad", "train.max_steps=1", "train.rec_pointer_weight=1.0", override)


def test_rec_pointer_takes_one_extra_head_kind(world, tmp_path):
    with pytest.raises(InvalidInputError, match="set one of them to null"):
        make_recipe(world, tmp_path / "bad", "train.max_steps=1", "train.rec_pointer_weight=1.0",
                    "train.rec_pointer_second_head=1", "train.rec_pointer_attribute_head=2")


def test_region_number_tokens_need_single_digit_tokens(world, tmp_path):
    with pytest.raises(InvalidInputError, match=r"model.region_number_tokens=\d+: the tokenizer writes '\d+' as 2 tokens"):
        make_recipe(world, tmp_path / "many", "train.max_steps=1", "model.region_number_tokens=40")
