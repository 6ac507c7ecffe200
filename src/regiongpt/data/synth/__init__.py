"""The synthetic world: procedurally rendered region-understanding data in standard formats.

``generate_scene`` renders and annotates one scene in memory (no files); ``write_world``
writes a whole data set (PNG images, COCO instances, refer layout, POPE files, native JSON
lines, README/meta and a gallery), deterministically by seed. See ``docs/synthetic-world.md``.

Modules: ``world`` (vocabulary), ``render`` (shapes, textures, backgrounds), ``scene``
(composition and occlusion), ``annotate`` (captions, referring expressions and their
resolver, relations, tags, questions), ``conversation`` (native samples), ``gallery``,
``generate`` (per-image seeding), ``writers`` (files).
"""

from __future__ import annotations

from regiongpt.data.synth.annotate import RefPhrase, resolve
from regiongpt.data.synth.generate import (
    DEFAULT_HEIGHT,
    DEFAULT_WIDTH,
    generate_scene,
    generate_scenes,
    scene_rng,
    text_rng,
)
from regiongpt.data.synth.scene import Scene, SceneObject
from regiongpt.data.synth.world import CATEGORIES, COLOUR_NAMES, COLOURS, SIZES, TEXTURES
from regiongpt.data.synth.writers import write_world

__all__ = [
    "CATEGORIES",
    "COLOURS",
    "COLOUR_NAMES",
    "DEFAULT_HEIGHT",
    "DEFAULT_WIDTH",
    "SIZES",
    "TEXTURES",
    "RefPhrase",
    "Scene",
    "SceneObject",
    "generate_scene",
    "generate_scenes",
    "resolve",
    "scene_rng",
    "text_rng",
    "write_world",
]
