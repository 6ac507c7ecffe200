"""COCO object classification with ground-truth regions (RegionGPT Table 1; SPEC §2).

Protocol:
- One query per non-crowd ground-truth annotation of the instances file (COCO-2017 val),
  in file order. Region = the annotation's mask (``--region-mode box``: its filled box).
- Prompt = the classification instruction naming the label set, as the API's
  ``describe(task="classify", categories=..., vocabulary="COCO-80")`` builds it ("What
  category name best describes the region represented by <region1>? Answer the question
  using COCO-80 category names."); for a category set other than COCO's 80 the names are
  listed in the prompt instead. Greedy decoding. All regions of an image are answered in one batch.
- Accuracy (exact) = the normalised answer (lower-case; "It is a X." -> X; articles and
  punctuation dropped) equals the normalised category name.
- Accuracy (semantic, Osprey's protocol) = the category whose all-MiniLM-L6-v2 embedding
  (mean pooling, cosine) is most similar to the answer is the right one.
- mAP = pycocotools COCOeval (bbox) where every ground-truth box is re-emitted once per
  category with score = the model's likelihood of that category name given the prompt,
  renormalised over the category set (p(name) / sum over names; the same ranking per region
  as the raw likelihood, comparable across regions). Raw log-likelihoods are saved in
  predictions.jsonl (``category_scores``). A constant score would make COCOeval rank ties by
  input order, so its AP would be an artefact. Reported: AP@[.5:.95] (= AP@.5 here, since the
  boxes are the ground truth's).
- Region-size buckets: COCO's area ranges (small < 32², medium < 96², large).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from regiongpt.data.coco import category_names, iter_coco_images, load_coco
from regiongpt.data.refer import annotation_region
from regiongpt.evaluation.metrics import SemanticMatcher, accuracy, exact_match, normalize_answer
from regiongpt.evaluation.runner import Benchmark, ImageJob, Query, Scores

SIZE_BUCKETS = (("small", 32**2), ("medium", 96**2), ("large", math.inf))


def coco_size_bucket(area: float) -> str:
    for name, upper in SIZE_BUCKETS:
        if area < upper:
            return name
    return "large"


def normalised_scores(category_scores: dict[str, float]) -> dict[str, float]:
    """Log-likelihoods -> probabilities renormalised over the category set (a stable softmax)."""
    top = max(category_scores.values())
    weights = {name: math.exp(value - top) for name, value in category_scores.items()}
    total = sum(weights.values())
    return {name: w / total for name, w in weights.items()}


def classification_map(records: Sequence[dict[str, Any]], categories: dict[int, str]) -> dict[str, float]:
    """COCOeval (bbox) mAP with each GT box re-emitted once per category, scored by the model."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not records:
        return {"mAP": float("nan"), "AP50": float("nan")}
    ids_by_name = {name: cid for cid, name in categories.items()}
    images = sorted({r["image_id"] for r in records})
    gt = COCO()
    gt.dataset = {
        "images": [{"id": i} for i in images],
        "categories": [{"id": cid, "name": name} for cid, name in categories.items()],
        "annotations": [{"id": r["ann_id"], "image_id": r["image_id"], "category_id": r["category_id"],
                         "bbox": r["bbox"], "area": r["area"], "iscrowd": 0} for r in records],
    }
    detections = []
    for r in records:
        for name, score in normalised_scores(r["category_scores"]).items():
            detections.append({"image_id": r["image_id"], "category_id": ids_by_name[name], "bbox": r["bbox"],
                               "score": score})
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(detections)
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.params.imgIds = images
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {"mAP": float(evaluator.stats[0]), "AP50": float(evaluator.stats[1])}


class CocoClassification(Benchmark):
    task = "coco-cls"

    def __init__(self, instances: str | os.PathLike, images_dir: str | os.PathLike | None = None,
                 region_mode: str = "mask", semantic: bool = True):
        self.instances = Path(instances)
        self.images_dir = images_dir
        self.region_mode = region_mode
        self.semantic = semantic
        load_coco(self.instances)  # fail early on a malformed file
        self.categories = category_names(self.instances)
        self.names = list(self.categories.values())

    def settings(self) -> dict[str, Any]:
        return {"region_mode": self.region_mode}

    def data_files(self) -> list[Path]:
        return [self.instances]

    def jobs(self, limit: int | None = None) -> list[ImageJob]:
        jobs = []
        for image in iter_coco_images(self.instances, self.images_dir):
            if not image.annotations:
                continue
            queries = [Query(str(ann["id"]), {"image_id": image.id, "ann_id": ann["id"],
                                              "category_id": ann["category_id"],
                                              "category": self.categories[ann["category_id"]],
                                              "bbox": list(ann["bbox"]), "area": float(ann.get("area", 0.0))},
                             annotation_region(ann, self.region_mode)) for ann in image.annotations]
            jobs.append(ImageJob(image.path, queries))
            if limit is not None and len(jobs) >= limit:
                break
        return jobs

    def predict(self, model, jobs: Sequence[ImageJob]) -> list[list[dict[str, Any]]]:
        answers = model.describe_many([(str(job.image), [q.payload for q in job.queries]) for job in jobs],
                                      task="classify", categories=self.names, return_scores=True,
                                      vocabulary="COCO-80" if len(self.names) == 80 else None)
        return [[{"prediction": a.text, "category_scores": a.category_scores} for a in image_answers]
                for image_answers in answers]

    def score(self, records: Sequence[dict[str, Any]]) -> Scores:
        exact = [exact_match(r["prediction"], r["category"]) for r in records]
        metrics: dict[str, Any] = {"count": len(records), "accuracy": accuracy(exact)}
        semantic_flags = None
        if self.semantic:
            closest = SemanticMatcher().closest([r["prediction"] for r in records], self.names)
            semantic_flags = [c == r["category"] for c, r in zip(closest, records)]
            metrics["accuracy_semantic"] = accuracy(semantic_flags)
        metrics.update(classification_map(records, self.categories))
        buckets = {name: [0, 0] for name, _ in SIZE_BUCKETS}
        for r, ok in zip(records, exact):
            bucket = buckets[coco_size_bucket(r["area"])]
            bucket[0] += int(ok)
            bucket[1] += 1
        metrics["accuracy_by_size"] = {k: (c / t if t else None) for k, (c, t) in buckets.items()}
        rows = [("all", "queries", len(records)), ("all", "accuracy (exact)", metrics["accuracy"])]
        if semantic_flags is not None:
            rows.append(("all", "accuracy (semantic)", metrics["accuracy_semantic"]))
        rows += [("all", "mAP (COCOeval bbox)", metrics["mAP"])]
        rows += [(f"size {k}", "accuracy (exact)", v) for k, v in metrics["accuracy_by_size"].items()]
        lookup = {normalize_answer(n): n for n in self.names}
        pairs = [[r["category"], lookup.get(normalize_answer(r["prediction"]), "other")] for r in records]
        plots = {
            "accuracy_by_size": {"kind": "buckets", "title": "classification accuracy (exact) by region size",
                                 "buckets": buckets},
            "confusion_matrix": {"kind": "confusion", "title": "classification confusion (exact answers)",
                                 "labels": self.names, "pairs": pairs},
        }
        return Scores(metrics, rows, plots)
