"""The exact map from original-image pixels to processed-image pixels, for regions.

A Hugging Face image processor (CLIP / LLaVA style) turns an image of any size into a fixed
tensor by, in this order: an optional pad-to-square (LLaVA-1.5 "pad" mode), a resize, an
optional center crop and (for the generic backend's ``do_pad``) an optional bottom/right pad.
A region given on the original image (a mask or a box) must go through *exactly* the same
geometry, or region features are pooled from the wrong place. :class:`ImageGeometry`
records that geometry and maps points, boxes and masks through it;
:func:`geometry_for` reads it off an image-processor instance.

Coordinates are continuous and use the pixel-edge convention: pixel ``i`` covers
``[i, i + 1)``, so an image of width ``w`` spans ``[0, w]``. Every step is then an affine
map per axis, which is what the resamplers of PIL (used by the processors' PIL backend) and
torch implement for ``align_corners=False``.

Remote-code constraint: this file travels beside checkpoints and is imported by
``transformers`` with ``trust_remote_code=True`` where ``regiongpt`` is not installed, so it
imports only the standard library, numpy and (lazily) transformers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# Below this total weight a resampled region counts as lost (see ``transform_mask``).
_MIN_TOTAL_WEIGHT = 1e-4


@dataclass(frozen=True)
class ImageGeometry:
    """Where each original pixel lands in the processed image.

    All sizes are ``(height, width)`` and all offsets ``(top, left)``, in pixels.

    - ``original_size``: the image the user gave.
    - ``pad_offset`` / ``padded_size``: after the pad-to-square step the original image sits
      at ``pad_offset`` inside a ``padded_size`` canvas (no padding: offset 0, same size).
    - ``resized_size``: the padded canvas is stretched to this size.
    - ``crop_offset`` / ``output_size``: output pixel ``(y, x)`` shows resized pixel
      ``(y + top, x + left)``; a negative offset or a window beyond the resized image means
      zero padding (``center_crop`` of an image smaller than the crop, or a trailing pad).
    """

    original_size: tuple[int, int]
    pad_offset: tuple[int, int]
    padded_size: tuple[int, int]
    resized_size: tuple[int, int]
    crop_offset: tuple[int, int]
    output_size: tuple[int, int]

    @classmethod
    def identity(cls, size_hw: tuple[int, int]) -> "ImageGeometry":
        """The geometry of a processor that leaves the image untouched."""
        h, w = _check_size(size_hw, "image size")
        return cls((h, w), (0, 0), (h, w), (h, w), (0, 0), (h, w))

    @classmethod
    def build(
        cls,
        original_size: tuple[int, int],
        *,
        pad_to_square: bool = False,
        resize_to: tuple[int, int] | None = None,
        crop_size: tuple[int, int] | None = None,
        pad_to: tuple[int, int] | None = None,
    ) -> "ImageGeometry":
        """Compose the steps the HF processors do, in their order.

        ``pad_to_square`` centres the image in a ``max(h, w)`` square exactly as
        ``LlavaImageProcessorPil.pad_to_square`` (offset ``(max - short) // 2``);
        ``resize_to`` is the resize output ``(h, w)`` (``None``: no resize); ``crop_size``
        is a ``center_crop`` (padding with zeros when the image is smaller, as transformers
        does); ``pad_to`` is the generic backend's bottom/right pad to a fixed size.
        """
        h, w = _check_size(original_size, "image size")
        pad_offset, padded = _square_pad(h, w) if pad_to_square else ((0, 0), (h, w))
        resized = _check_size(resize_to, "resize size") if resize_to is not None else padded
        crop_offset, out = ((0, 0), resized)
        if crop_size is not None:
            crop_offset, out = _center_crop_window(resized, _check_size(crop_size, "crop size"))
        if pad_to is not None:
            out = _trailing_pad(out, _check_size(pad_to, "pad size"))
        return cls((h, w), pad_offset, padded, resized, crop_offset, out)

    @property
    def scale_yx(self) -> tuple[float, float]:
        """Resize factor per axis (processed pixels per padded pixel)."""
        return (
            self.resized_size[0] / self.padded_size[0],
            self.resized_size[1] / self.padded_size[1],
        )

    def map_points(self, xy: Any) -> np.ndarray:
        """Map continuous ``(x, y)`` points (shape ``(..., 2)``) to processed-image coordinates."""
        pts = np.asarray(xy, dtype=np.float64)  # (..., 2)
        if pts.shape[-1:] != (2,):
            raise ValueError(f"points must have shape (..., 2), got {pts.shape}")
        sy, sx = self.scale_yx
        out_x = (pts[..., 0] + self.pad_offset[1]) * sx - self.crop_offset[1]
        out_y = (pts[..., 1] + self.pad_offset[0]) * sy - self.crop_offset[0]
        return np.stack([out_x, out_y], axis=-1)

    def map_box(self, xyxy: Any, clip: bool = True) -> np.ndarray:
        """Map ``xyxy`` boxes (shape ``(..., 4)``) to processed-image coordinates.

        With ``clip`` (default) the result is clipped to the output image ``[0, w] x [0, h]``,
        so a box partly cut off by the center crop keeps only its visible part.
        """
        boxes = np.asarray(xyxy, dtype=np.float64)  # (..., 4)
        if boxes.shape[-1:] != (4,):
            raise ValueError(f"boxes must have shape (..., 4), got {boxes.shape}")
        corners = self.map_points(boxes.reshape(boxes.shape[:-1] + (2, 2)))  # (..., 2, 2)
        mapped = corners.reshape(boxes.shape)
        if clip:
            out_h, out_w = self.output_size
            mapped[..., 0::2] = np.clip(mapped[..., 0::2], 0.0, out_w)
            mapped[..., 1::2] = np.clip(mapped[..., 1::2], 0.0, out_h)
        return mapped

    def transform_mask(self, mask_hw: Any) -> np.ndarray:
        """Resample an original-size mask to the output: float32 ``(out_h, out_w)`` coverage.

        Each output pixel gets the exact fraction of its area covered by the region (the
        mask's mean over the output pixel's footprint in the original image, zeros in the
        padding): an exact box filter, anti-aliased when shrinking and edge-exact when
        enlarging. Soft masks in ``[0, 1]`` are averaged the same way. A non-empty region is
        never lost: if its resampled weight is ~0 (it fell into a gap or was cropped away)
        the output pixel nearest to the region's centroid gets weight 1.
        """
        mask = _as_float_mask(mask_hw, self.original_size)  # (h, w)
        out_h, out_w = self.output_size
        bounds = nonzero_bounds(mask)
        if bounds is None:
            return np.zeros((out_h, out_w), dtype=np.float32)
        (y0, y1), (x0, x1) = bounds
        window = mask[y0:y1, x0:x1]  # only the region's box carries weight; zeros elsewhere
        # only the output pixels whose footprint meets the box can be non-zero: resample onto those
        # (each pixel's value depends on its own two edges alone, so the values are those of the full
        # resampling, and the rest are its exact zeros)
        row_edges, col_edges = self._edges(axis=0), self._edges(axis=1)
        r0, r1 = _overlapping_pixels(row_edges, y0, y1)
        c0, c1 = _overlapping_pixels(col_edges, x0, x1)
        out = np.zeros((out_h, out_w), dtype=np.float32)
        if r1 > r0 and c1 > c0:
            rows = _axis_coverage(window, row_edges[r0 : r1 + 1] - y0, axis=0)  # (r1 - r0, x1 - x0)
            part = _axis_coverage(rows, col_edges[c0 : c1 + 1] - x0, axis=1)  # (r1 - r0, c1 - c0)
            out[r0:r1, c0:c1] = np.clip(part, 0.0, 1.0)
        if out.sum() < _MIN_TOTAL_WEIGHT:
            out[self._nearest_output_pixel(_centroid_xy(mask))] = 1.0
        return out

    def _edges(self, axis: int) -> np.ndarray:
        """Original-image coordinates of the output pixel edges along ``axis`` (0: y, 1: x)."""
        n_out = self.output_size[axis]
        scale = self.scale_yx[axis]
        return (np.arange(n_out + 1, dtype=np.float64) + self.crop_offset[axis]) / scale - self.pad_offset[axis]

    def _nearest_output_pixel(self, xy: np.ndarray) -> tuple[int, int]:
        """Index ``(row, col)`` of the output pixel containing (or nearest to) a point."""
        x, y = self.map_points(xy)
        out_h, out_w = self.output_size
        return (int(np.clip(math.floor(y), 0, out_h - 1)), int(np.clip(math.floor(x), 0, out_w - 1)))


def geometry_for(image_processor: Any, image_size_hw: tuple[int, int], **overrides: Any) -> ImageGeometry:
    """Read the geometry an HF image processor applies to an image of ``image_size_hw``.

    Reads ``do_pad``, ``do_resize``, ``size``, ``do_center_crop``, ``crop_size`` (and
    ``pad_size``) from the instance; ``overrides`` stand for keyword arguments passed to the
    processor call (e.g. ``do_center_crop=False``). ``do_pad`` means LLaVA-1.5's
    pad-to-square *before* the resize when the processor has a ``pad_to_square`` method, and
    otherwise the generic backend's bottom/right pad to ``pad_size`` after the crop (without
    ``pad_size`` that pad only evens out a batch, a no-op for one image).
    """
    settings = _processor_settings(image_processor, overrides)
    h, w = _check_size(image_size_hw, "image size")
    square = bool(settings["do_pad"]) and hasattr(image_processor, "pad_to_square")
    padded = _square_pad(h, w)[1] if square else (h, w)
    resize_to = None
    if settings["do_resize"]:
        resize_to = resize_output_size(padded, settings["size"], settings["default_to_square"])
    crop = _size_hw(settings["crop_size"], "crop_size") if settings["do_center_crop"] else None
    pad_to = None
    if settings["do_pad"] and not square and settings["pad_size"] is not None:
        pad_to = _size_hw(settings["pad_size"], "pad_size")
    return ImageGeometry.build((h, w), pad_to_square=square, resize_to=resize_to, crop_size=crop, pad_to=pad_to)


def resize_output_size(image_size_hw: tuple[int, int], size: Any, default_to_square: bool = False) -> tuple[int, int]:
    """The ``(h, w)`` an HF PIL-backend ``resize`` produces for ``size`` (dict or SizeDict).

    Mirrors ``PilBackend.resize``: ``shortest_edge`` (+ optional ``longest_edge``),
    ``max_height``/``max_width``, or a fixed ``height``/``width``. An int ``size`` means a
    square when ``default_to_square`` else the shortest edge.
    """
    h, w = image_size_hw
    if isinstance(size, (int, np.integer)):
        return (int(size), int(size)) if default_to_square else _shortest_edge_size(h, w, int(size))
    shortest, longest = _get(size, "shortest_edge"), _get(size, "longest_edge")
    if shortest and longest:
        from transformers.image_transforms import get_size_with_aspect_ratio

        return tuple(int(v) for v in get_size_with_aspect_ratio((h, w), shortest, longest))
    if shortest:
        return _shortest_edge_size(h, w, int(shortest))
    if _get(size, "max_height") and _get(size, "max_width"):
        from transformers.image_utils import get_image_size_for_max_height_width

        out = get_image_size_for_max_height_width((h, w), _get(size, "max_height"), _get(size, "max_width"))
        return tuple(int(v) for v in out)
    if _get(size, "height") and _get(size, "width"):
        return (int(_get(size, "height")), int(_get(size, "width")))
    raise ValueError(f"unsupported resize size {size!r}: expected shortest_edge, max_height/max_width or height/width")


def _shortest_edge_size(h: int, w: int, shortest: int) -> tuple[int, int]:
    """``get_resize_output_image_size(default_to_square=False)``: keep aspect, truncate the long side."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = shortest, int(shortest * long / short)
    return (new_long, new_short) if w <= h else (new_short, new_long)


