"""The tiny two-stage recipe trains on CPU through the CLI, reading COCO and refer-layout sources."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from regiongpt.cli.main import main
from regiongpt.data.synth import write_world

REPO = Path(__file__).resolve().parents[1]


def test_tiny_stage1_then_stage2_from_its_checkpoint(tmp_path, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        (tmp_path / "configs").mkdir()
        for name in ("tiny-stage1.yaml", "tiny-stage2.yaml"):
            shutil.copy(REPO / "configs" / name, tmp_path / "configs" / name)
        write_world(tmp_path / "demo_world", images=6, seed=0, width=64, height=64, val_fraction=0.34, progress=False)
        fast = ["train.max_steps=2", "checkpoint.every_steps=2", "train.progress=false", "data.max_length=256",
                "optim.grad_accum=1"]
        stage1 = tmp_path / "configs" / "tiny-stage1.yaml"
        assert main(["train", str(stage1), *fast]) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        checkpoint = tmp_path / "runs" / "tiny-stage1" / "ckpt-000002"
        assert summary["step"] == 2 and Path(summary["checkpoint"]) == checkpoint
        assert "val/loss" in summary  # evaluated on the COCO val split
        log = [json.loads(line) for line in (tmp_path / "runs" / "tiny-stage1" / "samples.jsonl").read_text().splitlines()]
        assert any(s.startswith("coco-") for s in log[0]["sequences"] + log[1]["sequences"])
        stage2 = tmp_path / "configs" / "tiny-stage2.yaml"
        assert main(["train", str(stage2), *fast, "train.max_steps=1", f"model.pretrained={checkpoint}"]) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["step"] == 1 and "val/loss" in summary
    finally:
        torch.set_num_threads(threads)
