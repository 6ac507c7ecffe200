"""Batch jobs for `regiongpt describe`: a folder of images, native JSON lines or a COCO file.

Results are appended to a JSON-lines file as they are produced (one line per image); an
interrupted run started again with the same command skips the images already written (a
half-written last line is dropped). An image that cannot be read is reported on its own line
with an ``error`` and the job goes on.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from regiongpt.cli.common import check_inputs
from regiongpt.errors import USER_ERRORS, InvalidInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


@dataclass
class Job:
    key: str  # unique per image; how resume recognises done work
    image: Path
    regions: list[Any]
    meta: dict[str, Any]


def is_batch_input(path: str) -> bool:
    p = Path(path)
    return p.is_dir() or p.suffix in (".jsonl", ".json")


def iter_jobs(source: str, cli_regions: list[Any] | None, images_dir: str | None) -> Iterator[Job]:
    path = Path(source)
    if path.is_dir():
        if not cli_regions:
            raise InvalidInputError("describing a folder needs regions for every image: pass --box/--mask "
                                    "(use --normalized boxes for images of different sizes)")
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InvalidInputError(f"{path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        for file in files:
            yield Job(file.name, file, cli_regions, {})
    elif path.suffix == ".jsonl":
        from regiongpt.data.native import read_native_jsonl

        for sample in read_native_jsonl(path):
            regions = [{"segmentation": r.mask} if r.mask else {"box": r.box} for r in sample.regions]
            yield Job(sample.id, sample.image_path(), regions, {"region_ids": [r.id for r in sample.regions]})
    elif path.suffix == ".json":
        from regiongpt.data.coco import iter_coco_images

        for image in iter_coco_images(path, images_dir):
            if image.annotations:
                yield Job(str(image.id), image.path, image.regions(),
                          {"image_id": image.id, "annotation_ids": [a["id"] for a in image.annotations]})
    else:
        raise InvalidInputError(f"{source}: give an image, a folder of images, a .jsonl (native) or a .json (COCO)")


def done_keys(output: Path) -> set[str]:
    """Keys already written; a torn last line (killed mid-write) is cut off."""
    if not output.exists():
        return set()
    keys: set[str] = set()
    good_bytes = 0
    with output.open("rb") as handle:
        for line in handle:
            try:
                keys.add(json.loads(line)["key"])
            except (json.JSONDecodeError, KeyError, UnicodeDecodeError):
                break
            if not line.endswith(b"\n"):
                break
            good_bytes += len(line)
    if good_bytes != output.stat().st_size:
        with output.open("r+b") as handle:
            handle.truncate(good_bytes)
    return keys


def run_batch(model, args, cli_regions: list[Any] | None) -> int:
    if args.output is None:
        raise InvalidInputError("batch input needs --output OUT.jsonl (results are written as they come)")
    jobs = list(iter_jobs(args.image, cli_regions, args.images))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    done = done_keys(output)
    todo = [job for job in jobs if job.key not in done]
    failures = 0
    categories = [c.strip() for c in args.categories.split(",") if c.strip()] if args.categories else None
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="describe", unit="image", file=sys.stderr)
    with output.open("a") as handle:
        for start in range(0, len(todo), args.batch_images):
            batch = todo[start : start + args.batch_images]
            lines, ready = [], []
            for job in batch:
                try:
                    check_inputs(job.image, job.regions)  # a bad image or region stays out of the batch
                    ready.append(job)
                except (FileNotFoundError, *USER_ERRORS) as error:
                    failures += 1
                    message = f"file not found: {error.filename}" if isinstance(error, FileNotFoundError) else str(error)
                    print(f"regiongpt describe: warning: skipped {job.image}: {message}", file=sys.stderr)
                    lines.append({"key": job.key, "image": str(job.image), "error": message, **job.meta})
            if ready:
                answers = model.describe_many([(str(job.image), job.regions) for job in ready], task=args.task,
                                              categories=categories, return_scores=args.scores,
                                              max_new_tokens=args.max_new_tokens)
                for job, image_answers in zip(ready, answers):
                    lines.append({"key": job.key, "image": str(job.image), "task": args.task, **job.meta,
                                  "answers": [_answer_json(a) for a in image_answers]})
            for line in lines:
                handle.write(json.dumps(line) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
            bar.update(len(batch))
    bar.close()
    print(f"wrote {len(todo) - failures} image(s) to {output} ({len(done)} already there, {failures} skipped)")
    return 1 if failures else 0


def _answer_json(answer) -> dict[str, Any]:
    out = {"region": answer.region + 1, "answer": answer.text}
    if answer.score is not None:
        out["score"] = answer.score
    if answer.category_scores:
        out["category_scores"] = answer.category_scores
    return out
