"""Ground-truth text for a scene: relations, tags, captions, referring expressions, questions.

Referring expressions have a structured form (:class:`RefPhrase`) and a resolver
(:func:`resolve`) that returns the set of objects a phrase matches; the generator keeps a
phrase only if the resolver says it matches exactly its object, and the tests use the same
resolver, so "unique in its image" is checked rather than assumed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import combinations

from regiongpt.data.synth.scene import Scene, SceneObject
from regiongpt.data.synth.world import CATEGORIES, COLOUR_NAMES, EXTREMES, RELATIONS, SIMILAR

ATTRIBUTE_ORDER: tuple[str, ...] = ("size", "colour", "texture")
# Attribute subsets tried for referring expressions, shortest first (category always included).
ATTRIBUTE_SUBSETS: tuple[tuple[str, ...], ...] = tuple(
    subset for k in range(len(ATTRIBUTE_ORDER) + 1) for subset in combinations(ATTRIBUTE_ORDER, k)
)
RELATION_MARGIN = 0.03  # fraction of the image width/height between box centres
CROWD_RADIUS = 0.18  # fraction of the image diagonal
CROWD_NEIGHBOURS = 3
CROWD_SCENE_SIZE = 6
OCCLUDED_FRACTION = 0.1


@dataclass(frozen=True)
class RefPhrase:
    """Structured referring phrase: attributes, optionally a relation to a target or an extreme.

    ``size``/``colour``/``texture`` of None mean "not mentioned". ``extreme`` picks the
    leftmost/rightmost/topmost/bottommost of the objects matching the rest of the phrase.
    """

    category: str
    size: str | None = None
    colour: str | None = None
    texture: str | None = None
    relation: str | None = None
    target: "RefPhrase | None" = None
    extreme: str | None = None

    def noun_phrase(self) -> str:
        """The attribute words and the category, in the fixed order size, colour, texture, category."""
        words = [w for w in (self.extreme, self.size, self.colour, self.texture) if w]
        return " ".join(words + [self.category])

    def text(self) -> str:
        """The phrase as a sentence fragment, e.g. ``the red star left of the blue ring``."""
        out = f"the {self.noun_phrase()}"
        if self.relation and self.target is not None:
            out += f" {self.relation} {self.target.text()}"
        return out

    def to_json(self) -> dict:
        """Plain-dict form (for annotations files)."""
        data = {k: getattr(self, k) for k in ("category", "size", "colour", "texture", "relation", "extreme")}
        data["target"] = self.target.to_json() if self.target is not None else None
        return {k: v for k, v in data.items() if v is not None}


def relation_holds(a: SceneObject, b: SceneObject, relation: str, width: int, height: int) -> bool:
    """Whether ``a`` is ``relation`` ``b`` (left of / right of / above / below), from box centres."""
    (ax, ay), (bx, by) = a.centre, b.centre
    mx, my = RELATION_MARGIN * width, RELATION_MARGIN * height
    if relation == "left of":
        return ax + mx < bx
    if relation == "right of":
        return ax > bx + mx
    if relation == "above":
        return ay + my < by
    if relation == "below":
        return ay > by + my
    raise ValueError(f"unknown relation {relation!r}; choose one of {', '.join(RELATIONS)}")


def spatial_relations(scene: Scene, i: int) -> tuple[tuple[str, int], ...]:
    """All (relation, other index) pairs that hold for object ``i`` against every other object."""
    a = scene.objects[i]
    return tuple(
        (rel, j)
        for j, b in enumerate(scene.objects)
        if j != i
        for rel in RELATIONS
        if relation_holds(a, b, rel, scene.width, scene.height)
    )


def _matches_attributes(obj: SceneObject, phrase: RefPhrase) -> bool:
    return (
        obj.category == phrase.category
        and (phrase.size is None or obj.size == phrase.size)
        and (phrase.colour is None or obj.colour == phrase.colour)
        and (phrase.texture is None or obj.texture == phrase.texture)
    )


def resolve(scene: Scene, phrase: RefPhrase) -> set[int]:
    """Indices of the scene's objects that ``phrase`` describes (empty: matches nothing)."""
    matched = {i for i, obj in enumerate(scene.objects) if _matches_attributes(obj, phrase)}
    if phrase.relation is not None and phrase.target is not None:
        targets = resolve(scene, phrase.target)
        matched = {
            i
            for i in matched
            if any(
                j != i and relation_holds(scene.objects[i], scene.objects[j], phrase.relation, scene.width, scene.height)
                for j in targets
            )
        }
    if phrase.extreme is not None and matched:
        axis, sign = {"leftmost": (0, 1), "rightmost": (0, -1), "topmost": (1, 1), "bottommost": (1, -1)}[phrase.extreme]
        keys = {i: sign * scene.objects[i].centre[axis] for i in matched}
        best = min(keys.values())
        matched = {i for i, key in keys.items() if key == best}
    return matched


