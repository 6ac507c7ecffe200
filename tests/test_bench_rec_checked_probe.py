"""bench/rec_checked_probe.py: scores every check of every checked REC answer, teacher-forced."""

from __future__ import annotations

import torch
from conftest import load_bench_script

from regiongpt import RegionGPT
from regiongpt.data.native import read_native_jsonl
from regiongpt.data.synth.writers import write_world


def test_every_check_is_scored_once(tiny, tmp_path):
    world = tmp_path / "world"
    write_world(world, images=4, seed=1, val_fraction=0.5, progress=False, rec_answers="checked")
    samples = list(read_native_jsonl(world / "native" / "val.jsonl"))
    answers = [a["value"] for s in samples for h, a in zip(s.conversations[0::2], s.conversations[1::2])
               if h["task"] == "rec"]
    probe = load_bench_script("rec_checked_probe")
    result = probe.checked_answer_accuracy(RegionGPT(*tiny), samples)
    assert result["counts"]["yes"] == sum(a.count(", yes.") for a in answers)
    assert result["counts"]["no"] == sum(a.count(", no.") for a in answers)
    assert result["counts"]["yes"] + result["counts"]["no"] > 0 and result["counts"]["other_tokens"] > 0
    assert all(0.0 <= result[k] <= 1.0 for k in ("other_tokens",) if result[k] is not None)


def test_runs_start_where_labels_start():
    labels = torch.tensor([-100, 5, 6, -100, -100, 7, -100, 8])
    assert load_bench_script("rec_checked_probe").first_tokens_of_runs(labels) == [1, 5, 7]
