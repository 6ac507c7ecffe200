"""Every config in configs/ loads and validates; data sources in configs (mapping form, paths, strict)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from regiongpt.data.synth import write_world
from regiongpt.errors import InvalidInputError
from regiongpt.training.config import SourceConfig, load_config
from regiongpt.training.data import load_samples, resolve_source

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
PLACEHOLDER_CONFIGS = {"regiongpt-7b-stage1.yaml", "regiongpt-7b-stage2.yaml", "regiongpt-7b-stage2-lora.yaml"}


def _sources(config):
    return [*config.data.train, *config.data.val]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads_and_validates(path, tmp_path):
    config = load_config(path)
    if path.name in PLACEHOLDER_CONFIGS:  # structure only: the paths are placeholders the user overrides
        assert config.model.pretrained and config.train.dtype == "bf16" and config.data.max_length == 2048
        for spec in _sources(config):
            resolve_source(spec, check_exists=False)
        return
    # Other configs must work as shipped: copy the file to an empty tree, write the synthetic world
    # where it expects one, and read every source for real.
    (tmp_path / "configs").mkdir()
    copy = tmp_path / "configs" / path.name
    shutil.copy(path, copy)
    config = load_config(copy)
    worlds = set()
    for spec in _sources(config):
        source = resolve_source(spec, check_exists=False)
        folder = source.path if source.reader == "refcoco" else source.path.parent
        worlds.add(folder.parent if folder.name == "native" else folder)
    for world in worlds:
        assert tmp_path in world.parents, f"{path.name}: data outside the config's tree: {world}"
        if not (world / "instances.json").exists():
            write_world(world, images=4, seed=0, width=64, height=64, val_fraction=0.5, progress=False)
    assert load_samples(config.data.train) and (not config.data.val or load_samples(config.data.val))


def test_paper_hyper_parameters():
    s1, s2, lora = (load_config(REPO / "configs" / f"regiongpt-7b-{n}.yaml") for n in ("stage1", "stage2", "stage2-lora"))
    assert (s1.optim.lr, s1.data.batch_size * s1.optim.grad_accum, s1.train.epochs) == (1e-3, 256, 1)
    assert s1.train.trainable == ["feature_refiner", "connector"] and s1.train.lora is None
    assert (s2.optim.lr, s2.data.batch_size * s2.optim.grad_accum, s2.train.epochs) == (2e-5, 128, 1)
    assert s2.train.trainable == ["feature_refiner", "connector", "language_model"]
    assert (lora.train.lora.r, lora.train.lora.alpha, lora.optim.lr) == (128, 256, 2e-4)
    readers = {resolve_source(s, check_exists=False).reader for s in s2.data.train}
    assert readers == {"coco", "refcoco", "vg", "llava"}


def test_source_mappings_in_configs(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  train:\n    - {source: 'refcoco:refer:refcocog:umd', images: imgs, split: train, weight: 2}\n"
                    "    - coco:a/instances.json\n  strict: true\ntrain: {max_steps: 1}\n")
    config = load_config(path)
    first, second = config.data.train
    assert first == SourceConfig(source=f"refcoco:{tmp_path}/refer:refcocog:umd", images=str(tmp_path / "imgs"),
                                 split="train", weight=2.0, strict=True)  # paths relative to the file; data.strict
    assert second == SourceConfig(source=f"coco:{tmp_path}/a/instances.json", strict=True)
    source = resolve_source(first, check_exists=False)
    assert (source.reader, source.path, source.dataset, source.split_by, source.split) == (
        "refcoco", tmp_path / "refer", "refcocog", "umd", ("train",))
    with pytest.raises(InvalidInputError, match=r"'data.train\[0\].wieght'; did you mean 'data.train\[0\].weight'"):
        load_config(path, ["data.train=[{source: 'coco:x.json', wieght: 2}]"])
    with pytest.raises(InvalidInputError, match=r"'data.train\[0\]'.*unknown reader 'cocoo'; did you mean 'coco'"):
        load_config(path, ["data.train=[cocoo:x.json]"])
    with pytest.raises(InvalidInputError, match="weight must be > 0"):
        load_config(path, ["data.train=[{source: 'coco:x.json', weight: 0}]"])
