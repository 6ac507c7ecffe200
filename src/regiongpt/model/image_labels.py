"""Image label marks: the names of the categories a small vision tower sees, on the image tokens.

"Is there a star in the image?" is answered from the image tokens: the language model must match
the word "star" against what each token holds. CLIP's features are aligned with text; a small
tower trained from scratch has no such alignment, and the built-in model answered yes/no at
chance (0.50) while its tower alone told a map cell's category apart (bench/demo_model.md,
eighth to thirteenth rounds): the missing piece was the lookup from a word to the cells.

With ``image_label_token_ids`` set, a 1x1 convolution on the refined map (the map regions are
pooled from) predicts each cell's category (the last class: background), optionally after a few
dilated depthwise-separable 3x3 convolutions (``image_label_context_layers``): a 1x1 classifier sees one cell of a
shape, and the built-in model's largest per-cell probability told a present category from an
absent one only 0.63 of the time (bench/demo_model.md, fifteenth round). It is trained by the
per-cell category loss (``train.segmentation_weight``, training/segmentation.py). Each image
token then gets, for every category, the largest probability of that category among its map
cells times the input embedding of the category's name (rescaled to the token's length): a token
over a star carries the embedding of " star", which the question's own " star" token can find with the plain
match-the-same-token attention small language models learn first (the trick
``region_number_token_ids`` plays for REC answers, region_number.py). The probabilities are
detached: the head is taught by the category loss alone, so the marks stay labels.
Off by default (a 7B model reading CLIP features does not need it).

With ``image_attribute_token_ids`` (e.g. colours) one more 1x1 classifier per attribute field reads
the same context-mixed map and marks each token with the names of the values its cells show, the
same way: "Is there a purple triangle?" beside a blue one asks for a token that holds both " purple"
and " triangle", which category marks alone cannot tell apart from one that holds " blue" and
" triangle" (the built-in model answered those questions at about chance, bench/demo_model.md).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .region_labels import name_embeddings


class ImageLabelHead(nn.Module):
    """Per-cell category logits on the refined map and the name marks they put on image tokens."""

    def __init__(self, channels: int, token_ids: list[list[int]], context_layers: int = 0,
                 attribute_token_ids: dict[str, list[list[int]]] | None = None):
        super().__init__()
        self.n_labels = len(token_ids)
        # residual depthwise-separable 3x3 convolutions, dilations 1, 2, 4, ...: a cell sees the shape it is
        # part of, for ~1/9 of a full convolution's cost
        self.context = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, kernel_size=3, padding=2 ** i, dilation=2 ** i, groups=channels),
                          nn.Conv2d(channels, channels, kernel_size=1))
            for i in range(context_layers))
        self.head = nn.Conv2d(channels, self.n_labels + 1, kernel_size=1)
        attribute_token_ids = attribute_token_ids or {}
        # per attribute field, its values and, last, the background
        self.attribute_heads = nn.ModuleDict({field: nn.Conv2d(channels, len(ids) + 1, kernel_size=1)
                                              for field, ids in attribute_token_ids.items()})
        # plain lists, not buffers: from_pretrained leaves non-persistent buffers uninitialised
        self.token_ids = [list(ids) for ids in token_ids]
        self.attribute_token_ids = {field: [list(name) for name in ids] for field, ids in attribute_token_ids.items()}

    def _context(self, region_maps: torch.Tensor) -> torch.Tensor:  # (B, C, h, w)
        x = region_maps.to(self.head.weight.dtype)
        for conv in self.context:
            x = x + F.gelu(conv(x))
        return x

    def forward(self, region_maps: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> (B, K+1, h, w)
        """Per-cell logits of the K categories and, last, the background."""
        return self.head(self._context(region_maps))

    def classify(self, region_maps: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The category logits of :meth:`forward` and, per attribute field, (B, K_field+1, h, w)
        per-cell logits of its values and, last, the background; one pass of the context layers."""
        x = self._context(region_maps)
        return self.head(x), {field: head(x) for field, head in self.attribute_heads.items()}

    def marks(self, logits: torch.Tensor, grid: int, embeddings: nn.Embedding,
              image_embeds: torch.Tensor,
              attribute_logits: dict[str, torch.Tensor] | None = None) -> torch.Tensor:  # (B, grid*grid, D)
        """Each image token's mark: sum over categories of (the category's largest probability in the
        token's cells) x (its name's mean input embedding), rescaled so that a sure label is as long
        as the token's own embedding (``image_embeds``, (B, grid*grid, D); the connector's output is
        ~300x longer in the built-in model than an input embedding, which would hide the mark). ``logits``: (B, K+1, h, w)
        from :meth:`forward`; ``grid``: the image-token grid side. ``attribute_logits`` (from :meth:`classify`):
        each attribute field adds its values' marks the same way, each rescaled on its own."""
        marks = self._field_marks(logits, self.token_ids, grid, embeddings, image_embeds)
        for field, field_logits in (attribute_logits or {}).items():
            marks = marks + self._field_marks(field_logits, self.attribute_token_ids[field], grid, embeddings,
                                              image_embeds)
        return marks

    @staticmethod
    def _field_marks(logits: torch.Tensor, token_ids: list[list[int]], grid: int, embeddings: nn.Embedding,
                     image_embeds: torch.Tensor) -> torch.Tensor:  # (B, grid*grid, D)
        probs = logits.detach().float().softmax(dim=1)[:, : len(token_ids)]  # (B, K, h, w): background dropped
        probs = F.adaptive_max_pool2d(probs, grid).flatten(2).transpose(1, 2)  # (B, grid*grid, K)
        names = name_embeddings(token_ids, embeddings)  # (K, D)
        scale = image_embeds.detach().float().norm(dim=-1, keepdim=True) / names.detach().float().norm(dim=-1).mean()
        return (probs.to(names.dtype) @ names) * scale.to(names.dtype)


def validate_label_token_ids(ids: object) -> None:
    """Raise ValueError unless ``ids`` is a list of non-empty lists of token ids (ints >= 0)."""
    ok = isinstance(ids, (list, tuple)) and all(
        isinstance(name, (list, tuple)) and name and all(isinstance(i, int) and i >= 0 for i in name) for name in ids)
    if not ok:
        raise ValueError("image_label_token_ids must be a list with one non-empty list of token ids (ints >= 0) "
                         f"per category name, got {ids!r}")


__all__ = ["ImageLabelHead", "validate_label_token_ids"]
