"""Attention supervision for answers that describe one region (``train.describe_pointer_weight``).

"What is in <region3>? Describe it briefly." is answered by reading the region's token: each word
of "small red dotted star" is there, in the region's features (and, with ``model.region_labels``,
as the marked names themselves). The built-in model learned some words of such captions and not
others by chance: with one seed it named every colour right, with another it wrote the same colour
for every region while its region label head told colours apart 0.99 of the time (bench/demo_model.md,
fourteenth round): the language model never looked for the colour in the region token.

This loss asks one head (``train.describe_pointer_layer``, ``train.describe_pointer_head``), at each
position that writes a token of a classification or brief answer, to attend to the placeholders of
the region the question asks about, and its readout (what that head alone writes, through the output
head) to predict the token: the copy from the region token that REC answers learn from
``train.rec_pointer_weight`` (rec_pointer.py). Questions about more than one region (relations) are
not supervised. The attention is recomputed as for REC.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
import torch

from .rec_pointer import answer_spans, placeholder_regions

DESCRIBE_TASKS = ("classify", "brief")  # answers about one region whose words its token holds


@dataclass(frozen=True)
class DescribePointer:
    """One supervised attention row: in batch row ``row`` the query at ``query`` (which writes
    ``token``) should attend to ``targets`` (the asked region's placeholders so far); ``choices``
    groups the placeholders before the query by region, ``answer`` indexes the asked one."""

    row: int
    query: int
    targets: tuple[int, ...]
    choices: tuple[tuple[int, ...], ...]
    answer: int
    token: int


def describe_pointers(input_ids: torch.Tensor, answer_index: torch.Tensor, answer_tasks: Sequence[str],
                      region_token_id: int, region_token_index: torch.Tensor | None,
                      tasks: Iterable[str] = DESCRIBE_TASKS) -> list[DescribePointer]:
    """The supervised rows of a batch: one per token (but the closing end token) of each answer of
    ``tasks`` whose question (the text since the previous answer of its row) names exactly one region.

    ``input_ids`` and ``answer_index`` are (N, L); ``region_token_index`` (P,) maps each
    placeholder, in row-major order, to its region.
    """
    if region_token_index is None or region_token_index.numel() == 0:
        return []
    tasks = frozenset(tasks)
    ids = input_ids.tolist()
    region_of = placeholder_regions(input_ids, region_token_id, region_token_index)
    pointers = []
    for row, a, question_start, start, end in answer_spans(answer_index):
        if answer_tasks[a] not in tasks:
            continue
        asked = {region_of[row][p] for p in range(question_start, start) if p in region_of[row]}
        if len(asked) != 1:
            continue
        region = asked.pop()
        seen: dict[int, list[int]] = {}  # region -> its placeholders before the answer
        for p in sorted(region_of[row]):
            if p < start:
                seen.setdefault(region_of[row][p], []).append(p)
        order = list(seen)
        choices = tuple(tuple(seen[r]) for r in order)
        answer = order.index(region)
        for query in range(start - 1, end - 2):  # the position before each answer token but the end token
            pointers.append(DescribePointer(row, query, choices[answer], choices, answer, ids[row][query + 1]))
    return pointers


__all__ = ["DESCRIBE_TASKS", "DescribePointer", "describe_pointers"]
