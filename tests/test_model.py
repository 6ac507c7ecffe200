"""RegionGPT model core: placeholders, region features, batching, gradients, backbones."""

from __future__ import annotations

import pytest
import torch

from conftest import make_model, make_processor, randomise_refiner
from regiongpt.model import RegionReferenceError
from regiongpt.processing.regions import InvalidRegionError

BOXES = [[2, 2, 30, 20], [40, 10, 78, 46], [10, 25, 35, 47]]


def _captured_llm_inputs(model, inputs):
    """Run the model and return the embeddings the language model received."""
    seen = {}
    def grab(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"].detach()

    hook = model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            out = model(**inputs)
    finally:
        hook.remove()
    return seen["embeds"], out


def test_region_features_land_at_mapped_placeholders_in_any_order_and_repeated(tiny, image):
    model, processor = tiny
    text = "<image>\nCompare <region3> with <region1>, then <region3> again and <region2>."
    inputs = processor(images=image, text=text, regions=BOXES)
    assert inputs["region_token_index"].tolist() == [2, 0, 2, 1]
    embeds, out = _captured_llm_inputs(model, inputs)
    slots = (inputs["input_ids"][0] == model.config.region_token_id).nonzero().flatten()
    assert len(slots) == 4
    for slot, region in zip(slots.tolist(), [2, 0, 2, 1]):
        torch.testing.assert_close(embeds[0, slot], out.region_embeds[region], rtol=0, atol=0)
    # distinct regions give distinct features
    assert not torch.allclose(out.region_embeds[0], out.region_embeds[1])
    # image features sit on the image placeholders
    image_slots = inputs["input_ids"][0] == model.config.image_token_id
    assert int(image_slots.sum()) == model.config.image_seq_length
    vision = model.encode_images(inputs["pixel_values"])
    torch.testing.assert_close(embeds[0][image_slots], vision.image_embeds[0])


def test_out_of_range_region_index_raises_naming_index_and_count(tiny, image):
    model, processor = tiny
    with pytest.raises(InvalidRegionError, match=r"<region3> but 2 region\(s\)"):
        processor(images=image, text="<image>\n<region3>?", regions=BOXES[:2])
    inputs = processor(images=image, text="<image>\n<region2>?", regions=BOXES[:2])
    inputs["region_token_index"] = torch.tensor([5])
    with pytest.raises(RegionReferenceError, match="region index 5 but only 2 region"):
        model(**inputs)


def test_sample_alone_equals_sample_in_padded_batch(tiny, image):
    model, processor = tiny
    long_text = "<image>\nDescribe <region1> and <region2> in detail please, with every detail."
    short_text = "<image>\nWhat is <region1>?"
    alone = processor(images=image, text=short_text, regions=BOXES[:1])
    batch = processor(images=[image, image], text=[long_text, short_text], regions=[BOXES[:2], BOXES[1:2]],
                      padding_side="left")
    # the short sample in the batch uses BOXES[1]; alone we use BOXES[0] -> build the same one alone
    alone = processor(images=image, text=short_text, regions=BOXES[1:2])
    with torch.no_grad():
        a = model(**alone).logits[0]
        b = model(**batch).logits[1]
    n = a.shape[0]
    torch.testing.assert_close(b[-n:], a, rtol=1e-4, atol=1e-4)
    assert batch["region_image_index"].tolist() == [0, 0, 1]
    assert batch["region_token_index"].tolist() == [0, 1, 2]


def test_one_pixel_region_gives_a_real_feature(tiny, image):
    model, processor = tiny
    inputs = processor(images=image, text="<image>\n<region1> <region2>", regions=[[7, 9, 8, 10], BOXES[1]])
    assert inputs["region_masks"][0].sum() > 0
    with torch.no_grad():
        out = model(**inputs)
    feature = out.region_embeds[0]
    assert torch.isfinite(feature).all()
    # a real feature: equals the connector of some refined cell, not the connector of zeros
    zero = model.model.connector(torch.zeros(1, model.config.vision_feature_dim))[0]
    assert not torch.allclose(feature, zero)


def test_generation_never_emits_region_token(tiny, image):
    model, processor = tiny
    with torch.no_grad():
        model.lm_head.weight[model.config.region_token_id] = 100.0  # make it the favourite
    inputs = processor(images=image, text="<image>\nWhat is <region1>?", regions=BOXES[:1])
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1]:]
    assert model.config.region_token_id not in new.tolist()


