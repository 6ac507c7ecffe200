"""Region shape encoder (an opt-in extension for small models): encodes each region's mask
*shape* — the mask cropped to its bounding box and resized to ``size x size`` — and its
geometry (centre, size, area) into a vector added to the region's pooled feature.

With ``pixels=True`` it also reads the region's own pixels in that crop (the model-input
image times the mask, a "focal crop" in the sense of Describe Anything): a small object's
colour and texture then reach the region at crop resolution instead of through one or two
cells of a stride-16 feature map, where a from-scratch CNN tower loses them
(bench/demo_model.md). With ``context > 0`` that pixel crop is instead the *unmasked* image
in the box widened by ``context`` of its size on each side, with the mask as a fourth
channel (Describe Anything's focal crop): an occluded region's cut edge then shows the
object that covers it, which a crop of the region's pixels alone cannot tell from its own
outline.

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


def box_sampling_grid(boxes: torch.Tensor, height: int, width: int, size: int) -> torch.Tensor:
    """(R, size, size, 2) grid_sample coordinates of a size x size lattice inside each xyxy pixel box."""
    steps = (torch.arange(size, device=boxes.device, dtype=torch.float32) + 0.5) / size
    xs = boxes[:, 0:1] + (boxes[:, 2:3] - boxes[:, 0:1]) * steps  # (R, size) pixel coordinates
    ys = boxes[:, 1:2] + (boxes[:, 3:4] - boxes[:, 1:2]) * steps
    gx = xs / width * 2 - 1
    gy = ys / height * 2 - 1
    return torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)


def crop_masks(masks: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """(R, 1, size, size): each mask resampled inside its box (bilinear, pixel-edge convention)."""
    grid = box_sampling_grid(boxes, *masks.shape[-2:], size)
    return F.grid_sample(masks[:, None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def sample_in_boxes(planes: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """(R, C, size, size): each (C, S, S) plane stack inside its xyxy pixel box (outside the
    image: zeros), sampled at twice the crop size and averaged down, so a large region's fine
    texture is averaged rather than aliased."""
    grid = box_sampling_grid(boxes, *planes.shape[-2:], 2 * size)
    crops = F.grid_sample(planes, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return F.avg_pool2d(crops, 2)


def crop_region_pixels(pixels: torch.Tensor, masks: torch.Tensor, image_index: torch.Tensor, boxes: torch.Tensor,
                       size: int) -> torch.Tensor:
    """(R, 3, size, size): each region's pixels (its image's, times its mask) inside its box."""
    return sample_in_boxes(pixels.float()[image_index] * masks[:, None].float(), boxes, size)


def widen_boxes(boxes: torch.Tensor, fraction: float) -> torch.Tensor:
    """(R, 4) xyxy boxes grown by ``fraction`` of their width and height on each side."""
    grow = (boxes[:, 2:] - boxes[:, :2]) * fraction  # (R, 2)
    return torch.cat([boxes[:, :2] - grow, boxes[:, 2:] + grow], 1)


def crop_region_context(pixels: torch.Tensor, masks: torch.Tensor, image_index: torch.Tensor, boxes: torch.Tensor,
                        size: int, context: float) -> torch.Tensor:
    """(R, 4, size, size): the unmasked image and the mask in each box widened by ``context``."""
    planes = torch.cat([pixels.float()[image_index], masks[:, None].float()], 1)  # (R, 4, S, S)
    return sample_in_boxes(planes, widen_boxes(boxes, context), size)


class RegionShapeEncoder(nn.Module):
    """(R, H, W) soft masks (and, with ``pixels``, the images) -> (R, out_dim) region features."""

    def __init__(self, out_dim: int, size: int = 16, channels: int = 32, pixels: bool = False, context: float = 0.0):
        super().__init__()
        if context < 0:
            raise ValueError(f"the shape encoder's context must be >= 0 (a fraction of the box), got {context}")
        if context and not pixels:
            raise ValueError("a context crop is a kind of pixel crop: set pixels=True with context > 0")
        self.size = size
        self.pixels = pixels
        self.context = context
        self.conv = self._branch(1, channels)  # the mask's outline
        # the region's pixels: a branch of its own, so texture edges do not drown the outline
        self.pixel_conv = self._branch(4 if context else 3, channels) if pixels else None
        flat = channels * ((size + 3) // 4) ** 2 * (2 if pixels else 1)
        self.hidden = nn.Linear(flat + GEOMETRY_FEATURES, out_dim)
        self.out = nn.Linear(out_dim, out_dim)
        self.out.zero_init = True  # read by the model's weight init: starts as a no-op
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @staticmethod
    def _branch(in_channels: int, channels: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1), nn.GELU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.GELU(),
        )

    def forward(self, masks: torch.Tensor, pixels: torch.Tensor | None = None,
                image_index: torch.Tensor | None = None) -> torch.Tensor:
        """masks (R, S, S); pixels (B, 3, S, S) model-input images and image_index (R,) when
        the encoder reads pixels."""
        masks = masks.float()
        height, width = masks.shape[-2:]
        boxes = mask_boxes(masks)
        shape = self.conv(crop_masks(masks, boxes, self.size)).flatten(1)
        if self.pixel_conv is not None:
            if pixels is None or image_index is None:
                raise ValueError("this region shape encoder reads pixels: pass the images and region_image_index")
            if pixels.shape[-2:] != masks.shape[-2:]:
                raise ValueError(f"images are {tuple(pixels.shape[-2:])} but masks {tuple(masks.shape[-2:])}; "
                                 "both must be in model-input pixels")
            if self.context:
                crops = crop_region_context(pixels, masks, image_index.long(), boxes, self.size, self.context)
            else:
                crops = crop_region_pixels(pixels, masks, image_index.long(), boxes, self.size)  # (R, 3, size, size)
            shape = torch.cat([shape, self.pixel_conv(crops).flatten(1)], 1)
        scale = boxes.new_tensor([width, height, width, height])
        b = boxes / scale
        geometry = torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0],
                                b[:, 3] - b[:, 1], masks.flatten(1).mean(1)], dim=1)
        dtype = self.hidden.weight.dtype
        return self.out(F.gelu(self.hidden(torch.cat([shape, geometry], dim=1).to(dtype))))
