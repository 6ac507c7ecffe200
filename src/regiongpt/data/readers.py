"""Readers: every supported data format -> native samples (one interface: ``reader(source, report)``).

Each reader takes a :class:`~regiongpt.data.sources.Source` and a
:class:`~regiongpt.data.sources.ReadReport` and yields
:class:`~regiongpt.data.native.NativeSample` objects. Malformed entries are reported with
their file and index and skipped (the report raises instead when it is strict). Formats:

- ``native``: RegionGPT JSON lines (validated line by line).
- ``coco``: COCO instances JSON; segmentations as polygons, uncompressed or compressed RLE
  (all stored as compressed RLE); crowd annotations are left out. Tasks: classify (the file's
  category list), brief / detailed (annotation ``caption`` / ``detailed_caption`` or
  ``attributes.brief`` / ``attributes.detailed`` when present), existence; label and
  relation on request.
- ``refcoco``: the refer layout (RefCOCO, RefCOCO+, RefCOCOg); one sample per image, regions
  = the image's instances (non-crowd, plus referred crowd ones: the REC candidates of the
  evaluation), brief captions and REC from the referring sentences.
- ``vg``: Visual Genome ``region_descriptions.json``; regions = boxes, brief captions = phrases.
- ``llava``: LLaVA conversation JSON (image-level chat, task ``chat``), ``<image>`` moved to
  the start of the first human turn as LLaVA's preprocessing does.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from regiongpt.data.coco import load_coco
from regiongpt.data.native import IMAGE_TOKEN, NativeRegion, NativeSample, validate_sample_json
from regiongpt.data.refer import load_refer_files, resolve_refer_root
from regiongpt.data.sources import DEFAULT_SPLIT_BY, REFER_DATASETS, ReadReport, Source, set_origin
from regiongpt.data.tasks import (
    AnnotatedImage,
    AnnotatedRegion,
    TaskOptions,
    build_sample,
    clean_text,
    conversation_from_turns,
    sample_rng,
)
from regiongpt.data.files import read_json
from regiongpt.errors import InvalidInputError
from regiongpt.processing.rle import _decode_counts, decode_rle, encode_rle, rle_area

DEFAULT_TASKS = {
    "coco": ("classify", "brief", "detailed", "existence"),
    "refcoco": ("brief", "rec"),
    "vg": ("brief",),
    "llava": ("chat",),
}
AVAILABLE_TASKS = {
    "coco": ("classify", "label", "brief", "detailed", "relation", "existence"),
    "refcoco": ("classify", "label", "brief", "rec", "relation", "existence"),
    "vg": ("brief", "relation"),
    "llava": ("chat",),
}
BOX_TOLERANCE = 1.0  # pixels a box may reach outside the image before it is reported (it is clipped anyway)
_ROLES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_tasks(source: Source, reader: str) -> tuple[str, ...]:
    tasks = source.tasks if source.tasks is not None else DEFAULT_TASKS[reader]
    bad = [t for t in tasks if t not in AVAILABLE_TASKS[reader]]
    if bad:
        raise InvalidInputError(f"data source {source.name}: the {reader} reader cannot build task(s) {', '.join(bad)}; "
                                f"it builds: {', '.join(AVAILABLE_TASKS[reader])}")
    return tuple(tasks)


def _wanted_split(source: Source, split: str) -> bool:
    return source.split is None or split in source.split


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image file's header (raises OSError / UnidentifiedImageError)."""
    with Image.open(path) as image:
        return image.size


# ----- regions ---------------------------------------------------------------------------------------
def clip_box(box: Sequence[float], width: int, height: int, report: ReadReport, file: Any, index: Any,
             what: str = "box") -> list[float] | None:
    """An xyxy box clipped to the image; reports boxes reaching outside it; None when nothing is left."""
    x1, y1, x2, y2 = (float(v) for v in box)
    clipped = [min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height)]
    if clipped[2] - clipped[0] <= 0 or clipped[3] - clipped[1] <= 0:
        report.add("box-outside", file, index, f"{what} {[round(v, 2) for v in box]} (xyxy) is empty or outside the "
                   f"{width}x{height} image; skipped")
        return None
    outside = max(-x1, -y1, x2 - width, y2 - height)
    if outside > BOX_TOLERANCE:
        report.add("box-outside", file, index, f"{what} {[round(v, 2) for v in box]} (xyxy) reaches {outside:.1f} px "
                   f"outside the {width}x{height} image; clipped", skipped=False)
    return clipped


