"""Region number code: tells a small language model which `<regionK>` a region token is.

Users and answers name regions by number ("<region3>", "Region [3]"). A large pretrained
language model finds a region's number by counting the list it appears in; a small model
trained from scratch cannot (REC with candidate regions stayed at chance, bench/demo_model.md).
With ``region_number_embedding`` on, each region's embedding gets a fixed sinusoidal code of its
0-based number within its image, through a learned, zero-initialised linear map into the
language model's width: off (exactly zero) at initialisation, learned when it helps. The code
is defined for any number of regions. Off by default (a 7B model does not need it).

With ``region_number_token_ids`` (e.g. a small tokenizer's "1".."9") region k's embedding also
gets the input embedding of the token that writes its number: a REC answer "Region [k]" then
only has to copy the number from the region token it attends to, the circuit small language
models learn first, instead of decoding the sinusoidal code (bench/demo_model.md, "Seventh round").
"""

from __future__ import annotations

import math

import torch
from torch import nn

NUMBER_CODE_FREQUENCIES = 16


def region_numbers(region_image_index: torch.Tensor) -> torch.Tensor:  # (R,) -> (R,)
    """Each region's 0-based number among the regions of its image, in the given order."""
    same = region_image_index[:, None] == region_image_index[None, :]  # (R, R)
    earlier = torch.ones_like(same).tril(-1)
    return (same & earlier).sum(dim=1)


def number_code(numbers: torch.Tensor, frequencies: int = NUMBER_CODE_FREQUENCIES) -> torch.Tensor:  # (R, 2F)
    """Sinusoids of the region numbers at geometrically spaced periods (2 to ~1,000 regions)."""
    periods = 2.0 * torch.logspace(0, math.log10(512), frequencies, device=numbers.device)
    angles = 2 * math.pi * numbers.float()[:, None] / periods[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class RegionNumberEmbedding(nn.Module):
    """Learned map of the region number code into the language model's width (zero at init)."""

    def __init__(self, width: int, frequencies: int = NUMBER_CODE_FREQUENCIES):
        super().__init__()
        self.frequencies = frequencies
        self.proj = nn.Linear(2 * frequencies, width, bias=False)
        nn.init.zeros_(self.proj.weight)
        self.proj.zero_init = True  # and again in the model's _init_weights

    def forward(self, region_image_index: torch.Tensor,
                numbers: torch.Tensor | None = None) -> torch.Tensor:  # (R,) -> (R, width)
        """The code of each region's number: ``numbers`` (R,) when given (a question that lists an
        image's regions in another order numbers them in its own order), else its position among
        the regions of its image."""
        if numbers is None:
            numbers = region_numbers(region_image_index)
        code = number_code(numbers.to(region_image_index.device), self.frequencies)
        return self.proj(code.to(self.proj.weight.dtype))


def number_token_marks(numbers: torch.Tensor, token_ids: list[int], embeddings: nn.Embedding,
                       length: torch.Tensor | None = None) -> torch.Tensor:  # (R, D)
    """The input embedding of ``token_ids[k]`` for each region number k (0-based); zero past the list.

    ``length`` (R, 1): rescale each mark to that length (its direction stays learned). Unscaled, a
    mark is ~5% of the built-in model's region embedding, and the REC answer confused the numbers
    the learned code makes alike ("8" read as "6", bench/demo_model.md, twenty-first round).
    """
    ids = torch.tensor(token_ids, dtype=torch.long, device=numbers.device)
    known = numbers < len(token_ids)
    marks = embeddings(ids[numbers.clamp(max=len(token_ids) - 1)])
    if length is not None:
        marks = marks / marks.norm(dim=-1, keepdim=True).clamp(min=1e-6) * length.to(marks.dtype)
    return marks * known[:, None].to(marks.dtype)
