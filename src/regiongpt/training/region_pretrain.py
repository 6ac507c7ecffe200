"""Region-path pretraining: an optional stage before step 1 of a run from scratch.

A small RegionGPT trained from scratch end to end stayed at the label prior: at
initialisation every region feature looks alike, the language model learns the answers'
prior from the text first and then ignores the region token. Training the region path
(vision tower, refinement, shape encoder, position embedding) for a few hundred steps through
linear heads on the regions' labels gives it features that separate regions; the language
model then learns to read them (bench/demo_model.md: held-out classification went from chance
to climbing within 300 steps). The heads are dropped afterwards, except the model's own region
label head (``model.region_labels``, model/region_labels.py), which learns its fields here from
the first step on and stays.

Labels (:class:`PretrainLabels`): the region's category, plus any categorical attributes
named in ``train.region_pretrain_attributes`` (e.g. colour, texture, size), one softmax head
each on the pooled region feature. ``train.region_pretrain_image_labels`` adds a signal for the
image tokens: each of the m x m image tokens (before the connector) predicts, through a
multi-label head, which labels (e.g. "red heart" from ``[colour, category]``) have an object
covering part of its cell. Without it nothing teaches the image tokens to say what is in the
image before the language model starts, and existence questions stayed at "yes" for
everything. Its loss is weighted (``train.region_pretrain_image_weight``): at full weight it
pulled the shared vision tower away from the region labels and the language model then
learned to read region tokens 3x slower (bench/demo_model.md).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from regiongpt.data.native import NativeRegion, NativeSample
from regiongpt.errors import InvalidInputError
from regiongpt.processing.geometry import nonzero_bounds

from .lr_schedule import cosine_factor
from .region_labels import RegionLabelLoss
from .segmentation import SegmentationHead, attribute_segmentation_heads

CELL_COVER_THRESHOLD = 0.02  # fraction of an image-token cell a region must cover to count as present there


def region_label(region: NativeRegion, field: str) -> str | None:
    """The value of ``field`` ("category" or an attribute name) of a region, as a string, or None."""
    if field == "category":
        return region.category
    value = (region.attributes or {}).get(field)
    return value if isinstance(value, str) and value else None


@dataclass
class PretrainLabels:
    """The label vocabularies of the pretraining heads, read from the training regions."""

    region_fields: list[str]  # "category" first, then the named attributes
    region_classes: dict[str, list[str]]  # field -> sorted values
    image_fields: list[str]  # fields joined into one image-cell label ("red heart"); [] = no image head
    image_classes: list[str]

    @classmethod
    def from_samples(cls, samples: Sequence[NativeSample], attributes: Sequence[str],
                     image_fields: Sequence[str]) -> "PretrainLabels":
        fields = ["category", *[a for a in attributes if a != "category"]]
        classes = {}
        for name in [*fields, *image_fields]:
            missing = sum(1 for s in samples for r in s.regions if region_label(r, name) is None)
            if missing:
                raise InvalidInputError(
                    f"region pretraining: {missing} training region(s) have no '{name}' "
                    f"({'category' if name == 'category' else 'attributes.' + name}); remove '{name}' from "
                    "train.region_pretrain_attributes / train.region_pretrain_image_labels or label every region")
            classes[name] = sorted({region_label(r, name) for s in samples for r in s.regions})
        image_classes = sorted({cls.image_label(r, image_fields) for s in samples for r in s.regions}) \
            if image_fields else []
        return cls(fields, {f: classes[f] for f in fields}, list(image_fields), image_classes)

    @staticmethod
    def image_label(region: NativeRegion, image_fields: Sequence[str]) -> str:
        return " ".join(region_label(region, f) for f in image_fields)


def region_path_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters that shape the pooled region features (not the connector or the LLM)."""
    inner = model.model
    parts = [inner.vision_tower, inner.feature_refiner, inner.region_shape_encoder,
             inner.image_label_head, inner.region_label_head]
    params = [p for part in parts if part is not None for p in part.parameters()]
    if inner.position_embedding is not None:
        params.append(inner.position_embedding)
    return [p for p in params if p.requires_grad]


def region_cells(region_masks: torch.Tensor, grid: int) -> torch.Tensor:
    """(R, grid*grid) bool: the image-token cells each region is in (row-major, as the image tokens).

    A region is in a cell when it covers CELL_COVER_THRESHOLD of the cell, or when at least half
    of the region lies in it (a small object in a large cell still counts: existence questions
    ask about small objects too).
    """
    masks = region_masks.float()
    cover = F.adaptive_avg_pool2d(masks[:, None], grid).flatten(1)  # (R, grid*grid)
    share = cover / (masks.mean((1, 2))[:, None] * grid * grid).clamp_min(1e-9)  # of the region, in each cell
    return (cover > CELL_COVER_THRESHOLD) | (share >= 0.5)