def _one_step(model, processor, image):
    text = "<image>\nWhat is <region1>? ASSISTANT: a red star</s>"
    start = text.index("a red star")
    inputs = processor(images=image, text=text, regions=BOXES[:1], target_spans=[(start, len(text))])
    assert (inputs["labels"] != -100).sum() > 0
    loss = model(**inputs).loss
    loss.backward()
    return loss


@pytest.mark.parametrize(
    "frozen, extras",
    [(("vision_tower", "language_model"), {}), (("vision_tower",), {}),
     (("vision_tower",), dict(region_shape_encoder=True, region_shape_pixels=True, feature_position_embedding=True,
                              region_number_embedding=True)),
     (("vision_tower",), dict(region_shape_encoder=True, region_shape_pixels=True, region_shape_context=0.5)),
     (("vision_tower",), dict(refine_skip_layer=-3))],
    ids=["stage1_alignment", "stage2_instruction", "small_model_extensions", "context_crop", "lateral_skip"],
)
def test_every_trainable_parameter_gets_gradient_after_one_step(tokenizer, image, frozen, extras):
    # The vision tower stays frozen in both stages: its blocks after the feature layer are unused.
    model = make_model("tiny-clip-llama", tokenizer, **extras)  # zero-initialised output layers
    processor = make_processor(model, tokenizer)
    model.train()
    for name in frozen:
        for p in getattr(model.model, name).parameters():
            p.requires_grad_(False)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([p for _, p in trainable], lr=1e-2)
    _one_step(model, processor, image)
    optimizer.step()
    optimizer.zero_grad()
    _one_step(model, processor, image)
    missing = [n for n, p in trainable if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"no gradient after one optimiser step: {missing}"
    frozen_with_grad = [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
    assert not frozen_with_grad


def test_residual_refinement_is_exact_at_init(tokenizer, image):
    model = make_model("tiny-clip-llama", tokenizer)
    processor = make_processor(model, tokenizer)
    inputs = processor(images=image, text="<image>\nhi", regions=[])
    vision = model.encode_images(inputs["pixel_values"])
    from regiongpt.model.vision import select_feature_grid

    coarse = select_feature_grid(model.model.vision_tower, inputs["pixel_values"], -2, "default",
                                 model.config.vision_grid_size)
    expected = model.model.connector(coarse.flatten(2).transpose(1, 2))
    torch.testing.assert_close(vision.image_embeds, expected, rtol=0, atol=0)


def test_refine_skip_layer_adds_the_finer_stage_and_is_exact_at_init(tokenizer, image):
    # tiny-resnet-llama: the last stage is 8x8 (32 channels), the one before it 16x16 (16 channels),
    # the refined map 16x16: the lateral connection adds the finer stage cell by cell
    plain = make_model("tiny-resnet-llama", tokenizer)
    skip = make_model("tiny-resnet-llama", tokenizer, refine_skip_layer=-2)
    missing, unexpected = skip.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and sorted(missing) == ["model.feature_refiner.lateral.bias",
                                                    "model.feature_refiner.lateral.weight"]
    processor = make_processor(plain, tokenizer)
    pixels = processor(images=image, text="<image>\nhi", regions=[])["pixel_values"]
    with torch.no_grad():
        before = plain.model.encode_images(pixels)
        at_init = skip.model.encode_images(pixels)
        torch.testing.assert_close(at_init.region_maps, before.region_maps, rtol=0, atol=0)
        torch.testing.assert_close(at_init.image_embeds, before.image_embeds, rtol=0, atol=0)
        skip.model.feature_refiner.lateral.weight.normal_()
        skip.model.feature_refiner.lateral.bias.normal_()
        after = skip.model.encode_images(pixels)
        finer = skip.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-2]  # (1, 16, 16, 16)
        lateral = skip.model.feature_refiner.lateral(finer)
    torch.testing.assert_close(after.region_maps, before.region_maps + lateral)
    assert after.image_embeds.shape == before.image_embeds.shape
    assert not torch.allclose(after.image_embeds, before.image_embeds)


@pytest.mark.parametrize("skip, expected", [(-1, "vision_feature_layer"), (3, "out of range"), (True, "an int")])
def test_refine_skip_layer_is_checked(tokenizer, skip, expected):
    with pytest.raises(ValueError, match=expected):
        make_model("tiny-resnet-llama", tokenizer, refine_skip_layer=skip)


@pytest.mark.parametrize("preset", ["tiny-clip-llama", "tiny-siglip-qwen2", "tiny-convnext-mistral", "tiny-resnet-llama"])
def test_backbones_forward_and_generate(tokenizer, image, preset):
    model = make_model(preset, tokenizer)
    randomise_refiner(model)
    processor = make_processor(model, tokenizer)
    inputs = processor(images=image, text="<image>\nWhat is <region1> near <region2>?", regions=BOXES[:2])
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits.shape[:2] == inputs["input_ids"].shape
    assert torch.isfinite(out.logits[..., : model.config.region_token_id]).all()
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 3


@pytest.mark.parametrize("preset", ["tiny-clip-llama", "tiny-convnext-mistral", "tiny-resnet-llama"])
def test_vision_maps_in_channels_last_equal_the_contiguous_tower(tokenizer, image, preset):
    """The tower reads its pixels channels-last (faster convolutions): the maps, and their gradients
    to the tower's weights, are the contiguous forward's up to summation order."""
    from regiongpt.model.vision import select_feature_maps

    model = make_model(preset, tokenizer)
    processor = make_processor(model, tokenizer)
    pixels = processor(images=[image, image.transpose(0)], text=["<image>\n", "<image>\n"])["pixel_values"]
    config, tower = model.config, model.model.vision_tower
    seen = []
    hook = tower.register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous(
        memory_format=torch.channels_last)))
    try:
        (ours,) = select_feature_maps(tower, pixels, [config.vision_feature_layer],
                                      config.vision_feature_select_strategy, config.vision_grid_size)
    finally:
        hook.remove()
    assert seen == [True]
    (ours_grad,) = torch.autograd.grad(ours.square().sum(), [next(tower.parameters())])
    hidden = tower(pixels.contiguous(), output_hidden_states=True).hidden_states[config.vision_feature_layer]
    if hidden.ndim == 3:  # ViT tokens: drop CLS, (B, N, C) -> (B, C, g, g)
        hidden = hidden[:, 1:] if config.vision_feature_select_strategy == "default" else hidden
        g = config.vision_grid_size
        hidden = hidden.transpose(1, 2).reshape(hidden.shape[0], -1, g, g)
    (their_grad,) = torch.autograd.grad(hidden.square().sum(), [next(tower.parameters())])
    torch.testing.assert_close(ours, hidden, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours_grad, their_grad, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(
    "overrides",
    [dict(region_pooling="roi_box"), dict(refine_residual=False), dict(refine_factor=1), dict(share_connector=False),
     dict(image_grid_size=4, image_seq_length=16), dict(feature_position_embedding=True),
     dict(region_shape_encoder=True), dict(region_shape_encoder=True, region_shape_pixels=True),
     dict(region_shape_encoder=True, region_shape_pixels=True, region_shape_context=0.25),
     dict(region_number_embedding=True)],
    ids=["roi_box", "reference_refinement", "no_refinement", "separate_connector", "merged_4x4", "position_embedding",
         "shape_encoder", "shape_encoder_pixels", "shape_encoder_context", "region_number"],
)
def test_architecture_switches(tokenizer, image, overrides):
    model = make_model("tiny-clip-llama", tokenizer, **overrides)
    randomise_refiner(model)
    processor = make_processor(model, tokenizer)
    inputs = processor(images=image, text="<image>\n<region1> and <region2>", regions=BOXES[:2])
    with torch.no_grad():
        out = model(**inputs)
    assert torch.isfinite(out.region_embeds).all()
    assert not torch.allclose(out.region_embeds[0], out.region_embeds[1])
    if not overrides.get("share_connector", True):
        assert model.model.region_connector is not None


def test_region_pixel_crop_reads_the_region_s_own_pixels():
    from regiongpt.model.region_shape import crop_region_pixels, mask_boxes

    pixels = torch.zeros(2, 3, 32, 32)
    pixels[1, 0, 8:16, 4:20] = 1.0  # a red rectangle in image 1
    pixels[1, 2] = 0.5  # blue everywhere in image 1, also outside the region
    masks = torch.zeros(1, 32, 32)
    masks[0, 8:16, 4:20] = 1
    crops = crop_region_pixels(pixels, masks, torch.tensor([1]), mask_boxes(masks), size=4)
    assert crops.shape == (1, 3, 4, 4)
    torch.testing.assert_close(crops[0, 0], torch.ones(4, 4))  # the crop spans exactly the region
    torch.testing.assert_close(crops[0, 2], torch.full((4, 4), 0.5))
    # another image's pixels never leak in; pixels outside the mask are zeroed
    masks2 = torch.zeros(1, 32, 32)
    masks2[0, 8:16, 4:12] = 1
    crops = crop_region_pixels(pixels, masks2, torch.tensor([0]), mask_boxes(masks2), size=4)
    assert crops.abs().sum() == 0


def test_region_context_crop_shows_the_surroundings_and_the_mask():
    from regiongpt.model.region_shape import crop_region_context, mask_boxes

    pixels = torch.zeros(1, 3, 32, 32)
    pixels[0, 1, 8:16, 16:24] = 1.0  # a green square: the region
    pixels[0, 0, 8:16, 8:16] = 1.0  # a red square just left of it: the occluder
    masks = torch.zeros(1, 32, 32)
    masks[0, 8:16, 16:24] = 1
    crops = crop_region_context(pixels, masks, torch.tensor([0]), mask_boxes(masks), size=8, context=0.5)
    assert crops.shape == (1, 4, 8, 8)
    # the box 16..24 widened by half its width on each side: 12..28, two crop cells per 4 pixels
    assert crops[0, 3, 2:6, 2:6].min() == 1 and crops[0, 3, :, :2].max() == 0  # the mask channel
    assert crops[0, 0, 2:6, :2].min() == 1  # the red neighbour left of the region, unmasked
    assert crops[0, 1, 2:6, 2:6].min() == 1 and crops[0, 1, 2:6, 6:].max() == 0


def test_pixel_shape_encoder_needs_the_shape_encoder(tokenizer):
    with pytest.raises(ValueError, match="region_shape_pixels needs region_shape_encoder"):
        make_model("tiny-clip-llama", tokenizer, region_shape_pixels=True)
    with pytest.raises(ValueError, match="region_shape_context needs region_shape_pixels"):
        make_model("tiny-clip-llama", tokenizer, region_shape_encoder=True, region_shape_context=0.25)
    with pytest.raises(ValueError, match="region_shape_context must be >= 0"):
        make_model("tiny-clip-llama", tokenizer, region_shape_encoder=True, region_shape_pixels=True,
                   region_shape_context=-1.0)


def test_roi_box_pooling_of_whole_map_is_its_mean():
    from regiongpt.model.pooling import mask_pool, roi_box_pool

    maps = torch.randn(2, 5, 8, 8)
    whole = torch.tensor([[0.0, 0.0, 64.0, 64.0]])
    pooled = roi_box_pool(maps, whole, torch.tensor([1]), image_size=64, bins=8, samples_per_bin=1)
    torch.testing.assert_close(pooled[0], maps[1].mean(dim=(1, 2)), rtol=1e-5, atol=1e-5)
    # mask pooling with a full mask is the same mean
    full = torch.ones(1, 64, 64)
    torch.testing.assert_close(mask_pool(maps, full, torch.tensor([1]))[0], maps[1].mean(dim=(1, 2)))


def test_region_numbers_count_within_each_image_in_any_order():
    from regiongpt.model.region_number import RegionNumberEmbedding, number_code, region_numbers

    index = torch.tensor([0, 0, 1, 0, 1, 2])
    assert region_numbers(index).tolist() == [0, 1, 0, 2, 1, 0]
    codes = number_code(torch.arange(300))
    assert torch.cdist(codes, codes).add(torch.eye(300) * 1e3).min() > 1e-3  # every number has its own code
    embedding = RegionNumberEmbedding(8)
    assert embedding(index).abs().sum() == 0  # zero at initialisation


def _region_embeds_without_and_with(tokenizer, image, **marked_config):
    """Three regions' embeddings from a plain tiny model and from the same weights with
    ``marked_config``, and the marked model's input embedding table."""
    plain = make_model("tiny-clip-llama", tokenizer)
    marked = make_model("tiny-clip-llama", tokenizer, **marked_config)
    marked.load_state_dict(plain.state_dict())
    inputs = make_processor(plain, tokenizer)(images=image, text="<image>\n<region1> <region2> <region3>",
                                              regions=BOXES)
    with torch.no_grad():
        return plain(**inputs).region_embeds, marked(**inputs).region_embeds, marked.get_input_embeddings().weight


def test_region_number_tokens_mark_each_region_with_its_numbers_token(tokenizer, image):
    from regiongpt.model.region_number import number_token_marks

    base, out, table = _region_embeds_without_and_with(tokenizer, image, region_number_token_ids=[7, 8])
    torch.testing.assert_close(out[0] - base[0], table[7])
    torch.testing.assert_close(out[1] - base[1], table[8])
    torch.testing.assert_close(out[2], base[2])  # past the list: no mark
    marks = number_token_marks(torch.tensor([1, 0, 5]), [7, 8], torch.nn.Embedding.from_pretrained(table))
    assert torch.equal(marks[2], torch.zeros_like(marks[2])) and torch.equal(marks[0], table[8])
    with pytest.raises(ValueError, match="region_number_token_ids must be a list of token ids"):
        make_model("tiny-clip-llama", tokenizer, region_number_token_ids=["1"])


def test_region_number_mark_scale_sets_the_marks_length_from_the_region_embedding(tokenizer, image):
    """``region_number_mark_scale=s``: region k's mark is the number token's direction at s times the
    length of the region's embedding without it; regions past the list still get none."""
    base, out, table = _region_embeds_without_and_with(tokenizer, image, region_number_token_ids=[7, 8],
                                                      region_number_mark_scale=0.5)
    for k, token in enumerate([7, 8]):
        mark = out[k] - base[k]
        torch.testing.assert_close(mark.norm(), 0.5 * base[k].norm(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(mark / mark.norm(), table[token] / table[token].norm(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out[2], base[2])
    with pytest.raises(ValueError, match="region_number_mark_scale must be a number >= 0"):
        make_model("tiny-clip-llama", tokenizer, region_number_token_ids=[7], region_number_mark_scale=-1)


def test_image_label_marks_add_the_names_of_what_each_cell_sees(tokenizer, image):
    """Image tokens get sum_k max-prob_k x mean-embedding(name_k); the probabilities carry no gradient."""
    names = [[7], [8, 9]]
    plain = make_model("tiny-clip-llama", tokenizer)
    labelled = make_model("tiny-clip-llama", tokenizer, image_label_names=["star", "heart"], image_label_token_ids=names)
    labelled.model.vision_tower.load_state_dict(plain.model.vision_tower.state_dict())
    labelled.model.feature_refiner.load_state_dict(plain.model.feature_refiner.state_dict())
    labelled.model.connector.load_state_dict(plain.model.connector.state_dict())
    head = labelled.model.image_label_head
    with torch.no_grad():  # a head sure of "heart" everywhere
        head.head.weight.zero_()
        head.head.bias.copy_(torch.tensor([0.0, 30.0, 0.0]))
    processor = make_processor(plain, tokenizer)
    pixels = processor(images=image, text="<image>\nhi")["pixel_values"]
    base = plain.model.encode_images(pixels)
    out = labelled.model.encode_images(pixels)
    table = labelled.get_input_embeddings().weight
    star, heart = table[7], (table[8] + table[9]) / 2
    length = base.image_embeds.detach().norm(dim=-1, keepdim=True)  # a sure label is as long as the token
    expected = heart * length / ((star.norm() + heart.norm()) / 2)
    torch.testing.assert_close(out.image_embeds - base.image_embeds.detach(), expected, atol=1e-4, rtol=1e-4)
    assert out.image_label_logits.shape[1] == 3
    out.image_embeds.sum().backward()
    assert head.head.weight.grad is None or head.head.weight.grad.abs().sum() == 0  # marks are detached
    with pytest.raises(ValueError, match="image_label_token_ids must be a list"):
        make_model("tiny-clip-llama", tokenizer, image_label_token_ids=[[]])
    with pytest.raises(ValueError, match="image_label_names has 1 names"):
        make_model("tiny-clip-llama", tokenizer, image_label_names=["star"], image_label_token_ids=names)


def test_image_label_context_layers_let_a_cell_see_its_neighbours(tokenizer, image, tmp_path):
    """image_label_context_layers: dilated 3x3 convolutions before the per-cell classifier widen what a
    cell's label reads (1 + 2 * (1 + 2) = 7 cells across for two layers); 0 keeps the 1x1 head."""
    names = [[7], [8, 9]]
    model = make_model("tiny-clip-llama", tokenizer, image_label_names=["star", "heart"], image_label_token_ids=names,
                       image_label_context_layers=2)
    head = model.model.image_label_head
    assert [layer[0].dilation for layer in head.context] == [(1, 1), (2, 2)]
    maps = torch.zeros(1, model.config.vision_feature_dim, 12, 12, requires_grad=True)
    head(maps)[0, :, 6, 6].sum().backward()
    reached = maps.grad.abs().sum((0, 1)) > 0  # (12, 12): the cells cell (6, 6)'s logits read
    assert reached[6, 3] and reached[6, 9] and reached[3, 6] and not reached[6, 2] and not reached[6, 10]
    model.save_pretrained(tmp_path / "ctx")  # the convolutions travel with the checkpoint
    again = type(model).from_pretrained(tmp_path / "ctx")
    probe = torch.randn(1, model.config.vision_feature_dim, 12, 12)
    torch.testing.assert_close(again.model.image_label_head(probe), head(probe))
    plain = make_model("tiny-clip-llama", tokenizer, image_label_names=["star", "heart"], image_label_token_ids=names)
    assert len(plain.model.image_label_head.context) == 0
    assert set(plain.model.image_label_head.state_dict()) == {"head.weight", "head.bias"}  # older checkpoints load
    with pytest.raises(ValueError, match="image_label_context_layers must be an int >= 0"):
        make_model("tiny-clip-llama", tokenizer, image_label_token_ids=names, image_label_context_layers=-1)


def test_image_attribute_marks_add_the_value_names_each_cell_shows(tokenizer, image, tmp_path):
    """image_attribute_token_ids: one more per-cell classifier per field on the same context map; each
    image token gets the field's value names, weighted by their largest probability in its cells,
    on top of the category marks, each field rescaled on its own; the marks carry no gradient."""
    names, colours = [[7], [8, 9]], {"colour": [[10], [11], [12]]}
    categories_only = make_model("tiny-clip-llama", tokenizer, image_label_names=["star", "heart"],
                                 image_label_token_ids=names, image_label_context_layers=1)
    model = make_model("tiny-clip-llama", tokenizer, image_label_names=["star", "heart"], image_label_token_ids=names,
                       image_label_context_layers=1, image_attribute_names={"colour": ["red", "blue", "green"]},
                       image_attribute_token_ids=colours)
    state = {k: v for k, v in model.state_dict().items() if "attribute_heads" not in k}
    categories_only.load_state_dict(state)  # the same model but for the colour classifier
    head = model.model.image_label_head
    assert set(head.attribute_heads) == {"colour"} and head.attribute_heads["colour"].out_channels == 4
    with torch.no_grad():  # sure of "blue" in every cell, and of the background next
        head.attribute_heads["colour"].weight.zero_()
        head.attribute_heads["colour"].bias.copy_(torch.tensor([0.0, 30.0, 0.0, 0.0]))
    processor = make_processor(model, tokenizer)
    pixels = processor(images=image, text="<image>\nhi")["pixel_values"]
    out = model.model.encode_images(pixels)
    base = categories_only.model.encode_images(pixels)
    torch.testing.assert_close(out.image_label_logits, base.image_label_logits)
    assert set(out.image_attribute_logits) == {"colour"} and out.image_attribute_logits["colour"].shape[1] == 4
    table = model.get_input_embeddings().weight
    unmarked = model.model.connector(out.image_features)  # the tokens before any mark
    length = unmarked.detach().norm(dim=-1, keepdim=True)
    blue = table[11] * length / table[10:13].norm(dim=-1).mean()
    torch.testing.assert_close(out.image_embeds - base.image_embeds, blue, atol=1e-4, rtol=1e-4)
    out.image_embeds.sum().backward()
    grad = head.attribute_heads["colour"].weight.grad
    assert grad is None or grad.abs().sum() == 0  # marks are detached
    model.save_pretrained(tmp_path / "colour")  # the classifier and its names travel with the checkpoint
    again = type(model).from_pretrained(tmp_path / "colour")
    assert again.config.image_attribute_names == {"colour": ["red", "blue", "green"]}
    with torch.no_grad():
        torch.testing.assert_close(again.model.encode_images(pixels).image_embeds, out.image_embeds)
    with pytest.raises(ValueError, match="image_attribute_token_ids needs image_label_token_ids"):
        make_model("tiny-clip-llama", tokenizer, image_attribute_token_ids=colours)
    with pytest.raises(ValueError, match=r"image_attribute_names\['colour'\] has 1 names"):
        make_model("tiny-clip-llama", tokenizer, image_label_token_ids=names, image_attribute_token_ids=colours,
                   image_attribute_names={"colour": ["red"]})


def test_region_label_marks_add_the_names_of_what_the_region_head_predicts(tokenizer, image):
    """Region tokens get, per field, softmax(head(pooled)) @ mean-embedding(names), each field rescaled to the
    token's length over sqrt(fields); the probabilities carry no gradient."""
    ids = {"colour": [[7], [8, 9]], "category": [[10], [11], [12]]}
    names = {"colour": ["red", "blue"], "category": ["star", "heart", "ring"]}
    plain = make_model("tiny-clip-llama", tokenizer)
    labelled = make_model("tiny-clip-llama", tokenizer, region_label_names=names, region_label_token_ids=ids)
    missing = labelled.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("model.region_label_head.") for k in missing)
    head = labelled.model.region_label_head
    with torch.no_grad():  # a head sure of "blue" and of "ring" for every region
        for field, sure in (("colour", 1), ("category", 2)):
            head.heads[field].weight.zero_()
            head.heads[field].bias.zero_()
            head.heads[field].bias[sure] = 30.0
    processor = make_processor(plain, tokenizer)
    inputs = processor(images=image, text="<image>\n<region1> <region2>", regions=BOXES[:2])
    base = plain(**inputs).region_embeds.detach()
    out = labelled(**inputs).region_embeds
    table = labelled.get_input_embeddings().weight.detach()
    name_vectors = [table[7], (table[8] + table[9]) / 2, table[10], table[11], table[12]]
    mean_norm = torch.stack([v.norm() for v in name_vectors]).mean()
    expected = (name_vectors[1] + name_vectors[4]) * base.norm(dim=-1, keepdim=True) / (mean_norm * 2**0.5)
    torch.testing.assert_close(out.detach() - base, expected, atol=1e-4, rtol=1e-4)
    out.sum().backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in head.parameters())  # marks are detached
    with pytest.raises(ValueError, match="region_label_token_ids must map each field"):
        make_model("tiny-clip-llama", tokenizer, region_label_token_ids={"colour": [[7]]})
    with pytest.raises(ValueError, match=r"region_label_names\['colour'\] has 1 names"):
        make_model("tiny-clip-llama", tokenizer, region_label_names={"colour": ["red"], "category": names["category"]},
                   region_label_token_ids=ids)
    with pytest.raises(ValueError, match="must name the same fields"):
        make_model("tiny-clip-llama", tokenizer, region_label_names={"colour": ["red", "blue"]},
                   region_label_token_ids=ids)


@pytest.mark.parametrize("overrides, expected", [
    (dict(imag_size=64), r"unknown field 'imag_size' in RegionGPTConfig overrides; did you mean 'image_size'\?"),
    (dict(text_overrides={"hiden_size": 8}), r"'hiden_size' in text_overrides \(llama config\); did you mean 'hidden_size'"),
    (dict(vision_overrides={"embedding_size:32": None}), r"YAML needs a space after each colon"),
])
def test_preset_overrides_with_unknown_fields_are_refused(overrides, expected):
    from regiongpt.model import build_config

    with pytest.raises(ValueError, match=expected):
        build_config("tiny-resnet-llama", **overrides)
    assert build_config("tiny-resnet-llama", image_size=96, vision_overrides={"depths": [2, 1]}).vision_config.depths == [2, 1]
