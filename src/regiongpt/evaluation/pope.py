"""POPE object-hallucination benchmark (RegionGPT Table 4; SPEC §2).

Protocol:
- Question files in JSON lines, one per split (``*_random.jsonl``, ``*_popular.jsonl``,
  ``*_adversarial.jsonl``), each line ``{"question_id", "image", "text", "label"}``;
  ``image`` is relative to the image folder (COCO val2014 for the real benchmark).
- Each question is asked as a one-turn chat about the whole image (no regions): the
  file's text as is, plus ``--pope-suffix`` if given (LLaVA-1.5's POPE script appends
  "Answer the question using a single word or phrase."); greedy, at most 32 new tokens.
- The answer's first sentence decides: "no" or "not" in it -> no, else yes (POPE's rule).
- Per split: accuracy, precision, recall, F1 (yes = positive) and the yes-ratio. The
  paper's table lists F1 for random and popular and accuracy for adversarial.
- All questions about an image (from every split) are answered in one batch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from regiongpt.errors import InvalidInputError
from regiongpt.evaluation.metrics import pope_metrics
from regiongpt.evaluation.runner import Benchmark, ImageJob, Query, Scores, generate_answers
from regiongpt.inference.api import Question
from regiongpt.processing.instructions import parse_yes_no

POPE_SPLITS = ("random", "popular", "adversarial")
POPE_MAX_NEW_TOKENS = 32
PAPER_METRIC = {"random": "f1", "popular": "f1", "adversarial": "accuracy"}


def split_name(path: Path) -> str:
    """``coco_pope_random.jsonl`` -> ``random``; other names -> the file stem."""
    for split in POPE_SPLITS:
        if path.stem.endswith(split):
            return split
    return path.stem


def find_pope_files(paths: Sequence[str | os.PathLike]) -> dict[str, Path]:
    """Split name -> file, from files and/or folders (a folder contributes its ``*.jsonl``)."""
    files: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted(path.glob("*.jsonl"))
            if not found:
                raise InvalidInputError(f"{path} holds no .jsonl POPE question files")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise InvalidInputError(f"POPE questions {path} do not exist; give the question files or their folder")
    out: dict[str, Path] = {}
    for file in files:
        name = split_name(file)
        if name in out:
            raise InvalidInputError(f"two POPE files for split {name}: {out[name]} and {file}; give one per split")
        out[name] = file
    return dict(sorted(out.items(), key=lambda kv: (POPE_SPLITS.index(kv[0]) if kv[0] in POPE_SPLITS else 9, kv[0])))


def read_pope_file(path: Path) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise InvalidInputError(f"{path}:{number} is not valid JSON ({error})") from None
        missing = [k for k in ("question_id", "image", "text", "label") if k not in row]
        if missing:
            raise InvalidInputError(f"{path}:{number} lacks {', '.join(missing)}; POPE lines are "
                                    '{"question_id", "image", "text", "label": "yes"|"no"}')
        if str(row["label"]).strip().lower() not in ("yes", "no"):
            raise InvalidInputError(f"{path}:{number}: label must be 'yes' or 'no', got {row['label']!r}")
        rows.append(row)
    return rows


def yes_no_fields(answer: str) -> dict[str, Any]:
    said_yes = parse_yes_no(answer)
    return {"prediction": answer, "answer": "yes" if said_yes else "no"}


def score_pope(records: Sequence[dict[str, Any]], splits: Sequence[str], group: str = "") -> Scores:
    metrics: dict[str, Any] = {}
    rows: list[tuple[str, str, Any]] = []
    for split in splits:
        subset = [r for r in records if r["split"] == split]
        m = pope_metrics([r["answer"] == "yes" for r in subset], [r["label"] == "yes" for r in subset])
        metrics[split] = m
        rows += [(f"{group}{split}", "questions", m["count"])]
        rows += [(f"{group}{split}", name, m[name]) for name in ("accuracy", "precision", "recall", "f1", "yes_ratio")]
    if all(s in metrics for s in POPE_SPLITS):
        metrics["paper"] = {f"{s}_{PAPER_METRIC[s]}": metrics[s][PAPER_METRIC[s]] for s in POPE_SPLITS}
        rows += [(f"{group}paper's columns", k, v) for k, v in metrics["paper"].items()]
    return Scores(metrics, rows)


class Pope(Benchmark):
    task = "pope"

    def __init__(self, questions: Sequence[str | os.PathLike], images_dir: str | os.PathLike, suffix: str = ""):
        self.files = find_pope_files(questions)
        self.images_dir = Path(images_dir)
        self.suffix = suffix.strip()
        self.rows = {split: read_pope_file(path) for split, path in self.files.items()}

    def settings(self) -> dict[str, Any]:
        return {"splits": list(self.files), "suffix": self.suffix}

    def data_files(self) -> list[Path]:
        return list(self.files.values())

    def jobs(self, limit: int | None = None) -> list[ImageJob]:
        by_image: dict[str, list[Query]] = {}
        for split, rows in self.rows.items():
            for row in rows:
                record = {"split": split, "question_id": row["question_id"], "image": row["image"],
                          "label": str(row["label"]).strip().lower()}
                text = f"{row['text'].strip()} {self.suffix}".strip()
                by_image.setdefault(row["image"], []).append(Query(f"{split}/{row['question_id']}", record, text))
        images = list(by_image.items())[:limit] if limit is not None else list(by_image.items())
        return [ImageJob(self.images_dir / image, queries) for image, queries in images]

    def predict(self, model, jobs: Sequence[ImageJob]) -> list[list[dict[str, Any]]]:
        prompts = [Question(item, q.payload, [], POPE_MAX_NEW_TOKENS) for item, job in enumerate(jobs) for q in job.queries]
        answers = iter(generate_answers(model, [(str(job.image), []) for job in jobs], prompts))
        return [[yes_no_fields(next(answers)) for _ in job.queries] for job in jobs]

    def score(self, records: Sequence[dict[str, Any]]) -> Scores:
        return score_pope(records, list(self.files))
