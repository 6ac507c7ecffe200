"""bench/region_path_probe.py: pretrains the region path of a config and reports per-tag probes."""

from __future__ import annotations

import sys

from conftest import load_bench_script

from regiongpt.data.synth.writers import write_world


def test_probe_runs_on_a_small_world_and_reports_every_label(tmp_path, monkeypatch, capsys):
    world = tmp_path / "world"
    write_world(world, images=8, seed=3, val_fraction=0.25, progress=False)
    monkeypatch.setattr(sys, "argv", ["region_path_probe.py", "--world", str(world), "--steps", "2",
                                      "--probe-images", "6", "--val-images", "2",
                                      "model.overrides.region_shape_size=8", "model.tokenizer_vocab_size=300"])
    load_bench_script("region_path_probe").main()
    out = capsys.readouterr().out
    assert "overrides: model.overrides.region_shape_size=8" in out and "region pretraining: 2 steps" in out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ") and "---" not in line}
    assert set(rows) == {"label", "category", "colour", "texture", "size"}
    for name in ("category", "colour", "texture", "size"):
        overall = float(rows[name].split("|")[2])
        assert 0.0 <= overall <= 1.0
