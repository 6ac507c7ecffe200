"""Attention supervision that brings the asked phrase to the answer (``train.phrase_pointer_weight``).

A REC or yes/no answer is a lookup of two hops. The position that writes the answer ("Region [k]":
the digit; "Yes"/"No") must first gather the phrase's words from the question ("the small red
star", "a heart") and then match them against the candidates' region tokens or the image tokens.
The REC and existence pointers (rec_pointer.py, existence_pointer.py) supervise the second hop
only. With them the built-in model found the REC lookup early or late by chance, and the yes/no
lookup mostly never: its existence readout stayed at ln 2 while the same image tokens told
categories apart (bench/demo_model.md). The first hop was left to the answer loss.

This loss asks one head of an earlier layer (``train.phrase_pointer_layer``,
``train.phrase_pointer_head``), at the position that writes a REC digit or the first token of a
yes/no answer, to attend to the question's label words: the tokens of the names the model's label
heads know (``image_label_token_ids``, ``region_label_token_ids``: categories, colours, textures,
sizes). Its value then carries those words into the query's residual stream, where the second hop's
query can read them. No readout: the head feeds the next layer, not the output. The attention is
recomputed as for REC.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from .rec_pointer import TargetPointer, answer_spans

PHRASE_TASKS = ("rec", "existence")  # answers that look a phrase up


def label_word_sequences(image_label_token_ids: Sequence[Sequence[int]] | None,
                         region_label_token_ids: Mapping[str, Sequence[Sequence[int]]] | None
                         ) -> list[tuple[int, ...]]:
    """Every label name's token ids (as a question writes it), longest first, without repeats."""
    names = {tuple(ids) for ids in image_label_token_ids or () if ids}
    for values in (region_label_token_ids or {}).values():
        names |= {tuple(ids) for ids in values if ids}
    return sorted(names, key=lambda ids: (-len(ids), ids))


def label_word_spans(ids: Sequence[int], start: int, end: int,
                     words: Sequence[tuple[int, ...]]) -> list[tuple[int, tuple[int, ...]]]:
    """(position, word) of each occurrence in ``ids[start:end]`` of one of ``words`` (token id
    sequences, longest first, so a longer name wins over a name it contains)."""
    spans: list[tuple[int, tuple[int, ...]]] = []
    p = start
    while p < end:
        for word in words:
            if tuple(ids[p : p + len(word)]) == word and p + len(word) <= end:
                spans.append((p, word))
                p += len(word)
                break
        else:
            p += 1
    return spans


def label_word_positions(ids: Sequence[int], start: int, end: int,
                         words: Sequence[tuple[int, ...]]) -> list[int]:
    """Positions in ``ids[start:end]`` covered by an occurrence of one of ``words`` (longest first)."""
    return [p + i for p, word in label_word_spans(ids, start, end, words) for i in range(len(word))]


def phrase_pointers(input_ids: torch.Tensor, answer_index: torch.Tensor, answer_tasks: Sequence[str],
                    words: Sequence[tuple[int, ...]], digits: Iterable[int],
                    tasks: Iterable[str] = PHRASE_TASKS,
                    target_words: Iterable[tuple[int, ...]] | None = None) -> list[TargetPointer]:
    """The supervised rows of a batch: for each answer of ``tasks`` whose question (the text since the
    previous answer of its row) holds label words, the query that writes the answer's first digit
    (REC: "Region [k]"; answers with no digit, such as "Yes." / "No.", the first token).

    ``input_ids`` and ``answer_index`` are (N, L); ``words`` are the label names' token ids
    (:func:`label_word_sequences`); ``digits`` are the tokenizer's digit token ids. ``target_words``
    (a subset of ``words``, e.g. the attribute names): the targets are only those words' positions,
    and answers whose question has none of them are skipped (``words`` still decides how the
    question splits into names).
    """
    tasks, digits = frozenset(tasks), frozenset(digits)
    wanted = None if target_words is None else frozenset(target_words)
    ids = input_ids.tolist()
    pointers = []
    for row, a, question_start, start, end in answer_spans(answer_index):
        if answer_tasks[a] not in tasks:
            continue
        row_ids = ids[row]
        targets = [p + i for p, word in label_word_spans(row_ids, question_start, start, words)
                   if wanted is None or word in wanted for i in range(len(word))]
        if not targets:
            continue
        written = next((p for p in range(start, end) if row_ids[p] in digits), start)
        query = written - 1
        held = set(targets)
        others = tuple(p for p in range(query + 1) if p not in held)
        pointers.append(TargetPointer(row, query, tuple(targets), others, row_ids[written]))
    return pointers


__all__ = ["PHRASE_TASKS", "label_word_positions", "label_word_spans", "label_word_sequences", "phrase_pointers"]
