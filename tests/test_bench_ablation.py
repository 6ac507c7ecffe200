"""The ablation script's variants are valid configs whose models differ as named."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import load_bench_script

from regiongpt.training.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def _ablation():
    return load_bench_script("ablation")


@pytest.mark.parametrize("name", list(_ablation().VARIANTS))
def test_each_variant_is_a_valid_config_changing_one_thing(name):
    overrides = _ablation().VARIANTS[name][1]
    base = load_config(ROOT / "configs" / "demo.yaml")
    config = load_config(ROOT / "configs" / "demo.yaml", overrides)
    changed = {k for k in set(base.model.overrides) | set(config.model.overrides)
               if base.model.overrides.get(k) != config.model.overrides.get(k)}
    changed |= {"task_suffix"} if base.model.task_suffix != config.model.task_suffix else set()
    assert len(changed) == (0 if name == "full" else 1)
    assert (base.train, base.data, base.optim) == (config.train, config.data, config.optim)  # same budget
