"""bench/phrase_attention_probe.py: which of a REC phrase's words the phrase head gathers, teacher-forced."""

from __future__ import annotations

import re

from conftest import load_bench_script

from regiongpt import RegionGPT
from regiongpt.data.native import read_native_jsonl
from regiongpt.data.synth.writers import write_world


def test_every_rec_phrase_with_attributes_is_read_per_field(tmp_path):
    world = tmp_path / "world"
    write_world(world, images=8, seed=3, val_fraction=0.5, progress=False, rec_phrases="referring")
    samples = list(read_native_jsonl(world / "native" / "val.jsonl"))
    api = RegionGPT.load()  # the built-in model: it has region label fields
    fields = api.model.config.region_label_names
    attribute_words = {name for field, names in fields.items() if field != "category" for name in names}
    phrases = [re.search(r"'([^']*)'", h["value"]).group(1) for s in samples
               for h in s.conversations[0::2] if h.get("task") == "rec"]
    expected = sum(bool(set(p.split()) & attribute_words) for p in phrases)
    shares, count = load_bench_script("phrase_attention_probe").phrase_attention(api, samples)
    assert count == expected > 0
    assert set(shares) == set(fields)
    assert all(0.0 <= v <= 1.0 for v in shares.values()) and sum(shares.values()) <= 1.0 + 1e-5
