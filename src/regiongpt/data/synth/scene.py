"""Scene composition: sample objects, resolve occlusion, and keep exact visible masks.

Objects are drawn back to front; an object's visible mask is its own mask minus the masks
of every object in front of it. Objects whose visible part is too small to recognise are
removed before painting, so every object left in the image is annotated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from regiongpt.data.synth.render import (
    AREA_FACTOR,
    ROTATION_RANGE,
    ObjectSpec,
    finish_image,
    object_mask,
    paint_object,
    render_background,
)
from regiongpt.data.synth.world import CATEGORIES, COLOUR_NAMES, SIZES, TEXTURES, size_from_area

# Target full area per size class, as a fraction of the image area (visible area decides the tag).
SIZE_TARGETS: tuple[tuple[float, float], ...] = ((0.003, 0.009), (0.016, 0.038), (0.05, 0.095))

MIN_VISIBLE_PIXELS = 24
MIN_VISIBLE_FRACTION = 0.3
NEAR_PLACEMENT_PROBABILITY = 0.4
DISTRACTOR_PROBABILITY = 0.15
# Share of distractors that also copy colour and texture ("twins"): only size, a relation or
# an extreme can then tell them apart. Copying a whole (category, colour) pair keeps colour
# independent of category.
TWIN_PROBABILITY = 0.4


@dataclass
class SceneObject:
    """One annotated object. ``depth`` 0 is the back-most; masks are (height, width) booleans."""

    category: str
    colour: str
    texture: str
    size: str
    mask: np.ndarray
    area: int
    full_area: int
    box: tuple[float, float, float, float]
    depth: int
    occluders: tuple[int, ...] = ()
    hidden_fraction: float = 0.0
    tags: tuple[str, ...] = ()
    brief: str = ""
    referring: tuple[str, ...] = ()
    referring_forms: tuple = ()  # tuple[annotate.RefPhrase, ...]
    detailed: str = ""
    relations: tuple[tuple[str, int], ...] = ()

    @property
    def centre(self) -> tuple[float, float]:
        """Centre of the visible box, in pixels."""
        x1, y1, x2, y2 = self.box
        return (x1 + x2) / 2.0, (y1 + y2) / 2.0


@dataclass
class Scene:
    """A rendered image (uint8 RGB, (h, w, 3)) with its objects in depth order."""

    width: int
    height: int
    image: np.ndarray
    objects: list[SceneObject] = field(default_factory=list)


def sample_specs(rng: np.random.Generator, width: int, height: int, max_objects: int = 8) -> list[ObjectSpec]:
    """Sample 1..max_objects object specs; category, colour and texture independently uniform.

    Some objects copy the category (and sometimes colour and texture) of an earlier one, so
    scenes contain same-category distractors.
    """
    count = int(rng.integers(1, max_objects + 1))
    specs: list[ObjectSpec] = []
    image_area = float(width * height)
    for _ in range(count):
        category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        colour = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
        texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
        if specs and rng.random() < DISTRACTOR_PROBABILITY:
            source = specs[int(rng.integers(len(specs)))]
            category = source.category
            if rng.random() < TWIN_PROBABILITY:
                colour, texture = source.colour, source.texture
        low, high = SIZE_TARGETS[int(rng.integers(len(SIZES)))]
        radius = math.sqrt(rng.uniform(low, high) * image_area / AREA_FACTOR[category])
        margin = 0.7 * radius
        if specs and rng.random() < NEAR_PLACEMENT_PROBABILITY:
            anchor = specs[int(rng.integers(len(specs)))]
            distance = rng.uniform(0.5, 1.4) * (radius + anchor.radius)
            theta = rng.uniform(0.0, 2.0 * math.pi)
            cx = anchor.cx + distance * math.cos(theta)
            cy = anchor.cy + distance * math.sin(theta)
        else:
            cx = rng.uniform(0.0, width)
            cy = rng.uniform(0.0, height)
        cx = float(np.clip(cx, margin, max(margin, width - margin)))
        cy = float(np.clip(cy, margin, max(margin, height - margin)))
        spread = ROTATION_RANGE[category]
        angle = float(rng.uniform(-spread, spread)) if spread else 0.0
        specs.append(
            ObjectSpec(category, colour, texture, cx, cy, radius, angle, float(rng.uniform(0.0, math.pi)))
        )
    return specs


def visible_masks(full: list[np.ndarray]) -> list[np.ndarray]:
    """Visible mask of each object (back to front order): own mask minus all masks in front."""
    if not full:
        return []
    covered = np.zeros_like(full[0])
    visible: list[np.ndarray] = [covered] * len(full)
    for i in range(len(full) - 1, -1, -1):
        visible[i] = full[i] & ~covered
        covered = covered | full[i]
    return visible


def _box_of(mask: np.ndarray) -> tuple[float, float, float, float]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def build_scene(rng: np.random.Generator, width: int, height: int, max_objects: int = 8) -> Scene:
    """Sample, occlude, filter and paint one scene (objects not yet annotated with text)."""
    while True:
        specs = sample_specs(rng, width, height, max_objects)
        full = [object_mask(spec, width, height) for spec in specs]
        visible = visible_masks(full)
        keep = [
            i
            for i, (f, v) in enumerate(zip(full, visible))
            if (area := int(v.sum())) >= MIN_VISIBLE_PIXELS and area >= MIN_VISIBLE_FRACTION * max(int(f.sum()), 1)
        ]
        if keep:
            break
    specs = [specs[i] for i in keep]
    full = [full[i] for i in keep]
    visible = visible_masks(full)
    canvas = render_background(rng, width, height)
    for spec, mask in zip(specs, full):
        paint_object(canvas, spec, mask)
    scene = Scene(width=width, height=height, image=finish_image(canvas, rng))
    for depth, (spec, f, v) in enumerate(zip(specs, full, visible)):
        area = int(v.sum())
        full_area = int(f.sum())
        occluders = tuple(j for j in range(depth + 1, len(full)) if (full[j] & f).any())
        scene.objects.append(
            SceneObject(
                category=spec.category,
                colour=spec.colour,
                texture=spec.texture,
                size=size_from_area(area, width, height),
                mask=v,
                area=area,
                full_area=full_area,
                box=_box_of(v),
                depth=depth,
                occluders=occluders,
                hidden_fraction=1.0 - area / float(full_area),
            )
        )
    return scene
