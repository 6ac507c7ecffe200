"""The evaluation loop shared by every benchmark: queries grouped by image, batched over
images, predictions appended to ``predictions.jsonl`` as they come, resume, scoring, report.

A benchmark (:class:`Benchmark`) turns its data into :class:`ImageJob` s (an image and the
queries about it), answers a batch of jobs with the model (every query of an image in the
same engine batch, several images per call), and scores the saved records. Scores are always
computed from ``predictions.jsonl`` — the records of this run and of any earlier,
interrupted run with the same settings — so a resumed run reports what an uninterrupted one
would.
"""

from __future__ import annotations

import json
import os
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from regiongpt.errors import InvalidInputError

PREDICTIONS_FILE = "predictions.jsonl"
RUN_FILE = "run.json"


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
    queries_run: int  # by this invocation (the rest came from an earlier, interrupted run)
    wall_s: float
    queries_per_s: float | None
    results: dict[str, Any]


def _check_resume(out: Path, identity: dict[str, Any], overwrite: bool) -> None:
    """``out`` must be new, hold a run with the same identity, or be overwritten."""
    run_file = out / RUN_FILE
    predictions = out / PREDICTIONS_FILE
    if overwrite:
        for path in (run_file, predictions):
            if path.exists():
                path.unlink()
    if run_file.exists():
        previous = json.loads(run_file.read_text())
        if previous != identity:
            changed = sorted(k for k in set(previous) | set(identity) if previous.get(k) != identity.get(k))
            raise InvalidInputError(f"{out} holds an evaluation run with different {', '.join(changed)}; "
                                    "use a new --out folder, or --overwrite to discard that run")
    elif predictions.exists() and predictions.stat().st_size:
        raise InvalidInputError(f"{predictions} exists but {run_file} does not: it is not a resumable run of this "
                                "command; use a new --out folder or --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps(identity, indent=2) + "\n")


def run_evaluation(benchmark: Benchmark, model, out: str | os.PathLike, batch_images: int = 8,
                   limit: int | None = None, model_path: str | os.PathLike | None = None,
                   progress: bool = True, overwrite: bool = False, jobs: Sequence[ImageJob] | None = None,
                   extra: dict[str, Any] | None = None) -> RunResult:
    """Run (or resume) ``benchmark`` with ``model`` (a :class:`RegionGPT`) and write the report to ``out``.

    ``model`` may be a callable returning the model, so that a fully resumed run (nothing
    left to ask) never loads it. ``jobs`` may be passed when already built (the CLI builds
    them before loading the model, to report data errors first).
    """
    from regiongpt.evaluation import report

    if batch_images < 1:
        raise InvalidInputError(f"--batch-images must be >= 1, got {batch_images}")
    if limit is not None and limit < 1:
        raise InvalidInputError(f"--limit must be >= 1, got {limit}")
    out = Path(out)
    benchmark.preflight()
    jobs = list(jobs) if jobs is not None else benchmark.jobs(limit)
    if not jobs:
        raise InvalidInputError(f"the {benchmark.task} data holds no queries to evaluate")
    identity = {
        "task": benchmark.task,
        "settings": benchmark.settings(),
        "limit": limit,
        "model": report.model_fingerprint(model_path),
        "data": report.data_fingerprint(benchmark.data_files()),
    }
    _check_resume(out, identity, overwrite)
    path = out / PREDICTIONS_FILE
    done = {r["query_id"] for r in read_predictions(path)}
    wanted = [q.id for job in jobs for q in job.queries]
    todo: list[ImageJob] = []
    for job in jobs:
        queries = [q for q in job.queries if q.id not in done]
        if queries:
            todo.append(ImageJob(job.image, queries, job.context))
    n_todo = sum(len(job.queries) for job in todo)
    started = time.time()
    run_s = 0.0
    answered = 0
    if todo:
        if callable(model) and not hasattr(model, "engine"):
            model = model()
        bar = tqdm(total=len(wanted), initial=len(wanted) - n_todo, desc=f"eval {benchmark.task}", unit="query",
                   file=sys.stderr, disable=not progress, dynamic_ncols=True)
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
        bar.close()
    wanted_set = set(wanted)
    records = [r for r in read_predictions(path) if r["query_id"] in wanted_set]
    scores = benchmark.score(records)
    wall_s = time.time() - started
    qps = n_todo / run_s if n_todo and run_s > 0 else None
    results = report.write_report(out, benchmark, scores, identity, model_path=model_path, batch_images=batch_images,
                                  queries_total=len(records), queries_run=n_todo, wall_s=wall_s, model_s=run_s,
                                  queries_per_s=qps, extra=extra)
    return RunResult(out, scores, len(records), n_todo, wall_s, qps, results)
