"""Referring expression comprehension with candidate regions (RegionGPT Table 3; SPEC §2).

Protocol:
- Refer layout (RefCOCOg umd val/test by default). One query per referring sentence.
- Candidates = all ground-truth instances of the image (non-crowd annotations of
  ``instances.json``, in file order, plus the referred one if it is crowd), as masks
  (``--region-mode box``: filled boxes). Prompt: "From the provided masks denoted by
  <region1>, ..., <regionN>, which one fits '<sentence>'? Answer the question using the
  template Region [x]."; greedy. The answer is parsed from "Region [k]"; accuracy = the
  k-th candidate is the referred object (an unparsable answer, "No corresponding options
  found." or k > N count as wrong).
- Variants, each a separate set of queries and accuracy:
  ``all`` — every candidate, file order;
  ``shuffled`` — every candidate, order shuffled per sentence with a seeded RNG
  (``--rec-seed``), to expose position bias;
  ``capped`` — the referred object plus at most K-1 others drawn per sentence with the
  seeded RNG (``--rec-cap K``, default 5), kept in file order.
- All sentences of an image (all variants) are answered in one batch: the image is
  encoded and its candidates pooled once; each prompt maps its placeholders onto them.
- Accuracy is also broken down by the referred object's size (COCO area ranges) and by the
  number of candidates.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from regiongpt.data.refer import annotation_region, load_refer, refs_by_image
from regiongpt.errors import InvalidInputError
from regiongpt.evaluation.coco_classification import SIZE_BUCKETS, coco_size_bucket
from regiongpt.evaluation.metrics import accuracy
from regiongpt.evaluation.runner import Benchmark, ImageJob, Query, Scores, generate_answers
from regiongpt.inference.api import Question, rec_max_new_tokens
from regiongpt.processing.instructions import parse_rec_answer

VARIANTS = ("all", "shuffled", "capped")
CANDIDATE_BUCKETS = (("1-5", 5), ("6-10", 10), ("11-20", 20), (">20", 10**9))


def candidate_order(variant: str, n: int, target: int, key: str, seed: int, cap: int) -> list[int]:
    """Indices into the image's candidate list, in prompt order, for one sentence."""
    if variant == "all":
        return list(range(n))
    rng = random.Random(f"regiongpt-rec:{seed}:{variant}:{key}")
    if variant == "shuffled":
        order = list(range(n))
        rng.shuffle(order)
        return order
    if variant == "capped":
        others = [i for i in range(n) if i != target]
        keep = set(rng.sample(others, min(len(others), max(cap - 1, 0)))) | {target}
        return sorted(keep)
    raise ValueError(f"unknown REC variant {variant!r}")


def rec_queries(image_id: int, refs, candidates: list[dict[str, Any]], variants: Sequence[str], seed: int,
                cap: int) -> list[Query]:
    """The queries of one image: per variant, per ref, per sentence."""
    position = {ann["id"]: i for i, ann in enumerate(candidates)}
    queries = []
    for variant in variants:
        for ref in refs:
            for sentence in ref.sentences:
                key = f"{ref.ref_id}/{sentence.sent_id}"
                order = candidate_order(variant, len(candidates), position[ref.ann_id], key, seed, cap)
                record = {"variant": variant, "image_id": image_id, "ref_id": ref.ref_id, "sent_id": sentence.sent_id,
                          "ann_id": ref.ann_id, "candidates": [candidates[i]["id"] for i in order],
                          "area": float(ref.ann.get("area", 0.0))}
                queries.append(Query(f"{variant}/{key}", record, (sentence.sent, order)))
    return queries


def rec_prompts(model, job: ImageJob, item: int) -> list[Question]:
    prompts = []
    for query in job.queries:
        phrase, order = query.payload
        question = model.instruction("rec", regions=range(len(order)), phrase=phrase)
        prompts.append(Question(item, question, order, rec_max_new_tokens(len(order))))
    return prompts


def rec_fields(answer: str, candidates: Sequence[int], target: int) -> dict[str, Any]:
    k = parse_rec_answer(answer)
    chosen = candidates[k] if k is not None and k < len(candidates) else None
    return {"prediction": answer, "chosen_ann_id": chosen, "correct": chosen == target}


