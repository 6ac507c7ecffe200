"""Attention for batches with independent turns, computing only what their mask lets through.

With ``data.independent_tasks`` a row holds the image prefix, one ordinary conversation and then
turns that each see only the prefix and themselves (``independent_turns.py``). SDPA with that
(N, 1, L, L) mask scores every (query, key) pair of the row, most of them masked: in the demo
recipe's REC/yes-no phase attention was ~40% of a training step. Here the prefix and ordinary
turns go through causal SDPA over the first ``main_length`` tokens, and the independent turns
through one small batched SDPA over (turn tokens) x (prefix + turn tokens), then each token's
output is picked from the two. The result equals SDPA with the mask (tested) on every token that
belongs to the prefix or an answer's segment; padding after the last answer gets zeros.

Padding-free (a layout from ``TurnLayout.without_padding``, the model called with its
``token_index``): the language model runs on the batch's real tokens only, one (1, R) row, so its
linear layers skip the padding; here the rows' main parts are gathered back into an (N, M) block
for the causal SDPA. The outputs equal the padded run's on every real token (tested).

The function is registered with transformers' ``AttentionInterface`` under
:data:`TURN_ATTENTION` (the library's extension point for attention functions) and used only
when a forward call passes ``turn_layout=``; without it, it is transformers' SDPA.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from .independent_turns import TURN_ATTENTION, TurnLayout


def turn_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                           turn_layout: TurnLayout | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """(N, L, H, D) attention output; query (N, H, L, D), key and value (N, H_kv, L, D)."""
    if turn_layout is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    n, heads, length, dim = query.shape  # padding-free (turn_layout.padding_free): N = 1, L = R real tokens

    def flat(x: torch.Tensor) -> torch.Tensor:  # (N, H, L, D) -> (N * L, H, D)
        return x.transpose(1, 2).reshape(n * length, heads, dim)

    def gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:  # (N * L, H, D), (T, K) -> (T, H, K, D)
        # index_select, not x[index]: on CPU its backward (index_add) is ~9x faster than the
        # accumulating index_put that advanced indexing differentiates to
        return x.index_select(0, index.reshape(-1)).view(*index.shape, heads, dim).transpose(1, 2)

    flat_query, flat_key, flat_value = flat(query), flat(key), flat(value)
    if turn_layout.main_index is None:  # padded rows: the main parts are each row's first M tokens
        m = turn_layout.main_length
        main = F.scaled_dot_product_attention(query[:, :, :m], key[:, :, :m], value[:, :, :m], is_causal=True,
                                              dropout_p=dropout, scale=scaling)  # (N, H, M, D)
        main = F.pad(main, (0, 0, 0, length - m)).transpose(1, 2).reshape(n * length, heads, dim)
    else:  # padding-free: gathered back into rows
        index = turn_layout.main_index  # (N', M)
        main = F.scaled_dot_product_attention(gather(flat_query, index), gather(flat_key, index),
                                              gather(flat_value, index), is_causal=True, dropout_p=dropout,
                                              scale=scaling)  # (N', H, M, D)
        main = main.transpose(1, 2).reshape(-1, heads, dim)
    turn_query = gather(flat_query, turn_layout.query_index)  # (T, H, Q, D)
    turn_key = gather(flat_key, turn_layout.key_index)  # (T, H, P + Q, D)
    turn_value = gather(flat_value, turn_layout.key_index)
    turns = F.scaled_dot_product_attention(turn_query, turn_key, turn_value, attn_mask=turn_layout.key_mask,
                                           dropout_p=dropout, scale=scaling)  # (T, H, Q, D)
    turns = turns.transpose(1, 2).reshape(-1, heads, dim)
    output = torch.cat([main, turns]).index_select(0, turn_layout.output_index)  # (N * L, H, D)
    return output.view(n, length, heads, dim), None


def without_padding(inputs: dict[str, Any], padding_mask: torch.Tensor) -> dict[str, Any]:
    """Model inputs of a batch with a ``turn_layout`` (``padding_mask`` (N, L), True = real token),
    made padding-free: the model gets ``token_index`` and runs its language model on the real
    tokens only, as one (1, R) row; ``position_ids`` and a boolean ``logits_to_keep`` follow.
    The 4D attention mask is dropped (turn attention keeps the rows apart from the layout); an
    all-True (1, R) one stands in, so that transformers builds no (R, R) mask of its own."""
    layout: TurnLayout = inputs["turn_layout"].without_padding(padding_mask)
    token_index = layout.token_index
    out = dict(inputs, turn_layout=layout, token_index=token_index,
               attention_mask=torch.ones(1, len(token_index), dtype=torch.bool, device=token_index.device))
    positions = inputs.get("position_ids")
    if positions is None:  # a plain right-padded batch: each row counts from 0
        positions = (padding_mask.long().cumsum(1) - 1).clamp(min=0)
    out["position_ids"] = positions.reshape(-1).to(token_index.device).index_select(0, token_index)[None]
    keep = inputs.get("logits_to_keep")
    if isinstance(keep, torch.Tensor) and keep.dtype == torch.bool:
        out["logits_to_keep"] = keep.reshape(-1).index_select(0, token_index)[None]
    return out


def use_turn_attention(language_model) -> None:
    """Make ``language_model`` (a transformers model using SDPA) use :func:`turn_attention_forward`.

    Registering is idempotent; the setting is not saved with the model (transformers keeps the
    attention implementation out of ``config.json``), so checkpoints load with SDPA.
    """
    AttentionInterface.register(TURN_ATTENTION, turn_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(TURN_ATTENTION, sdpa_mask)  # masks are built as for SDPA
    language_model.set_attn_implementation(TURN_ATTENTION)


__all__ = ["TURN_ATTENTION", "turn_attention_forward", "use_turn_attention", "without_padding"]