def _polygon_rle(polygons: list, height: int, width: int) -> dict[str, Any]:
    """COCO polygons -> compressed RLE (pycocotools when installed, else the processor's rasteriser)."""
    try:
        from pycocotools import mask as mask_utils
    except ImportError:  # pragma: no cover - pycocotools is in the coco / dev extras
        from regiongpt.processing.regions import InvalidRegionError, parse_region

        try:
            return encode_rle(parse_region({"segmentation": polygons}, (height, width)).mask)
        except InvalidRegionError:
            return encode_rle(__import__("numpy").zeros((height, width), dtype=bool))
    rle = mask_utils.merge(mask_utils.frPyObjects([list(map(float, p)) for p in polygons], height, width))
    counts = rle["counts"]
    return {"size": [height, width], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def segmentation_rle(segmentation: Any, width: int, height: int) -> tuple[dict[str, Any] | None, str | None]:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) as compressed RLE, or (None, why)."""
    if isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and isinstance(counts, (str, bytes, list))):
            return None, "segmentation RLE must be {'size': [h, w], 'counts': ...}"
        if [int(v) for v in size] != [height, width]:
            return None, f"segmentation RLE size {list(size)} does not match the image's [height, width] = [{height}, {width}]"
        if isinstance(counts, bytes):
            counts = counts.decode("ascii")
        try:
            if isinstance(counts, list):  # uncompressed (crowd) RLE: store compressed
                return encode_rle(decode_rle({"size": [height, width], "counts": counts})), None
            total = sum(_decode_counts(counts))
        except (ValueError, TypeError, IndexError) as error:
            return None, f"segmentation RLE is corrupt ({error})"
        if total != height * width:
            return None, f"segmentation RLE covers {total} pixels, but the image has {height}x{width}; it is corrupt"
        return {"size": [height, width], "counts": counts}, None
    if isinstance(segmentation, list):
        parts = segmentation
        if not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and all(_is_number(v) for v in p)
                   for p in parts):
            return None, "segmentation polygons must be lists of at least 3 (x, y) points, flat: [x1, y1, x2, y2, ...]"
        return _polygon_rle(parts, height, width), None
    return None, f"unsupported segmentation {type(segmentation).__name__}"


def annotation_region(ann: Any, width: int, height: int, categories: dict[Any, str], report: ReadReport,
                      file: Any, index: Any) -> NativeRegion | None:
    """A COCO annotation as a native region (box from ``bbox``, mask from ``segmentation``), or None (reported)."""
    if not isinstance(ann, dict):
        report.add("malformed", file, index, "an annotation must be an object")
        return None
    bbox = ann.get("bbox")
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        report.add("malformed", file, index, f"bbox must be 4 numbers [x, y, w, h], got {bbox!r}")
        return None
    if ann.get("category_id") not in categories:
        report.add("malformed", file, index, f"category_id {ann.get('category_id')!r} is not in 'categories'")
        return None
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        report.add("malformed", file, index, f"bbox {list(bbox)} has no area (w and h must be > 0)")
        return None
    box = clip_box([x, y, x + w, y + h], width, height, report, file, index, "bbox")
    if box is None:
        return None
    mask = None
    segmentation = ann.get("segmentation")
    if segmentation:
        mask, why = segmentation_rle(segmentation, width, height)
        if why:
            report.add("malformed", file, index, why)
            return None
        if rle_area(mask) == 0:
            report.add("empty-mask", file, index, "segmentation covers no pixel of the image; skipped")
            return None
    attributes = {k: ann[k] for k in ("area", "iscrowd") if k in ann}
    return NativeRegion(id=ann.get("id", index), box=box, mask=mask, category=categories[ann["category_id"]],
                        attributes=attributes)


def _caption(ann: dict[str, Any], keys: Sequence[str], attribute: str) -> str | None:
    for key in keys:
        if isinstance(ann.get(key), str) and ann[key].strip():
            return clean_text(ann[key])
    attributes = ann.get("attributes")
    if isinstance(attributes, dict) and isinstance(attributes.get(attribute), str) and attributes[attribute].strip():
        return clean_text(attributes[attribute])
    return None


def _cap_regions(regions: list[AnnotatedRegion], limit: int | None, keep: set[int] = frozenset()) -> list[AnnotatedRegion]:
    """At most ``limit`` regions, file order kept; regions at positions in ``keep`` first."""
    if limit is None or len(regions) <= limit:
        return regions
    chosen = [i for i in range(len(regions)) if i in keep][:limit]
    chosen += [i for i in range(len(regions)) if i not in keep][: limit - len(chosen)]
    return [regions[i] for i in sorted(chosen)]


# ----- COCO --------------------------------------------------------------------------------------------
def default_coco_images(instances: Path) -> Path:
    """``images/`` beside the file; for ``annotations/instances_train2017.json``, ``../train2017/``; else the file's folder."""
    if (instances.parent / "images").is_dir():
        return instances.parent / "images"
    if instances.parent.name == "annotations":
        guess = instances.parent.parent / instances.stem.split("_")[-1]
        if guess.is_dir():
            return guess
    return instances.parent


