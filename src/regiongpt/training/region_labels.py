"""The label loss of the model's region label head (``model.region_labels``, model/region_labels.py).

The head puts the names of the values it predicts (colour, category, ...) on each region token;
this loss is what teaches it, from the first region-pretraining step to the end of training (so
the marks keep saying what the region path sees while the tower changes). The model computes the
head's logits inside ``encode_regions``; a forward hook on the head hands them to this loss, so
the model's forward stays as inference runs it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from regiongpt.errors import InvalidInputError

from .metrics import IGNORE_INDEX as IGNORE


class RegionLabelLoss:
    """Cross-entropy, summed over fields, of the model's region label logits against each region's labels."""

    def __init__(self, model: nn.Module):
        head = model.model.region_label_head
        names = model.config.region_label_names
        if head is None or not names:
            raise InvalidInputError("this model has no region label head (model.region_labels)")
        self.index = {field: {name: i for i, name in enumerate(values)} for field, values in names.items()}
        self._logits: dict[str, torch.Tensor] | None = None
        self._handle = head.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, args: tuple, output: dict[str, torch.Tensor]) -> None:
        self._logits = output

    def loss(self, records: Sequence[Mapping[str, str]]) -> torch.Tensor:
        """The loss of the logits the head computed last, for regions labelled by ``records`` (one
        per region, in the order the model pooled them: category and attributes; a field a region
        lacks, or a value the head does not know, is skipped)."""
        logits, self._logits = self._logits, None
        if logits is None:
            raise RuntimeError("the region label head did not run since the last loss: encode regions first")
        first = next(iter(logits.values()))
        if len(records) != first.shape[0]:
            raise RuntimeError(f"{first.shape[0]} regions were labelled by the head but {len(records)} records given")
        total = first.new_zeros((), dtype=torch.float32)
        for field, index in self.index.items():
            target = torch.tensor([index.get(r.get(field), IGNORE) for r in records], device=first.device)
            if (target != IGNORE).any():
                total = total + F.cross_entropy(logits[field].float(), target, ignore_index=IGNORE)
        return total

    def close(self) -> None:
        """Remove the hook (the model is then as before)."""
        self._handle.remove()


__all__ = ["RegionLabelLoss"]
