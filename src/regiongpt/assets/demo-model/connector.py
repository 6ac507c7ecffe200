"""The connector: a 2-layer MLP from vision features into the language model's width."""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN


class Connector(nn.Module):
    """Linear -> activation -> Linear, the LLaVA-1.5 ``mlp2x_gelu`` projector."""

    def __init__(self, in_dim: int, out_dim: int, act: str = "gelu", bias: bool = True):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim, bias=bias)
        self.act = ACT2FN[act]
        self.linear_2 = nn.Linear(out_dim, out_dim, bias=bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (..., in_dim) -> (..., out_dim)
        return self.linear_2(self.act(self.linear_1(features)))
