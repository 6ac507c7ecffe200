"""Attention supervision for existence answers during training (``train.existence_pointer_weight``).

"Is there a heart in the image?" is answered from the image tokens: the phrase must be matched
against what each image-token cell holds. Trained through the answer loss alone, the built-in
model answered at its prior (0.50 on every POPE split, bench/demo_model.md) while the same image
tokens told a cell's categories apart 0.83 of the time: the lookup was missing, as it was for
REC before ``train.rec_pointer_weight``.

This loss asks one head (``train.existence_pointer_layer``, ``train.existence_pointer_head``), at
the position that writes the answer's first token ("Yes" / "No"), to attend to the image tokens
of the cells that hold the answer's evidence regions (the regions the phrase names: the data's
``evidence``, see docs/native-format.md), or, when the evidence is empty (nothing in the image
fits), to the sequence's first token: a fixed "nothing here" position every question sees. Its
readout (what the head alone writes, through the output head) learns "Yes" from an image token
and "No" from the first token. The attention is recomputed as for REC (``rec_pointer.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import groupby

import torch

from .rec_pointer import TargetPointer
from .region_pretrain import region_cells


def existence_pointers(input_ids: torch.Tensor, answer_index: torch.Tensor, answer_tasks: Sequence[str],
                       answer_evidence: Sequence[tuple[int, ...] | None], image_token_id: int,
                       region_masks: torch.Tensor | None, region_image_index: torch.Tensor | None, grid: int,
                       tasks: Iterable[str] = ("existence",)) -> list[TargetPointer]:
    """The supervised rows of a batch: one per answer of ``tasks`` whose evidence is known.

    ``input_ids`` / ``answer_index`` are (N, L); row n's regions are the rows of ``region_masks``
    (R, H, W) whose ``region_image_index`` is n, in order, so evidence K is the K-th of them. Each
    row's image tokens (``grid * grid`` of them, row-major) stand for the cells of
    :func:`~regiongpt.training.region_pretrain.region_cells`. Answers whose evidence is unknown,
    or whose regions cover no cell, and rows without an image are skipped.
    """
    tasks = frozenset(tasks)
    if not any(task in tasks and evidence is not None for task, evidence in zip(answer_tasks, answer_evidence)):
        return []
    cells = region_cells(region_masks, grid).tolist() if region_masks is not None and region_masks.numel() else []
    image_of = region_image_index.tolist() if region_image_index is not None else []
    pointers = []
    for row, (row_ids, row_index) in enumerate(zip(input_ids.tolist(), answer_index.tolist())):
        image = [p for p, token in enumerate(row_ids) if token == image_token_id]
        if not image:
            continue
        if len(image) != grid * grid:
            raise ValueError(f"sequence {row} has {len(image)} image tokens but a {grid}x{grid} grid of cells; "
                             "existence pointers need image_seq_length == image_grid_size ** 2")
        regions = [r for r, n in enumerate(image_of) if n == row]
        for a, run in groupby(range(len(row_ids)), key=row_index.__getitem__):
            evidence = answer_evidence[a] if a >= 0 else None
            if evidence is None or answer_tasks[a] not in tasks:
                continue
            start = next(run)
            if not evidence:
                targets, others = (0,), tuple(image)
            else:
                if max(evidence) > len(regions):
                    continue  # regions dropped on the way (cannot happen for validated samples)
                held = {c for k in evidence for c, there in enumerate(cells[regions[k - 1]]) if there}
                if not held:
                    continue
                targets = tuple(p for c, p in enumerate(image) if c in held)
                others = (0, *(p for c, p in enumerate(image) if c not in held))
            pointers.append(TargetPointer(row, start - 1, targets, others, row_ids[start]))
    return pointers


__all__ = ["existence_pointers"]
