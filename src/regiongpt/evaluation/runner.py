"""The evaluation loop shared by every benchmark: queries grouped by image, batched over
images, predictions appended to ``predictions.jsonl`` as they come, resume, scoring, report.

A benchmark (:class:`Benchmark`) turns its data into :class:`ImageJob` s (an image and the
queries about it), answers a batch of jobs with the model (every query of an image in the
same engine batch, several images per call), and scores the saved records. Scores are always
computed from ``predictions.jsonl`` — the records of this run and of any earlier,
interrupted run with the same settings — so a resumed run reports what an uninterrupted one
would.

Sharded runs (``torchrun --nproc_per_node N ... eval``; :class:`Shard`): rank 0 checks the
folder and reads what is saved; the jobs with queries left are dealt out round-robin (the
i-th to rank ``i % N``); each rank loads its own model and appends to its own
``predictions.rank{r}.jsonl``; after the last rank is done, rank 0 merges every file into
``predictions.jsonl`` in the benchmark's job order and scores it as one process would. Any
run, of any process count, reuses the records of all these files.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from regiongpt.errors import USER_ERRORS, InvalidInputError

PREDICTIONS_FILE = "predictions.jsonl"
RANK_FILE = "predictions.rank{rank}.jsonl"  # one per process of a sharded run; merged at its end
RUN_FILE = "run.json"
# How long a rank waits for the others in a collective: at the end it waits for the slowest
# shard, which on a long benchmark (or a resumed one) can take hours.
SHARD_TIMEOUT = datetime.timedelta(hours=24)


@dataclass
class Query:
    """One question the benchmark asks. ``id`` is unique in the run (the resume key);
    ``record`` holds the ids (and cheap ground truth) saved beside the prediction;
    ``payload`` is what the model needs (a region, a phrase, a candidate order), not saved."""

    id: str
    record: dict[str, Any]
    payload: Any = None


@dataclass
class ImageJob:
    """An image with the queries about it; ``context`` is shared by its queries (e.g. REC candidates)."""

    image: Path
    queries: list[Query]
    context: Any = None


@dataclass
class Scores:
    """A benchmark's metrics (fractions; nested by split / variant / tag) and the report's table rows."""

    metrics: dict[str, Any]
    rows: list[tuple[str, str, float | int | None]] = field(default_factory=list)  # (group, metric, value)
    plots: dict[str, Any] = field(default_factory=dict)  # plot name -> data for report.plot_*


class Benchmark(ABC):
    """One evaluation protocol (see each module's docstring, which is copied into the report)."""

    task: str = ""

    @property
    def protocol(self) -> str:
        """The protocol text for the report: the module docstring."""
        module = sys.modules[type(self).__module__]
        return (module.__doc__ or "").strip()

    def preflight(self) -> None:
        """Checks that need no model (e.g. Java for captioning); raise InvalidInputError."""

    @abstractmethod
    def jobs(self, limit: int | None = None) -> list[ImageJob]:
        """All jobs, in a fixed order; ``limit`` keeps the first N images."""

    @abstractmethod
    def predict(self, model, jobs: Sequence[ImageJob]) -> list[list[dict[str, Any]]]:
        """For each job, for each query, the prediction fields to save (e.g. ``{"prediction": ...}``)."""

    @abstractmethod
    def score(self, records: Sequence[dict[str, Any]]) -> Scores:
        """Metrics from saved records (``query_id`` + the query's record + its prediction fields)."""

    @abstractmethod
    def data_files(self) -> list[Path]:
        """Annotation files the results depend on (fingerprinted in the report)."""

    def settings(self) -> dict[str, Any]:
        """Options that change the predictions (a resumed run must use the same)."""
        return {}


# ----- predictions.jsonl ------------------------------------------------------------------------
def read_predictions(path: Path, repair: bool = True) -> list[dict[str, Any]]:
    """Records of ``path`` in file order; a torn last line (killed mid-write) is dropped and,
    with ``repair``, cut from the file so appends continue on a clean line."""
    if not path.exists():
        return []
    records: list[dict[str, Any]] = []
    good_bytes = 0
    with path.open("rb") as handle:
        for line in handle:
            if not line.endswith(b"\n"):
                break
            try:
                record = json.loads(line)
                record["query_id"]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                break
            records.append(record)
            good_bytes += len(line)
    if repair and good_bytes != path.stat().st_size:
        with path.open("r+b") as handle:
            handle.truncate(good_bytes)
    return records


def append_predictions(handle, records: Sequence[dict[str, Any]]) -> None:
    """Append records as JSON lines and make them durable (a later resume trusts them)."""
    handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    handle.flush()
    os.fsync(handle.fileno())


def rank_files(out: Path) -> list[Path]:
    """The per-process files of sharded runs in ``out`` (of any process count), by rank."""
    found = []
    for path in out.glob("predictions.rank*.jsonl"):
        match = re.fullmatch(r"predictions\.rank(\d+)\.jsonl", path.name)
        if match:
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def saved_query_ids(out: Path) -> set[str]:
    """Query ids saved in ``predictions.jsonl`` and every rank file (torn last lines repaired):
    what a run of any process count need not ask again."""
    return {r["query_id"] for path in (out / PREDICTIONS_FILE, *rank_files(out)) for r in read_predictions(path)}


def merge_predictions(out: Path, jobs: Sequence[ImageJob]) -> list[dict[str, Any]]:
    """Fold the rank files into ``predictions.jsonl`` in the order of ``jobs``, delete them,
    and return the merged records.

    A query saved twice (a run killed after the merge, before the rank files were deleted)
    keeps its first record; records of queries outside ``jobs`` follow in file order. The
    merged file is written beside the old one and renamed over it, so a kill at any point
    leaves records a resume reads in full.
    """
    by_id: dict[str, dict[str, Any]] = {}
    for path in (out / PREDICTIONS_FILE, *rank_files(out)):
        for record in read_predictions(path, repair=False):
            by_id.setdefault(record["query_id"], record)
    ordered = [q.id for job in jobs for q in job.queries if q.id in by_id]
    placed = set(ordered)
    records = [by_id[i] for i in ordered] + [r for i, r in by_id.items() if i not in placed]
    staging = out / (PREDICTIONS_FILE + ".tmp")
    with staging.open("w", encoding="utf-8") as handle:
        append_predictions(handle, records)
    os.replace(staging, out / PREDICTIONS_FILE)
    for path in rank_files(out):
        path.unlink()
    return records


# ----- sharding over processes ------------------------------------------------------------------
@dataclass(frozen=True)
class Shard:
    """This process's part of a run sharded over ``world_size`` processes (see the module doc).

    ``gather`` is the one collective the run needs: every rank's picklable object (ids,
    counters, rank 0's scores), in rank order; it is also the barrier. The default is the
    one-process run.
    """

    rank: int = 0
    world_size: int = 1
    gather: Callable[[Any], list[Any]] | None = None
    device: str | None = None  # where this rank's model runs (recorded in results.json)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` in rank order (``[obj]`` on one process)."""
        return self.gather(obj) if self.enabled and self.gather else [obj]


def torchrun_world() -> tuple[int, int, int]:
    """(world size, rank, local rank) from the torchrun environment; (1, 0, 0) outside it."""
    try:
        return (int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")),
                int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError:
        raise InvalidInputError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (as torchrun sets them)") from None


def start_shard(device: str | None) -> Shard:
    """Join torchrun's process group and return this process's :class:`Shard` (the
    one-process Shard outside torchrun or in a world of one).

    The backend is nccl when this rank's ``device`` is a GPU (bound to it), else gloo; only
    small Python objects travel, through ``all_gather_object``.
    """
    world, rank, _ = torchrun_world()
    if world <= 1:
        return Shard(device=device)
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        kwargs: dict[str, Any] = {}
        backend = "gloo"
        if device is not None and torch.device(device).type == "cuda":
            backend = "nccl"
            torch.cuda.set_device(torch.device(device))
            kwargs["device_id"] = torch.device(device)
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=SHARD_TIMEOUT, **kwargs)

    def gather(obj: Any) -> list[Any]:
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, obj)
        return gathered

    return Shard(dist.get_rank(), dist.get_world_size(), gather, device)