def _square_pad(h: int, w: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Offset and size of LLaVA's pad-to-square: centred, ``(max - short) // 2`` before."""
    side = max(h, w)
    return ((side - h) // 2, (side - w) // 2), (side, side)


def _center_crop_window(image_hw: tuple[int, int], crop_hw: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Offset and output size of ``transformers.image_transforms.center_crop``.

    Inside the image the crop starts at ``(size - crop) // 2``. When the image is smaller
    than the crop along an axis, transformers first zero-pads it by ``ceil((crop - size) / 2)``
    before, then crops; the net effect is a negative offset (zeros before the image).
    """
    offset, out = [], []
    fits = all(c <= s for s, c in zip(image_hw, crop_hw))
    for size, crop in zip(image_hw, crop_hw):
        start = (size - crop) // 2
        if fits:
            offset.append(start)
            out.append(crop)
            continue
        new = max(crop, size)
        pad_before = math.ceil((new - size) / 2)
        lo, hi = max(0, start + pad_before), min(new, start + pad_before + crop)
        offset.append(lo - pad_before)
        out.append(hi - lo)
    return (offset[0], offset[1]), (out[0], out[1])


def _trailing_pad(image_hw: tuple[int, int], pad_hw: tuple[int, int]) -> tuple[int, int]:
    """Output size of the generic backend's bottom/right pad; it refuses to shrink."""
    if pad_hw[0] < image_hw[0] or pad_hw[1] < image_hw[1]:
        raise ValueError(f"pad size {pad_hw} is smaller than the processed image {image_hw}")
    return pad_hw


def _overlapping_pixels(edges: np.ndarray, start: int, stop: int) -> tuple[int, int]:
    """Half-open range of output pixels ``i`` whose interval ``[edges[i], edges[i+1])`` meets
    ``[start, stop)`` (empty when it lies wholly outside the output)."""
    first = max(int(np.searchsorted(edges, start, side="right")) - 1, 0)
    last = min(int(np.searchsorted(edges, stop, side="left")), len(edges) - 1)
    return first, last


def _axis_coverage(values: np.ndarray, edges: np.ndarray, axis: int) -> np.ndarray:
    """Mean of ``values`` over each interval ``[edges[i], edges[i+1])`` along ``axis``.

    Uses the exact integral of the piecewise-constant signal: ``C(t) = cumsum[floor(t)] +
    frac(t) * values[floor(t)]``, with zeros outside ``[0, n]`` (the padding). The mean
    divides by the interval length, so output pixels over padding average in zeros.
    """
    v = np.moveaxis(np.asarray(values, dtype=np.float64), axis, 0)  # (n, ...)
    n = v.shape[0]
    cum = np.zeros((n + 1,) + v.shape[1:])  # (n + 1, ...): cum[k] = sum of v[:k]
    np.cumsum(v, axis=0, out=cum[1:])
    t = np.clip(edges, 0.0, n)
    idx = np.minimum(np.floor(t).astype(np.int64), n - 1)
    frac = (t - idx)[(slice(None),) + (None,) * (v.ndim - 1)]
    integral = cum[idx] + frac * v[idx]  # (n_edges, ...)
    length = np.diff(edges)[(slice(None),) + (None,) * (v.ndim - 1)]
    out = np.diff(integral, axis=0) / length
    return np.moveaxis(out, 0, axis)


def nonzero_bounds(mask: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """Half-open ``((y0, y1), (x0, x1))`` rows/columns holding the mask's weight, or None if empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return (int(rows[0]), int(rows[-1]) + 1), (int(cols[0]), int(cols[-1]) + 1)


def _as_float_mask(mask: Any, size_hw: tuple[int, int]) -> np.ndarray:
    """A ``(h, w)`` float mask in ``[0, 1]`` from bool / 0-1 / 0-255 arrays or tensors."""
    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    arr = np.asarray(mask)
    if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
        arr = arr.reshape(arr.shape[1:] if arr.shape[0] == 1 else arr.shape[:-1])
    if arr.shape != tuple(size_hw):
        raise ValueError(f"mask has shape {arr.shape} but the geometry's original image is {tuple(size_hw)} (h, w)")
    if arr.dtype == bool:
        return arr.astype(np.float64)
    arr = arr.astype(np.float64)
    return arr / 255.0 if arr.max(initial=0.0) > 1.0 else arr


def _centroid_xy(mask: np.ndarray) -> np.ndarray:
    """Weighted centre ``(x, y)`` of a mask, in pixel-edge coordinates (pixel centres at +0.5)."""
    ys, xs = np.nonzero(mask)
    weights = mask[ys, xs]
    return np.array([np.average(xs + 0.5, weights=weights), np.average(ys + 0.5, weights=weights)])


def _processor_settings(image_processor: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """The geometry-relevant settings of a processor, with call-time overrides applied."""
    keys = ("do_pad", "do_resize", "size", "do_center_crop", "crop_size", "pad_size", "default_to_square")
    unknown = set(overrides) - set(keys)
    if unknown:
        raise TypeError(f"geometry_for() got unknown overrides {sorted(unknown)}; expected some of {list(keys)}")
    settings = {key: getattr(image_processor, key, None) for key in keys}
    settings.update(overrides)
    settings["default_to_square"] = bool(settings["default_to_square"])
    if settings["do_resize"] and settings["size"] is None:
        raise ValueError("the image processor has do_resize=True but no size")
    if settings["do_center_crop"] and settings["crop_size"] is None:
        raise ValueError("the image processor has do_center_crop=True but no crop_size")
    return settings


def _size_hw(size: Any, name: str) -> tuple[int, int]:
    """``(h, w)`` from an int, a ``{"height", "width"}`` dict or a SizeDict."""
    if isinstance(size, (int, np.integer)):
        return (int(size), int(size))
    h, w = _get(size, "height"), _get(size, "width")
    if not (h and w):
        raise ValueError(f"{name} must give height and width, got {size!r}")
    return (int(h), int(w))


def _get(size: Any, key: str) -> Any:
    """A field of a size spec that may be a plain dict or a transformers ``SizeDict``."""
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def _check_size(size: Any, name: str) -> tuple[int, int]:
    """Validate a positive ``(h, w)`` pair."""
    h, w = (int(v) for v in size)
    if h <= 0 or w <= 0:
        raise ValueError(f"{name} must be positive (h, w), got {tuple(size)}")
    return (h, w)
