"""Sharded evaluation: `regiongpt eval synth` on the built-in model under torchrun (2 gloo
processes on this CPU) gives the one-process run's metrics and predictions, and runs of any
process count resume each other's saved predictions, asking only for the missing ones."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from regiongpt.cli.eval import _rank_device
from regiongpt.cli.main import main
from regiongpt.data.synth import write_world
from regiongpt.errors import InvalidInputError
from regiongpt.evaluation.runner import RANK_FILE, read_predictions, rank_files
from regiongpt.evaluation.synth_suite import SynthSuite


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    write_world(out, images=8, seed=3, val_fraction=0.5, progress=False)  # 4 val images
    return out


def _args(world: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "synth", "--data", str(world), "--out", str(out), "--no-semantic", "--quiet", *extra]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(world: Path, out: Path, *extra: str, nproc: int = 2) -> subprocess.CompletedProcess:
    """`regiongpt eval synth` (built-in model) on ``nproc`` gloo processes."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
               "127.0.0.1", "--master_port", str(_free_port()), "-m", "regiongpt.cli.main", *_args(world, out, *extra)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory) -> Path:
    """One process (this one): the run the sharded ones must reproduce."""
    out = tmp_path_factory.mktemp("one")
    assert main(_args(world, out)) == 0
    return out


def test_two_processes_give_the_one_process_results(world, reference, tmp_path):
    out = tmp_path / "two"
    done = torchrun(world, out)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    got, want = results(out), results(reference)
    assert got["metrics"] == want["metrics"] and got["table"] == want["table"]
    assert read_predictions(out / "predictions.jsonl") == read_predictions(reference / "predictions.jsonl")
    assert got["processes"] == 2 and want["processes"] == 1
    shards = got["shards"]
    assert [s["rank"] for s in shards] == [0, 1] and all(s["device"] == "cpu" and s["queries_run"] for s in shards)
    assert sum(s["queries_run"] for s in shards) == got["timing"]["queries_run"] == want["timing"]["queries_total"]
    assert not rank_files(out) and (out / "run.json").read_text() == (reference / "run.json").read_text()
    assert done.stdout.count("report:") == 1  # rank 0 alone prints the table


def _write(path: Path, records: list[dict], torn: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + torn)


def test_runs_of_any_process_count_resume_each_other(world, reference, tmp_path):
    """1 process interrupted, then 3 interrupted, resumed by 2; then 2 interrupted, resumed by 1."""
    records = read_predictions(reference / "predictions.jsonl")
    jobs = SynthSuite(world, semantic=False).jobs()
    job_of = {q.id: i for i, job in enumerate(jobs) for q in job.queries}
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(reference / "run.json", out / "run.json")
    marked = dict(records[0], prediction="SAVED EARLIER")  # a saved answer is reused, never asked again
    _write(out / "predictions.jsonl", [marked] + records[1:5])  # the 1-process run stopped here
    later = records[5:]
    for rank in range(3):  # a 3-process run dealt out the rest and stopped before finishing
        share = [r for r in later if job_of[r["query_id"]] % 3 == rank]
        _write(out / RANK_FILE.format(rank=rank), share[:-2], torn=json.dumps(share[-2])[:20])
    missing = 3 * 2

    done = torchrun(world, out)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    got = results(out)
    assert got["timing"]["queries_run"] == missing and sum(s["queries_run"] for s in got["shards"]) == missing
    assert all(s["queries_run"] for s in got["shards"])  # the missing jobs were dealt to both ranks
    merged = read_predictions(out / "predictions.jsonl")
    assert merged == [marked] + records[1:] and not rank_files(out)

    # a 2-process run stopped with queries missing on both ranks; one process finishes it
    (out / "predictions.jsonl").unlink()
    for rank in range(2):
        share = [r for r in merged if job_of[r["query_id"]] % 2 == rank]
        _write(out / RANK_FILE.format(rank=rank), share[:-1])
    assert main(_args(world, out)) == 0
    got = results(out)
    assert got["timing"]["queries_run"] == 2 and got["processes"] == 1 and "shards" not in got
    assert read_predictions(out / "predictions.jsonl") == merged and not rank_files(out)
    assert got["timing"]["queries_total"] == len(records)


def test_a_folder_holding_only_rank_files_is_not_taken_for_a_run(world, tmp_path):
    out = tmp_path / "stray"
    out.mkdir()
    (out / RANK_FILE.format(rank=1)).write_text('{"query_id": "x"}\n')
    with pytest.raises(InvalidInputError, match="predictions.rank1.jsonl exists"):
        from regiongpt.evaluation.runner import run_evaluation

        run_evaluation(SynthSuite(world, semantic=False), object(), out, progress=False)
    assert main(_args(world, out, "--overwrite", "--limit", "1")) == 0 and not rank_files(out)


def test_each_process_gets_its_own_device(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _rank_device(None, 1) == "cpu" and _rank_device("cpu", 1) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert _rank_device(None, 1) == "cuda:1" and _rank_device("cuda", 0) == "cuda:0"
    with pytest.raises(InvalidInputError, match="every process on one GPU"):
        _rank_device("cuda:0", 1)
    with pytest.raises(InvalidInputError, match="no GPU"):
        _rank_device("cuda", 2)


def test_a_refused_folder_stops_every_process_with_one_line(world, reference, tmp_path):
    """Rank 0 finds a run with other settings: both ranks exit with its one-line error, no hang."""
    out = tmp_path / "other"
    shutil.copytree(reference, out)
    done = torchrun(world, out, "--split", "all")
    assert done.returncode != 0
    assert "regiongpt eval: error:" in done.stderr and "different settings" in done.stderr
