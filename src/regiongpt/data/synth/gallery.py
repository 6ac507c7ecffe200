"""A contact sheet of a few scenes with numbered, tinted, outlined regions and their captions.

Meant for a person to check at a glance that masks, numbers and captions agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from regiongpt.data.synth.scene import Scene
from regiongpt.visualize import draw_regions

SCALE = 2
COLUMNS = 3
CAPTION_LINES = 8


def scene_tile(scene: Scene) -> Image.Image:
    """One scene, scaled up, with each region tinted and outlined in its number's colour, plus captions."""
    captions = [obj.brief + (f" [{', '.join(obj.tags)}]" if obj.tags else "") for obj in scene.objects]
    return draw_regions(scene.image, [obj.mask for obj in scene.objects], [obj.box for obj in scene.objects],
                        captions, scale=SCALE, max_caption_lines=CAPTION_LINES)


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
