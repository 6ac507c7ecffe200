"""Per-pixel category supervision of the refined feature map (``train.segmentation_weight``).

Existence questions ("Is there a star in the image?") are answered from the image tokens,
which are pooled from the vision tower's map. The region path reads a region's category from
its mask outline and its own pixels (the shape encoder), so nothing asked the vision tower to
recognise shapes: probes on the built-in model's image tokens found objectness, not category
(bench/demo_model.md, "Eighth round"), and yes/no stayed at the prior. Image-level labels
(which categories are in the picture) did not teach a small tower anything in 800 steps;
a dense target does: each cell of the refined map (the map regions are pooled from) is told
which share of it each category covers (the rest: background), through a 1x1 convolution. Soft
shares rather than the majority category keep a small object's cells in the target: on its
own the demo tower then recognised small objects 0.33 of the time against 0.28 (bench/demo_model.md).

The head is a training device, like the region-pretraining heads: it lives in the run, never
in the exported model, unless the model has an image label head (``model.image_labels``,
model/image_labels.py): then this loss trains that head, which the model keeps and uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from regiongpt.errors import InvalidInputError

COVER_THRESHOLD = 0.5  # a map cell takes an object's category when the object covers more than half of it


def segmentation_targets(region_masks: torch.Tensor, region_image_index: torch.Tensor, region_classes: torch.Tensor,
                         n_images: int, size: int, background: int) -> torch.Tensor:
    """(B, size, size) class ids: per map cell, the class of the region covering most of it
    (more than half), else ``background``. ``region_masks``: (R, S, S) soft masks in model-input
    pixels; ``region_classes``: (R,) class ids; ``region_image_index``: (R,) image of each region."""
    targets = torch.full((n_images, size, size), background, dtype=torch.long, device=region_masks.device)
    if region_masks.shape[0] == 0:
        return targets
    cover = F.adaptive_avg_pool2d(region_masks.float()[:, None], size)[:, 0]  # (R, size, size)
    best = torch.zeros(n_images, size, size, device=region_masks.device)
    for r, (image, label) in enumerate(zip(region_image_index.tolist(), region_classes.tolist())):
        take = (cover[r] > COVER_THRESHOLD) & (cover[r] > best[image])
        targets[image][take] = label
        best[image] = torch.maximum(best[image], cover[r])
    return targets


def region_shares(region_masks: torch.Tensor, size: int) -> torch.Tensor:
    """(R, size, size): the share of each map cell each (R, S, S) soft mask covers."""
    return F.adaptive_avg_pool2d(region_masks.float()[:, None], size)[:, 0]


def object_balance_weights(region_masks: torch.Tensor, region_image_index: torch.Tensor, n_images: int, size: int,
                           object_cells: float) -> torch.Tensor:
    """(B, size, size) per-cell loss weights: 1, plus, in the cells of a region that covers fewer than
    ``object_cells`` cells of the map in all, its share of the cell times (``object_cells`` / its cells - 1).
    A small object's cells then weigh in the loss as much, together, as an object of ``object_cells``
    cells; larger regions and the background keep weight 1. Arguments as :func:`segmentation_targets`."""
    weights = torch.ones(n_images, size, size, device=region_masks.device)
    if region_masks.shape[0]:
        shares = region_shares(region_masks, size)  # (R, size, size)
        cells = shares.sum((1, 2)).clamp(min=1e-6)  # (R,) the region's area in map cells
        boost = (object_cells / cells - 1.0).clamp(min=0.0)  # (R,)
        weights.index_add_(0, region_image_index.to(region_masks.device).long(), shares * boost[:, None, None])
    return weights


def segmentation_cover(region_masks: torch.Tensor, region_image_index: torch.Tensor, region_classes: torch.Tensor,
                       n_images: int, size: int, n_classes: int, peak: bool = False) -> torch.Tensor:
    """(B, n_classes + 1, size, size): per map cell, the share of it each class covers (regions are
    disjoint visible masks; overlaps are clipped) and, last, the background's share (the rest).
    ``peak``: each region's shares are divided by its largest one, so the cell a region covers most
    is wholly its category however small the region is (a 12-pixel object covers at most ~40% of an
    8-pixel cell: with plain shares the head learns to be unsure of every small object).
    Arguments as :func:`segmentation_targets`."""
    cover = torch.zeros(n_images, n_classes + 1, size, size, device=region_masks.device)
    if region_masks.shape[0]:
        shares = region_shares(region_masks, size)  # (R, size, size)
        if peak:
            shares = shares / shares.amax((1, 2), keepdim=True).clamp(min=1e-6)
        flat = region_image_index.to(region_masks.device).long() * (n_classes + 1) + region_classes.to(region_masks.device)
        cover.view(-1, size, size).index_add_(0, flat, shares)
    objects = cover[:, :n_classes].clamp(max=1.0)
    total = objects.sum(1, keepdim=True).clamp(min=1.0)  # more than the whole cell: rescale to it
    objects = objects / total
    return torch.cat([objects, 1.0 - objects.sum(1, keepdim=True)], 1)


class SegmentationHead(nn.Module):
    """A 1x1 convolution from the (B, C, h, w) refined map to the category classes + background.

    ``classes``: the category names in head order; the background is the last class. Its
    weight in the cross-entropy is ``background_weight`` (most cells are background, and a
    head that says "background" everywhere is right most of the time). ``peak_targets``: the targets
    of :func:`segmentation_cover` with ``peak=True``. ``object_cells`` > 0: each cell's term is weighted
    by :func:`object_balance_weights`, so that small objects are not outweighed by large ones. ``presence_weight`` adds
    an image-level term: for each category, the binary cross-entropy of its largest per-cell
    probability against whether the image shows it (what image label marks tell a yes/no question:
    one confident cell of an absent category is a wrong "yes").
    """

    def __init__(self, channels: int, classes: Sequence[str], background_weight: float = 0.2,
                 model_head: nn.Module | None = None, presence_weight: float = 0.0, peak_targets: bool = False,
                 object_cells: float = 0.0):
        super().__init__()
        if object_cells < 0:
            raise InvalidInputError(f"'train.segmentation_object_cells' must be >= 0 (0 = off), got {object_cells}")
        self.presence_weight = presence_weight
        self.peak_targets = peak_targets
        self.object_cells = object_cells
        self.index = {name: i for i, name in enumerate(classes)}
        self.background = len(classes)
        # the model's own image label head (not registered here: the model's optimiser trains it)
        self._model_head = (model_head,) if model_head is not None else ()
        self.head = None if model_head is not None else nn.Conv2d(channels, len(classes) + 1, kernel_size=1)
        class_weight = torch.ones(len(classes) + 1)
        class_weight[-1] = background_weight
        self.register_buffer("class_weight", class_weight, persistent=False)

    @classmethod
    def for_model(cls, model: nn.Module, classes: Sequence[str], presence_weight: float = 0.0,
                  peak_targets: bool = False, object_cells: float = 0.0) -> "SegmentationHead":
        """The loss on the model's image label head when it has one (``classes``: the training
        regions' categories, each of which it must know), else on a head of its own."""
        inner = model.model
        label_head = inner.image_label_head
        if label_head is None:
            return cls(model.config.vision_feature_dim, classes, presence_weight=presence_weight,
                       peak_targets=peak_targets, object_cells=object_cells)
        names = list(model.config.image_label_names or [])
        unknown = [c for c in classes if c not in names]
        if unknown:
            raise InvalidInputError(f"training regions have categories the model's image labels do not name: "
                                    f"{unknown[:5]}; add them to model.image_labels (it has {names})")
        return cls(model.config.vision_feature_dim, names, model_head=label_head, presence_weight=presence_weight,
                   peak_targets=peak_targets, object_cells=object_cells)

    def forward(self, region_maps: torch.Tensor) -> torch.Tensor:
        """(B, K+1, h, w) logits."""
        if self._model_head:
            return self._model_head[0](region_maps).float()
        return self.head(region_maps.float())

    def loss(self, region_maps: torch.Tensor, region_masks: torch.Tensor, region_image_index: torch.Tensor,
             categories: Sequence[str | None], logits: torch.Tensor | None = None) -> torch.Tensor:
        """Weighted cross-entropy of every map cell against the shares of it the categories cover
        (:func:`segmentation_cover`). Regions whose category is None or unknown to the head are
        left out of the targets. ``logits``: the head's (B, K+1, h, w) output when already computed
        (the model's image label head during encoding)."""
        known = [i for i, name in enumerate(categories) if name in self.index]
        rows = torch.tensor(known, dtype=torch.long, device=region_masks.device)
        classes = torch.tensor([self.index[categories[i]] for i in known], dtype=torch.long)
        masks, image_index = region_masks[rows], region_image_index[rows]
        targets = segmentation_cover(masks, image_index, classes, region_maps.shape[0], region_maps.shape[-1],
                                     self.background, peak=self.peak_targets)
        logits = self(region_maps) if logits is None else logits.float()
        if self.object_cells:
            cell_weights = object_balance_weights(masks, image_index, region_maps.shape[0], region_maps.shape[-1],
                                                  self.object_cells)  # (B, h, w)
            loss = (F.cross_entropy(logits, targets, weight=self.class_weight, reduction="none") * cell_weights).mean()
        else:
            loss = F.cross_entropy(logits, targets, weight=self.class_weight)
        if self.presence_weight:
            shown = (targets[:, : self.background].amax((2, 3)) > 0).float()  # (B, K): the image shows k
            largest = logits.softmax(1)[:, : self.background].amax((2, 3)).clamp(1e-6, 1 - 1e-6)  # (B, K)
            loss = loss + self.presence_weight * F.binary_cross_entropy(largest, shown)
        return loss

    @staticmethod
    def categories_of(records: Sequence[Mapping[str, str]]) -> list[str | None]:
        """The category of each region label record (``region_aux.region_label_record``)."""
        return [r.get("category") for r in records]


