"""The native sample format: JSON lines, one image per line, regions + a multi-turn conversation.

Every other data format converts into this one (see ``docs/native-format.md``). A line is::

    {"id": "synth-train-000001", "image": "../images/000001.png", "width": 256, "height": 192,
     "source": "synth", "split": "train",
     "regions": [{"id": 17, "box": [x1, y1, x2, y2], "mask": {"size": [h, w], "counts": "..."},
                  "category": "star", "attributes": {...}}],
     "conversations": [{"from": "human", "value": "<image>\\n... <region1> ...", "task": "classify"},
                       {"from": "gpt", "value": "star"}]}

``<regionK>`` (1-based) refers to ``regions[K-1]``; ``<image>`` appears exactly once, in the
first human turn. An answer may carry ``"evidence"``: the numbers K of the regions that show
what it says (``[2, 5]`` for "Yes." to "Is there a heart?" when regions 2 and 5 are hearts;
``[]`` when nothing in the image does, as for "No."); training can point attention at them.
``image`` is relative to the JSON-lines file's folder, or absolute.
Validation errors name the file and line and say how to fix the problem.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from regiongpt.data.files import atomic_open
from regiongpt.errors import InvalidInputError

SAMPLE_KEYS = frozenset({"id", "image", "width", "height", "source", "split", "regions", "conversations", "metadata"})
REQUIRED_SAMPLE_KEYS = ("id", "image", "width", "height", "regions", "conversations")
REGION_KEYS = frozenset({"id", "box", "mask", "category", "attributes"})
TURN_KEYS = frozenset({"from", "value", "task", "evidence"})
TURN_ROLES = ("human", "gpt")
TURN_TASKS = ("classify", "label", "brief", "detailed", "rec", "relation", "existence", "chat")
IMAGE_TOKEN = "<image>"
REGION_PATTERN = re.compile(r"<region(\d+)>")


def region_references(text: str) -> list[int]:
    """The 1-based K of every ``<regionK>`` in ``text``, in order of appearance."""
    return [int(k) for k in REGION_PATTERN.findall(text)]


def _fail(where: str, problem: str) -> InvalidInputError:
    return InvalidInputError(f"{where}: {problem}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_region(region: Any, index: int, width: int, height: int, where: str) -> None:
    name = f"regions[{index}]"
    if not isinstance(region, dict):
        raise _fail(where, f"{name} must be an object with 'box' and/or 'mask'")
    unknown = sorted(set(region) - REGION_KEYS)
    if unknown:
        raise _fail(where, f"{name} has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(REGION_KEYS))} (put extra data in 'attributes')")
    box, mask = region.get("box"), region.get("mask")
    if box is None and mask is None:
        raise _fail(where, f"{name} has neither 'box' nor 'mask'; give a box [x1, y1, x2, y2] in pixels or a COCO RLE mask")
    if box is not None:
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
            raise _fail(where, f"{name}.box must be 4 numbers [x1, y1, x2, y2] in pixels, got {box!r}")
        x1, y1, x2, y2 = box
        if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
            raise _fail(where, f"{name}.box {box} is empty or outside the {width}x{height} image; use xyxy pixels with 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height")
    if mask is not None:
        if not (isinstance(mask, dict) and set(mask) == {"size", "counts"} and isinstance(mask["counts"], (str, list))):
            raise _fail(where, f"{name}.mask must be a COCO RLE {{'size': [h, w], 'counts': ...}} or null")
        if list(mask["size"]) != [height, width]:
            raise _fail(where, f"{name}.mask size {mask['size']} does not match the image's [height, width] = [{height}, {width}]")
    if "attributes" in region and not isinstance(region["attributes"], dict):
        raise _fail(where, f"{name}.attributes must be an object")
    if region.get("category") is not None and not isinstance(region["category"], str):
        raise _fail(where, f"{name}.category must be a string or null")


def _check_evidence(evidence: Any, role: str, n_regions: int, where: str, name: str) -> None:
    if role != "gpt":
        raise _fail(where, f"{name}.evidence is on a question; only answers (gpt turns) carry evidence")
    if not isinstance(evidence, list) or not all(isinstance(k, int) and not isinstance(k, bool) for k in evidence):
        raise _fail(where, f"{name}.evidence must be a list of region numbers (the K of <regionK>), e.g. [1, 3]; "
                    f"got {evidence!r}")
    bad = [k for k in evidence if not 1 <= k <= n_regions]
    if bad:
        raise _fail(where, f"{name}.evidence names region {bad[0]} but the sample has {n_regions} region(s); "
                    f"use 1..{n_regions}")
    if len(set(evidence)) != len(evidence):
        raise _fail(where, f"{name}.evidence names a region twice: {evidence}")


def _check_conversations(turns: Any, n_regions: int, where: str) -> None:
    if not isinstance(turns, list) or not turns:
        raise _fail(where, "'conversations' must be a non-empty list of turns")
    image_tokens = 0
    for t, turn in enumerate(turns):
        name = f"conversations[{t}]"
        if not isinstance(turn, dict):
            raise _fail(where, f"{name} must be an object with 'from' and 'value'")
        unknown = sorted(set(turn) - TURN_KEYS)
        if unknown:
            raise _fail(where, f"{name} has unknown key(s) {', '.join(unknown)}; allowed: from, value, task, evidence")
        expected = TURN_ROLES[t % 2]
        if turn.get("from") != expected:
            raise _fail(where, f"{name}.from is {turn.get('from')!r} but turns must alternate human, gpt, human, ... (expected {expected!r})")
        if not isinstance(turn.get("value"), str):
            raise _fail(where, f"{name}.value must be a string")
        if "task" in turn and (expected != "human" or turn["task"] not in TURN_TASKS):
            raise _fail(where, f"{name}.task {turn['task']!r} is not allowed; only human turns carry a task, one of {', '.join(TURN_TASKS)}")
        if "evidence" in turn:
            _check_evidence(turn["evidence"], expected, n_regions, where, name)
        count = turn["value"].count(IMAGE_TOKEN)
        if count and t != 0:
            raise _fail(where, f"{name} contains {IMAGE_TOKEN}; it must appear only in the first human turn")
        image_tokens += count
        if expected == "gpt" and region_references(turn["value"]):
            raise _fail(where, f"{name} (an answer) contains <regionK>; the model cannot generate region "
                        "placeholders, so answers name regions in text, e.g. 'Region [2]'")
        for k in region_references(turn["value"]):
            if not 1 <= k <= n_regions:
                allowed = f"use <region1>..<region{n_regions}>" if n_regions else "add the region to 'regions'"
                raise _fail(where, f"{name} refers to <region{k}> but the sample has {n_regions} region(s); {allowed}")
    if image_tokens != 1:
        raise _fail(where, f"the first human turn must contain {IMAGE_TOKEN} exactly once (found {image_tokens})")


def validate_sample_json(obj: Any, where: str = "<sample>") -> None:
    """Raise :class:`InvalidInputError` (prefixed with ``where``, e.g. ``file:line``) if ``obj`` is not a valid sample."""
    if not isinstance(obj, dict):
        raise _fail(where, "each line must be a JSON object (one image per line)")
    unknown = sorted(set(obj) - SAMPLE_KEYS)
    if unknown:
        raise _fail(where, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(SAMPLE_KEYS))}")
    missing = [k for k in REQUIRED_SAMPLE_KEYS if k not in obj]
    if missing:
        raise _fail(where, f"missing key(s) {', '.join(missing)}")
    width, height = obj["width"], obj["height"]
    if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
        raise _fail(where, f"width and height must be positive integers, got {width!r} x {height!r}")
    if not isinstance(obj["image"], str) or not obj["image"]:
        raise _fail(where, "'image' must be a path (relative to the JSON-lines file's folder, or absolute)")
    if not isinstance(obj["regions"], list):
        raise _fail(where, "'regions' must be a list")
    for r, region in enumerate(obj["regions"]):
        _check_region(region, r, width, height, where)
    _check_conversations(obj["conversations"], len(obj["regions"]), where)


@dataclass
class NativeRegion:
    """One region: a box (xyxy pixels) and/or a COCO RLE mask, a category and free attributes."""

    id: int | str
    box: list[float] | None = None
    mask: dict[str, Any] | None = None
    category: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The region as a plain dict (the line's ``regions[]`` entry)."""
        return {
            "id": self.id,
            "box": [float(v) for v in self.box] if self.box is not None else None,
            "mask": self.mask,
            "category": self.category,
            "attributes": self.attributes,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "NativeRegion":
        """Build from a validated dict; a missing box is derived from the mask."""
        box = obj.get("box")
        if box is None and obj.get("mask") is not None:
            box = box_from_rle(obj["mask"])
        return cls(
            id=obj.get("id", 0),
            box=[float(v) for v in box] if box is not None else None,
            mask=obj.get("mask"),
            category=obj.get("category"),
            attributes=dict(obj.get("attributes") or {}),
        )


def box_from_rle(rle: dict[str, Any]) -> list[float]:
    """Tight xyxy pixel box of an RLE mask (raises InvalidInputError for an empty mask)."""
    import numpy as np

    from regiongpt.processing.rle import decode_rle

    mask = decode_rle(rle)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise InvalidInputError("a region's mask is empty and it has no box; give a non-empty mask or a box")
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


@dataclass
class NativeSample:
    """One image with its regions and one multi-turn conversation about them.

    ``base_dir`` (not serialised) is the folder relative paths in ``image`` are resolved against.
    """

    id: str
    image: str
    width: int
    height: int
    regions: list[NativeRegion] = field(default_factory=list)
    conversations: list[dict[str, str]] = field(default_factory=list)
    source: str = ""
    split: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    base_dir: Path | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The sample as a plain dict (one JSON line); empty optional fields are left out."""
        out: dict[str, Any] = {"id": self.id, "image": self.image, "width": self.width, "height": self.height}
        if self.source:
            out["source"] = self.source
        if self.split:
            out["split"] = self.split
        out["regions"] = [r.to_json() for r in self.regions]
        out["conversations"] = [dict(t) for t in self.conversations]
        if self.metadata:
            out["metadata"] = self.metadata
        return out

    @classmethod
    def from_json(cls, obj: Any, where: str = "<sample>", base_dir: Path | None = None) -> "NativeSample":
        """Validate ``obj`` and build a sample; errors are prefixed with ``where``."""
        validate_sample_json(obj, where)
        return cls._build(obj, base_dir)

    @classmethod
    def _build(cls, obj: dict[str, Any], base_dir: Path | None) -> "NativeSample":
        return cls(
            id=str(obj.get("id", "")),
            image=obj.get("image", ""),
            width=obj.get("width", 0),
            height=obj.get("height", 0),
            regions=[NativeRegion.from_json(r) for r in obj.get("regions", [])],
            conversations=[dict(t) for t in obj.get("conversations", [])],
            source=obj.get("source", ""),
            split=obj.get("split", ""),
            metadata=dict(obj.get("metadata") or {}),
            base_dir=base_dir,
        )

    def validate(self, where: str = "<sample>") -> None:
        """Raise :class:`InvalidInputError` if the sample breaks the format's rules."""
        validate_sample_json(self.to_json(), where)

    def image_path(self) -> Path:
        """The image file: ``image`` itself if absolute, else resolved against ``base_dir``."""
        path = Path(self.image)
        if path.is_absolute() or self.base_dir is None:
            return path
        return (self.base_dir / path).resolve()


def read_native_jsonl(path: str | os.PathLike, validate: bool = True) -> Iterator[NativeSample]:
    """Yield the samples of a native JSON-lines file; problems are reported as ``file:line``."""
    path = Path(path)
    base_dir = path.parent.resolve()
    with path.open("r", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as error:
                raise _fail(where, f"not valid JSON ({error.msg} at column {error.colno}); each line must be one JSON object") from None
            if validate:
                validate_sample_json(obj, where)
            elif not isinstance(obj, dict):
                raise _fail(where, "each line must be a JSON object (one image per line)")
            yield NativeSample._build(obj, base_dir)


def validate_native_jsonl(path: str | os.PathLike) -> int:
    """Validate every line of a native file; returns the number of samples (raises on the first problem)."""
    return sum(1 for _ in read_native_jsonl(path, validate=True))


def write_native_jsonl(path: str | os.PathLike, samples: Iterable[NativeSample]) -> int:
    """Validate and write samples atomically (temporary file, then rename); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with atomic_open(path, "w", encoding="utf-8") as handle:
        for sample in samples:
            count += 1
            obj = sample.to_json()
            validate_sample_json(obj, f"{path}: sample {count} ({sample.id})")
            handle.write(json.dumps(obj, ensure_ascii=False, separators=(", ", ": ")) + "\n")
    return count
