"""Choosing the next token: greedy, temperature and nucleus (top-p) sampling."""

from __future__ import annotations

import torch


def next_tokens(
    logits: torch.Tensor,  # (B, V) float32
    temperature: torch.Tensor,  # (B,) 0 = greedy
    top_p: torch.Tensor,  # (B,) 1 = off
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next token per row and its log-probability under the model (before temperature)."""
    logprobs = torch.log_softmax(logits, dim=-1)
    chosen = logits.argmax(-1)
    sample_rows = (temperature > 0).nonzero().flatten()
    if sample_rows.numel():
        scaled = logits[sample_rows] / temperature[sample_rows, None]
        probs = torch.softmax(scaled, dim=-1)
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        cumulative = sorted_probs.cumsum(-1)
        # keep the smallest set whose mass reaches top_p (always at least the top token)
        drop = (cumulative - sorted_probs) >= top_p[sample_rows, None]
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        picks = torch.multinomial(sorted_probs, 1, generator=generator)[:, 0]
        chosen[sample_rows] = order.gather(1, picks[:, None])[:, 0]
    return chosen, logprobs.gather(1, chosen[:, None])[:, 0]
