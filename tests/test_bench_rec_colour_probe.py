"""bench/rec_colour_probe.py: where a REC phrase's colour and the candidates' colours are, and
whether the lookup head follows the colour word, teacher-forced."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import load_bench_script

from regiongpt import RegionGPT
from regiongpt.data.native import read_native_jsonl
from regiongpt.data.synth.world import COLOUR_NAMES
from regiongpt.data.synth.writers import write_world
from regiongpt.processing.instructions import parse_rec_answer


def test_linear_accuracy_reads_what_is_there_and_nothing_else():
    probe = load_bench_script("rec_colour_probe")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(400, 16, generator=generator)
    y = x[:, :4].argmax(1)  # 4 classes, linearly separable
    assert probe.linear_accuracy(x[:200], y[:200], x[200:], y[200:], 4) > 0.8
    shuffled = y[torch.randperm(400, generator=generator)]
    assert probe.linear_accuracy(x[:200], shuffled[:200], x[200:], shuffled[200:], 4) < 0.5


def test_colour_phrases_among_one_category_are_counted(tmp_path):
    world = tmp_path / "world"
    write_world(world, images=30, seed=4, val_fraction=0.5, progress=False, rec_phrases="referring")
    samples = list(read_native_jsonl(world / "native" / "val.jsonl"))
    expected = 0
    for s in samples:
        for human, answer in zip(s.conversations[0::2], s.conversations[1::2]):
            k = parse_rec_answer(answer["value"]) if human.get("task") == "rec" else None
            if k is None:
                continue
            target = s.regions[k]
            phrase = re.search(r"'([^']*)'", human["value"]).group(1).split()
            shared = any(r.category == target.category for j, r in enumerate(s.regions) if j != k)
            expected += int(target.attributes["colour"] in phrase and shared)
    result = load_bench_script("rec_colour_probe").colour_lookup(RegionGPT.load(), samples, list(COLOUR_NAMES))
    split = result["colour_distractor"]
    assert split["count"] == expected > 0
    assert split["target"] + split["same_category"] + split["other"] == pytest.approx(1.0, abs=1e-4)
    assert 0 < result["colour_swapped"]["count"] <= expected
    assert result["regions"] > 0 and 0.0 <= result["region_colour_decodable"] <= 1.0
