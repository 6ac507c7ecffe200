"""Task builders: annotated images -> native samples with task-guided region conversations.

Readers of annotation formats (COCO, refer layout, Visual Genome) turn each image into an
:class:`AnnotatedImage` (its regions, their categories, captions and referring expressions)
and :func:`build_sample` writes one multi-turn conversation about it. Every question comes
from :func:`regiongpt.processing.instructions.build_instruction` (a paraphrase drawn with the
seeded ``rng``, plus the task's scope suffix), the same templates inference uses:

=============  ===================================================  =================================
task           question                                             answer
=============  ===================================================  =================================
classify       category of <regionK> + "Answer ... using X          the category name
               category names." + the data set's category list
label          "What is the class name of <regionK>?"               "It is a frisbee."
brief          short description of <regionK>                       a RefCOCOg sentence / VG phrase
detailed       detailed description of <regionK>                    a (generated) detailed caption
rec            which of <region1>..<regionN> fits 'PHRASE'?          "Region [k]", or "No corresponding
                                                                    options found." for a phrase of
                                                                    another image whose category is
                                                                    absent here
relation       relationship of <regionI> and <regionJ>              "Region [I] is left of Region [J]."
existence      "Is there a CATEGORY in the image?"                  "Yes." / "No."
=============  ===================================================  =================================

Answers never contain ``<regionK>`` (the model cannot generate it); they name regions as
"Region [k]". The turn order is shuffled with the same ``rng``, so a sample is a pure
function of the annotations and the seed.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from regiongpt.data.native import NativeRegion, NativeSample
from regiongpt.processing.instructions import build_instruction, rec_answer

TASK_NAMES = ("classify", "label", "brief", "detailed", "rec", "relation", "existence")

# The 80 COCO detection categories (instances_*2017.json), in id order.
COCO_80 = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)

RELATION_MARGIN = 0.03  # box centres must differ by 3% of the image size (as the synthetic world)


def category_vocabulary(categories: Sequence[str]) -> str:
    """How the classification suffix names the category set: ``COCO-80`` for COCO's 80, else ``the listed``."""
    return "COCO-80" if set(categories) == set(COCO_80) and len(categories) == 80 else "the listed"


def clean_text(text: Any) -> str:
    """One line of text: whitespace collapsed, ``<image>``/``<regionK>`` placeholders removed."""
    text = re.sub(r"<image>|<region\d*>", " ", str(text))
    return re.sub(r"\s+", " ", text).strip()


@dataclass
class AnnotatedRegion:
    """A region with what is known about it."""

    region: NativeRegion  # box and/or mask, category
    captions: list[str] = field(default_factory=list)  # brief captions (RefCOCOg sentences, VG phrases)
    detailed: str | None = None  # a detailed caption (e.g. from the data engine)
    referring: list[str] = field(default_factory=list)  # expressions that single it out (REC targets)


@dataclass
class AnnotatedImage:
    """One image and its annotated regions, before the conversation is written."""

    id: str
    image: str
    width: int
    height: int
    regions: list[AnnotatedRegion]
    source: str = ""
    split: str = ""
    base_dir: Path | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskOptions:
    """What to build and from which vocabulary."""

    tasks: tuple[str, ...] = TASK_NAMES
    categories: tuple[str, ...] = ()  # the data set's category names (classify list, existence negatives)
    # Append "Categories: a, b, ..." to classify questions when the set has no name of its own
    # (COCO's 80 are named "COCO-80" instead, as in the paper; the inference API does the same).
    list_categories: bool = True
    rec_negatives: float = 0.1  # fraction of REC questions whose phrase fits no candidate
    negative_phrases: tuple[tuple[str, str | None], ...] = ()  # (phrase, category) from other images
    relations_per_image: int = 2
    existence_per_image: int = 1  # positives and as many negatives


def _article(name: str) -> str:
    return "an" if name[:1].lower() in "aeiou" else "a"


def box_relation(a: Sequence[float], b: Sequence[float], width: int, height: int) -> str | None:
    """Where box ``a`` is relative to box ``b`` from their centres ("left of and above"), or None."""
    ax, ay = (a[0] + a[2]) / 2, (a[1] + a[3]) / 2
    bx, by = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    parts = []
    if ax < bx - RELATION_MARGIN * width:
        parts.append("left of")
    elif ax > bx + RELATION_MARGIN * width:
        parts.append("right of")
    if ay < by - RELATION_MARGIN * height:
        parts.append("above")
    elif ay > by + RELATION_MARGIN * height:
        parts.append("below")
    return " and ".join(parts) or None


def _negative_phrase(options: TaskOptions, present: set[str | None], rng: random.Random) -> str | None:
    """A phrase from another image whose category is absent from this one (None if none found)."""
    pool = options.negative_phrases
    if not pool:
        return None
    for _ in range(20):
        phrase, category = pool[rng.randrange(len(pool))]
        if category is not None and category not in present:
            return phrase
    return None


