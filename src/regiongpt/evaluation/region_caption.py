"""Region captioning on RefCOCOg and Visual Genome (RegionGPT Table 2; SPEC §2).

Protocol:
- RefCOCOg: refer layout (``refcocog/refs(umd).p`` + ``refcocog/instances.json``, images in
  ``train2014/``), split val or test. One query per ref (referred object): region = the
  object's mask (``--region-mode box``: its filled box); the model gives a brief caption
  ("Provide a short description for <region1>. Answer with a short phrase.", greedy). It
  is scored against all sentences of that ref.
- Visual Genome: ``region_descriptions.json`` (boxes + phrases) restricted to the DenseCap
  test split that GRiT and GPT4RoI use (a list of image ids: JSON list or one id per line).
  One query per distinct box of an image (regions with the same image and box are one
  query whose references are all their phrases); region = the box; same brief prompt.
  Boxes with no area are skipped; boxes partly outside the image are clipped.
- Metrics: pycocoevalcap as ``COCOEvalCap`` runs it — PTB tokenisation (lower-case,
  punctuation removed) of predictions and references, then METEOR (1.5, Java), CIDEr(-D,
  document frequencies from this set's references), BLEU-4 and ROUGE-L over all queries.
  SPICE is not computed (it downloads a model on first use). All regions of an image are
  captioned in one batch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from regiongpt.data.refer import load_refer, refs_by_image
from regiongpt.data.files import read_json
from regiongpt.errors import InvalidInputError
from regiongpt.evaluation.metrics import caption_metrics, require_java
from regiongpt.evaluation.runner import Benchmark, ImageJob, Query, Scores

CAPTION_METRICS = ("METEOR", "CIDEr", "BLEU-4", "ROUGE-L")
VG_IMAGE_FOLDERS = ("", "VG_100K", "VG_100K_2", "images")


class CaptionBenchmark(Benchmark):
    """Shared scoring: brief captions against each query's reference sentences."""

    references: dict[str, list[str]]

    def preflight(self) -> None:
        require_java()

    def predict(self, model, jobs: Sequence[ImageJob]) -> list[list[dict[str, Any]]]:
        answers = model.describe_many([(str(job.image), [q.payload for q in job.queries]) for job in jobs],
                                      task="brief")
        return [[{"prediction": a.text} for a in image_answers] for image_answers in answers]

    def score(self, records: Sequence[dict[str, Any]]) -> Scores:
        predictions = {r["query_id"]: r["prediction"] for r in records}
        references = {qid: self.references[qid] for qid in predictions}
        result = caption_metrics(references, predictions, CAPTION_METRICS)
        metrics = {"count": len(records), **result.corpus}
        rows = [("all", "queries", len(records))] + [("all", name, result.corpus[name]) for name in CAPTION_METRICS]
        plots = {"cider_distribution": {"kind": "histogram", "title": f"{self.task}: per-region CIDEr",
                                        "values": list(result.per_query["CIDEr"].values()), "xlabel": "CIDEr"}}
        return Scores(metrics, rows, plots)


class RefCOCOgCaption(CaptionBenchmark):
    task = "refcocog-caption"

    def __init__(self, root: str | os.PathLike, images_dir: str | os.PathLike, split: str = "val",
                 dataset: str = "refcocog", split_by: str = "umd", region_mode: str = "mask"):
        self.refer = load_refer(root, dataset, split_by, splits=[split])
        self.images_dir = Path(images_dir)
        self.split = split
        self.region_mode = region_mode
        self.references = {str(r.ref_id): [s.sent for s in r.sentences] for r in self.refer.refs}

    def settings(self) -> dict[str, Any]:
        return {"dataset": self.refer.dataset, "split_by": self.refer.split_by, "split": self.split,
                "region_mode": self.region_mode}

    def data_files(self) -> list[Path]:
        return [self.refer.refs_file, self.refer.instances_file]

    def jobs(self, limit: int | None = None) -> list[ImageJob]:
        jobs = []
        for image_id, refs in refs_by_image(self.refer.refs).items():
            queries = [Query(str(r.ref_id), {"image_id": image_id, "ref_id": r.ref_id, "ann_id": r.ann_id},
                             r.region(self.region_mode)) for r in refs]
            jobs.append(ImageJob(self.refer.image_path(image_id, self.images_dir), queries))
            if limit is not None and len(jobs) >= limit:
                break
        return jobs