class ImageAttributeLogits(nn.Module):
    """One attribute field's per-cell logits from a model's image label head (``model.image_attributes``):
    the ``model_head`` of that field's :class:`SegmentationHead`."""

    def __init__(self, label_head: nn.Module, field: str):
        super().__init__()
        self._label_head = (label_head,)  # not registered: the model's optimiser trains it
        self.field = field

    def forward(self, region_maps: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> (B, K_field+1, h, w)
        return self._label_head[0].classify(region_maps)[1][self.field]


def attribute_segmentation_heads(model: nn.Module, peak_targets: bool = False,
                                 object_cells: float = 0.0) -> nn.ModuleDict:
    """Per attribute field of the model's image label head (``model.image_attributes``, e.g. colour), the
    per-cell loss that trains it: the category loss's targets and weights with the field's values in
    place of categories, without the image-level presence term (what a colour question needs is the
    colour where the category is, not whether the colour is anywhere). Empty when the model has none."""
    label_head = model.model.image_label_head
    names = model.config.image_attribute_names or {}
    if label_head is None or not names:
        return nn.ModuleDict()
    return nn.ModuleDict({
        field: SegmentationHead(model.config.vision_feature_dim, values,
                                model_head=ImageAttributeLogits(label_head, field), peak_targets=peak_targets,
                                object_cells=object_cells)
        for field, values in names.items()})


__all__ = ["ImageAttributeLogits", "SegmentationHead", "attribute_segmentation_heads", "object_balance_weights",
           "region_shares", "segmentation_cover", "segmentation_targets"]