def image_cell_targets(region_masks: torch.Tensor, region_image_index: torch.Tensor, region_classes: torch.Tensor,
                       n_images: int, grid: int, n_classes: int) -> torch.Tensor:
    """(B, grid*grid, n_classes) 0/1: which labels have a region in each image-token cell
    (:func:`region_cells`)."""
    present = region_cells(region_masks, grid).float()
    targets = torch.zeros(n_images, grid * grid, n_classes, device=region_masks.device)
    for r, (image, label) in enumerate(zip(region_image_index.tolist(), region_classes.tolist())):
        targets[image, :, label] = torch.maximum(targets[image, :, label], present[r])
    return targets


def image_cell_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Multi-label loss of (B, cells, K) image-token logits: summed over labels, averaged over
    cells (comparable in size to one region head's cross-entropy)."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(-1).mean()


class Slabs:
    """Append-only storage for many small tensors in a few large buffers (``slab_bytes`` each).

    Kept one by one, the pretraining cache's ~100k tensors became heap chunks that the C allocator
    kept in the process after they were freed (5.5 GB resident), and the language-model phase after
    it ran ~10% slower (bench/demo_model.md, twenty-sixth round). A slab is one allocation large
    enough to be mapped on its own, so dropping the slabs gives the memory back whole.
    """

    def __init__(self, slab_bytes: int = 64 * 2**20):
        self.slab_bytes = slab_bytes
        self.slabs: dict[torch.dtype, list[torch.Tensor]] = {}
        self.used: dict[torch.dtype, int] = {}  # elements used in each dtype's last slab

    def keep(self, tensor: torch.Tensor) -> torch.Tensor:
        """A copy of ``tensor`` that lives in a slab (or alone, when larger than a slab)."""
        n, dtype = tensor.numel(), tensor.dtype
        capacity = self.slab_bytes // tensor.element_size()
        if n > capacity:
            return tensor.clone()
        slabs = self.slabs.setdefault(dtype, [])
        if not slabs or self.used[dtype] + n > capacity:
            slabs.append(torch.empty(capacity, dtype=dtype))
            self.used[dtype] = 0
        start = self.used[dtype]
        view = slabs[-1][start : start + n].view(tensor.shape)
        view.copy_(tensor)
        self.used[dtype] = start + n
        return view

    def clear(self) -> None:
        self.slabs.clear()
        self.used.clear()


class PreparedImages:
    """Each sample's prepared image and region masks, kept after its first preparation so that
    pretraining's later passes over the data skip decoding, resizing and rasterising (on the 2-core
    CPU that preparation was a third of a pretraining step, in the training process).

    A mask is kept as the crop of its non-zero rows and columns (most of a mask is zeros), and
    pasted back into zeros: the batch is the same, value for value, as preparing it afresh
    (tested). At most ``budget_bytes`` are kept; past that, samples are prepared every time.
    What is kept lives in :class:`Slabs`, given back whole by :meth:`clear`.
    """

    def __init__(self, processor, budget_bytes: int):
        self.processor = processor
        self.budget_bytes = budget_bytes
        self.used_bytes = 0
        self.entries: dict[int, tuple[torch.Tensor, list[tuple[int, int, torch.Tensor]], torch.Tensor]] = {}
        self.storage = Slabs()

    def clear(self) -> None:
        """Drop every kept sample (and the slabs that held them)."""
        self.entries.clear()
        self.storage.clear()
        self.used_bytes = 0

    def prepare(self, batch: Sequence[NativeSample]) -> dict[str, torch.Tensor]:
        """``processor.prepare_images`` of the batch's images and their regions."""
        pixels, masks, boxes, index = [], [], [], []
        for i, sample in enumerate(batch):
            entry = self.entries.get(id(sample))
            if entry is None:
                entry = self._prepare_one(sample)
            pixel, crops, sample_boxes = entry
            pixels.append(pixel)
            size = pixel.shape[-2:]
            for top, left, crop in crops:
                mask = torch.zeros(size, dtype=crop.dtype)
                mask[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
                masks.append(mask)
            boxes.append(sample_boxes)
            index += [i] * len(crops)
        size = pixels[0].shape[-2:]
        return {"pixel_values": torch.stack(pixels),
                "region_masks": torch.stack(masks) if masks else torch.zeros((0, *size)),
                "region_boxes": torch.cat(boxes),
                "region_image_index": torch.tensor(index, dtype=torch.long)}

    def _prepare_one(self, sample: NativeSample) -> tuple[torch.Tensor, list[tuple[int, int, torch.Tensor]], torch.Tensor]:
        visual = self.processor.prepare_images([str(sample.image_path())], [region_specs(sample)])
        crops = []
        for mask in visual["region_masks"]:
            bounds = nonzero_bounds(mask.numpy())
            (top, bottom), (left, right) = bounds if bounds is not None else ((0, 0), (0, 0))
            crops.append((top, left, mask[top:bottom, left:right]))
        entry = (visual["pixel_values"][0], crops, visual["region_boxes"])
        size = entry[0].nbytes + entry[2].nbytes + sum(crop.nbytes for _, _, crop in crops)
        if self.used_bytes + size <= self.budget_bytes:
            keep = self.storage.keep
            self.entries[id(sample)] = (keep(entry[0]), [(top, left, keep(crop)) for top, left, crop in crops],
                                        keep(entry[2]))
            self.used_bytes += size
        return entry


def region_specs(sample: NativeSample) -> list[dict]:
    """The region arguments ``processor.prepare_images`` takes for a sample's regions."""
    return [{"segmentation": r.mask} if r.mask else {"box": r.box} for r in sample.regions]


class PretrainBatches(torch.utils.data.Dataset):
    """The images and region masks of pretraining's batches, drawn up front so that loader
    workers can prepare them while the model trains on the previous one (the same batches in
    the same order as preparing each in the loop). With ``cache_bytes``, each sample's prepared
    image and masks are kept (:class:`PreparedImages`; in each loader process)."""

    def __init__(self, processor, batches: Sequence[Sequence[NativeSample]], cache_bytes: int = 0):
        self.processor = processor
        self.batches = batches
        self.cache = PreparedImages(processor, cache_bytes) if cache_bytes else None

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        batch = self.batches[step]
        if self.cache is not None:
            return self.cache.prepare(batch)
        return dict(self.processor.prepare_images([str(s.image_path()) for s in batch],
                                                  [region_specs(s) for s in batch]))


def pretrain_lr_factor(step: int, steps: int, min_lr_ratio: float) -> float:
    """The share of the pretraining learning rate at ``step`` (0-based) of ``steps``: 1 at the first
    step, falling along a half cosine to ``min_lr_ratio`` at the last (1: constant)."""
    if min_lr_ratio >= 1.0 or steps <= 1:
        return 1.0
    return cosine_factor(min(step, steps - 1) / (steps - 1), min_lr_ratio)


def pretrain_region_path(model: nn.Module, processor, samples: Sequence[NativeSample], steps: int, lr: float,
                         batch_size: int, seed: int, device: torch.device, attributes: Sequence[str] = (),
                         image_labels: Sequence[str] = (), image_weight: float = 0.25,
                         heads_on: str = "features", segmentation_weight: float = 0.0,
                         segmentation_presence_weight: float = 0.0, num_workers: int = 0,
                         segmentation_peak_targets: bool = False, cache_bytes: int = 0,
                         min_lr_ratio: float = 1.0, segmentation_object_cells: float = 0.0) -> list[float]:
    """Train the region path (and, with ``image_labels``, the image tokens) for ``steps`` steps.

    Returns the summed, weighted head losses per step. ``heads_on="features"``: the region
    heads read the pooled features (vision width); ``"embeddings"``: the region embeddings the
    language model reads (after the connector, which is then trained too; language-model
    training that started from features pretrained alone lost colour and texture in the
    connector, bench/demo_model.md). The language model is never trained here. ``num_workers``
    loader processes prepare the next batches meanwhile (0: in this process); the result is the same.
    ``cache_bytes``: keep up to that many bytes of prepared images and masks for the later passes
    (:class:`PreparedImages`); the result is the same. ``min_lr_ratio`` < 1: the learning rate
    falls from ``lr`` to ``lr * min_lr_ratio`` along a half cosine over the steps
    (:func:`pretrain_lr_factor`); 1 keeps it constant.
    """
    if heads_on not in ("features", "embeddings"):
        raise InvalidInputError(f"train.region_pretrain_heads_on must be features or embeddings, got {heads_on!r}")
    labelled = [s for s in samples if s.regions]
    if not labelled:
        raise InvalidInputError("train.region_pretrain_steps needs training samples with regions")
    labels = PretrainLabels.from_samples(labelled, attributes, image_labels)
    params = region_path_parameters(model)
    if not params:
        raise InvalidInputError("train.region_pretrain_steps: no trainable region-path parameter "
                                "(add vision_tower or feature_refiner to train.trainable)")
    if heads_on == "embeddings":
        inner = model.model
        params += [p for part in (inner.connector, inner.region_connector, inner.region_number_embedding)
                   if part is not None for p in part.parameters() if p.requires_grad]
    width = model.config.vision_feature_dim if heads_on == "features" else model.config.text_config.hidden_size
    heads = nn.ModuleDict({f: nn.Linear(width, len(labels.region_classes[f])) for f in labels.region_fields})
    index = {f: {v: i for i, v in enumerate(labels.region_classes[f])} for f in labels.region_fields}
    trained = params + list(heads.parameters())
    image_head = None
    if labels.image_fields:
        image_head = nn.Linear(model.config.vision_feature_dim, len(labels.image_classes))
        trained += list(image_head.parameters())
    segmentation = None
    if segmentation_weight:
        segmentation = SegmentationHead.for_model(model, labels.region_classes["category"],
                                                  segmentation_presence_weight, segmentation_peak_targets,
                                                  segmentation_object_cells)
        trained += list(segmentation.parameters())
    # the model's image attribute classifiers (model.image_attributes): their parameters are the model's
    attribute_segmentation = (attribute_segmentation_heads(model, segmentation_peak_targets, segmentation_object_cells)
                              if segmentation_weight else nn.ModuleDict())
    for part in (heads, image_head, segmentation, attribute_segmentation):
        if part is not None:
            part.to(device)
    optimizer = torch.optim.AdamW(trained, lr=lr, foreach=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: pretrain_lr_factor(step, steps, min_lr_ratio))
    rng = random.Random(seed)
    batches = [rng.sample(labelled, min(batch_size, len(labelled))) for _ in range(steps)]
    prepared = PretrainBatches(processor, batches, cache_bytes)
    loader = torch.utils.data.DataLoader(prepared, batch_size=None, shuffle=False, num_workers=num_workers)
    grid = model.config.image_grid_size
    losses = []
    # the model's own region label head (model.region_labels) learns from the first step on
    label_loss = RegionLabelLoss(model) if model.model.region_label_head is not None else None
    if image_head is not None:
        image_class_index = {v: i for i, v in enumerate(labels.image_classes)}
    model.train()
    try:
        for batch, visual in zip(batches, loader):
            regions = [r for s in batch for r in s.regions]
            masks = visual["region_masks"].to(device)
            image_index = visual["region_image_index"].to(device)
            vision = model.model.encode_images(visual["pixel_values"].to(device))
            encode = model.model.pool_regions if heads_on == "features" else model.model.encode_regions
            features = encode(vision, masks, image_index, visual["region_boxes"].to(device)).float()
            loss = sum(F.cross_entropy(heads[f](features),
                                       torch.tensor([index[f][region_label(r, f)] for r in regions], device=device))
                       for f in labels.region_fields)
            if image_head is not None:
                classes = torch.tensor([image_class_index[labels.image_label(r, labels.image_fields)] for r in regions],
                                       device=device)
                targets = image_cell_targets(masks, image_index, classes, len(batch), grid, len(labels.image_classes))
                logits = image_head(vision.image_features.float())  # (B, grid*grid, n_classes)
                loss = loss + image_weight * image_cell_loss(logits, targets)
            if segmentation is not None:
                loss = loss + segmentation_weight * segmentation.loss(vision.region_maps, masks, image_index,
                                                                      [r.category for r in regions],
                                                                      vision.image_label_logits)
            for field, head in attribute_segmentation.items():
                loss = loss + segmentation_weight * head.loss(vision.region_maps, masks, image_index,
                                                              [region_label(r, field) for r in regions],
                                                              (vision.image_attribute_logits or {}).get(field))
            if label_loss is not None:
                if heads_on == "features":  # encode_regions (which runs the head) was not called
                    model.model.region_label_head(features)
                loss = loss + label_loss.loss([{f: region_label(r, f) for f in label_loss.index} for r in regions])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.detach().item())
    finally:
        if label_loss is not None:
            label_loss.close()
        if prepared.cache is not None:  # gigabytes the language-model phase (and its loader processes) need not hold
            prepared.cache.clear()
    for param in trained:
        param.grad = None
    return losses