def read_image_ids(path: str | os.PathLike) -> list[int]:
    """Image ids from a JSON list (DenseCap's test.json) or a text file with one id per line."""
    path = Path(path)
    text = path.read_text().strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = text.split()
    if isinstance(data, dict):  # {"test": [...]} style split files
        data = data.get("test", data.get("ids"))
    try:
        return [int(v) for v in data]
    except (TypeError, ValueError):
        raise InvalidInputError(f"{path} must list image ids: a JSON list of integers or one id per line") from None


def find_vg_image(images_dir: Path, image_id: int) -> Path:
    for folder in VG_IMAGE_FOLDERS:
        candidate = images_dir / folder / f"{image_id}.jpg"
        if candidate.exists():
            return candidate
    raise InvalidInputError(f"image {image_id}.jpg not found in {images_dir} (looked in "
                            f"{', '.join(f or '.' for f in VG_IMAGE_FOLDERS)}); give the Visual Genome image folder")


class VisualGenomeCaption(CaptionBenchmark):
    task = "vg-caption"

    def __init__(self, region_descriptions: str | os.PathLike, images_dir: str | os.PathLike,
                 split_file: str | os.PathLike | None = None):
        self.file = Path(region_descriptions)
        self.split_file = Path(split_file) if split_file else None
        self.images_dir = Path(images_dir)
        data = read_json(self.file)
        if not isinstance(data, list) or (data and not isinstance(data[0], dict)) or (data and "regions" not in data[0]):
            raise InvalidInputError(f"{self.file} is not Visual Genome region_descriptions.json: it must be a list "
                                    "of {id, regions: [{region_id, image_id, phrase, x, y, width, height}]}")
        wanted = set(read_image_ids(self.split_file)) if self.split_file else None
        self.images: list[tuple[int, list[dict[str, Any]]]] = []
        for entry in data:
            regions = entry.get("regions") or []
            image_id = entry.get("id", entry.get("image_id", regions[0]["image_id"] if regions else None))
            if image_id is None or (wanted is not None and int(image_id) not in wanted):
                continue
            self.images.append((int(image_id), regions))
        if not self.images:
            raise InvalidInputError(f"no images of {self.split_file or 'the file'} have regions in {self.file}")
        self.references: dict[str, list[str]] = {}
        self.skipped_empty = 0

    def settings(self) -> dict[str, Any]:
        return {"split_file": str(self.split_file.resolve()) if self.split_file else None}

    def data_files(self) -> list[Path]:
        return [self.file] + ([self.split_file] if self.split_file else [])

    def jobs(self, limit: int | None = None) -> list[ImageJob]:
        jobs = []
        self.references = {}
        for image_id, regions in self.images:
            path = find_vg_image(self.images_dir, image_id)
            with Image.open(path) as image:
                width, height = image.size
            by_box: dict[tuple, list[dict[str, Any]]] = {}
            for region in regions:
                x, y, w, h = (float(region[k]) for k in ("x", "y", "width", "height"))
                x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
                if x2 <= x1 or y2 <= y1:
                    self.skipped_empty += 1
                    continue
                by_box.setdefault((x1, y1, x2, y2), []).append(region)
            queries = []
            for box, group in by_box.items():
                qid = str(group[0]["region_id"])
                self.references[qid] = [str(g["phrase"]) for g in group]
                queries.append(Query(qid, {"image_id": image_id, "region_ids": [g["region_id"] for g in group],
                                           "box": list(box)}, {"box": list(box)}))
            if queries:
                jobs.append(ImageJob(path, queries))
            if limit is not None and len(jobs) >= limit:
                break
        return jobs

    def score(self, records: Sequence[dict[str, Any]]) -> Scores:
        if not self.references:
            self.jobs()
        scores = super().score(records)
        scores.metrics["skipped_empty_boxes"] = self.skipped_empty
        return scores