def stop_shard(shard: Shard) -> None:
    """Leave the process group a sharded run joined (no-op for one process)."""
    if shard.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def _on_rank0(shard: Shard, step: Callable[[], Any]) -> Any:
    """Run ``step`` on rank 0 only and return its result on every rank; an error there is
    raised on every rank (the same one-line message), so no rank waits for a dead one."""
    if not shard.enabled:
        return step()
    result, failure = None, None
    if shard.rank == 0:
        try:
            result = step()
        except Exception as error:  # re-raised below, after the others have been told
            failure = error
    user_error = isinstance(failure, (*USER_ERRORS, FileNotFoundError))
    shared_result, shared_failure = shard.all((result, None if failure is None else (user_error, str(failure))))[0]
    if failure is not None:
        raise failure
    if shared_failure is not None:
        user_error, message = shared_failure
        raise (InvalidInputError(message) if user_error else RuntimeError(f"rank 0 failed: {message}"))
    return shared_result


# ----- asking the model -------------------------------------------------------------------------
def generate_answers(model, items: Sequence[tuple[Any, Sequence[Any]]], prompts: Sequence[Any]) -> list[str]:
    """Greedy answers to ``prompts`` about ``items`` ((image, regions) pairs) in ONE engine batch
    (:meth:`RegionGPT.ask_many`): each image encoded once, its regions pooled once; REC's
    shuffled or capped candidates reuse the same pooled regions through ``region_map``."""
    return [answer.text for answer in model.ask_many(items, prompts)]


