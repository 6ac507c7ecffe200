"""bench/existence_attention_probe.py: where each head looks when it writes a yes/no answer, teacher-forced."""

from __future__ import annotations

import math

from conftest import load_bench_script

from regiongpt import RegionGPT
from regiongpt.data.native import read_native_jsonl
from regiongpt.data.synth.writers import write_world


def test_every_yes_no_answer_is_read_by_every_head(tiny, tmp_path):
    world = tmp_path / "world"
    write_world(world, images=4, seed=1, val_fraction=0.5, progress=False)
    samples = list(read_native_jsonl(world / "native" / "val.jsonl"))
    answers = [a for s in samples for h, a in zip(s.conversations[0::2], s.conversations[1::2])
               if h["task"] == "existence"]
    model, processor = tiny
    result = load_bench_script("existence_attention_probe").existence_attention(RegionGPT(model, processor), samples)
    heads = model.config.text_config.num_attention_heads
    assert len(result["yes"]) == len(result["no"]) == heads
    assert result["yes"][0]["count"] == sum(bool(a["evidence"]) for a in answers) > 0
    assert result["no"][0]["count"] == sum(not a["evidence"] for a in answers) > 0
    for row in result["yes"]:  # the asked cells are image tokens; attention sums to at most 1
        assert 0.0 <= row["asked"] <= row["image"] <= 1.0 and 0.0 <= row["first"] + row["image"] <= 1.0 + 1e-5
    assert all(math.isnan(row["asked"]) for row in result["no"])
