"""Region shape encoder (an opt-in extension for small models): encodes each region's mask
*shape* — the mask cropped to its bounding box and resized to ``size x size`` — and its
geometry (centre, size, area) into a vector added to the region's pooled feature.

Mask pooling averages features over the region, which keeps what the region contains but
not the outline the user drew, nor where it is. Large CLIP features carry both implicitly;
a small CNN trained from scratch does not. The output layer starts at zero, so turning the
encoder on changes nothing until it is trained.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

GEOMETRY_FEATURES = 5  # centre x, centre y, width, height, area (fractions of the image)


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight (R, 4) xyxy boxes, in pixels, of the pixels with weight > 0 in (R, H, W) masks."""
    present = masks > 0
    rows = present.any(2)  # (R, H)
    cols = present.any(1)  # (R, W)
    height, width = masks.shape[-2:]
    y_index = torch.arange(height, device=masks.device)
    x_index = torch.arange(width, device=masks.device)
    big = torch.tensor(10**9, device=masks.device)
    y1 = torch.where(rows, y_index, big).amin(1)
    y2 = torch.where(rows, y_index, -big).amax(1) + 1
    x1 = torch.where(cols, x_index, big).amin(1)
    x2 = torch.where(cols, x_index, -big).amax(1) + 1
    return torch.stack([x1, y1, x2, y2], 1).float()


def crop_masks(masks: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """(R, 1, size, size): each mask resampled inside its box (bilinear, pixel-edge convention)."""
    height, width = masks.shape[-2:]
    steps = (torch.arange(size, device=masks.device, dtype=torch.float32) + 0.5) / size
    xs = boxes[:, 0:1] + (boxes[:, 2:3] - boxes[:, 0:1]) * steps  # (R, size) pixel coordinates
    ys = boxes[:, 1:2] + (boxes[:, 3:4] - boxes[:, 1:2]) * steps
    gx = xs / width * 2 - 1
    gy = ys / height * 2 - 1
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
    return F.grid_sample(masks[:, None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class RegionShapeEncoder(nn.Module):
    """(R, H, W) soft masks -> (R, out_dim) shape-and-geometry features."""

    def __init__(self, out_dim: int, size: int = 16, channels: int = 32):
        super().__init__()
        self.size = size
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.GELU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.GELU(),
        )
        flat = channels * ((size + 3) // 4) ** 2
        self.hidden = nn.Linear(flat + GEOMETRY_FEATURES, out_dim)
        self.out = nn.Linear(out_dim, out_dim)
        self.out.zero_init = True  # read by the model's weight init: starts as a no-op
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        masks = masks.float()
        height, width = masks.shape[-2:]
        boxes = mask_boxes(masks)
        shape = self.conv(crop_masks(masks, boxes, self.size)).flatten(1)
        scale = boxes.new_tensor([width, height, width, height])
        b = boxes / scale
        geometry = torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0],
                                b[:, 3] - b[:, 1], masks.flatten(1).mean(1)], dim=1)
        dtype = self.hidden.weight.dtype
        return self.out(F.gelu(self.hidden(torch.cat([shape, geometry], dim=1).to(dtype))))
