"""In-memory scene generation with per-image seeding (no files).

Image ``index`` of a world with ``seed`` is drawn from its own RNGs, so it does not depend on
how many images are generated or in what order: tests can rebuild exactly the scenes that
``write_world`` wrote.
"""

from __future__ import annotations

import random

import numpy as np

from regiongpt.data.synth.annotate import annotate_scene
from regiongpt.data.synth.scene import Scene, build_scene

DEFAULT_WIDTH = 256
DEFAULT_HEIGHT = 192


def generate_scene(rng: np.random.Generator, width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT) -> Scene:
    """Render and fully annotate one scene (1–8 objects) drawn from ``rng``."""
    return annotate_scene(build_scene(rng, width, height))


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The image generator's RNG for image ``index`` of a world with ``seed`` (independent of N)."""
    return np.random.default_rng([int(seed), int(index)])


def text_rng(seed: int, index: int) -> random.Random:
    """The RNG that picks prompts, turn order and questions for image ``index``."""
    return random.Random(f"regiongpt-synth:{int(seed)}:{int(index)}")


def generate_scenes(count: int, seed: int = 0, width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT) -> list[Scene]:
    """``count`` scenes in memory — exactly the scenes ``write_world`` writes for ``seed``."""
    return [generate_scene(scene_rng(seed, i), width, height) for i in range(count)]
