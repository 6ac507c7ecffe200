"""bench/rec_pointer_probe.py: scores each direct REC answer's number, teacher-forced."""

from __future__ import annotations

from conftest import load_bench_script

from regiongpt import RegionGPT
from regiongpt.data.native import read_native_jsonl
from regiongpt.data.synth.writers import write_world
from regiongpt.processing.instructions import parse_rec_answer


def test_every_named_region_is_scored_once(tiny, tmp_path):
    world = tmp_path / "world"
    write_world(world, images=4, seed=1, val_fraction=0.5, progress=False)
    samples = list(read_native_jsonl(world / "native" / "val.jsonl"))
    named = [a["value"] for s in samples for h, a in zip(s.conversations[0::2], s.conversations[1::2])
             if h["task"] == "rec" and parse_rec_answer(a["value"]) is not None]
    result = load_bench_script("rec_pointer_probe").pointer_accuracy(RegionGPT(*tiny), samples)
    assert result["count"] == len(named) > 0  # fewer than ten regions: one digit each
    assert all(0.0 <= result[k] <= 1.0 for k in ("head", "number", "number_follows_head"))
