"""Region-path pretraining: an optional stage before step 1 of a run from scratch.

A small RegionGPT trained from scratch end to end stayed at the label prior: at
initialisation every region feature looks alike, the language model learns the answers'
prior from the text first and then ignores the region token. Training the region path
(vision tower, refinement, shape encoder, position embedding) for a few hundred steps through
a linear head on the regions' categories gives it features that separate regions; the
language model then learns to read them (bench/demo_model.md: held-out classification went
from chance to climbing within 300 steps). The head is dropped afterwards.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from regiongpt.data.native import NativeSample
from regiongpt.errors import InvalidInputError


def region_path_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters that shape the pooled region features (not the connector or the LLM)."""
    inner = model.model
    parts = [inner.vision_tower, inner.feature_refiner, inner.region_shape_encoder]
    params = [p for part in parts if part is not None for p in part.parameters()]
    if inner.position_embedding is not None:
        params.append(inner.position_embedding)
    return [p for p in params if p.requires_grad]


def pretrain_region_path(model: nn.Module, processor, samples: Sequence[NativeSample], steps: int, lr: float,
                         batch_size: int, seed: int, device: torch.device) -> list[float]:
    """Train the region path on region categories for ``steps`` steps; returns the losses."""
    labelled = [s for s in samples if s.regions and all(r.category for r in s.regions)]
    if not labelled:
        raise InvalidInputError("train.region_pretrain_steps needs training regions with a category")
    categories = sorted({r.category for s in labelled for r in s.regions})
    index = {name: i for i, name in enumerate(categories)}
    params = region_path_parameters(model)
    if not params:
        raise InvalidInputError("train.region_pretrain_steps: no trainable region-path parameter "
                                "(add vision_tower or feature_refiner to train.trainable)")
    head = nn.Linear(model.config.vision_feature_dim, len(categories)).to(device)
    optimizer = torch.optim.AdamW(params + list(head.parameters()), lr=lr, foreach=True)
    rng = random.Random(seed)
    losses = []
    model.train()
    for _ in range(steps):
        batch = rng.sample(labelled, min(batch_size, len(labelled)))
        visual = processor.prepare_images([str(s.image_path()) for s in batch],
                                          [[{"segmentation": r.mask} if r.mask else {"box": r.box} for r in s.regions]
                                           for s in batch])
        targets = torch.tensor([index[r.category] for s in batch for r in s.regions], device=device)
        vision = model.model.encode_images(visual["pixel_values"].to(device))
        features = model.model.pool_regions(vision, visual["region_masks"].to(device),
                                            visual["region_image_index"].to(device), visual["region_boxes"].to(device))
        loss = F.cross_entropy(head(features.float()), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach().item())
    for param in params + list(head.parameters()):
        param.grad = None
    return losses