def _category_table(data: dict[str, Any], file: Path, report: ReadReport) -> dict[Any, str]:
    categories: dict[Any, str] = {}
    for index, cat in enumerate(data.get("categories") or []):
        if not isinstance(cat, dict) or "id" not in cat or not isinstance(cat.get("name"), str):
            report.add("malformed", file, f"categories[{index}]", "a category needs 'id' and 'name'")
            continue
        categories[cat["id"]] = cat["name"]
    return categories


def read_coco(source: Source, report: ReadReport) -> Iterator[NativeSample]:
    """COCO instances JSON -> one sample per image with annotations (see the module docstring)."""
    path = source.path
    tasks = _check_tasks(source, "coco")
    data = load_coco(path)
    images_dir = source.images or default_coco_images(path)
    categories = _category_table(data, path, report)
    options = TaskOptions(tasks=tasks, categories=tuple(categories.values()), rec_negatives=source.rec_negatives)
    by_image: dict[Any, list[tuple[int, dict[str, Any]]]] = {}
    for index, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann:
            report.add("malformed", path, f"annotations[{index}]", "an annotation needs 'image_id'")
            continue
        if ann.get("iscrowd", 0):
            continue
        by_image.setdefault(ann["image_id"], []).append((index, ann))
    default_split = path.stem.split("_")[-1] if path.stem.startswith("instances_") else ""
    if source.split is not None and not any(isinstance(i, dict) and "split" in i for i in data["images"]) \
            and default_split not in source.split:
        raise InvalidInputError(f"data source {source.name}: its images carry no 'split' field, so split "
                                f"{','.join(source.split)} cannot be selected; give the instances file of that split instead")
    for index, entry in enumerate(data["images"]):
        where = f"images[{index}]"
        if not (isinstance(entry, dict) and "id" in entry and isinstance(entry.get("file_name"), str)
                and isinstance(entry.get("width"), int) and isinstance(entry.get("height"), int)
                and entry["width"] > 0 and entry["height"] > 0):
            report.add("malformed", path, where, "an image needs 'id', 'file_name' and positive integer 'width' and 'height'")
            continue
        split = str(entry.get("split", default_split))
        if not _wanted_split(source, split):
            continue
        width, height = entry["width"], entry["height"]
        regions = []
        for ann_index, ann in by_image.get(entry["id"], []):
            region = annotation_region(ann, width, height, categories, report, path, f"annotations[{ann_index}]")
            if region is None:
                continue
            brief = _caption(ann, ("caption", "brief_caption"), "brief")
            detailed = _caption(ann, ("detailed_caption", "caption_detailed"), "detailed")
            regions.append(AnnotatedRegion(region, captions=[brief] if brief else [], detailed=detailed))
        regions = _cap_regions(regions, source.max_regions)
        if not regions:
            continue
        sample_id = f"coco-{entry['id']}"
        image = AnnotatedImage(sample_id, entry["file_name"], width, height, regions, source="coco", split=split,
                               base_dir=images_dir)
        sample = build_sample(image, options, sample_rng(source.seed, "coco", sample_id))
        if sample is not None:
            yield set_origin(sample, path, where)


