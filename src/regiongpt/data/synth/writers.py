"""Write a synthetic world to disk in the standard formats, deterministically by seed.

Layout of ``OUT``::

    images/000001.png ...            the rendered scenes
    instances.json                   COCO instances (compressed-RLE visible masks, xywh boxes)
    refcocog/refs(umd).p             refer-layout referring expressions (pickle protocol 2)
    refcocog/instances.json          the same COCO instances, file names relative to images/
    pope/synth_pope_{random,popular,adversarial}.jsonl   yes/no existence questions
    native/{train,val}.jsonl         native samples (regions + multi-turn conversation)
    meta.json, README.md             counts, seed, vocabulary
    gallery.png                      a few scenes with numbered regions and captions

Every file is written to a temporary name and renamed into place. Scenes are generated
one at a time (image ``i`` depends only on the seed and ``i``) so memory stays flat.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import re
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from regiongpt.data.files import atomic_write_bytes
from regiongpt.data.native import write_native_jsonl
from regiongpt.data.synth.annotate import existence_negatives, existence_positives, present_pairs
from regiongpt.data.synth.conversation import REC_PER_IMAGE, REC_PHRASE_STYLES, native_sample
from regiongpt.data.synth.gallery import render_gallery
from regiongpt.data.synth.generate import DEFAULT_HEIGHT, DEFAULT_WIDTH, generate_scene, scene_rng, text_rng
from regiongpt.data.synth.scene import Scene
from regiongpt.data.synth.world import CATEGORIES, COLOURS, DIFFICULTY_TAGS, SIZES, TEXTURES, category_id
from regiongpt.errors import InvalidInputError
from regiongpt.processing.instructions import REC_ANSWER_STYLES, build_instruction
from regiongpt.processing.rle import encode_rle

POPE_SETTINGS: tuple[str, ...] = ("random", "popular", "adversarial")
POPE_PER_IMAGE = 3  # positives (and as many negatives) per image and setting, as in POPE
GALLERY_SCENES = 6
MIN_SIDE = 64
MAX_SIDE = 4096
IMAGE_NAME = re.compile(r"^\d{6,}\.png$")
REFS_FILE = "refs(umd).p"


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _jsonl_bytes(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


def png_bytes(image: np.ndarray) -> bytes:
    """PNG encoding of a uint8 RGB array (deterministic: no timestamps or metadata).

    Level 1 zlib: the noisy scenes barely compress further, and it is ~4x faster than level 6.
    """
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def check_arguments(out: Path, images: int, seed: int, width: int, height: int, val_fraction: float, overwrite: bool) -> None:
    """Raise :class:`InvalidInputError` (what was wrong and how to fix it) for bad arguments."""
    if not isinstance(images, int) or images < 1:
        raise InvalidInputError(f"--images must be a positive integer, got {images}; ask for at least 1 image")
    if not isinstance(seed, int) or seed < 0:
        raise InvalidInputError(f"--seed must be a non-negative integer, got {seed}")
    for name, value in (("--width", width), ("--height", height)):
        if not MIN_SIDE <= value <= MAX_SIDE:
            raise InvalidInputError(f"{name} must be between {MIN_SIDE} and {MAX_SIDE} pixels, got {value}")
    if not 0.0 <= val_fraction < 1.0:
        raise InvalidInputError(f"--val-fraction must be in [0, 1), got {val_fraction}; e.g. 0.1 keeps 10% of the images for validation")
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"output {out} exists and is not a folder; choose a folder path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InvalidInputError(f"output folder {out} is not empty; choose an empty or new folder, or pass --overwrite to replace a previous world there")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as error:
        raise InvalidInputError(f"cannot write to output folder {out} ({error.strerror or error}); choose a folder you can write to") from None


def split_of(index: int, images: int, val_fraction: float) -> str:
    """``train`` or ``val`` for image ``index``: the last ``round(N * F)`` images are validation."""
    n_val = int(round(images * val_fraction))
    if val_fraction > 0 and images >= 2:
        n_val = min(max(n_val, 1), images - 1)
    else:
        n_val = 0
    return "val" if index >= images - n_val else "train"


@dataclass
class _Collected:
    """What is kept of each scene after its image is written (no pixels, no masks)."""

    coco_images: list[dict[str, Any]] = field(default_factory=list)
    coco_annotations: list[dict[str, Any]] = field(default_factory=list)
    refs: list[dict[str, Any]] = field(default_factory=list)
    native: dict[str, list] = field(default_factory=lambda: {"train": [], "val": []})
    pope_images: list[tuple[bool, str, list[tuple[str, str]]]] = field(default_factory=list)
    gallery: list[Scene] = field(default_factory=list)
    category_counts: Counter = field(default_factory=Counter)
    tag_counts: Counter = field(default_factory=Counter)
    sentences: int = 0


def _collect_scene(store: _Collected, scene: Scene, index: int, file_name: str, split: str, ref_split: str, seed: int,
                   rec_per_image: int | None = REC_PER_IMAGE, existence_per_image: int | None = 1,
                   rec_answers: str = "direct", rec_phrases: str = "first") -> None:
    image_id = index + 1
    first_ann = len(store.coco_annotations) + 1
    ann_ids = [first_ann + k for k in range(len(scene.objects))]
    rles = [encode_rle(obj.mask) for obj in scene.objects]
    store.coco_images.append({"id": image_id, "file_name": file_name, "width": scene.width, "height": scene.height, "split": split})
    for k, obj in enumerate(scene.objects):
        x1, y1, x2, y2 = obj.box
        store.coco_annotations.append(
            {
                "id": ann_ids[k],
                "image_id": image_id,
                "category_id": category_id(obj.category),
                "segmentation": rles[k],
                "area": obj.area,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "iscrowd": 0,
                "attributes": {"colour": obj.colour, "size": obj.size, "texture": obj.texture, "brief": obj.brief, "tags": list(obj.tags)},
            }
        )
        store.category_counts[obj.category] += 1
        store.tag_counts.update(obj.tags)
        if obj.referring:
            sentences = []
            for sent in obj.referring:
                store.sentences += 1
                sentences.append({"sent_id": store.sentences, "sent": sent, "tokens": sent.split(), "raw": sent})
            store.refs.append(
                {
                    "ref_id": len(store.refs) + 1,
                    "ann_id": ann_ids[k],
                    "image_id": image_id,
                    "category_id": category_id(obj.category),
                    "split": ref_split,
                    "sentences": sentences,
                    "sent_ids": [s["sent_id"] for s in sentences],
                    "file_name": file_name,
                }
            )
    sample = native_sample(
        scene, f"synth-{split}-{image_id:06d}", f"../images/{file_name}", split, ann_ids, text_rng(seed, index), masks=rles,
        rec_per_image=rec_per_image, existence_per_image=existence_per_image, rec_answers=rec_answers,
        rec_phrases=rec_phrases,
    )
    store.native[split].append(sample)
    store.pope_images.append((split != "train", file_name, present_pairs(scene)))


def pope_rows(images: list[tuple[str, list[tuple[str, str]]]], setting: str, seed: int, popular_order: list[str]) -> list[dict[str, Any]]:
    """POPE questions of one setting: per image up to 3 present categories and as many negatives."""
    rows: list[dict[str, Any]] = []
    for file_name, pairs in images:
        rng = random.Random(f"regiongpt-synth-pope:{seed}:{setting}:{file_name}")
        positives = existence_positives(pairs, rng, POPE_PER_IMAGE)
        negatives = existence_negatives(pairs, rng, setting, POPE_PER_IMAGE, popular_order)
        k = min(len(positives), len(negatives))
        for phrase, label in [(p, "yes") for p in positives[:k]] + [(n, "no") for n in negatives[:k]]:
            text = build_instruction("existence", phrase=phrase, use_suffix=False)
            rows.append({"question_id": len(rows) + 1, "image": file_name, "text": text, "label": label})
    return rows


def _clear_previous(out: Path) -> None:
    """With --overwrite: remove images a previous run left (only names this generator writes)."""
    folder = out / "images"
    if folder.is_dir():
        for path in folder.iterdir():
            if IMAGE_NAME.match(path.name) and path.is_file():
                path.unlink()


def _readme(meta: dict[str, Any]) -> str:
    tags = ", ".join(f"{k}: {v}" for k, v in meta["tag_counts"].items())
    ref_splits = ", ".join(f"{k} {v}" for k, v in meta["ref_splits"].items())
    pope = ", ".join(f"{k} {v}" for k, v in meta["pope"].items())
    return f"""# RegionGPT synthetic world

