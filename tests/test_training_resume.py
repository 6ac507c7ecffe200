"""Resuming is exact: a run killed with SIGKILL and restarted with the same command consumes
the same samples and ends with the same weights as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from regiongpt.data.synth import write_world
from regiongpt.training.config import load_config
from regiongpt.training.recipe import TrainingRecipe

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models train faster on one thread, and 2-core CI shares its cores between test workers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    write_world(out, images=12, seed=0, width=64, height=64, val_fraction=0.2, progress=False)
    return out


def _overrides(world: Path, run_dir: Path, steps: int) -> list[str]:
    return [f"data.train=native:{world}/native/train.jsonl", f"data.val=native:{world}/native/val.jsonl",
            f"train.output_dir={run_dir}", f"train.max_steps={steps}", "checkpoint.every_steps=3",
            "checkpoint.keep_last=2", "eval.every_steps=0", "data.max_length=160",
            "data.tasks=[classify, brief, existence]", "data.task_schedule=[{until_step: 2, tasks: [classify]}]",
            "train.progress=false"]


def _consumed(run_dir: Path) -> list[tuple[int, list[str]]]:
    lines = (run_dir / "samples.jsonl").read_text().splitlines()
    return [(r["step"], r["sequences"]) for r in map(json.loads, lines)]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert (wa[key] - wb[key]).abs().max() <= 1e-6, key


def test_kill_9_and_restart_equals_uninterrupted_run(world, tmp_path):
    steps = 9
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}

    def command(run_dir: Path) -> list[str]:
        return [sys.executable, "-m", "regiongpt.cli.main", "train", str(TINY), *_overrides(world, run_dir, steps)]

    done = subprocess.run(command(run_a), env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["step"] == steps

    # Run B: kill -9 as soon as its first checkpoint is complete, well before it finishes.
    process = subprocess.Popen(command(run_b), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while not (run_b / "ckpt-000003" / "training_state.pt").exists():
            assert process.poll() is None, "run B ended before writing a checkpoint"
            assert time.monotonic() < deadline, "run B wrote no checkpoint in time"
            time.sleep(0.01)
        assert process.poll() is None, "run B finished before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    assert not (run_b / f"ckpt-{steps:06d}").exists(), "run B was killed too late to prove anything"
    consumed_before = _consumed(run_b)
    assert consumed_before and max(step for step, _ in consumed_before) < steps

    done = subprocess.run(command(run_b), env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]

    assert _consumed(run_b) == _consumed(run_a)
    assert [step for step, _ in _consumed(run_a)] == list(range(1, steps + 1))
    _assert_same_weights(run_a / f"ckpt-{steps:06d}", run_b / f"ckpt-{steps:06d}")
    assert not list(run_b.glob("*.tmp"))
    # metrics of the replayed steps appear once
    train_steps = [r["step"] for r in map(json.loads, (run_b / "metrics.jsonl").read_text().splitlines())
                   if r["split"] == "train"]
    assert train_steps == list(range(1, steps + 1))


def test_in_process_resume_after_interruption_with_partial_checkpoint(world, tmp_path):
    """The same property without subprocesses: stop after step 4 (checkpoint at 3), leave a
    half-written checkpoint behind, and resume."""
    steps = 6
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    recipe = TrainingRecipe(load_config(TINY, _overrides(world, run_a, steps)))
    recipe.setup()
    recipe.train()

    recipe = TrainingRecipe(load_config(TINY, _overrides(world, run_b, steps)))
    recipe.setup()
    recipe.train(stop_after=4)
    assert [p.name for p in sorted(run_b.glob("ckpt-*"))] == ["ckpt-000003"]
    (run_b / "ckpt-000006.tmp").mkdir()  # a save that was interrupted
    (run_b / "ckpt-000006.tmp" / "model.safetensors").write_bytes(b"partial")

    with pytest.warns(UserWarning, match="incomplete checkpoint"):
        recipe = TrainingRecipe(load_config(TINY, _overrides(world, run_b, steps)))
        recipe.setup()
    assert recipe.step == 3 and recipe.micro_batches == 3 * recipe.config.optim.grad_accum
    assert not (run_b / "ckpt-000006.tmp").exists()
    recipe.train()

    assert _consumed(run_b) == _consumed(run_a)
    _assert_same_weights(run_a / "ckpt-000006", run_b / "ckpt-000006")
