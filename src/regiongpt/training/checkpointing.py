"""Checkpoint folders in a run folder: atomic writes, retention, discovery, training state, RNG.

Layout of one checkpoint, ``RUN/ckpt-000500/``::

    config.json, model.safetensors, *.py          save_pretrained (loads with AutoModelForImageTextToText)
    processor / tokenizer / image processor files  save_pretrained (loads with AutoProcessor)
    training_state.pt                              optimiser, scheduler, step, data position, RNG states
    dcp/                                           (fsdp runs) model + optimiser shards, torch.distributed.checkpoint;
                                                   the optimiser is then here, not in training_state.pt
    training_config.yaml                           the run's resolved training config
    lora_state.safetensors                         (LoRA runs) unmerged base weights + adapters

A checkpoint is written to ``ckpt-XXXXXX.tmp/`` and renamed into place, so a folder named
``ckpt-XXXXXX`` is always complete; a ``.tmp`` leftover from a killed run is removed.
``training_state.pt`` holds only tensors and plain containers and is read with
``torch.load(..., weights_only=True)`` (never unrestricted pickle).
"""

from __future__ import annotations

import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_NAME = re.compile(r"^ckpt-(\d+)$")
STATE_FILE = "training_state.pt"
CONFIG_FILE = "training_config.yaml"
LORA_FILE = "lora_state.safetensors"


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"ckpt-{step:06d}"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run folder, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for child in run_dir.iterdir():
        match = CHECKPOINT_NAME.match(child.name)
        if match and child.is_dir() and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def remove_partial_checkpoints(run_dir: Path) -> list[Path]:
    """Delete ``ckpt-*.tmp`` folders (a run killed while saving); returns what was removed."""
    run_dir = Path(run_dir)
    removed = []
    if run_dir.is_dir():
        for child in run_dir.glob("ckpt-*.tmp"):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run folder, or None."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(run_dir: Path, step: int, write: Callable[[Path], None], keep_last: int) -> Path:
    """Write a checkpoint atomically with ``write(folder)`` and keep the newest ``keep_last``.

    ``write`` fills a temporary folder; it is synced to disk and renamed to ``ckpt-XXXXXX``.
    """
    tmp = begin_checkpoint(run_dir, step)
    write(tmp)
    return commit_checkpoint(run_dir, step, keep_last)


def temporary_path(run_dir: Path, step: int) -> Path:
    """Where checkpoint ``step`` is written before it is renamed into place."""
    final = checkpoint_path(run_dir, step)
    return final.with_name(final.name + ".tmp")


def begin_checkpoint(run_dir: Path, step: int) -> Path:
    """An empty ``ckpt-XXXXXX.tmp/`` to write checkpoint ``step`` into (distributed runs: rank 0
    creates it, every rank writes its shards, rank 0 commits after a barrier)."""
    tmp = temporary_path(run_dir, step)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit_checkpoint(run_dir: Path, step: int, keep_last: int) -> Path:
    """Sync the written ``.tmp`` folder, rename it to ``ckpt-XXXXXX`` and apply retention."""
    final = checkpoint_path(run_dir, step)
    tmp = temporary_path(run_dir, step)
    if not (tmp / STATE_FILE).is_file():
        raise RuntimeError(f"a checkpoint must contain {STATE_FILE}")
    _fsync_tree(tmp)
    if final.exists():  # re-saving a step (e.g. after resuming from it)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(Path(run_dir))
    for _, old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    torch.save(state, path)


def load_training_state(path: Path) -> dict[str, Any]:
    """Read ``training_state.pt`` with ``weights_only=True`` (tensors and plain containers only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


# ----- RNG ---------------------------------------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    """RNG states of torch (CPU and CUDA), numpy and Python as tensors and plain values."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_version, "internal": torch.tensor(py_internal, dtype=torch.int64),
                   "gauss_next": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


__all__ = [
    "CONFIG_FILE", "LORA_FILE", "STATE_FILE", "begin_checkpoint", "capture_rng_state", "checkpoint_path",
    "commit_checkpoint", "latest_checkpoint", "temporary_path",
    "list_checkpoints", "load_training_state", "remove_partial_checkpoints", "restore_rng_state",
    "save_checkpoint", "save_training_state",
]