def bucket_rows(records: Sequence[dict[str, Any]], key, names: Sequence[str]) -> dict[str, list[int]]:
    buckets = {name: [0, 0] for name in names}
    for r in records:
        bucket = buckets[key(r)]
        bucket[0] += int(r["correct"])
        bucket[1] += 1
    return buckets


def _candidate_bucket(n: int) -> str:
    return next(name for name, upper in CANDIDATE_BUCKETS if n <= upper)


class ReferringComprehension(Benchmark):
    task = "rec"

    def __init__(self, root: str | os.PathLike, images_dir: str | os.PathLike, split: str = "val",
                 dataset: str = "refcocog", split_by: str = "umd", region_mode: str = "mask",
                 variants: Sequence[str] = VARIANTS, seed: int = 0, cap: int = 5):
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown or not variants:
            raise InvalidInputError(f"unknown REC variant(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(VARIANTS)}")
        if cap < 1:
            raise InvalidInputError(f"--rec-cap must be >= 1, got {cap}")
        self.refer = load_refer(root, dataset, split_by, splits=[split])
        self.images_dir = Path(images_dir)
        self.split, self.region_mode = split, region_mode
        self.variants, self.seed, self.cap = tuple(variants), seed, cap

    def settings(self) -> dict[str, Any]:
        return {"dataset": self.refer.dataset, "split_by": self.refer.split_by, "split": self.split,
                "region_mode": self.region_mode, "variants": list(self.variants), "seed": self.seed, "cap": self.cap}

    def data_files(self) -> list[Path]:
        return [self.refer.refs_file, self.refer.instances_file]

    def jobs(self, limit: int | None = None) -> list[ImageJob]:
        jobs = []
        for image_id, refs in refs_by_image(self.refer.refs).items():
            candidates = [a for a in self.refer.anns_by_image.get(image_id, []) if not a.get("iscrowd", 0)
                          or any(r.ann_id == a["id"] for r in refs)]
            regions = [annotation_region(a, self.region_mode) for a in candidates]
            queries = rec_queries(image_id, refs, candidates, self.variants, self.seed, self.cap)
            jobs.append(ImageJob(self.refer.image_path(image_id, self.images_dir), queries, regions))
            if limit is not None and len(jobs) >= limit:
                break
        return jobs

    def predict(self, model, jobs: Sequence[ImageJob]) -> list[list[dict[str, Any]]]:
        prompts = [p for item, job in enumerate(jobs) for p in rec_prompts(model, job, item)]
        answers = iter(generate_answers(model, [(str(job.image), job.context) for job in jobs], prompts))
        return [[rec_fields(next(answers), q.record["candidates"], q.record["ann_id"]) for q in job.queries]
                for job in jobs]

    def score(self, records: Sequence[dict[str, Any]]) -> Scores:
        return score_rec(records, self.variants)


def score_rec(records: Sequence[dict[str, Any]], variants: Sequence[str], group: str = "") -> Scores:
    """Accuracy per variant, by referred-object size and by number of candidates."""
    metrics: dict[str, Any] = {}
    rows: list[tuple[str, str, Any]] = []
    plots: dict[str, Any] = {}
    for variant in variants:
        subset = [r for r in records if r["variant"] == variant]
        sizes = bucket_rows(subset, lambda r: coco_size_bucket(r["area"]), [n for n, _ in SIZE_BUCKETS])
        counts = bucket_rows(subset, lambda r: _candidate_bucket(len(r["candidates"])), [n for n, _ in CANDIDATE_BUCKETS])
        metrics[variant] = {"count": len(subset), "accuracy": accuracy([r["correct"] for r in subset]),
                            "accuracy_by_size": {k: (c / t if t else None) for k, (c, t) in sizes.items()},
                            "accuracy_by_candidates": {k: (c / t if t else None) for k, (c, t) in counts.items()}}
        rows += [(f"{group}{variant}", "sentences", len(subset)), (f"{group}{variant}", "accuracy", metrics[variant]["accuracy"])]
        if variant == "all":
            plots["rec_accuracy_by_size"] = {"kind": "buckets", "title": "REC accuracy (all candidates) by object size",
                                             "buckets": sizes}
            plots["rec_accuracy_by_candidates"] = {"kind": "buckets", "title": "REC accuracy by number of candidates",
                                                   "buckets": counts}
    return Scores(metrics, rows, plots)
