"""Parse every region format users have into a boolean mask on the original image.

Accepted region forms (see :func:`parse_region`):

- a box: a sequence / 1-D array of 4 numbers, ``{"box": [...]}`` or ``{"bbox": [...]}``,
  in ``xyxy`` or ``xywh`` (``"format"`` key or ``box_format=``), in pixels or normalised to
  0..1 (``"normalized"`` key or ``normalized=``);
- a polygon: COCO form (a list of flat ``[x1, y1, x2, y2, ...]`` lists, parts are united),
  or a list of ``(x, y)`` points; bare, or as ``{"polygon": ...}`` / ``{"segmentation": ...}``;
- a COCO RLE, compressed (string counts) or uncompressed (list counts): a ``{"size",
  "counts"}`` dict, bare or under ``"segmentation"``;
- a binary mask: numpy array (bool, 0/1, 0/255; float masks are thresholded at 0.5),
  torch tensor, PIL image or a path to an image file (non-zero = inside); bare or as
  ``{"mask": ...}``.

Coordinates use the pixel-edge convention: pixel ``i`` covers ``[i, i + 1)``. A box
``[x1, y1, x2, y2]`` covers every pixel it overlaps with positive area: columns
``floor(x1) .. ceil(x2) - 1`` and rows ``floor(y1) .. ceil(y2) - 1``. A polygon covers the
pixels whose centre ``(i + 0.5, j + 0.5)`` lies inside it (even-odd rule per part, parts
united), which is what pycocotools does for axis-aligned shapes; a sliver that covers no
pixel centre falls back to the pixels PIL's ``ImageDraw`` outline touches.

Errors a user can fix raise :class:`InvalidRegionError`, naming the region as
``<regionN>`` (``N = index + 1``, as in prompts). Boxes and polygons partly outside the
image are clipped with a :class:`RegionClippedWarning`.

Remote-code constraint: this file travels beside checkpoints (``trust_remote_code``), so it
imports only the standard library, numpy, PIL, torch (lazily) and sibling files relatively.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .geometry import ImageGeometry
from .rle import decode_rle

BOX_FORMATS = ("xyxy", "xywh")


class InvalidRegionError(ValueError):
    """A region (box, polygon, RLE, mask) is malformed, empty or outside the image."""


class RegionClippedWarning(UserWarning):
    """A box or polygon reached outside the image and was clipped to it."""


@dataclass(frozen=True)
class Region:
    """A region in normalised form: its mask on the original image and its box.

    ``mask`` is bool ``(h, w)``; ``box`` is ``xyxy`` in original pixel-edge coordinates: the
    (clipped) box the user gave for box regions, the mask's tight box otherwise. ``kind`` is
    one of ``"box"``, ``"polygon"``, ``"rle"``, ``"mask"``.
    """

    mask: np.ndarray
    box: tuple[float, float, float, float]
    kind: str


def region_to_mask(
    region: Any,
    image_size_hw: tuple[int, int],
    index: int = 0,
    box_format: str = "xyxy",
    normalized: bool = False,
) -> np.ndarray:
    """The boolean ``(h, w)`` mask of any accepted region form (see the module docstring)."""
    return parse_region(region, image_size_hw, index=index, box_format=box_format, normalized=normalized).mask


def parse_region(
    region: Any,
    image_size_hw: tuple[int, int],
    index: int = 0,
    box_format: str = "xyxy",
    normalized: bool = False,
) -> Region:
    """Normalise any accepted region form to a :class:`Region` on an ``(h, w)`` image.

    ``index`` (0-based) only names the region in messages. ``box_format`` and
    ``normalized`` apply to boxes that do not say otherwise (a dict's ``"format"`` /
    ``"normalized"`` keys win).
    """
    size = _image_size(image_size_hw)
    if isinstance(region, Region):
        return _from_mask(region.mask, size, index, kind=region.kind, box=region.box)
    if isinstance(region, Mapping):
        return _parse_dict(region, size, index, box_format, normalized)
    if _is_mask_like(region):
        return _from_mask(_load_mask(region, index), size, index, kind="mask")
    if _is_box(region):
        return _parse_box(region, size, index, box_format, normalized)
    if isinstance(region, Sequence) and not isinstance(region, (str, bytes)):
        return _parse_polygon(region, size, index)
    raise InvalidRegionError(
        f"{_name(index)}: unsupported region {_short(region)}; give a box of 4 numbers, a polygon, "
        "a COCO RLE dict, a mask (array, tensor, PIL image or image path) or a dict with one of the keys "
        "'box', 'bbox', 'polygon', 'segmentation', 'mask'"
    )


def region_box(mask: Any) -> tuple[float, float, float, float]:
    """Tight ``xyxy`` box of a mask in pixel-edge coordinates (``x2 = last column + 1``)."""
    arr = np.asarray(mask).astype(bool)
    rows, cols = np.flatnonzero(arr.any(axis=1)), np.flatnonzero(arr.any(axis=0))
    if rows.size == 0:
        raise InvalidRegionError("the mask is empty: it has no pixel inside, so it has no box")
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


def prepare_regions(
    regions: Any,
    image_size_hw: tuple[int, int],
    geometry: ImageGeometry,
    box_format: str = "xyxy",
    normalized: bool = False,
    return_original_masks: bool = False,
) -> dict[str, np.ndarray]:
    """Turn a list of user regions into model-ready masks and boxes.

    Returns ``masks``: float32 ``(R, out_h, out_w)`` coverage fractions from
    ``geometry.transform_mask``; ``boxes``: float32 ``(R, 4)`` ``xyxy`` boxes in processed-image
    pixels (the clipped user box for box regions, the tight box of the mask otherwise, mapped
    by ``geometry.map_box``); with ``return_original_masks`` also ``original_masks``: bool
    ``(R, h, w)``. ``None`` or an empty list gives ``(0, out_h, out_w)`` and ``(0, 4)``.
    """
    size = _image_size(image_size_hw)
    if tuple(geometry.original_size) != size:
        raise ValueError(f"the geometry is for an image of {geometry.original_size} (h, w) but the image is {size}")
    parsed = [
        parse_region(region, size, index=i, box_format=box_format, normalized=normalized)
        for i, region in enumerate(_region_list(regions))
    ]
    out_h, out_w = geometry.output_size
    masks = np.zeros((len(parsed), out_h, out_w), dtype=np.float32)  # (R, out_h, out_w)
    boxes = np.zeros((len(parsed), 4), dtype=np.float32)  # (R, 4)
    for i, region in enumerate(parsed):
        masks[i] = geometry.transform_mask(region.mask)
        boxes[i] = geometry.map_box(region.box)
    result = {"masks": masks, "boxes": boxes}
    if return_original_masks:
        original = np.zeros((len(parsed),) + size, dtype=bool)  # (R, h, w)
        for i, region in enumerate(parsed):
            original[i] = region.mask
        result["original_masks"] = original
    return result


# --- dispatch helpers -------------------------------------------------------------------


def _region_list(regions: Any) -> list[Any]:
    """The user's regions as a list (``None`` = none; an array/tensor iterates its first axis)."""
    if regions is None:
        return []
    if isinstance(regions, (Mapping, str, bytes, os.PathLike, Image.Image)):
        raise InvalidRegionError(
            f"regions must be a list of regions (one per <regionN>), got a single {type(regions).__name__}; "
            "wrap it in a list"
        )
    return list(regions)