# ----- refer layout ------------------------------------------------------------------------------------------
def _refer_dataset(source: Source) -> str:
    if source.dataset:
        return source.dataset
    path = source.path
    if list(path.glob("refs(*).p")):
        return path.name
    found = [d for d in REFER_DATASETS if (path / d).is_dir()]
    if len(found) == 1:
        return found[0]
    raise InvalidInputError(f"data source {source.name}: say which data set of {path} to read: "
                            f"refcoco:{path}:DATASET:SPLITBY with DATASET one of {', '.join(found or REFER_DATASETS)}")


def _refer_split_by(folder: Path, dataset: str, split_by: str | None) -> str:
    if split_by:
        return split_by
    found = sorted(p.name[len("refs("):-len(").p")] for p in folder.glob("refs(*).p"))
    if len(found) == 1:
        return found[0]
    default = DEFAULT_SPLIT_BY.get(dataset)
    if default in found or not found:
        return default or "umd"
    raise InvalidInputError(f"{folder} has several refs files ({', '.join(found)}); add the split-by: "
                            f"refcoco:ROOT:{dataset}:SPLITBY")


def default_refer_images(root: Path) -> Path:
    for name in ("images", "train2014"):
        if (root / name).is_dir():
            return root / name
    return root


def read_refcoco(source: Source, report: ReadReport) -> Iterator[NativeSample]:
    """Refer layout -> one sample per image with refs (see the module docstring)."""
    tasks = _check_tasks(source, "refcoco")
    dataset = _refer_dataset(source)
    root = resolve_refer_root(source.path, dataset)
    folder = root / dataset
    split_by = _refer_split_by(folder, dataset, source.split_by)
    raw, instances = load_refer_files(folder, dataset, split_by)
    refs_file, instances_file = folder / f"refs({split_by}).p", folder / "instances.json"
    images_dir = source.images or default_refer_images(root)
    categories = _category_table(instances, instances_file, report)
    images = {i["id"]: i for i in instances["images"] if isinstance(i, dict) and "id" in i}
    ann_index: dict[Any, int] = {}
    anns_by_image: dict[Any, list[int]] = {}
    for index, ann in enumerate(instances["annotations"]):
        if isinstance(ann, dict) and "id" in ann and "image_id" in ann:
            ann_index[ann["id"]] = index
            anns_by_image.setdefault(ann["image_id"], []).append(index)
    present_splits = set()
    groups: dict[Any, list[tuple[int, dict[str, Any]]]] = {}
    for index, ref in enumerate(raw):
        if not (isinstance(ref, dict) and all(k in ref for k in ("ref_id", "ann_id", "image_id", "split", "sentences"))
                and isinstance(ref["sentences"], list)):
            report.add("malformed", refs_file, index, "a ref needs ref_id, ann_id, image_id, split and a list of sentences")
            continue
        present_splits.add(str(ref["split"]))
        if not _wanted_split(source, str(ref["split"])):
            continue
        if ref["ann_id"] not in ann_index or ref["image_id"] not in images:
            missing = "annotation" if ref["ann_id"] not in ann_index else "image"
            report.add("malformed", refs_file, index, f"ref {ref['ref_id']} names {missing} "
                       f"{ref['ann_id'] if missing == 'annotation' else ref['image_id']}, which {instances_file.name} lacks")
            continue
        groups.setdefault(ref["image_id"], []).append((index, ref))
    if source.split is not None and not groups and not (set(source.split) & present_splits):
        raise InvalidInputError(f"{refs_file} has no refs in split(s) {', '.join(source.split)}; "
                                f"its splits are: {', '.join(sorted(present_splits)) or 'none'}")
    pool = tuple((clean_text(s.get("sent", s.get("raw", ""))), categories.get(ref.get("category_id")))
                 for refs in groups.values() for _, ref in refs for s in ref["sentences"] if isinstance(s, dict))
    options = TaskOptions(tasks=tasks, categories=tuple(categories.values()), rec_negatives=source.rec_negatives,
                          negative_phrases=pool)
    for image_id, refs in groups.items():
        entry = images[image_id]
        width, height = entry.get("width"), entry.get("height")
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0
                and isinstance(entry.get("file_name"), str)):
            report.add("malformed", instances_file, f"images[id={image_id}]", "an image needs 'file_name', 'width' and 'height'")
            continue
        sentences_by_ann: dict[Any, list[str]] = {}
        for index, ref in refs:
            texts = [clean_text(s.get("sent", s.get("raw", ""))) for s in ref["sentences"] if isinstance(s, dict)]
            texts = [t for t in texts if t]
            if not texts:
                report.add("malformed", refs_file, index, f"ref {ref['ref_id']} has no sentence text")
                continue
            sentences_by_ann.setdefault(ref["ann_id"], []).extend(texts)
        regions, referred = [], set()
        for index in anns_by_image.get(image_id, []):
            ann = instances["annotations"][index]
            if ann.get("iscrowd", 0) and ann["id"] not in sentences_by_ann:
                continue
            region = annotation_region(ann, width, height, categories, report, instances_file, f"annotations[{index}]")
            if region is None:
                continue
            texts = sentences_by_ann.get(ann["id"], [])
            if texts:
                referred.add(len(regions))
            regions.append(AnnotatedRegion(region, captions=list(texts), referring=list(texts)))
        regions = _cap_regions(regions, source.max_regions, referred)
        if not any(r.referring for r in regions):
            continue
        sample_id = f"{dataset}-{image_id}"
        image = AnnotatedImage(sample_id, entry["file_name"], width, height, regions, source=dataset,
                               split=str(refs[0][1]["split"]), base_dir=images_dir)
        sample = build_sample(image, options, sample_rng(source.seed, dataset, sample_id))
        if sample is not None:
            yield set_origin(sample, refs_file, refs[0][0])


