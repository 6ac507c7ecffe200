"""bench/shape_probe.py: the vision path alone on a dense or image-level target, and frozen-feature probes."""

from __future__ import annotations

import re

from conftest import load_bench_script

from regiongpt.data.synth.writers import write_world


def _rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| step") and not line.startswith("| frozen")]


def test_train_and_probe_report_accuracies(model_dir, tmp_path, capsys):
    world = tmp_path / "world"
    write_world(world, images=6, seed=3, width=64, height=64, val_fraction=0.5, progress=False)
    probe = load_bench_script("shape_probe")
    for target in ("segmentation", "presence"):
        assert probe.main(["train", "--world", str(world), "--target", target, "--steps", "2", "--batch", "2",
                           "--every", "1"]) == 0
        rows = _rows(capsys.readouterr().out)
        assert [r[0] for r in rows] == ["1", "2"]
        for row in rows:
            yes_no = float(row[3])
            assert 0.0 <= yes_no <= 1.0
            assert (row[2] == "nan") == (target == "presence")  # region accuracy needs the segmentation head
    assert probe.main(["probe", str(model_dir), "--world", str(world), "--train-images", "3"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert len(rows) == 2 and all(re.fullmatch(r"0\.\d{3}|1\.000", r[1]) for r in rows)
