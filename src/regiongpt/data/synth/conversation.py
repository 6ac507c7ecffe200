"""Native samples for synthetic scenes: all regions and one multi-turn conversation per image.

Question texts come only from :mod:`regiongpt.processing.instructions`, the same templates
used at inference, so the model trained on this data sees the prompts it will be asked.
Every region gets a classify and a brief-caption turn; a few detailed, REC (with ~10%
no-match negatives), relation and existence turns are added; the turn order is shuffled.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from regiongpt.data.native import NativeRegion, NativeSample
from regiongpt.data.synth.annotate import RefPhrase, present_pairs, resolve, training_existence_phrases
from regiongpt.data.synth.scene import Scene
from regiongpt.data.synth.world import CATEGORIES, COLOUR_NAMES, SIZES, TEXTURES
from regiongpt.processing.instructions import (
    REC_ANSWER_STYLES, build_instruction, rec_answer, rec_checked_answer, region_ref,
)
from regiongpt.processing.rle import encode_rle

# As the paper's "Answer the question using COCO-80 category names.": the prompt names the
# label set instead of listing it (a list would add ~20 tokens to every classify turn).
CLASSIFY_VOCABULARY = "synthetic-world"
DETAILED_PER_IMAGE = 2
REC_PER_IMAGE = 2
REC_NEGATIVE_PROBABILITY = 0.1
RELATIONS_PER_IMAGE = 2
# How training REC questions pick their phrases (``rec_phrases``): "first" asks each chosen object
# by its first (shortest) referring expression; "referring" by either of its two referring
# expressions (the ones the refer layout holds, i.e. what the REC benchmark asks), choosing objects
# that share their category with another REC_SHARED_WEIGHT times as often: a lone category is found
# by its name, and only the others teach matching colour, texture and size (bench/demo_model.md);
# "either" asks the objects "first" asks, those that share their category by either of their two
# expressions drawn evenly: lone categories are asked by name as often as in "first", and the
# texture phrases that tell two objects of one category apart, which a first expression rarely
# uses, come up several times as often, but sizes less often; "both" asks what "first" asks and,
# where the count allows, the other expressions of objects that share their category, so no kind
# of phrase is asked less often than in "first" (at the cost of more questions).
REC_PHRASE_STYLES = ("first", "referring", "either", "both")
REC_SHARED_WEIGHT = 3.0
# A no-match REC question keeps its object's category this often (with other attribute values),
# so that rejecting it takes checking the attributes, not just the category.
REC_NEGATIVE_SAME_CATEGORY = 0.5


def region_attributes(scene: Scene, index: int, ann_ids: Sequence[int]) -> dict[str, Any]:
    """All raw annotations of one object, with other objects named by their annotation ids."""
    obj = scene.objects[index]
    return {
        "colour": obj.colour,
        "size": obj.size,
        "texture": obj.texture,
        "brief": obj.brief,
        "referring": list(obj.referring),
        "referring_forms": [p.to_json() for p in obj.referring_forms],
        "detailed": obj.detailed,
        "tags": list(obj.tags),
        "relations": [{"relation": rel, "object": int(ann_ids[j])} for rel, j in obj.relations],
        "occluded_by": [int(ann_ids[j]) for j in obj.occluders],
        "hidden_fraction": round(obj.hidden_fraction, 4),
        "area": obj.area,
        "depth": obj.depth,
    }


def relation_sentence(scene: Scene, i: int, j: int) -> str:
    """``Region [I] is left of and above Region [J].`` (``next to`` when no relation holds).

    Answers name regions in the REC answer form: the model cannot generate ``<regionK>``.
    """
    rels = [rel for rel, k in scene.objects[i].relations if k == j]
    how = " and ".join(rels) if rels else "next to"
    return f"{rec_answer(i)} is {how} {rec_answer(j)}."


def absent_like(scene: Scene, rng: random.Random, like: RefPhrase, tries: int = 100) -> RefPhrase:
    """A phrase of the same form as ``like`` (the same attributes named; no relation or extreme)
    that matches no object of the scene: the answer "No corresponding options found." must then
    come from the candidates, not from the wording. With REC_NEGATIVE_SAME_CATEGORY it keeps
    ``like``'s category; falls back to an absent colour + category when no such phrase turns up.
    """
    for _ in range(tries):
        category = like.category if rng.random() < REC_NEGATIVE_SAME_CATEGORY else rng.choice(CATEGORIES)
        phrase = RefPhrase(category=category,
                           size=rng.choice(SIZES) if like.size else None,
                           colour=rng.choice(COLOUR_NAMES) if like.colour else None,
                           texture=rng.choice(TEXTURES) if like.texture else None)
        if not resolve(scene, phrase):
            return phrase
    while True:
        phrase = RefPhrase(category=rng.choice(CATEGORIES), colour=rng.choice(COLOUR_NAMES))
        if not resolve(scene, phrase):
            return phrase


def _named(pairs: Sequence[tuple[str, str]], category: str, colour: str | None = None) -> list[int]:
    """Indices of the objects an existence phrase names (its category, and its colour if given)."""
    return [k for k, (c, cat) in enumerate(pairs) if cat == category and colour in (None, c)]


def _shares_category(scene: Scene, index: int) -> bool:
    """Whether another object of the scene has this object's category."""
    category = scene.objects[index].category
    return any(j != index and other.category == category for j, other in enumerate(scene.objects))