# ----- Visual Genome -------------------------------------------------------------------------------------------
def _vg_image_table(path: Path) -> dict[int, tuple[int, int, str | None]]:
    """``image_data.json`` beside the file: image id -> (width, height, 'VG_100K/1.jpg')."""
    table: dict[int, tuple[int, int, str | None]] = {}
    meta = path.parent / "image_data.json"
    if not meta.is_file():
        return table
    for entry in json.loads(meta.read_text()):
        if isinstance(entry, dict) and isinstance(entry.get("width"), int) and isinstance(entry.get("height"), int):
            image_id = entry.get("image_id", entry.get("id"))
            url = entry.get("url")
            relative = "/".join(url.rstrip("/").split("/")[-2:]) if isinstance(url, str) and "/" in url else None
            table[image_id] = (entry["width"], entry["height"], relative)
    return table


def _vg_split_ids(source: Source) -> set[int] | None:
    if source.split is None:
        return None
    for folder in (source.path.parent, source.images):
        if folder is not None and (folder / "densecap_splits.json").is_file():
            splits = json.loads((folder / "densecap_splits.json").read_text())
            unknown = [s for s in source.split if s not in splits]
            if unknown:
                raise InvalidInputError(f"{folder / 'densecap_splits.json'} has no split(s) {', '.join(unknown)}; "
                                        f"it has: {', '.join(splits)}")
            return {int(i) for s in source.split for i in splits[s]}
    raise InvalidInputError(f"data source {source.name}: selecting split {','.join(source.split)} needs the DenseCap "
                            f"split file densecap_splits.json ({{'train': [image ids], 'val': [...], 'test': [...]}}) "
                            f"beside {source.path.name}")