def _parse_dict(
    region: Mapping[str, Any], size: tuple[int, int], index: int, box_format: str, normalized: bool
) -> Region:
    """Dispatch a dict region by its keys; masks beat polygons beat boxes (COCO annotations
    carry both ``segmentation`` and ``bbox``; the segmentation is the finer one)."""
    box_format = region.get("format", region.get("box_format", box_format))
    normalized = bool(region.get("normalized", normalized))
    if "mask" in region:
        return _from_mask(_load_mask(region["mask"], index), size, index, kind="mask")
    if "segmentation" in region:
        return _parse_segmentation(region["segmentation"], size, index)
    if "polygon" in region:
        return _parse_polygon(region["polygon"], size, index)
    if "counts" in region and "size" in region:
        return _parse_rle(region, size, index)
    for key in ("box", "bbox"):
        if key in region:
            return _parse_box(region[key], size, index, box_format, normalized)
    raise InvalidRegionError(
        f"{_name(index)}: a region dict needs one of the keys 'box', 'bbox', 'polygon', 'segmentation', "
        f"'mask' or an RLE's 'size' and 'counts'; got keys {sorted(map(str, region))}"
    )


def _parse_segmentation(segmentation: Any, size: tuple[int, int], index: int) -> Region:
    """COCO ``segmentation``: an RLE dict or polygons."""
    if isinstance(segmentation, Mapping):
        return _parse_rle(segmentation, size, index)
    return _parse_polygon(segmentation, size, index)


