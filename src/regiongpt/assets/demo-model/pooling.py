"""Region pooling: one feature vector per region.

Mask pooling (RegionGPT): the mask-weighted mean of the refined feature map, with the mask
resized to the map by *area* (the fraction of each cell the region covers). Area resizing
never drops a region smaller than a cell: its weight lands on the cell(s) it touches and the
normalised mean is those cells' feature.

Box RoI pooling (ablation, GPT4RoI-style, own implementation): RoIAlign of the box on the
coarse map into ``bins x bins`` bilinear samples, averaged to one vector.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


class EmptyRegionError(ValueError):
    """A region mask has no weight at all, so it has no feature."""


def area_resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(R, H, W) soft masks -> (R, h, w) cell coverage fractions (area interpolation)."""
    if masks.shape[-2:] == tuple(size):
        return masks
    return F.interpolate(masks[:, None].float(), size=size, mode="area")[:, 0]


def mask_pool(
    feature_maps: torch.Tensor,  # (B, C, h, w)
    masks: torch.Tensor,  # (R, H, W) soft masks in model-input pixels
    image_index: torch.Tensor,  # (R,) which image each region belongs to
) -> torch.Tensor:  # (R, C)
    """Mask-weighted mean of each region's image feature map."""
    batch, channels, height, width = feature_maps.shape
    num_regions = masks.shape[0]
    out = feature_maps.new_zeros(num_regions, channels)
    if num_regions == 0:
        return out
    weights = area_resize_masks(masks, (height, width)).flatten(1)  # (R, h*w), float32
    totals = weights.sum(-1)  # (R,)
    empty = (totals <= 0).nonzero().flatten().tolist()
    if empty:
        raise EmptyRegionError(
            f"region(s) {', '.join(str(i + 1) for i in empty)} have an empty mask after the image transform; "
            "give each region at least one pixel inside the image"
        )
    weights = weights / totals[:, None]
    flat = feature_maps.flatten(2)  # (B, C, h*w)
    for b in image_index.unique().tolist():
        rows = (image_index == b).nonzero().flatten()
        # (R_b, h*w) @ (h*w, C) -> (R_b, C), in the features' dtype.
        # (under autocast the product may come back in another dtype than the buffer)
        out[rows] = (weights[rows].to(flat.dtype) @ flat[b].transpose(0, 1)).to(out.dtype)
    return out


def roi_box_pool(
    feature_maps: torch.Tensor,  # (B, C, h, w)
    boxes: torch.Tensor,  # (R, 4) xyxy in model-input pixels
    image_index: torch.Tensor,  # (R,)
    image_size: int,
    bins: int = 7,
    samples_per_bin: int = 2,
) -> torch.Tensor:  # (R, C)
    """RoIAlign (bilinear samples at bin centres, ``samples_per_bin``^2 per bin), averaged."""
    num_regions = boxes.shape[0]
    channels = feature_maps.shape[1]
    if num_regions == 0:
        return feature_maps.new_zeros(0, channels)
    n = bins * samples_per_bin
    steps = (torch.arange(n, device=boxes.device, dtype=torch.float32) + 0.5) / n  # (n,)
    b = boxes.float()
    xs = b[:, 0:1] + (b[:, 2:3] - b[:, 0:1]) * steps  # (R, n) in pixels
    ys = b[:, 1:2] + (b[:, 3:4] - b[:, 1:2]) * steps
    # pixels -> grid_sample's [-1, 1] with align_corners=False
    gx = xs / image_size * 2 - 1
    gy = ys / image_size * 2 - 1
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # (R, n, n, 2)
    sampled = F.grid_sample(
        feature_maps[image_index].float(), grid, mode="bilinear", padding_mode="border", align_corners=False
    )  # (R, C, n, n)
    return sampled.mean(dim=(2, 3)).to(feature_maps.dtype)
