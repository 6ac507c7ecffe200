"""Auxiliary region-label losses during language-model training (``train.region_aux_weight``).

The region-path pretraining (``region_pretrain.py``) makes region features separate
categories, colours, textures and sizes before the language model trains. Trained afterwards
only through the language model, a small connector keeps what the first task needs and lets
the rest erode: the built-in model's region embeddings still told colour apart 0.68 of the
time before the connector and 0.13 after it, and brief captions (which name the colour)
stayed at the prior (bench/demo_model.md). These heads read the region embeddings the
language model reads, at every step, so every labelled attribute stays linearly there.

With ``train.region_pretrain_image_labels`` (e.g. ``[category]``) a multi-label head on the
image tokens the language model reads does the same for them: each token keeps saying which
labels have an object in its cell (existence questions read image tokens, not regions). Its
loss is weighted by ``train.region_pretrain_image_weight``, as in the pretraining. With
``train.segmentation_weight`` the refined map keeps saying which category covers each cell
(``segmentation.py``).

The heads belong to the training run, not to the model: they are saved in the training
state for resuming and never exported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from regiongpt.data.native import NativeSample

from .metrics import IGNORE_INDEX as IGNORE
from .region_pretrain import PretrainLabels, image_cell_loss, image_cell_targets
from .segmentation import SegmentationHead, attribute_segmentation_heads


def region_label_record(region: Any) -> dict[str, str]:
    """A region's category and string attributes: what the auxiliary heads can learn from."""
    record = {k: v for k, v in (region.attributes or {}).items() if isinstance(v, str) and v}
    if region.category:
        record["category"] = region.category
    return record


class RegionAuxiliaryHeads(nn.Module):
    """One linear softmax head per labelled field on the (R, D) region embeddings."""

    def __init__(self, classes: Mapping[str, Sequence[str]], width: int, image_fields: Sequence[str] = (),
                 image_classes: Sequence[str] = (), image_weight: float = 0.25, grid: int = 1,
                 segmentation_weight: float = 0.0, vision_width: int = 0, model: nn.Module | None = None,
                 segmentation_presence_weight: float = 0.0, segmentation_peak_targets: bool = False,
                 segmentation_object_cells: float = 0.0):
        super().__init__()
        self.fields = list(classes)
        self.index = {f: {v: i for i, v in enumerate(values)} for f, values in classes.items()}
        self.heads = nn.ModuleDict({f: nn.Linear(width, len(values)) for f, values in classes.items()})
        self.image_fields = list(image_fields)
        self.image_index = {v: i for i, v in enumerate(image_classes)}
        self.image_head = nn.Linear(width, len(image_classes)) if image_fields else None
        self.image_weight = image_weight
        self.grid = grid
        self.segmentation_weight = segmentation_weight
        self.segmentation = None
        if segmentation_weight and "category" in classes:
            self.segmentation = (
                SegmentationHead.for_model(model, classes["category"], segmentation_presence_weight,
                                           segmentation_peak_targets, segmentation_object_cells) if model is not None
                else SegmentationHead(vision_width, classes["category"], presence_weight=segmentation_presence_weight,
                                      peak_targets=segmentation_peak_targets, object_cells=segmentation_object_cells))
        # the model's image attribute classifiers (model.image_attributes), trained like its categories
        self.attribute_segmentation = (
            attribute_segmentation_heads(model, segmentation_peak_targets, segmentation_object_cells)
            if segmentation_weight and model is not None else nn.ModuleDict())

    @classmethod
    def from_samples(cls, samples: Sequence[NativeSample], attributes: Sequence[str], width: int,
                     image_fields: Sequence[str] = (), image_weight: float = 0.25,
                     grid: int = 1, segmentation_weight: float = 0.0,
                     vision_width: int = 0, model: nn.Module | None = None,
                     segmentation_presence_weight: float = 0.0,
                     segmentation_peak_targets: bool = False,
                     segmentation_object_cells: float = 0.0) -> "RegionAuxiliaryHeads":
        """Heads for the category and ``attributes`` (and the image tokens' ``image_fields``, and
        the refined map's categories with ``segmentation_weight``), with the values the training
        regions use (every training region must carry them; the error names the field otherwise).
        ``grid``: the image-token grid side; ``vision_width``: the refined map's channels; ``model``:
        the model being trained (its image label head, when it has one, is the segmentation head)."""
        labels = PretrainLabels.from_samples(samples, attributes, image_fields)
        return cls(labels.region_classes, width, labels.image_fields, labels.image_classes, image_weight, grid,
                   segmentation_weight, vision_width, model, segmentation_presence_weight, segmentation_peak_targets,
                   segmentation_object_cells)

    def segmentation_loss(self, region_maps: torch.Tensor, region_masks: torch.Tensor,
                          region_image_index: torch.Tensor, records: Sequence[Mapping[str, str]],
                          logits: torch.Tensor | None = None,
                          attribute_logits: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The refined map's per-cell category loss (``segmentation.py``) and, when the model's image label
        head has attribute fields, their per-cell losses, times ``segmentation_weight`` (``logits``,
        ``attribute_logits``: the model's image label logits when it computed them)."""
        if self.segmentation is None:
            return region_maps.new_zeros(())
        loss = self.segmentation.loss(region_maps, region_masks, region_image_index,
                                      SegmentationHead.categories_of(records), logits)
        for field, head in self.attribute_segmentation.items():
            loss = loss + head.loss(region_maps, region_masks, region_image_index, [r.get(field) for r in records],
                                    (attribute_logits or {}).get(field))
        return self.segmentation_weight * loss

    def image_loss(self, image_embeds: torch.Tensor, region_masks: torch.Tensor, region_image_index: torch.Tensor,
                   records: Sequence[Mapping[str, str]]) -> torch.Tensor:
        """Multi-label loss of the (B, m*m, D) image tokens against which labels cover each cell
        (summed over labels, averaged over cells), times ``image_weight``."""
        if self.image_head is None:
            return image_embeds.new_zeros(())
        labels = [self.image_index.get(" ".join(r.get(f, "") for f in self.image_fields)) for r in records]
        known = [i for i, label in enumerate(labels) if label is not None]
        classes = torch.tensor([labels[i] for i in known], dtype=torch.long, device=image_embeds.device)
        rows = torch.tensor(known, dtype=torch.long, device=region_masks.device)
        targets = image_cell_targets(region_masks[rows], region_image_index[rows], classes, image_embeds.shape[0],
                                     self.grid, len(self.image_index))
        return self.image_weight * image_cell_loss(self.image_head(image_embeds.float()), targets)

    def loss(self, region_embeds: torch.Tensor, records: Sequence[Mapping[str, str]]) -> torch.Tensor:
        """Sum over fields of the mean cross-entropy over the regions that carry the field's label
        (unknown values, e.g. of regions the training set never showed, are skipped)."""
        if len(records) != region_embeds.shape[0]:
            raise RuntimeError(f"{region_embeds.shape[0]} region embeddings but {len(records)} label records")
        total = region_embeds.new_zeros(())
        for field in self.fields:
            target = torch.tensor([self.index[field].get(r.get(field), IGNORE) for r in records],
                                  device=region_embeds.device)
            if (target != IGNORE).any():
                total = total + F.cross_entropy(self.heads[field](region_embeds.float()), target, ignore_index=IGNORE)
        return total


__all__ = ["RegionAuxiliaryHeads", "region_label_record"]
