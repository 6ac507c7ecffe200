"""The vocabulary of the synthetic world: categories, colours, textures, sizes.

Everything here is an immutable constant (tuples and read-only mappings) so that every
module — renderer, annotator, writers, tests — agrees on one fixed world. Category ids in
the COCO files are ``CATEGORIES.index(name) + 1``.
"""

from __future__ import annotations

from types import MappingProxyType

# Shapes a small conv net can tell apart (silhouettes differ in corners, holes, symmetry).
CATEGORIES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "heart",
    "diamond",
    "hexagon",
    "crescent",
    "arrow",
    "bar",
    "ellipse",
    "semicircle",
)

# Named colours, chosen to stay distinct from each other and from the greyish backgrounds.
COLOURS: MappingProxyType = MappingProxyType(
    {
        "red": (220, 30, 30),
        "orange": (245, 140, 20),
        "yellow": (240, 225, 40),
        "green": (40, 170, 50),
        "cyan": (40, 210, 220),
        "blue": (35, 70, 225),
        "purple": (140, 50, 190),
        "pink": (250, 120, 190),
        "white": (250, 250, 250),
        "black": (15, 15, 15),
    }
)
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

TEXTURES: tuple[str, ...] = ("solid", "striped", "dotted", "checkered")

SIZES: tuple[str, ...] = ("small", "medium", "large")

# Visible-area thresholds as a fraction of the image area: below the first → small,
# below the second → medium, else large (COCO's 32²/96² split, rescaled to small images).
SIZE_AREA_FRACTIONS: tuple[float, float] = (0.012, 0.045)

# Categories that look alike; used for POPE-style adversarial negatives.
SIMILAR: MappingProxyType = MappingProxyType(
    {
        "circle": ("ring", "ellipse", "semicircle"),
        "square": ("diamond", "hexagon", "bar"),
        "triangle": ("arrow", "diamond", "star"),
        "star": ("cross", "hexagon", "triangle"),
        "cross": ("star", "arrow", "square"),
        "ring": ("circle", "crescent", "ellipse"),
        "heart": ("crescent", "circle", "triangle"),
        "diamond": ("square", "triangle", "hexagon"),
        "hexagon": ("circle", "square", "star"),
        "crescent": ("ring", "semicircle", "heart"),
        "arrow": ("triangle", "bar", "cross"),
        "bar": ("square", "ellipse", "arrow"),
        "ellipse": ("circle", "bar", "ring"),
        "semicircle": ("crescent", "circle", "triangle"),
    }
)

# Spatial relations between two objects, from box centres (see annotate.spatial_relations).
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
INVERSE_RELATION: MappingProxyType = MappingProxyType(
    {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
)

# Extremes used by referring expressions when attributes and relations cannot single out an object.
EXTREMES: tuple[str, ...] = ("leftmost", "rightmost", "topmost", "bottommost")

DIFFICULTY_TAGS: tuple[str, ...] = ("small", "occluded", "crowded", "distractor")


def category_id(name: str) -> int:
    """COCO category id (1-based) of a category name."""
    return CATEGORIES.index(name) + 1


def size_from_area(area: int, width: int, height: int) -> str:
    """Size tag of an object from its visible area in pixels, relative to the image area."""
    fraction = area / float(width * height)
    if fraction < SIZE_AREA_FRACTIONS[0]:
        return "small"
    if fraction < SIZE_AREA_FRACTIONS[1]:
        return "medium"
    return "large"