def _is_mask_like(region: Any) -> bool:
    """Whether ``region`` is a mask given as an image, a path, a tensor or a 2-D+ array."""
    if isinstance(region, (Image.Image, str, bytes, os.PathLike)):
        return True
    if hasattr(region, "detach") and hasattr(region, "ndim"):
        return region.ndim >= 2
    return isinstance(region, np.ndarray) and region.ndim >= 2


def _is_box(region: Any) -> bool:
    """Whether ``region`` is exactly 4 numbers (a sequence, 1-D array or 1-D tensor)."""
    if hasattr(region, "detach"):
        region = region.detach().cpu().numpy()
    if isinstance(region, np.ndarray):
        return region.shape == (4,) and np.issubdtype(region.dtype, np.number)
    return (
        isinstance(region, Sequence)
        and not isinstance(region, (str, bytes))
        and len(region) == 4
        and all(_is_number(v) for v in region)
    )


# --- boxes ------------------------------------------------------------------------------


def _parse_box(box: Any, size: tuple[int, int], index: int, box_format: str, normalized: bool) -> Region:
    """A box → clipped xyxy pixel box and its rasterised mask."""
    xyxy = _box_to_xyxy_pixels(box, size, index, box_format, normalized)
    clipped = _clip_box(xyxy, size, index)
    return Region(mask=_rasterise_box(clipped, size), box=clipped, kind="box")


def _box_to_xyxy_pixels(
    box: Any, size: tuple[int, int], index: int, box_format: str, normalized: bool
) -> tuple[float, float, float, float]:
    """Read 4 numbers as ``xyxy`` pixels, converting ``xywh`` and 0..1 coordinates; no clipping."""
    if box_format not in BOX_FORMATS:
        raise InvalidRegionError(f"{_name(index)}: unknown box format {box_format!r}; use one of {BOX_FORMATS}")
    values = _four_numbers(box, index)
    x1, y1, a, b = values
    x2, y2 = (x1 + a, y1 + b) if box_format == "xywh" else (a, b)
    if normalized:
        h, w = size
        x1, x2, y1, y2 = x1 * w, x2 * w, y1 * h, y2 * h
    if not (x2 > x1 and y2 > y1):
        raise InvalidRegionError(
            f"{_name(index)}: box {list(values)} ({box_format}{', normalised' if normalized else ''}) has no area "
            f"(as xyxy pixels: {_fmt_box((x1, y1, x2, y2))}; it needs x2 > x1 and y2 > y1) on an image of "
            f"{_fmt_size(size)}; check the box format (xyxy vs xywh) and the coordinate order"
        )
    return (x1, y1, x2, y2)


def _four_numbers(box: Any, index: int) -> tuple[float, float, float, float]:
    """Exactly 4 finite numbers, or an error that says what was given."""
    if hasattr(box, "detach"):
        box = box.detach().cpu().numpy()
    try:
        values = [float(v) for v in np.asarray(box, dtype=np.float64).reshape(-1)]
    except (TypeError, ValueError):
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise InvalidRegionError(f"{_name(index)}: a box must be 4 finite numbers, got {_short(box)}")
    return (values[0], values[1], values[2], values[3])