Generated by `regiongpt synth` (seed {meta['seed']}, {meta['images']} images of {meta['width']}x{meta['height']} pixels).
Same seed and arguments give byte-identical files. See `docs/synthetic-world.md` in the project.

- `images/` — {meta['images']} PNG scenes ({meta['splits']['train']} train, {meta['splits']['val']} val).
- `instances.json` — COCO instances: {meta['annotations']} objects, visible masks as compressed RLE, `bbox` xywh.
- `refcocog/refs(umd).p` + `refcocog/instances.json` — {meta['refs']} referred objects ({meta['sentences']} sentences; refer layout, splits: {ref_splits}).
- `pope/synth_pope_{{random,popular,adversarial}}.jsonl` — yes/no existence questions ({pope}), on the {meta['pope_images']}.
- `native/{{train,val}}.jsonl` — one line per image: all regions and one multi-turn conversation (`docs/native-format.md`).
- `gallery.png` — a few scenes with numbered regions and their captions.

Categories ({len(meta['categories'])}): {', '.join(meta['categories'])}.
Colours ({len(meta['colours'])}): {', '.join(meta['colours'])}.
Textures: {', '.join(meta['textures'])}. Sizes: {', '.join(meta['sizes'])} (from the visible area).
Difficulty tags per region — {tags}.
"""


def write_world(
    out: str | os.PathLike,
    images: int,
    seed: int = 0,
    width: int = DEFAULT_WIDTH,
    height: int = DEFAULT_HEIGHT,
    val_fraction: float = 0.1,
    overwrite: bool = False,
    progress: bool = True,
    rec_per_image: int | None = REC_PER_IMAGE,
    existence_per_image: int | None = 1,
    rec_answers: str = "direct",
    rec_phrases: str = "first",
) -> dict[str, Any]:
    """Generate ``images`` scenes and write every format to ``out``; returns the meta dict.

    ``rec_per_image`` / ``existence_per_image`` set how many REC and existence questions each
    native conversation asks (None: all of them, see ``build_conversation``), ``rec_phrases``
    how REC questions pick their phrases ("first", "either" or "referring", ``rec_questions``) and
    ``rec_answers`` how they are answered there ("direct" or "checked"); the other formats
    (the refer layout's expressions included) do not depend on them.

    Raises :class:`InvalidInputError` for bad arguments (N < 1, unwritable or non-empty ``out``
    without ``overwrite``, sizes out of range, a validation fraction outside [0, 1)).
    """
    out = Path(out)
    for name, value in (("rec_per_image", rec_per_image), ("existence_per_image", existence_per_image)):
        if value is not None and (not isinstance(value, int) or value < 0):
            raise InvalidInputError(f"{name} must be a count >= 0 or None (all), got {value!r}")
    if rec_answers not in REC_ANSWER_STYLES:
        raise InvalidInputError(f"rec_answers must be one of {', '.join(REC_ANSWER_STYLES)}, got {rec_answers!r}")
    if rec_phrases not in REC_PHRASE_STYLES:
        raise InvalidInputError(f"rec_phrases must be one of {', '.join(REC_PHRASE_STYLES)}, got {rec_phrases!r}")
    check_arguments(out, images, seed, width, height, val_fraction, overwrite)
    if overwrite:
        _clear_previous(out)
    for sub in ("images", "refcocog", "pope", "native"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    store = _Collected()
    n_val_seen = 0
    for index in tqdm(range(images), desc="synth", unit="img", file=sys.stderr, disable=not progress):
        scene = generate_scene(scene_rng(seed, index), width, height)
        file_name = f"{index + 1:06d}.png"
        atomic_write_bytes(out / "images" / file_name, png_bytes(scene.image))
        split = split_of(index, images, val_fraction)
        ref_split = split
        if split == "val":
            ref_split = "val" if n_val_seen % 2 == 0 else "test"
            n_val_seen += 1
        _collect_scene(store, scene, index, file_name, split, ref_split, seed, rec_per_image, existence_per_image,
                       rec_answers, rec_phrases)
        if len(store.gallery) < GALLERY_SCENES:
            store.gallery.append(scene)

    categories = [{"id": category_id(name), "name": name, "supercategory": "shape"} for name in CATEGORIES]
    coco = {
        "info": {"description": "RegionGPT synthetic world", "version": "1.0", "seed": seed},
        "licenses": [],
        "images": store.coco_images,
        "annotations": store.coco_annotations,
        "categories": categories,
    }
    coco_bytes = _json_bytes(coco)
    atomic_write_bytes(out / "instances.json", coco_bytes)
    atomic_write_bytes(out / "refcocog" / "instances.json", coco_bytes)
    atomic_write_bytes(out / "refcocog" / REFS_FILE, pickle.dumps(store.refs, protocol=2))

    held_out = [(f, p) for is_held_out, f, p in store.pope_images if is_held_out]
    pope_on = "held-out (val) images" if held_out else "all images (no val split)"
    pope_images = held_out or [(f, p) for _, f, p in store.pope_images]
    popular_order = sorted(CATEGORIES, key=lambda c: (-store.category_counts[c], CATEGORIES.index(c)))
    pope_counts = {}
    for setting in POPE_SETTINGS:
        rows = pope_rows(pope_images, setting, seed, popular_order)
        pope_counts[setting] = len(rows)
        atomic_write_bytes(out / "pope" / f"synth_pope_{setting}.jsonl", _jsonl_bytes(rows))

    for split, samples in store.native.items():
        write_native_jsonl(out / "native" / f"{split}.jsonl", samples)

    atomic_write_bytes(out / "gallery.png", png_bytes(render_gallery(store.gallery)))

    meta = {
        "generator": "regiongpt.data.synth",
        "seed": seed,
        "images": images,
        "width": width,
        "height": height,
        "val_fraction": val_fraction,
        "rec_per_image": "all" if rec_per_image is None else rec_per_image,
        "existence_per_image": "all" if existence_per_image is None else existence_per_image,
        "rec_answers": rec_answers,
        "rec_phrases": rec_phrases,
        "splits": {split: len(samples) for split, samples in store.native.items()},
        "ref_splits": dict(sorted(Counter(r["split"] for r in store.refs).items())),
        "annotations": len(store.coco_annotations),
        "refs": len(store.refs),
        "sentences": store.sentences,
        "pope": pope_counts,
        "pope_images": pope_on,
        "categories": list(CATEGORIES),
        "colours": {name: list(rgb) for name, rgb in COLOURS.items()},
        "textures": list(TEXTURES),
        "sizes": list(SIZES),
        "category_counts": {c: store.category_counts[c] for c in CATEGORIES},
        "tag_counts": {t: store.tag_counts[t] for t in DIFFICULTY_TAGS},
    }
    atomic_write_bytes(out / "meta.json", json.dumps(meta, indent=2).encode("utf-8") + b"\n")
    atomic_write_bytes(out / "README.md", _readme(meta).encode("utf-8"))
    return meta