def rec_questions(scene: Scene, rng: random.Random, count: int, style: str = "first") -> list[tuple[int, RefPhrase]]:
    """(object index, referring phrase) of ``min(count, referable objects)`` REC questions.

    ``style`` "first": distinct objects, each by its first referring expression. "either": the
    same objects, those that share their category with another by one of their referring
    expressions drawn evenly, the others by their first. "referring": distinct
    (object, expression) pairs, an object weighing REC_SHARED_WEIGHT when another object has its
    category, split evenly over its expressions (an object may then be asked twice). These three
    ask as many questions, so they cost the same to train. "both": the questions "first" asks,
    then, while ``count`` allows, the other expressions of objects that share their category
    (drawn evenly): no phrase "first" asks is taken away, so it asks more questions where
    ``count`` exceeds the objects.
    """
    if style not in REC_PHRASE_STYLES:
        raise ValueError(f"rec_phrases must be one of {', '.join(REC_PHRASE_STYLES)}, got {style!r}")
    referable = [k for k, obj in enumerate(scene.objects) if obj.referring_forms]
    wanted, count = count, min(count, len(referable))
    if style in ("first", "both"):
        firsts = [(k, scene.objects[k].referring_forms[0]) for k in rng.sample(referable, count)]
        if style == "first":
            return firsts
        others = [(k, form) for k in referable if _shares_category(scene, k)
                  for form in scene.objects[k].referring_forms[1:]]
        return firsts + rng.sample(others, min(len(others), wanted - count))
    if style == "either":
        return [(k, rng.choice(scene.objects[k].referring_forms) if _shares_category(scene, k)
                 else scene.objects[k].referring_forms[0]) for k in rng.sample(referable, count)]
    pool, weights = [], []
    for k in referable:
        obj = scene.objects[k]
        pool += [(k, form) for form in obj.referring_forms]
        weight = REC_SHARED_WEIGHT if _shares_category(scene, k) else 1.0
        weights += [weight / len(obj.referring_forms)] * len(obj.referring_forms)
    asked = []
    while pool and len(asked) < count:  # weighted draws without replacement
        pick = rng.choices(range(len(pool)), weights=weights)[0]
        asked.append(pool.pop(pick))
        weights.pop(pick)
    return asked


