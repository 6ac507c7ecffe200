"""Pictures for people: an image with numbered, coloured regions (mask tint + outline, or a
box) and a caption list under it, like the paper's figures. Used by the CLI (``--save-vis``),
``data inspect`` and the synthetic world's gallery."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (0, 200, 0), (0, 90, 255), (255, 200, 0), (255, 0, 255), (0, 230, 230), (255, 120, 0),
    (150, 80, 255), (120, 60, 0), (0, 128, 128), (128, 128, 0), (255, 105, 180),
)
LINE_HEIGHT = 12
CHARS_PER_PIXEL = 1 / 6  # PIL's default bitmap font is ~6 px per character


def region_colour(index: int) -> tuple[int, int, int]:
    return PALETTE[index % len(PALETTE)]


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of a boolean mask that touch the outside (4-neighbourhood)."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def draw_regions(
    image: Image.Image | np.ndarray,
    masks: Sequence[np.ndarray | None],
    boxes: Sequence[Sequence[float] | None],
    captions: Sequence[str] | None = None,
    scale: int | None = None,
    max_caption_lines: int | None = None,
) -> Image.Image:
    """The image with region k drawn in colour k (mask tint + outline where a mask is given,
    else its box), its number at the top left, and "k: caption" lines underneath.

    ``scale`` enlarges small images (default: so the width is at least 512 px).
    """
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image).astype(np.float32)
    height, width = array.shape[:2]
    scale = scale or max(1, int(np.ceil(512 / width)))
    for k, mask in enumerate(masks):
        if mask is None:
            continue
        colour = np.asarray(region_colour(k), dtype=np.float32)
        array[mask] = 0.7 * array[mask] + 0.3 * colour
        array[mask_outline(mask)] = colour
    big = np.repeat(np.repeat(array.astype(np.uint8), scale, axis=0), scale, axis=1)
    lines: list[tuple[int, str]] = []
    chars = max(20, int(width * scale * CHARS_PER_PIXEL) - 2)
    for k, caption in enumerate(captions or []):
        wrapped = textwrap.wrap(f"{k + 1}: {caption}", chars) or [f"{k + 1}:"]
        lines.extend((k, line) for line in wrapped)
    if max_caption_lines is not None:
        lines = lines[:max_caption_lines]
    reserved = len(lines) if max_caption_lines is None else max_caption_lines
    canvas = Image.new("RGB", (width * scale, height * scale + LINE_HEIGHT * reserved + (6 if reserved else 0)),
                       (255, 255, 255))
    canvas.paste(Image.fromarray(big), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, box in enumerate(boxes):
        if box is None:
            continue
        colour = region_colour(k)
        x1, y1, x2, y2 = (float(v) * scale for v in box)
        if masks[k] is None if k < len(masks) else True:
            draw.rectangle([x1, y1, x2 - 1, y2 - 1], outline=colour, width=max(1, scale))
        draw.rectangle([x1, y1, x1 + 6 * len(str(k + 1)) + 4, y1 + 11], fill=(0, 0, 0))
        draw.text((x1 + 2, y1), str(k + 1), fill=colour)
    for row, (k, line) in enumerate(lines):
        colour = tuple(int(c * 0.7) for c in region_colour(k))
        draw.text((4, height * scale + 3 + row * LINE_HEIGHT), line, fill=colour)
    return canvas
