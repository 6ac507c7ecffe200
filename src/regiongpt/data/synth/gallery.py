"""A contact sheet of a few scenes with numbered, tinted, outlined regions and their captions.

Meant for a person to check at a glance that masks, numbers and captions agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from regiongpt.data.synth.scene import Scene

PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0),
    (0, 200, 0),
    (0, 90, 255),
    (255, 200, 0),
    (255, 0, 255),
    (0, 230, 230),
    (255, 120, 0),
    (150, 80, 255),
)
SCALE = 2
COLUMNS = 3
LINE_HEIGHT = 12
CAPTION_LINES = 8


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def scene_tile(scene: Scene) -> Image.Image:
    """One scene, scaled up, with each region tinted and outlined in its number's colour, plus captions."""
    image = scene.image.astype(np.float32)
    for k, obj in enumerate(scene.objects):
        colour = np.asarray(PALETTE[k % len(PALETTE)], dtype=np.float32)
        image[obj.mask] = 0.85 * image[obj.mask] + 0.15 * colour
        image[_outline(obj.mask)] = colour
    big = np.repeat(np.repeat(image.astype(np.uint8), SCALE, axis=0), SCALE, axis=1)
    tile = Image.new("RGB", (scene.width * SCALE, scene.height * SCALE + LINE_HEIGHT * CAPTION_LINES + 6), (255, 255, 255))
    tile.paste(Image.fromarray(big), (0, 0))
    draw = ImageDraw.Draw(tile)
    for k, obj in enumerate(scene.objects):
        colour = PALETTE[k % len(PALETTE)]
        x, y = obj.box[0] * SCALE, obj.box[1] * SCALE
        draw.rectangle([x, y, x + 10, y + 11], fill=(0, 0, 0))
        draw.text((x + 2, y), str(k + 1), fill=colour)
        if k < CAPTION_LINES:
            line = f"{k + 1}: {obj.brief}" + (f" [{', '.join(obj.tags)}]" if obj.tags else "")
            draw.text((4, scene.height * SCALE + 3 + k * LINE_HEIGHT), line, fill=tuple(int(c * 0.7) for c in colour))
    return tile


def render_gallery(scenes: Sequence[Scene]) -> np.ndarray:
    """A grid (3 columns) of scene tiles as a uint8 RGB array."""
    tiles = [scene_tile(scene) for scene in scenes]
    if not tiles:
        return np.full((32, 32, 3), 255, dtype=np.uint8)
    tw = max(t.width for t in tiles)
    th = max(t.height for t in tiles)
    cols = min(COLUMNS, len(tiles))
    rows = (len(tiles) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * (tw + 8) + 8, rows * (th + 8) + 8), (200, 200, 200))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (8 + (i % cols) * (tw + 8), 8 + (i // cols) * (th + 8)))
    return np.asarray(sheet)