def build_conversation(scene: Scene, rng: random.Random, rec_per_image: int | None = REC_PER_IMAGE,
                       existence_per_image: int | None = 1, rec_answers: str = "direct",
                       rec_phrases: str = "first") -> list[dict[str, Any]]:
    """One shuffled multi-turn conversation covering every region of the scene.

    ``rec_per_image``: REC questions (None: one per referring expression of every region), their
    phrases chosen as ``rec_phrases`` says (:func:`rec_questions`);
    ``rec_answers``: "direct" ("Region [2]", the paper's form) or "checked" (each candidate's
    brief caption and a yes/no before the choice, :func:`rec_checked_answer`);
    ``existence_per_image``: present and as many absent things asked about (None: every
    category, plus each present category in its own colour and in a colour it does not have).
    Existence answers carry ``evidence``: the numbers of the regions the phrase names.
    Dense questions are meant to be trained as independent turns (``data.independent_tasks``).
    """
    if rec_answers not in REC_ANSWER_STYLES:
        raise ValueError(f"rec_answers must be one of {', '.join(REC_ANSWER_STYLES)}, got {rec_answers!r}")
    n = len(scene.objects)
    qa: list[tuple[Any, ...]] = []  # (task, question, answer[, evidence: the region numbers it rests on])
    for k, obj in enumerate(scene.objects):
        question = build_instruction("classify", region=k, vocabulary=CLASSIFY_VOCABULARY, rng=rng)
        qa.append(("classify", question, obj.category))
        qa.append(("brief", build_instruction("brief", region=k, rng=rng), obj.brief))
    for k in rng.sample(range(n), min(n, DETAILED_PER_IMAGE)):
        qa.append(("detailed", build_instruction("detailed", region=k, rng=rng), scene.objects[k].detailed))
    if rec_per_image is None:
        asked = [(k, form) for k in range(n) for form in scene.objects[k].referring_forms]
    else:
        asked = rec_questions(scene, rng, rec_per_image, rec_phrases)
    for k, form in asked:
        target: int | None = k
        if rng.random() < REC_NEGATIVE_PROBABILITY:
            form, target = absent_like(scene, rng, form), None
        phrase = form.text()
        if rec_answers == "checked":
            answer = rec_checked_answer([obj.brief for obj in scene.objects], target)
        else:
            answer = rec_answer(target)
        qa.append(("rec", build_instruction("rec", regions=range(n), phrase=phrase, rng=rng), answer))
    if n >= 2:
        pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
        for i, j in rng.sample(pairs, min(len(pairs), RELATIONS_PER_IMAGE)):
            qa.append(("relation", build_instruction("relation", region=i, region2=j, rng=rng), relation_sentence(scene, i, j)))
    pairs = present_pairs(scene)
    asked_existence: list[tuple[str, list[int]]] = []  # (phrase, the objects it names)
    if existence_per_image is None:
        present = {category for _, category in pairs}
        asked_existence += [(c, _named(pairs, c)) for c in CATEGORIES]
        for category in sorted(present, key=CATEGORIES.index):
            colours = sorted({colour for colour, c in pairs if c == category})
            absent = [colour for colour in COLOUR_NAMES if colour not in colours]
            colour = rng.choice(colours)
            asked_existence.append((f"{colour} {category}", _named(pairs, category, colour)))
            if absent:
                asked_existence.append((f"{rng.choice(absent)} {category}", []))
    else:
        for phrase, _ in training_existence_phrases(pairs, rng, existence_per_image):
            *colour, category = phrase.split()
            asked_existence.append((phrase, _named(pairs, category, colour[0] if colour else None)))
    for phrase, named in asked_existence:
        qa.append(("existence", build_instruction("existence", phrase=phrase, rng=rng), "Yes." if named else "No.",
                   [k + 1 for k in named]))
    rng.shuffle(qa)
    turns: list[dict[str, Any]] = []
    for t, (task, question, answer, *evidence) in enumerate(qa):
        value = f"<image>\n{question}" if t == 0 else question
        turns.append({"from": "human", "value": value, "task": task})
        turns.append({"from": "gpt", "value": answer, **({"evidence": evidence[0]} if evidence else {})})
    return turns


def native_sample(
    scene: Scene,
    sample_id: str,
    image: str,
    split: str,
    ann_ids: Sequence[int],
    rng: random.Random,
    masks: Sequence[dict[str, Any]] | None = None,
    rec_per_image: int | None = REC_PER_IMAGE,
    existence_per_image: int | None = 1,
    rec_answers: str = "direct",
    rec_phrases: str = "first",
) -> NativeSample:
    """The native sample of a scene: every object as a region (in depth order) plus its conversation.

    ``masks`` (COCO RLEs, one per object) may be passed to avoid encoding the masks twice.
    """
    regions = []
    for k, obj in enumerate(scene.objects):
        regions.append(
            NativeRegion(
                id=int(ann_ids[k]),
                box=list(obj.box),
                mask=masks[k] if masks is not None else encode_rle(obj.mask),
                category=obj.category,
                attributes=region_attributes(scene, k, ann_ids),
            )
        )
    return NativeSample(
        id=sample_id,
        image=image,
        width=scene.width,
        height=scene.height,
        regions=regions,
        conversations=build_conversation(scene, rng, rec_per_image, existence_per_image, rec_answers, rec_phrases),
        source="synth",
        split=split,
    )