def _attribute_phrase(obj: SceneObject, subset: tuple[str, ...]) -> RefPhrase:
    return RefPhrase(category=obj.category, **{name: getattr(obj, name) for name in subset})


def _by_length(phrases: list[RefPhrase]) -> list[RefPhrase]:
    return sorted(phrases, key=lambda p: len(p.text().split()))


def referring_candidates(scene: Scene, i: int, wanted: int = 2) -> list[RefPhrase]:
    """Up to ``wanted`` unique referring phrases for object ``i``, best first.

    Tiers, each shortest first, later tiers only tried while fewer than ``wanted`` were found:
    attribute subsets (category; colour+category; size+category; ...), then a spatial relation
    to another object that itself has a unique attribute phrase, then an extreme
    ("the leftmost red star"). Every phrase is checked with :func:`resolve`.
    """
    obj = scene.objects[i]

    def unique(phrase: RefPhrase) -> bool:
        return resolve(scene, phrase) == {i}

    found = _by_length([p for p in (_attribute_phrase(obj, s) for s in ATTRIBUTE_SUBSETS) if unique(p)])
    if len(found) >= wanted:
        return found[:wanted]
    anchors = []
    for j, other in enumerate(scene.objects):
        if j == i:
            continue
        short = next((p for p in (_attribute_phrase(other, s) for s in ATTRIBUTE_SUBSETS) if resolve(scene, p) == {j}), None)
        if short is not None:
            anchors.append((math.dist(obj.centre, other.centre), j, short))
    anchors.sort(key=lambda item: (item[0], item[1]))
    related = []
    for subset in ATTRIBUTE_SUBSETS:
        base = _attribute_phrase(obj, subset)
        if len(found) + len(related) >= wanted:
            break
        for _, j, target in anchors:
            for rel in RELATIONS:
                if relation_holds(obj, scene.objects[j], rel, scene.width, scene.height):
                    phrase = replace(base, relation=rel, target=target)
                    if unique(phrase):
                        related.append(phrase)
    found += _by_length(related)
    if len(found) >= wanted:
        return found[:wanted]
    extremes = []
    for subset in ATTRIBUTE_SUBSETS:
        for extreme in EXTREMES:
            phrase = replace(_attribute_phrase(obj, subset), extreme=extreme)
            if unique(phrase):
                extremes.append(phrase)
    return (found + _by_length(extremes))[:wanted]


def position_phrase(obj: SceneObject, width: int, height: int) -> str:
    """Where the object's centre lies in a 3x3 grid of the image, e.g. ``in the top left``."""
    cx, cy = obj.centre
    col = ("left", "centre", "right")[min(2, int(3 * cx / width))]
    row = ("top", "middle", "bottom")[min(2, int(3 * cy / height))]
    if row == "middle" and col == "centre":
        return "in the centre of the image"
    if row == "middle":
        return f"on the {col} side of the image"
    if col == "centre":
        return f"at the {row} of the image"
    return f"in the {row} {col} of the image"


def _short_name(obj: SceneObject) -> str:
    return f"the {obj.colour} {obj.texture} {obj.category}"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def detailed_caption(scene: Scene, i: int) -> str:
    """Several sentences: attributes and position, relations to the nearest neighbours, occlusion."""
    obj = scene.objects[i]
    sentences = [f"A {obj.brief} {position_phrase(obj, scene.width, scene.height)}."]
    others = sorted((j for j in range(len(scene.objects)) if j != i), key=lambda j: (math.dist(obj.centre, scene.objects[j].centre), j))
    for j in others[:2]:
        rels = [rel for rel, k in obj.relations if k == j]
        how = " and ".join(rels) if rels else "next to"
        sentences.append(f"It is {how} {_short_name(scene.objects[j])}.")
    if obj.occluders and obj.hidden_fraction > 0.0:
        names = [_short_name(scene.objects[j]) for j in obj.occluders]
        sentences.append(f"It is partly hidden by {_join(names)}.")
    covers = [_short_name(o) for o in scene.objects if i in o.occluders and o.hidden_fraction > 0.0]
    if covers:
        sentences.append(f"It covers part of {_join(covers)}.")
    same = sum(1 for j, o in enumerate(scene.objects) if j != i and o.category == obj.category)
    if same:
        plural = "s" if same > 1 else ""
        sentences.append(f"There {'are' if same > 1 else 'is'} {same} other {obj.category}{plural} in the image.")
    return " ".join(sentences)