# ----- the loop ---------------------------------------------------------------------------------
@dataclass
class RunResult:
    out: Path
    scores: Scores
    queries_total: int
    queries_run: int  # by this invocation, all processes together (the rest came from earlier runs)
    wall_s: float
    queries_per_s: float | None
    results: dict[str, Any]
    processes: int = 1  # processes of this invocation (1, or torchrun's world size)


def _check_resume(out: Path, identity: dict[str, Any], overwrite: bool) -> None:
    """``out`` must be new, hold a run with the same identity, or be overwritten."""
    run_file = out / RUN_FILE
    predictions = out / PREDICTIONS_FILE
    if overwrite:
        for path in (run_file, predictions, *rank_files(out)):
            if path.exists():
                path.unlink()
    if run_file.exists():
        previous = json.loads(run_file.read_text())
        if previous != identity:
            changed = sorted(k for k in set(previous) | set(identity) if previous.get(k) != identity.get(k))
            raise InvalidInputError(f"{out} holds an evaluation run with different {', '.join(changed)}; "
                                    "use a new --out folder, or --overwrite to discard that run")
    else:
        saved = [path for path in (predictions, *rank_files(out)) if path.exists() and path.stat().st_size]
        if saved:
            raise InvalidInputError(f"{saved[0]} exists but {run_file} does not: it is not a resumable run of this "
                                    "command; use a new --out folder or --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps(identity, indent=2) + "\n")


def _open_run(benchmark: Benchmark, out: Path, limit: int | None, model_path: str | os.PathLike | None,
              overwrite: bool) -> tuple[dict[str, Any], set[str]]:
    """The run's identity, ``out`` checked against it (or cleared), and the query ids saved
    there by earlier runs of any process count. Rank 0's alone: nothing else reads or writes
    the folder meanwhile."""
    from regiongpt.evaluation import report

    identity = {
        "task": benchmark.task,
        "settings": benchmark.settings(),
        "limit": limit,
        "model": report.model_fingerprint(model_path),
        "data": report.data_fingerprint(benchmark.data_files()),
    }
    _check_resume(out, identity, overwrite)
    return identity, saved_query_ids(out)


def _missing(jobs: Sequence[ImageJob], done: set[str]) -> list[ImageJob]:
    """The jobs with queries not in ``done``, holding only those queries."""
    todo: list[ImageJob] = []
    for job in jobs:
        queries = [q for q in job.queries if q.id not in done]
        if queries:
            todo.append(ImageJob(job.image, queries, job.context))
    return todo


def _progress_bar(benchmark: Benchmark, shard: Shard, total: int, initial: int, progress: bool) -> tqdm:
    """One process: the whole run; sharded: rank 0's share only (the other ranks stay quiet)."""
    desc = f"eval {benchmark.task}" + (f" [rank 0 of {shard.world_size}]" if shard.enabled else "")
    return tqdm(total=total, initial=initial, desc=desc, unit="query", file=sys.stderr,
                disable=not progress or shard.rank != 0, dynamic_ncols=True)


def _answer(benchmark: Benchmark, model, todo: Sequence[ImageJob], path: Path, batch_images: int,
            bar: tqdm) -> tuple[int, float]:
    """Ask ``model`` about ``todo``, ``batch_images`` images per call, appending (and fsync'ing)
    each batch's records to ``path``; returns (queries answered, seconds in the model)."""
    run_s = 0.0
    answered = 0
    with path.open("a", encoding="utf-8") as handle:
        for start in range(0, len(todo), batch_images):
            batch = todo[start : start + batch_images]
            t0 = time.perf_counter()
            answers = benchmark.predict(model, batch)
            run_s += time.perf_counter() - t0
            lines = []
            for job, job_answers in zip(batch, answers):
                if len(job_answers) != len(job.queries):
                    raise RuntimeError(f"{benchmark.task}: {len(job_answers)} answers for {len(job.queries)} queries")
                for query, fields in zip(job.queries, job_answers):
                    lines.append({"query_id": query.id, **query.record, **fields})
            append_predictions(handle, lines)
            answered += len(lines)
            bar.update(len(lines))
            bar.set_postfix_str(f"{answered / max(run_s, 1e-9):.2f} queries/s", refresh=False)
    return answered, run_s


def _final_records(out: Path, jobs: Sequence[ImageJob]) -> list[dict[str, Any]]:
    """The saved records of ``jobs``' queries; rank files (a sharded run's, or an interrupted
    one's) are merged into ``predictions.jsonl`` first.

    A saved record gains the fields its query's record has now and it lacks (what the data says
    about the query, e.g. a breakdown a newer version scores by); what it holds is kept.
    """
    records = merge_predictions(out, jobs) if rank_files(out) else read_predictions(out / PREDICTIONS_FILE)
    wanted = {q.id: q.record for job in jobs for q in job.queries}
    return [{**wanted[r["query_id"]], **r} for r in records if r["query_id"] in wanted]


def run_evaluation(benchmark: Benchmark, model, out: str | os.PathLike, batch_images: int = 8,
                   limit: int | None = None, model_path: str | os.PathLike | None = None,
                   progress: bool = True, overwrite: bool = False, jobs: Sequence[ImageJob] | None = None,
                   extra: dict[str, Any] | None = None, shard: Shard | None = None) -> RunResult:
    """Run (or resume) ``benchmark`` with ``model`` (a :class:`RegionGPT`) and write the report to ``out``.

    ``model`` may be a callable returning the model, so that a fully resumed run (nothing
    left to ask) never loads it. ``jobs`` may be passed when already built (the CLI builds
    them before loading the model, to report data errors first). With ``shard`` (every
    process of a torchrun world calls this with its own; see :func:`start_shard`) each
    process answers its share and every process returns the same result.
    """
    from regiongpt.evaluation import report

    shard = shard or Shard()
    if batch_images < 1:
        raise InvalidInputError(f"--batch-images must be >= 1, got {batch_images}")
    if limit is not None and limit < 1:
        raise InvalidInputError(f"--limit must be >= 1, got {limit}")
    out = Path(out)
    benchmark.preflight()
    jobs = list(jobs) if jobs is not None else benchmark.jobs(limit)
    if not jobs:
        raise InvalidInputError(f"the {benchmark.task} data holds no queries to evaluate")
    identity, done = _on_rank0(shard, lambda: _open_run(benchmark, out, limit, model_path, overwrite))
    n_wanted = sum(len(job.queries) for job in jobs)
    todo = _missing(jobs, done)
    n_todo = sum(len(job.queries) for job in todo)
    started = time.time()
    answered, run_s = 0, 0.0
    if shard.enabled:
        todo = todo[shard.rank :: shard.world_size]  # the i-th job left goes to rank i % N
    path = out / (RANK_FILE.format(rank=shard.rank) if shard.enabled else PREDICTIONS_FILE)
    if todo:
        if callable(model) and not hasattr(model, "engine"):
            model = model()
        mine = sum(len(job.queries) for job in todo)
        bar = (_progress_bar(benchmark, shard, mine, 0, progress) if shard.enabled
               else _progress_bar(benchmark, shard, n_wanted, n_wanted - n_todo, progress))
        answered, run_s = _answer(benchmark, model, todo, path, batch_images, bar)
        bar.close()
    ranks = shard.all({"rank": shard.rank, "device": shard.device, "queries_run": answered,
                       "model_s": round(run_s, 3)})  # also the barrier: every rank's file is complete
    queries_run = sum(r["queries_run"] for r in ranks)
    model_s = max(r["model_s"] for r in ranks) if shard.enabled else run_s  # the slowest rank's
    qps = queries_run / model_s if queries_run and model_s > 0 else None
    run_facts = {"processes": shard.world_size, **({"shards": ranks} if shard.enabled else {}), **(extra or {})}

    def finish() -> tuple[Scores, dict[str, Any], int, float]:
        records = _final_records(out, jobs)
        scores = benchmark.score(records)
        wall_s = time.time() - started
        results = report.write_report(out, benchmark, scores, identity, model_path=model_path,
                                      batch_images=batch_images, queries_total=len(records),
                                      queries_run=queries_run, wall_s=wall_s, model_s=model_s, queries_per_s=qps,
                                      extra=run_facts)
        return scores, results, len(records), wall_s

    scores, results, total, wall_s = _on_rank0(shard, finish)
    return RunResult(out, scores, total, queries_run, wall_s, qps, results, shard.world_size)