def read_vg(source: Source, report: ReadReport) -> Iterator[NativeSample]:
    """Visual Genome region descriptions -> one sample per image, one brief caption per region."""
    path = source.path
    tasks = _check_tasks(source, "vg")
    data = read_json(path)
    if not isinstance(data, list):
        raise InvalidInputError(f"{path} is not Visual Genome region_descriptions.json: it must be a list of "
                                "{id, regions: [{region_id, image_id, phrase, x, y, width, height}]}")
    images_dir = source.images or path.parent
    table = _vg_image_table(path)
    wanted = _vg_split_ids(source)
    options = TaskOptions(tasks=tasks)
    split = ",".join(source.split) if source.split else ""
    for index, entry in enumerate(data):
        if not isinstance(entry, dict) or not isinstance(entry.get("regions"), list):
            report.add("malformed", path, index, "an entry needs 'id' and a list of 'regions'")
            continue
        image_id = entry.get("id", entry.get("image_id"))
        if image_id is None and entry["regions"]:
            image_id = entry["regions"][0].get("image_id") if isinstance(entry["regions"][0], dict) else None
        if not isinstance(image_id, int):
            report.add("malformed", path, index, "an entry needs an integer image 'id'")
            continue
        if wanted is not None and image_id not in wanted:
            continue
        width, height, relative = table.get(image_id, (None, None, None))
        candidates = [images_dir / relative] if relative else []
        candidates += [images_dir / f"{image_id}.jpg", images_dir / "VG_100K" / f"{image_id}.jpg",
                       images_dir / "VG_100K_2" / f"{image_id}.jpg"]
        image_path = next((c for c in candidates if c.is_file()), candidates[0])
        if width is None:
            try:
                width, height = image_size(image_path)
            except FileNotFoundError:
                report.add("missing-image", path, index, f"image {image_id}: {image_path} does not exist (its size is "
                           "needed; give the images folder, or put image_data.json beside the file)")
                continue
            except (OSError, UnidentifiedImageError) as error:
                report.add("unreadable-image", path, index, f"image {image_path}: {error}")
                continue
        by_box: dict[tuple[float, ...], AnnotatedRegion] = {}
        for r, region in enumerate(entry["regions"]):
            values = [region.get(k) for k in ("x", "y", "width", "height")] if isinstance(region, dict) else []
            phrase = clean_text(region.get("phrase", "")) if isinstance(region, dict) else ""
            if len(values) != 4 or not all(_is_number(v) for v in values) or not phrase:
                report.add("malformed", path, index, f"regions[{r}] needs a phrase and numbers x, y, width, height")
                continue
            x, y, w, h = (float(v) for v in values)
            if w <= 0 or h <= 0:
                report.add("malformed", path, index, f"regions[{r}] has no area (width {w}, height {h})")
                continue
            box = clip_box([x, y, x + w, y + h], width, height, report, path, index, f"regions[{r}] box")
            if box is None:
                continue
            key = tuple(round(v, 2) for v in box)
            if key in by_box:
                if phrase not in by_box[key].captions:
                    by_box[key].captions.append(phrase)
                continue
            by_box[key] = AnnotatedRegion(NativeRegion(id=region.get("region_id", r), box=box), captions=[phrase])
        regions = _cap_regions(list(by_box.values()), source.max_regions)
        if not regions:
            continue
        sample_id = f"vg-{image_id}"
        image = AnnotatedImage(sample_id, str(image_path.relative_to(images_dir)), width, height, regions, source="vg",
                               split=split, base_dir=images_dir)
        sample = build_sample(image, options, sample_rng(source.seed, "vg", sample_id))
        if sample is not None:
            yield set_origin(sample, path, index)


# ----- LLaVA ------------------------------------------------------------------------------------------------------
def llava_turns(conversations: Any) -> list[dict[str, str]]:
    """LLaVA turns -> native turns: roles mapped, a leading non-human turn and a trailing human turn
    dropped (as LLaVA's preprocessing skips them), ``<image>`` moved to the start of the first human
    turn. Raises ValueError for anything else."""
    if not isinstance(conversations, list) or not conversations:
        raise ValueError("'conversations' must be a non-empty list of {from, value}")
    turns = []
    for t, turn in enumerate(conversations):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or turn.get("from") not in _ROLES:
            raise ValueError(f"conversations[{t}] must be {{'from': 'human' or 'gpt', 'value': text}}")
        turns.append({"from": _ROLES[turn["from"]], "value": turn["value"]})
    if turns[0]["from"] != "human":
        turns = turns[1:]
    if turns and turns[-1]["from"] == "human":
        turns = turns[:-1]
    if not turns:
        raise ValueError("no question-answer pair")
    for t, turn in enumerate(turns):
        if turn["from"] != ("human", "gpt")[t % 2]:
            raise ValueError(f"conversations must alternate human and gpt (turn {t} is {turn['from']})")
        turn["value"] = turn["value"].replace(IMAGE_TOKEN, "").strip()  # as LLaVA's preprocess_multimodal
    turns[0]["value"] = f"{IMAGE_TOKEN}\n{turns[0]['value']}"
    return turns