def _clip_box(xyxy: tuple[float, float, float, float], size: tuple[int, int], index: int) -> tuple[float, float, float, float]:
    """Clip a box to ``[0, w] x [0, h]``: warn if it reached out, refuse if nothing is left."""
    h, w = size
    x1, y1, x2, y2 = xyxy
    clipped = (min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h))
    if not (clipped[2] > clipped[0] and clipped[3] > clipped[1]):
        raise InvalidRegionError(
            f"{_name(index)}: box {_fmt_box(xyxy)} (xyxy pixels) lies wholly outside the image of "
            f"{_fmt_size(size)}; give pixel coordinates inside 0..{w} x 0..{h} "
            "(or normalized=True for 0..1 coordinates)"
        )
    if clipped != tuple(xyxy):
        warnings.warn(
            f"{_name(index)}: box {_fmt_box(xyxy)} reaches outside the image of {_fmt_size(size)}; "
            f"clipped to {_fmt_box(clipped)}",
            RegionClippedWarning,
            stacklevel=4,
        )
    return clipped


def _rasterise_box(xyxy: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """Filled rectangle over every pixel the box overlaps: columns floor(x1)..ceil(x2)-1."""
    h, w = size
    x1, y1, x2, y2 = xyxy
    mask = np.zeros((h, w), dtype=bool)
    mask[int(math.floor(y1)) : min(h, int(math.ceil(y2))), int(math.floor(x1)) : min(w, int(math.ceil(x2)))] = True
    return mask


# --- polygons ---------------------------------------------------------------------------


def _parse_polygon(polygon: Any, size: tuple[int, int], index: int) -> Region:
    """COCO polygons or a list of points → the union of the parts' masks."""
    parts = _polygon_parts(polygon, index)
    _warn_if_polygon_outside(parts, size, index)
    mask = np.zeros(size, dtype=bool)
    for part in parts:
        mask |= _rasterise_polygon(part, size)
    if not mask.any():
        raise InvalidRegionError(
            f"{_name(index)}: polygon covers no pixel of the image of {_fmt_size(size)} "
            f"(points span {_fmt_box(_points_box(parts))}); give pixel coordinates inside the image"
        )
    return Region(mask=mask, box=region_box(mask), kind="polygon")


def _polygon_parts(polygon: Any, index: int) -> list[np.ndarray]:
    """Parts as ``(n, 2)`` float arrays, from COCO flat lists, a flat list or a point list."""
    if hasattr(polygon, "detach"):
        polygon = polygon.detach().cpu().numpy()
    items = [polygon] if isinstance(polygon, np.ndarray) else list(polygon)
    if not items:
        raise InvalidRegionError(f"{_name(index)}: polygon has no points; a polygon needs at least 3 (x, y) points")
    if all(_is_number(v) for v in items):  # one flat [x1, y1, x2, y2, ...] list
        return [_points(items, index)]
    if all(_is_point(v) for v in items):  # a list of (x, y) points
        return [_points(items, index)]
    return [_points(part, index) for part in items]  # COCO: a list of flat lists


def _points(part: Any, index: int) -> np.ndarray:
    """One part as an ``(n, 2)`` array of at least 3 finite points."""
    try:
        arr = np.asarray(part, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidRegionError(f"{_name(index)}: polygon part {_short(part)} is not a list of numbers") from None
    if arr.ndim == 1:
        if arr.size % 2:
            raise InvalidRegionError(
                f"{_name(index)}: flat polygon {_short(part)} has an odd number of values; it must be x1, y1, x2, y2, ..."
            )
        arr = arr.reshape(-1, 2)
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] < 3 or not np.isfinite(arr).all():
        raise InvalidRegionError(
            f"{_name(index)}: degenerate polygon {_short(part)}: a polygon needs at least 3 finite (x, y) points "
            "(COCO form: [[x1, y1, x2, y2, x3, y3, ...], ...])"
        )
    return arr


def _rasterise_polygon(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre is inside the polygon (even-odd scanline); slivers fall back to PIL."""
    mask = _scanline_fill(points, size)
    if not mask.any():
        mask = _pil_outline(points, size)
    return mask


def _scanline_fill(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Even-odd fill sampled at pixel centres ``(i + 0.5, j + 0.5)``, vectorised over rows."""
    h, w = size
    x0, y0 = points[:, 0], points[:, 1]  # (E,)
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    yc = np.arange(h, dtype=np.float64)[:, None] + 0.5  # (h, 1)
    crosses = ((y0 <= yc) & (yc < y1)) | ((y1 <= yc) & (yc < y0))  # (h, E)
    with np.errstate(divide="ignore", invalid="ignore"):
        xs = x0 + (yc - y0) * (x1 - x0) / (y1 - y0)  # (h, E)
    xs = np.sort(np.where(crosses, xs, np.inf), axis=1)  # crossings first, inf after
    if xs.shape[1] % 2:
        xs = np.concatenate([xs, np.full((h, 1), np.inf)], axis=1)  # (h, E + 1): whole pairs
    starts, ends = xs[:, 0::2], xs[:, 1::2]  # (h, P) entering / leaving crossings
    valid = np.isfinite(starts) & np.isfinite(ends)  # (h, E/2) pairs of crossings
    col_lo = np.clip(np.ceil(starts - 0.5), 0, w)
    col_hi = np.clip(np.ceil(ends - 0.5), 0, w)
    rows, pair = np.nonzero(valid & (col_hi > col_lo))
    diff = np.zeros((h, w + 1), dtype=np.int32)
    np.add.at(diff, (rows, col_lo[rows, pair].astype(np.int64)), 1)
    np.add.at(diff, (rows, col_hi[rows, pair].astype(np.int64)), -1)
    return np.cumsum(diff, axis=1)[:, :w] > 0


def _pil_outline(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pixels PIL's ``ImageDraw.polygon`` touches (outline included), for slivers."""
    h, w = size
    canvas = Image.new("1", (w, h), 0)
    shifted = [(float(x) - 0.5, float(y) - 0.5) for x, y in points]  # PIL puts pixel centres at integers
    ImageDraw.Draw(canvas).polygon(shifted, fill=1, outline=1)
    return np.array(canvas, dtype=bool)


def _warn_if_polygon_outside(parts: list[np.ndarray], size: tuple[int, int], index: int) -> None:
    """Warn (``RegionClippedWarning``) when polygon points reach outside the image."""
    h, w = size
    x1, y1, x2, y2 = _points_box(parts)
    if x1 < 0 or y1 < 0 or x2 > w or y2 > h:
        warnings.warn(
            f"{_name(index)}: polygon points span {_fmt_box((x1, y1, x2, y2))}, outside the image of "
            f"{_fmt_size(size)}; the polygon is clipped to the image",
            RegionClippedWarning,
            stacklevel=5,
        )


def _points_box(parts: list[np.ndarray]) -> tuple[float, float, float, float]:
    """Bounding box of all parts' points."""
    allp = np.concatenate(parts, axis=0)
    return (float(allp[:, 0].min()), float(allp[:, 1].min()), float(allp[:, 0].max()), float(allp[:, 1].max()))


# --- RLE and masks ----------------------------------------------------------------------


def _parse_rle(rle: Mapping[str, Any], size: tuple[int, int], index: int) -> Region:
    """A COCO RLE (compressed or not) → mask, checking its size against the image."""
    try:
        rle_size = tuple(int(v) for v in rle["size"])
        mask = decode_rle(dict(rle))
    except (KeyError, TypeError, ValueError) as err:
        raise InvalidRegionError(f"{_name(index)}: invalid COCO RLE: {err}") from None
    if rle_size != size:
        raise InvalidRegionError(
            f"{_name(index)}: RLE size {_fmt_size(rle_size)} does not match the image size {_fmt_size(size)}; "
            "the RLE belongs to another image or was made for a resized copy"
        )
    return _from_mask(mask, size, index, kind="rle")


def _load_mask(mask: Any, index: int) -> np.ndarray:
    """Any mask form → bool array; non-zero = inside (float masks: > 0.5)."""
    if isinstance(mask, (str, bytes, os.PathLike)):
        mask = _open_mask_image(mask, index)
    if isinstance(mask, Image.Image):
        return _pil_to_bool(mask)
    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    arr = np.asarray(mask)
    if arr.dtype == bool:
        return arr
    if not np.issubdtype(arr.dtype, np.number):
        raise InvalidRegionError(f"{_name(index)}: a mask must be numeric or boolean, got dtype {arr.dtype}")
    return arr > 0.5 if np.issubdtype(arr.dtype, np.floating) else arr != 0


def _open_mask_image(path: Any, index: int) -> Image.Image:
    """Open a mask image file, with a message naming the path if it cannot be read."""
    path = os.fsdecode(path)
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except FileNotFoundError:
        raise InvalidRegionError(f"{_name(index)}: mask file {path!r} does not exist") from None
    except OSError as err:
        raise InvalidRegionError(f"{_name(index)}: cannot read mask image {path!r}: {err}") from None


def _pil_to_bool(img: Image.Image) -> np.ndarray:
    """A PIL mask → bool ``(h, w)``: palette/grey values non-zero; colour: any channel non-zero
    (alpha ignored, unless the image is only alpha-shaped, e.g. mode ``LA``/``RGBA`` with
    constant colour, where the alpha is the mask)."""
    arr = np.array(img)
    if arr.ndim == 2:
        return arr != 0
    colour = arr[..., :3] if img.mode in ("RGBA", "RGBa") else arr[..., :1] if img.mode in ("LA", "La") else arr
    if img.mode in ("RGBA", "RGBa", "LA", "La") and colour.min() == colour.max():
        return arr[..., -1] != 0
    return (colour != 0).any(axis=-1)


def _from_mask(
    mask: np.ndarray,
    size: tuple[int, int],
    index: int,
    kind: str,
    box: tuple[float, float, float, float] | None = None,
) -> Region:
    """Check a mask's size and emptiness and wrap it as a Region."""
    arr = np.asarray(mask).astype(bool)
    if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
        arr = arr.reshape(arr.shape[1:] if arr.shape[0] == 1 else arr.shape[:-1])
    if arr.shape != size:
        raise InvalidRegionError(
            f"{_name(index)}: mask has size {_fmt_size(arr.shape)} but the image is {_fmt_size(size)}; "
            "a mask must have the image's height and width (resize it with nearest-neighbour first)"
        )
    if not arr.any():
        raise InvalidRegionError(f"{_name(index)}: mask is empty (no pixel inside); drop the region or fix the mask")
    return Region(mask=arr, box=box if box is not None else region_box(arr), kind=kind)


# --- small utilities --------------------------------------------------------------------


def _image_size(size: Any) -> tuple[int, int]:
    """A positive ``(h, w)`` int pair."""
    h, w = (int(v) for v in size)
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive (h, w), got {tuple(size)}")
    return (h, w)


def _is_number(value: Any) -> bool:
    """A real scalar (Python, numpy or 0-d array), not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _is_point(value: Any) -> bool:
    """An ``(x, y)`` pair."""
    return (
        isinstance(value, (Sequence, np.ndarray))
        and not isinstance(value, (str, bytes))
        and len(value) == 2
        and all(_is_number(v) for v in value)
    )


def _name(index: int) -> str:
    """How messages name region ``index``: as the prompt placeholder users write."""
    return f"region {index + 1} (<region{index + 1}>)"


def _fmt_box(box: Sequence[float]) -> str:
    """A box as ``[x1, y1, x2, y2]`` with short numbers."""
    return "[" + ", ".join(f"{float(v):g}" for v in box) + "]"


def _fmt_size(size: Sequence[int]) -> str:
    """A size as ``HxW (h x w)``, to make the order plain."""
    return f"{size[0]}x{size[1]} (h x w)"


def _short(value: Any, limit: int = 80) -> str:
    """A short repr for messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
