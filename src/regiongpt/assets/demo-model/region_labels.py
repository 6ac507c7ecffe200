"""Region label marks: the words a small model's region path predicts, on the region tokens.

A brief caption ("medium red dotted star") names a region's attributes, and a REC answer looks the
phrase "the red star" up among the candidate regions. Both ask the language model to match words
against region features. CLIP's features are aligned with words; a small region path trained from
scratch is not, and the built-in model found that match by chance: the same recipe with another
seed lost every colour word in its captions (brief 0.85 -> 0.09) or found the REC lookup late
(REC 0.73 -> 0.55; bench/demo_model.md).

With ``region_label_token_ids`` set, one linear head per labelled field (e.g. category, colour,
texture, size) reads each region's pooled feature (the vector the connector turns into the region
token) and predicts its value. The region token then gets, per field, the predicted probabilities
times the input embeddings of the values' names, rescaled to the token's length: a region the head
sees as a red star carries the embeddings of " red" and " star", which the phrase's own tokens find
by matching a token with itself, and which a caption can copy (the trick ``image_label_token_ids``
plays for yes/no questions, image_labels.py). The probabilities are detached: the heads are taught
by their own label loss (the training recipe's region label loss), so the marks stay labels.
Off by default (a 7B model reading CLIP features does not need it).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def name_embeddings(token_ids: list[list[int]], embeddings: nn.Embedding) -> torch.Tensor:  # (K, D)
    """Each name's mean input embedding (``token_ids``: one list of token ids per name)."""
    device = embeddings.weight.device
    width = max(len(ids) for ids in token_ids)
    padded = torch.tensor([ids + [0] * (width - len(ids)) for ids in token_ids], device=device)  # (K, T)
    weights = torch.tensor([[1.0 / len(ids)] * len(ids) + [0.0] * (width - len(ids)) for ids in token_ids],
                           device=device)  # (K, T): 1 / name length, 0 = padding
    return (embeddings(padded) * weights[..., None].to(embeddings.weight.dtype)).sum(1)


class RegionLabelHead(nn.Module):
    """Per-field value logits on pooled region features and the name marks they put on region tokens."""

    def __init__(self, channels: int, token_ids: dict[str, list[list[int]]]):
        super().__init__()
        self.fields = list(token_ids)
        self.heads = nn.ModuleDict({field: nn.Linear(channels, len(ids)) for field, ids in token_ids.items()})
        # plain lists, not buffers: from_pretrained leaves non-persistent buffers uninitialised
        self.token_ids = {field: [list(name) for name in ids] for field, ids in token_ids.items()}

    def forward(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:  # (R, C) -> field: (R, K_field)
        """Each field's value logits for every region."""
        dtype = next(iter(self.heads.values())).weight.dtype
        return {field: head(pooled.to(dtype)) for field, head in self.heads.items()}

    def marks(self, logits: dict[str, torch.Tensor], embeddings: nn.Embedding,
              region_embeds: torch.Tensor) -> torch.Tensor:  # (R, D)
        """Each region's mark: the sum over fields of the value probabilities times the values'
        name embeddings. A sure label of every field adds up to about the length of the region's
        own embedding (``region_embeds``, (R, D)): each field's mark is rescaled to that length over
        the square root of the number of fields (the connector's output is far longer than an
        input embedding in the built-in model, which would hide an unscaled mark)."""
        names = {field: name_embeddings(ids, embeddings) for field, ids in self.token_ids.items()}
        mean_norm = torch.cat([n.detach().float().norm(dim=-1) for n in names.values()]).mean()
        scale = region_embeds.detach().float().norm(dim=-1, keepdim=True) / (mean_norm * math.sqrt(len(names)))
        total = torch.zeros_like(region_embeds, dtype=torch.float32)
        for field, field_names in names.items():
            probs = logits[field].detach().float().softmax(dim=-1)  # (R, K)
            total = total + probs @ field_names.float()
        return total * scale


def validate_region_label_token_ids(ids: object, names: object = None, setting: str = "region_label") -> None:
    """Raise ValueError unless ``ids`` maps field names to lists of non-empty token-id lists (and
    ``names``, when given, has the same fields with one name per entry). ``setting``: the config
    fields' prefix the messages name (``{setting}_token_ids``, ``{setting}_names``)."""
    ok = isinstance(ids, dict) and ids and all(
        isinstance(field, str) and isinstance(values, (list, tuple)) and len(values) >= 2 and all(
            isinstance(name, (list, tuple)) and name and all(isinstance(i, int) and i >= 0 for i in name)
            for name in values)
        for field, values in ids.items())
    if not ok:
        raise ValueError(f"{setting}_token_ids must map each field (e.g. 'colour') to a list of at least two "
                         f"non-empty lists of token ids (ints >= 0), one per value name; got {ids!r}")
    if names is None:
        return
    if not isinstance(names, dict) or set(names) != set(ids):
        raise ValueError(f"{setting}_names must name the same fields as {setting}_token_ids "
                         f"({sorted(ids)}), got {names!r}")
    for field, values in ids.items():
        if len(names[field]) != len(values):
            raise ValueError(f"{setting}_names['{field}'] has {len(names[field])} names but "
                             f"{setting}_token_ids['{field}'] {len(values)} entries; give one per value")


__all__ = ["RegionLabelHead", "name_embeddings", "validate_region_label_token_ids"]
