"""Feature refinement (upsampling) and patch merge (RegionGPT's "spatial-aware" module).

Reference form (SpatialRGPT's ``regiongpt`` extractor, 4x):
``ConvTranspose2d(k=2,s=2) -> LayerNorm2d -> GELU -> ConvTranspose2d(k=2,s=2) -> GELU``.

Residual form (our default): ``refined = upsample_nearest(x) + branch(x)`` with the branch's
last layer zero-initialised and no final GELU, so that a converted LLaVA checkpoint keeps its
exact answers at step 0. The image tokens are ``pool(x) + pool(branch(x))``: at step 0 they
are exactly LLaVA's (pool is the identity when the image grid equals the vision grid).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dimension of a (B, C, H, W) map."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class FeatureRefiner(nn.Module):
    """Upsamples a (B, C, h, w) map by ``factor`` (a power of 2) with transposed convolutions."""

    def __init__(self, channels: int, factor: int = 4, residual: bool = True):
        super().__init__()
        self.factor = factor
        self.residual = residual
        steps = int(round(math.log2(factor))) if factor > 1 else 0
        layers: list[nn.Module] = []
        for step in range(steps):
            layers.append(nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2))
            if step < steps - 1:
                layers += [LayerNorm2d(channels), nn.GELU()]
        if steps and not residual:
            layers.append(nn.GELU())
        self.branch = nn.Sequential(*layers) if steps else None
        if self.branch is not None and residual:
            # Zero-initialised output layer: refined == upsampled input at step 0. The flag is
            # read by the model's weight init (which must not overwrite loaded weights).
            self.branch[-1].zero_init = True
            nn.init.zeros_(self.branch[-1].weight)
            nn.init.zeros_(self.branch[-1].bias)

    def refine(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(refined map (B, C, h*f, w*f), branch output or None when off)."""
        if self.branch is None:
            return x, None
        branch = self.branch(x)
        if not self.residual:
            return branch, branch
        return F.interpolate(x, scale_factor=self.factor, mode="nearest") + branch, branch

    def image_map(self, x: torch.Tensor, branch: torch.Tensor | None, grid: int) -> torch.Tensor:
        """Patch merge: the image-token map (B, C, grid, grid) from the coarse map and the branch."""
        if branch is None:
            return _pool_to(x, grid)
        if not self.residual:
            return _pool_to(branch, grid)
        return _pool_to(x, grid) + _pool_to(branch, grid)


def _pool_to(x: torch.Tensor, grid: int) -> torch.Tensor:
    """Area pooling to a (grid, grid) map; the identity when already that size."""
    if x.shape[-2:] == (grid, grid):
        return x
    return F.adaptive_avg_pool2d(x, grid)