def read_llava(source: Source, report: ReadReport) -> Iterator[NativeSample]:
    """LLaVA conversation JSON -> one image-level chat sample per entry (text-only entries are skipped)."""
    path = source.path
    _check_tasks(source, "llava")
    if source.split is not None:
        raise InvalidInputError(f"data source {source.name}: LLaVA conversation files have no splits; drop the split")
    data = read_json(path)
    if not isinstance(data, list):
        raise InvalidInputError(f"{path} is not LLaVA conversation JSON: it must be a list of "
                                "{id, image, conversations: [{from, value}, ...]}")
    images_dir = source.images or path.parent
    for index, entry in enumerate(data):
        if not isinstance(entry, dict):
            report.add("malformed", path, index, "an entry must be an object {id, image, conversations}")
            continue
        if "image" not in entry:
            report.note("text-only")
            continue
        if not isinstance(entry["image"], str) or not entry["image"]:
            report.add("malformed", path, index, "'image' must be one image path (relative to the images folder)")
            continue
        try:
            turns = llava_turns(entry.get("conversations"))
        except ValueError as error:
            report.add("malformed", path, index, str(error))
            continue
        image_path = images_dir / entry["image"]
        try:
            width, height = image_size(image_path)
        except FileNotFoundError:
            report.add("missing-image", path, index, f"image {image_path} does not exist")
            continue
        except (OSError, UnidentifiedImageError) as error:
            report.add("unreadable-image", path, index, f"image {image_path}: {error}")
            continue
        sample = NativeSample(id=f"llava-{entry.get('id', index)}", image=entry["image"], width=width, height=height,
                              conversations=turns, source="llava", base_dir=images_dir)
        try:
            validate_sample_json(sample.to_json(), f"{path}[{index}]")
        except InvalidInputError as error:
            report.add("malformed", path, index, str(error).split(": ", 1)[-1])
            continue
        yield set_origin(sample, path, index)


# ----- native ----------------------------------------------------------------------------------------------------
def keep_tasks(sample: NativeSample, tasks: Sequence[str]) -> NativeSample | None:
    """The sample with only the question-answer pairs of ``tasks`` (turns without a task are ``chat``)."""
    turns = sample.conversations
    pairs = [(turns[t], turns[t + 1]) for t in range(0, len(turns) - 1, 2) if (turns[t].get("task") or "chat") in tasks]
    if not pairs:
        return None
    qa = [(q.get("task") or "chat", re.sub(r"\s*<image>\s*", " ", q["value"]).strip(), a["value"],
           *([a["evidence"]] if "evidence" in a else [])) for q, a in pairs]
    conversation = conversation_from_turns(qa)
    for turn, (q, _) in zip(conversation[0::2], pairs):
        if "task" not in q:
            turn.pop("task")
    return dataclasses.replace(sample, conversations=conversation)


def read_native(source: Source, report: ReadReport) -> Iterator[NativeSample]:
    """Native JSON lines (each line validated; a bad line is reported with its number and skipped)."""
    path = source.path
    base_dir = (source.images or path.parent).resolve()
    with path.open("r", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as error:
                report.add("malformed", path, number, f"line is not valid JSON ({error.msg} at column {error.colno})")
                continue
            try:
                sample = NativeSample.from_json(obj, f"{path}:{number}", base_dir)
            except InvalidInputError as error:
                report.add("malformed", path, number, str(error).split(f"{path}:{number}: ", 1)[-1])
                continue
            if not _wanted_split(source, sample.split):
                continue
            if source.tasks is not None:
                sample = keep_tasks(sample, source.tasks)
                if sample is None:
                    continue
            if source.max_regions is not None and len(sample.regions) > source.max_regions:
                report.add("malformed", path, number, f"{len(sample.regions)} regions, more than max_regions "
                           f"{source.max_regions}; skipped")
                continue
            yield set_origin(sample, path, number)


__all__ = ["AVAILABLE_TASKS", "DEFAULT_TASKS", "annotation_region", "clip_box", "default_coco_images", "image_size",
           "keep_tasks", "llava_turns", "read_coco", "read_llava", "read_native", "read_refcoco", "read_vg",
           "segmentation_rle"]
