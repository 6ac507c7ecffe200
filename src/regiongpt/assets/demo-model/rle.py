"""COCO run-length encoding (RLE) of binary masks, in pure NumPy.

Both COCO forms are supported: *uncompressed* (``{"size": [h, w], "counts": [int, ...]}``)
and *compressed* (``counts`` as the LEB128-like ASCII string pycocotools writes). Runs are
in column-major (Fortran) order and start with a run of zeros, exactly as pycocotools.

Kept free of pycocotools and of any package-relative import so that it can travel beside a
checkpoint as remote code (see ``regiongpt.model`` / ``trust_remote_code``).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _runs_from_mask(mask: np.ndarray) -> list[int]:
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return [0]
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0] + runs
    return runs


def _encode_counts(runs: list[int]) -> str:
    """pycocotools' compressed string: deltas against the run two back, 5-bit groups."""
    out = []
    for i, value in enumerate(runs):
        x = int(value)
        if i > 2:
            x -= int(runs[i - 2])
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def _decode_counts(counts: str) -> list[int]:
    runs: list[int] = []
    p = 0
    s = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    while p < len(s):
        x = 0
        k = 0
        more = True
        while more:
            c = s[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = (c & 0x20) != 0
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def encode_rle(mask: np.ndarray, compressed: bool = True) -> dict[str, Any]:
    """Encode a 2-D binary mask (h, w) as a COCO RLE dict."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"encode_rle expects a 2-D mask, got shape {tuple(mask.shape)}")
    runs = _runs_from_mask(mask)
    h, w = mask.shape
    counts: Any = _encode_counts(runs) if compressed else runs
    return {"size": [int(h), int(w)], "counts": counts}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """Decode a COCO RLE dict (compressed or uncompressed) to a boolean (h, w) mask."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError("an RLE must be a dict with 'size' [h, w] and 'counts' (a string or a list of ints)")
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    runs = _decode_counts(counts) if isinstance(counts, (str, bytes)) else [int(c) for c in counts]
    total = sum(runs)
    if total != h * w:
        raise ValueError(f"RLE counts cover {total} pixels but size {h}x{w} has {h * w}; the RLE is corrupt or its size is wrong")
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    return flat.reshape((h, w), order="F")


def rle_area(rle: dict[str, Any]) -> int:
    """Number of foreground pixels of an RLE without decoding it to a full mask."""
    counts = rle["counts"]
    runs = _decode_counts(counts) if isinstance(counts, (str, bytes)) else list(counts)
    return int(sum(runs[1::2]))
