"""Task-guided instruction prompts (RegionGPT §3.2): a question plus a suffix that fixes the
output's scope, used identically in training and at inference.

Each task has several paraphrased question templates (training draws one at random;
inference uses the first, the paper's wording) and one fixed scope suffix. Region
references are written as ``<regionK>`` (1-based) and expanded by the processor.

Kept free of package-relative imports beyond this folder so it can travel as remote code.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

TASKS = ("classify", "label", "brief", "detailed", "rec", "relation", "existence")

NO_MATCH_ANSWER = "No corresponding options found."

# The first template of each task is the paper's wording (SPEC §1).
QUESTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "classify": (
        "What category name best describes the region represented by {region}?",
        "Which category does the object in {region} belong to?",
        "Classify the object shown in {region}.",
        "What kind of object is {region}?",
        "Name the category of the object in {region}.",
        "To which category does {region} belong?",
        "What is the category of the object marked by {region}?",
        "Identify the category of {region}.",
        "What object category is represented by {region}?",
        "Tell me the category of the object at {region}.",
    ),
    "label": (
        "What is the class name of {region}?",
        "What is {region}?",
        "What object is at {region}?",
        "Can you tell me what {region} is?",
        "What do you see in {region}?",
        "Name the object in {region}.",
        "What is the object located at {region}?",
        "What is shown in {region}?",
        "Which object is {region}?",
        "What thing is marked by {region}?",
    ),
    "brief": (
        "Provide a short description for {region}.",
        "Briefly describe {region}.",
        "Give a short description of the object in {region}.",
        "Describe {region} in a few words.",
        "What is in {region}? Describe it briefly.",
        "Write a short caption for {region}.",
        "Summarise the object at {region} in a phrase.",
        "Give a brief caption of {region}.",
        "Describe the region {region} concisely.",
        "In a few words, what is {region}?",
    ),
    "detailed": (
        "Describe in detail the object located at {region} in the image.",
        "Give a detailed description of {region}.",
        "Describe {region} in detail.",
        "Please describe the object in {region} thoroughly.",
        "Tell me everything you can see about {region}.",
        "Provide a detailed description of the object at {region}.",
        "What does {region} look like? Describe it in detail.",
        "Write a detailed caption for {region}.",
        "Explain in detail what {region} shows and where it is.",
        "Describe the appearance and position of {region} in detail.",
    ),
    "rec": (
        "From the provided masks denoted by {regions}, which one fits '{phrase}'?",
        "Among {regions}, which region matches '{phrase}'?",
        "Which of {regions} is '{phrase}'?",
        "Given the regions {regions}, find the one described as '{phrase}'.",
        "Which region among {regions} does '{phrase}' refer to?",
        "Select the region from {regions} that best fits '{phrase}'.",
        "Of the masks {regions}, which one shows '{phrase}'?",
        "Find '{phrase}' among {regions}.",
        "Which one of {regions} corresponds to '{phrase}'?",
        "Point out the region among {regions} that is '{phrase}'.",
    ),
    "relation": (
        "What can be inferred about {region} and {region2} relationship?",
        "What is the spatial relationship between {region} and {region2}?",
        "How is {region} positioned relative to {region2}?",
        "Describe the relation between {region} and {region2}.",
        "Where is {region} with respect to {region2}?",
        "What is the relationship of {region} to {region2}?",
        "How are {region} and {region2} related in the image?",
        "Explain how {region} relates to {region2}.",
        "Where does {region} lie compared to {region2}?",
        "Describe the position of {region} relative to {region2}.",
    ),
    "existence": (
        "Is there a {phrase} in the image?",
        "Does the image contain a {phrase}?",
        "Can you see a {phrase} in this image?",
        "Is a {phrase} present in the image?",
        "Is there any {phrase} in the picture?",
        "Do you see a {phrase}?",
        "Does a {phrase} appear in the image?",
        "Is there a {phrase} anywhere in the image?",
        "Can a {phrase} be found in the image?",
        "Is any {phrase} visible in the image?",
    ),
}

SUFFIXES: dict[str, str] = {
    "classify": "Answer the question using {vocabulary} category names.",
    "label": "",
    "brief": "Answer with a short phrase.",
    "detailed": "",
    "rec": "Answer the question using the template Region [x].",
    "relation": "",
    "existence": "Answer yes or no.",
}


def strip_task_suffix(question: str, task: str) -> str:
    """``question`` without its task's scope suffix (and a classification question's category
    list): what a model trained without task-guided prompts is asked. Unknown tasks and
    questions without the suffix come back unchanged."""
    template = SUFFIXES.get(task)
    if not template:
        return question
    pattern = re.escape(template).replace(re.escape("{vocabulary}"), r".+?")
    if task == "classify":
        pattern += r"(?: Categories: .*)?"
    return re.sub(rf"\s*{pattern}\s*$", "", question, flags=re.DOTALL)


def region_ref(index: int) -> str:
    """The placeholder users write for the ``index``-th region (0-based index → ``<region{index+1}>``)."""
    return f"<region{index + 1}>"


def join_region_refs(indices: Sequence[int]) -> str:
    """``<region1>, <region2>, ..., <region5>`` as in the paper's REC prompt."""
    refs = [region_ref(i) for i in indices]
    return ", ".join(refs)


