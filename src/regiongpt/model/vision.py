"""Vision feature selection: any transformers vision backbone -> a (B, C, h, w) patch grid.

ViTs (CLIP, SigLIP) give tokens (B, N, C): the CLS token is dropped ("default" strategy, as
LLaVA-1.5) and the rest reshaped to the grid. CNNs (ConvNeXt, ResNet) give maps directly.
"""

from __future__ import annotations

import torch
from torch import nn


def select_feature_grid(
    vision_tower: nn.Module,
    pixel_values: torch.Tensor,  # (B, 3, H, W)
    feature_layer: int,
    select_strategy: str,
    grid_size: int,
) -> torch.Tensor:
    """The chosen hidden state of ``vision_tower`` as a (B, C, grid, grid) map."""
    return select_feature_maps(vision_tower, pixel_values, [feature_layer], select_strategy, grid_size)[0]


def select_feature_maps(
    vision_tower: nn.Module,
    pixel_values: torch.Tensor,  # (B, 3, H, W)
    feature_layers: list[int],
    select_strategy: str,
    grid_size: int,
) -> list[torch.Tensor]:
    """Several hidden states of one forward pass of ``vision_tower``, each as a (B, C, h, w) map
    (a CNN stage keeps its own resolution; a ViT layer is the ``grid_size`` patch grid).

    The pixels go in channels-last (NHWC): convolution kernels (oneDNN on CPU, cuDNN on GPU) run
    faster on it and keep it through the tower; the values are the same up to summation order. On
    the 2-core CPU the built-in model's region pretraining step fell from 0.355 to 0.303 s and its
    training step from 1.14 to 1.09 s (bench/recipe_step_time.py, bench/demo_model.md)."""
    pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
    outputs = vision_tower(pixel_values, output_hidden_states=True, return_dict=True)
    return [_as_map(outputs.hidden_states[layer], select_strategy, grid_size) for layer in feature_layers]


def _as_map(hidden: torch.Tensor, select_strategy: str, grid_size: int) -> torch.Tensor:
    if hidden.ndim == 4:  # CNN stage output, already (B, C, h, w)
        return hidden
    if select_strategy == "default":
        hidden = hidden[:, 1:]  # drop CLS
    batch, tokens, channels = hidden.shape
    if tokens != grid_size * grid_size:
        raise ValueError(
            f"the vision tower gave {tokens} patch tokens, expected a {grid_size}x{grid_size} grid; "
            "check the image size against the model config (image_size / vision_grid_size)"
        )
    # (B, N, C) -> (B, C, h, w), row-major patches as ViTs lay them out.
    return hidden.transpose(1, 2).reshape(batch, channels, grid_size, grid_size)
