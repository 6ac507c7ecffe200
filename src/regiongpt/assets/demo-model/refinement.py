"""Feature refinement (upsampling) and patch merge (RegionGPT's "spatial-aware" module).

Reference form (SpatialRGPT's ``regiongpt`` extractor, 4x):
``ConvTranspose2d(k=2,s=2) -> LayerNorm2d -> GELU -> ConvTranspose2d(k=2,s=2) -> GELU``.

Residual form (our default): ``refined = upsample_nearest(x) + branch(x)`` with the branch's
last layer zero-initialised and no final GELU, so that a converted LLaVA checkpoint keeps its
exact answers at step 0. The image tokens are ``pool(x) + pool(branch(x))``: at step 0 they
are exactly LLaVA's (pool is the identity when the image grid equals the vision grid).

Lateral connection (``refine_skip_layer``, off by default): upsampling a coarse map cannot put
back what its stride lost, and a small CNN tower at stride 16 barely sees a 12-pixel object's
shape. A finer stage of the tower (e.g. stride 8) is resized to the refined map and added to the
branch through a zero-initialised 1x1 convolution, as a feature pyramid's lateral connection does:
still the identity at step 0.
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

    def __init__(self, channels: int, factor: int = 4, residual: bool = True, lateral_channels: int | None = None):
        super().__init__()
        self.factor = factor
        self.residual = residual
        # a finer vision stage added to the refined map (``refine_skip_layer``): an FPN lateral
        # connection, zero-initialised like the branch's output layer
        self.lateral = None
        if lateral_channels:
            self.lateral = nn.Conv2d(lateral_channels, channels, kernel_size=1)
            self.lateral.zero_init = True
            nn.init.zeros_(self.lateral.weight)
            nn.init.zeros_(self.lateral.bias)
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

    def refine(self, x: torch.Tensor, lateral: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(refined map (B, C, h*f, w*f), branch output or None when off). ``lateral``: the finer
        vision stage (B, C', h', w') the module was built for (``lateral_channels``), resized to the
        refined map and added to the branch through the lateral 1x1 convolution."""
        branch = self.branch(x) if self.branch is not None else None
        if lateral is not None:
            if self.lateral is None:
                raise ValueError("this FeatureRefiner has no lateral connection: build it with lateral_channels")
            side = x.shape[-1] * self.factor
            added = self.lateral(_resize_to(lateral.to(self.lateral.weight.dtype), side)).to(x.dtype)
            branch = added if branch is None else branch + added
        if branch is None:
            return x, None
        if self.branch is None:  # no upsampling: the lateral term is added to the map itself
            return x + branch, branch
        if not self.residual:
            return branch, branch
        return F.interpolate(x, scale_factor=self.factor, mode="nearest") + branch, branch

    def image_map(self, x: torch.Tensor, branch: torch.Tensor | None, grid: int) -> torch.Tensor:
        """Patch merge: the image-token map (B, C, grid, grid) from the coarse map and the branch."""
        if branch is None:
            return _pool_to(x, grid)
        if not self.residual and self.branch is not None:
            return _pool_to(branch, grid)
        return _pool_to(x, grid) + _pool_to(branch, grid)


def _pool_to(x: torch.Tensor, grid: int) -> torch.Tensor:
    """Area pooling to a (grid, grid) map; the identity when already that size."""
    if x.shape[-2:] == (grid, grid):
        return x
    return F.adaptive_avg_pool2d(x, grid)


def _resize_to(x: torch.Tensor, side: int) -> torch.Tensor:
    """(B, C, side, side): area pooling from a larger map, nearest upsampling from a smaller one."""
    if x.shape[-1] >= side:
        return _pool_to(x, side)
    return F.interpolate(x, size=(side, side), mode="nearest")