def build_instruction(
    task: str,
    region: int | None = None,
    region2: int | None = None,
    regions: Sequence[int] | None = None,
    phrase: str | None = None,
    vocabulary: str = "COCO-80",
    categories: Sequence[str] | None = None,
    rng: random.Random | None = None,
    use_suffix: bool = True,
) -> str:
    """The question text of one task-guided instruction.

    ``rng`` picks a paraphrase (training); without it the paper's wording is used (inference).
    ``categories``, when given for ``classify``, lists the allowed answers after the suffix.
    ``use_suffix=False`` drops the scope suffix (the paper's "no task-guided prompt" ablation).
    """
    if task not in QUESTION_TEMPLATES:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    templates = QUESTION_TEMPLATES[task]
    template = templates[0] if rng is None else rng.choice(templates)
    fields = {
        "region": region_ref(region) if region is not None else None,
        "region2": region_ref(region2) if region2 is not None else None,
        "regions": join_region_refs(regions) if regions is not None else None,
        "phrase": phrase,
    }
    needed = set(re.findall(r"{(\w+)}", template))
    missing = sorted(name for name in needed if fields.get(name) is None)
    if missing:
        raise ValueError(f"task {task!r} needs {', '.join(missing)}")
    question = template.format(**{k: v for k, v in fields.items() if k in needed})
    if not use_suffix:
        return question
    suffix = SUFFIXES[task].format(vocabulary=vocabulary)
    if task == "classify" and categories:
        suffix = f"{suffix} Categories: {', '.join(categories)}."
    return f"{question} {suffix}".strip()


def rec_answer(index: int | None) -> str:
    """The REC answer for the chosen candidate (0-based), or the no-match answer."""
    return NO_MATCH_ANSWER if index is None else f"Region [{index + 1}]"


REC_ANSWER_STYLES = ("direct", "checked")


def rec_checked_answer(descriptions: Sequence[str], index: int | None) -> str:
    """A REC answer that checks the candidates in order before naming one:
    "Region [1]: small red bar, no. Region [2]: large blue ring, yes. So it is Region [2]."
    (all "no", then "No corresponding options found.", when ``index`` is None).

    Each check says what the candidate is, then compares that text with the phrase; a small
    language model trained from scratch learns this chain where it does not learn to pick the
    matching region token in one step (bench/rec_oracle.md, "Sixth round"). The conclusion uses
    the paper's template, so :func:`parse_rec_answer` reads it like a direct answer.
    """
    if index is not None and not 0 <= index < len(descriptions):
        raise ValueError(f"REC target {index} is not one of the {len(descriptions)} candidates")
    stop = len(descriptions) if index is None else index + 1
    checks = [f"{rec_answer(k)}: {descriptions[k]}, {'yes' if k == index else 'no'}." for k in range(stop)]
    return " ".join([*checks, NO_MATCH_ANSWER if index is None else f"So it is {rec_answer(index)}."])


_REC_PATTERN = re.compile(r"region\s*\[?\s*(\d+)\s*\]?", re.IGNORECASE)


def parse_rec_answer(text: str) -> int | None:
    """The 0-based region index a REC answer settles on, or None (no match / unparsable).

    A direct answer names one region ("Region [3]"); a checked answer names each candidate it
    checks and ends with the one it chose, so the last region named counts. An answer that
    says "No corresponding options found." chose none.
    """
    if NO_MATCH_ANSWER.lower().rstrip(".") in text.lower():
        return None
    matches = _REC_PATTERN.findall(text)
    if not matches:
        return None
    k = int(matches[-1])
    return k - 1 if k >= 1 else None


def parse_yes_no(text: str) -> bool:
    """POPE's rule: first sentence of the answer; "no" or "not" in it → no, else yes."""
    first = re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0]
    words = set(re.findall(r"[a-z']+", first.lower()))
    return not ({"no", "not"} & words)