def build_turns(image: AnnotatedImage, options: TaskOptions, rng: random.Random) -> list[tuple[Any, ...]]:
    """The (task, question, answer) triples of one image, in task order (not shuffled); existence
    answers add a fourth item, their evidence (the numbers of the regions of the asked category)."""
    tasks = set(options.tasks)
    regions = image.regions
    n = len(regions)
    categories = list(options.categories)
    qa: list[tuple[Any, ...]] = []
    if "classify" in tasks and categories:
        vocabulary = category_vocabulary(categories)
        listed = categories if options.list_categories and vocabulary == "the listed" else None
        for k, r in enumerate(regions):
            if r.region.category:
                question = build_instruction("classify", region=k, vocabulary=vocabulary, categories=listed, rng=rng)
                qa.append(("classify", question, r.region.category))
    if "label" in tasks:
        for k, r in enumerate(regions):
            if r.region.category:
                name = r.region.category
                qa.append(("label", build_instruction("label", region=k, rng=rng), f"It is {_article(name)} {name}."))
    # One caption per region for brief, another expression for REC: a conversation never shows the
    # REC phrase as some region's brief answer (that would give the REC answer away).
    brief = {k: rng.choice(r.captions) for k, r in enumerate(regions) if r.captions} if "brief" in tasks else {}
    rec: dict[int, str] = {}
    if "rec" in tasks:
        for k, r in enumerate(regions):
            others = [p for p in r.referring if p != brief.get(k)]
            if others:
                rec[k] = rng.choice(others)
            elif r.referring and rng.random() < 0.5:  # its only expression: REC or brief, not both
                rec[k] = brief.pop(k)
    for k, caption in brief.items():
        qa.append(("brief", build_instruction("brief", region=k, rng=rng), caption))
    if "detailed" in tasks:
        for k, r in enumerate(regions):
            if r.detailed:
                qa.append(("detailed", build_instruction("detailed", region=k, rng=rng), r.detailed))
    if rec:
        present = {r.region.category for r in regions}
        for k, phrase in rec.items():
            answer = rec_answer(k)
            if options.rec_negatives and rng.random() < options.rec_negatives:
                negative = _negative_phrase(options, present, rng)
                if negative is not None:
                    phrase, answer = negative, rec_answer(None)
            qa.append(("rec", build_instruction("rec", regions=range(n), phrase=phrase, rng=rng), answer))
    if "relation" in tasks and n >= 2 and options.relations_per_image:
        pairs = []
        for i in range(n):
            for j in range(n):
                if i != j and regions[i].region.box is not None and regions[j].region.box is not None:
                    how = box_relation(regions[i].region.box, regions[j].region.box, image.width, image.height)
                    if how:
                        pairs.append((i, j, how))
        for i, j, how in rng.sample(pairs, min(len(pairs), options.relations_per_image)):
            question = build_instruction("relation", region=i, region2=j, rng=rng)
            qa.append(("relation", question, f"{rec_answer(i)} is {how} {rec_answer(j)}."))
    if "existence" in tasks and categories and options.existence_per_image:
        present = sorted({r.region.category for r in regions if r.region.category})
        absent = [c for c in categories if c not in present]
        for name in rng.sample(present, min(len(present), options.existence_per_image)):
            evidence = [k + 1 for k, r in enumerate(regions) if r.region.category == name]
            qa.append(("existence", build_instruction("existence", phrase=name, rng=rng), "Yes.", evidence))
        for name in rng.sample(absent, min(len(absent), options.existence_per_image)):
            qa.append(("existence", build_instruction("existence", phrase=name, rng=rng), "No.", []))
    return qa


def conversation_from_turns(qa: Sequence[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Native turns from (task, question, answer[, evidence]): ``<image>`` at the start of the first
    question, each question with its task, each answer with its evidence when it has one."""
    turns: list[dict[str, Any]] = []
    for t, (task, question, answer, *evidence) in enumerate(qa):
        turns.append({"from": "human", "value": f"<image>\n{question}" if t == 0 else question, "task": task})
        turns.append({"from": "gpt", "value": answer, **({"evidence": list(evidence[0])} if evidence else {})})
    return turns


def build_sample(image: AnnotatedImage, options: TaskOptions, rng: random.Random,
                 shuffle: bool = True) -> NativeSample | None:
    """The native sample of ``image`` (all its regions, one shuffled conversation); None without turns."""
    qa = build_turns(image, options, rng)
    if not qa:
        return None
    if shuffle:
        rng.shuffle(qa)
    return NativeSample(id=image.id, image=image.image, width=image.width, height=image.height,
                        regions=[r.region for r in image.regions], conversations=conversation_from_turns(qa),
                        source=image.source, split=image.split, metadata=dict(image.metadata),
                        base_dir=image.base_dir)


def sample_rng(seed: int, source: str, sample_id: str) -> random.Random:
    """The rng of one sample: a function of the seed, the source kind and the sample id only."""
    return random.Random(f"{seed}:{source}:{sample_id}")


__all__ = ["AnnotatedImage", "AnnotatedRegion", "COCO_80", "TASK_NAMES", "TaskOptions", "box_relation", "build_sample",
           "build_turns", "category_vocabulary", "clean_text", "conversation_from_turns", "sample_rng"]