def difficulty_tags(scene: Scene, i: int) -> tuple[str, ...]:
    """Subset of ``small``, ``occluded``, ``crowded``, ``distractor`` that applies to object ``i``."""
    obj = scene.objects[i]
    tags = []
    if obj.size == "small":
        tags.append("small")
    if obj.hidden_fraction >= OCCLUDED_FRACTION:
        tags.append("occluded")
    radius = CROWD_RADIUS * math.hypot(scene.width, scene.height)
    near = sum(1 for j, o in enumerate(scene.objects) if j != i and math.dist(obj.centre, o.centre) < radius)
    if len(scene.objects) >= CROWD_SCENE_SIZE or near >= CROWD_NEIGHBOURS:
        tags.append("crowded")
    if any(j != i and o.category == obj.category for j, o in enumerate(scene.objects)):
        tags.append("distractor")
    return tuple(tags)


def annotate_scene(scene: Scene) -> Scene:
    """Fill every object's relations, tags, brief/detailed captions and referring expressions."""
    for i, obj in enumerate(scene.objects):
        obj.relations = spatial_relations(scene, i)
        obj.tags = difficulty_tags(scene, i)
        obj.brief = f"{obj.size} {obj.colour} {obj.texture} {obj.category}"
    for i, obj in enumerate(scene.objects):
        obj.detailed = detailed_caption(scene, i)
        forms = referring_candidates(scene, i)
        obj.referring_forms = tuple(forms)
        obj.referring = tuple(p.text() for p in forms)
    return scene


def present_pairs(scene: Scene) -> list[tuple[str, str]]:
    """(colour, category) of every object of the scene, in depth order (input of the question makers)."""
    return [(o.colour, o.category) for o in scene.objects]


def existence_negatives(
    pairs: Sequence[tuple[str, str]],
    rng: random.Random,
    setting: str,
    count: int,
    popular_order: Sequence[str] = CATEGORIES,
) -> list[str]:
    """Phrases of things absent from a scene given its (colour, category) pairs, POPE-style.

    ``random``: absent categories at random; ``popular``: the most frequent categories of the
    data set (``popular_order``, most frequent first) that are absent; ``adversarial``: absent
    categories similar to present ones, alternating with present categories in a colour they
    do not have in this scene.
    """
    present = {category for _, category in pairs}
    absent = [c for c in CATEGORIES if c not in present]
    if setting == "random":
        return rng.sample(absent, min(count, len(absent)))
    if setting == "popular":
        return [c for c in popular_order if c not in present][:count]
    if setting == "adversarial":
        similar = sorted({s for c in present for s in SIMILAR[c] if s not in present}, key=CATEGORIES.index)
        have = set(pairs)
        recoloured = [
            f"{colour} {c}" for c in sorted(present, key=CATEGORIES.index) for colour in COLOUR_NAMES if (colour, c) not in have
        ]
        pool_a = rng.sample(similar, len(similar))
        pool_b = rng.sample(recoloured, len(recoloured))
        out: list[str] = []
        while len(out) < count and (pool_a or pool_b):
            source = pool_a if (pool_a and (not pool_b or len(out) % 2 == 0)) else pool_b
            out.append(source.pop(0))
        return out
    raise ValueError(f"unknown POPE setting {setting!r}; choose random, popular or adversarial")


def training_existence_phrases(
    pairs: Sequence[tuple[str, str]], rng: random.Random, count: int, colour_probability: float = 1 / 3
) -> list[tuple[str, bool]]:
    """Up to ``count`` present and as many absent phrases for training, as (phrase, present).

    Drawn so that the text alone never tells the answer: a present category and an absent one
    picked uniformly (every category is then about as often present as absent over the world,
    unlike the POPE settings, whose "popular" negatives are always the same few categories), or,
    with ``colour_probability``, a present (colour, category) and a present category in a colour
    it does not have here (so a colour in the question is not a sign of "No").
    """
    present = sorted({category for _, category in pairs}, key=CATEGORIES.index)
    absent = [c for c in CATEGORIES if c not in present]
    recoloured = [f"{colour} {c}" for c in present for colour in COLOUR_NAMES if (colour, c) not in set(pairs)]
    coloured = [f"{colour} {c}" for colour, c in sorted(set(pairs))]
    out: list[tuple[str, bool]] = []
    for _ in range(count):
        if coloured and recoloured and rng.random() < colour_probability:
            yes, no = coloured, recoloured
        elif present and absent:
            yes, no = present, absent
        else:
            break
        for pool, answer in ((yes, True), (no, False)):
            out.append((pool.pop(rng.randrange(len(pool))), answer))
    return out


def existence_positives(pairs: Sequence[tuple[str, str]], rng: random.Random, count: int) -> list[str]:
    """Distinct categories present in a scene (given its (colour, category) pairs), at random."""
    present = sorted({category for _, category in pairs}, key=CATEGORIES.index)
    return rng.sample(present, min(count, len(present)))
