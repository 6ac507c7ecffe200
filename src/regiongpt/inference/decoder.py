"""A decoder runner with shared-prefix attention for Llama-family language models.

Every question about one image starts with the same tokens (system prompt, image tokens,
shared text). The runner prefills that prefix once per image and keeps its KV once; the
questions' own tokens (suffixes) keep per-row KV. Attention of a row reads its image's
prefix KV (one matmul per image for all its rows, so the prefix is read once) and its own
suffix KV, under one softmax. This is exact attention, not an approximation.

It runs the language model's own modules (projections, norms, MLP, rotary embedding) in the
Llama layer order shared by Llama, Mistral and Qwen2. ``supports()`` checks that structure;
other language models go through the engine's plain ``generate`` fallback.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

_LAYER_PARTS = ("input_layernorm", "post_attention_layernorm", "mlp", "self_attn")
_ATTENTION_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj")


def supports(language_model: nn.Module) -> bool:
    """Whether ``language_model`` has the Llama layer structure this runner executes."""
    layers = getattr(language_model, "layers", None)
    if layers is None or not hasattr(language_model, "norm") or not hasattr(language_model, "rotary_emb"):
        return False
    config = language_model.config
    if getattr(config, "use_sliding_window", False) or getattr(config, "layer_types", None) and any(
        t != "full_attention" for t in config.layer_types
    ):
        return False
    for layer in layers:
        if not all(hasattr(layer, p) for p in _LAYER_PARTS):
            return False
        attention = layer.self_attn
        if not all(hasattr(attention, p) for p in _ATTENTION_PARTS):
            return False
        if hasattr(attention, "q_norm") or hasattr(attention, "k_norm"):
            return False
    return True


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, H, L, D); cos/sin: (B, L, D)
    return x * cos[:, None] + _rotate_half(x) * sin[:, None]


@dataclass
class PrefixKV:
    """One image's prefix: per layer keys and values (Hkv, Lp, D), stored once."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: int


@dataclass
class SuffixKV:
    """Per-row suffix KV (B, Hkv, Ls, D) per layer, and which suffix slots hold real tokens."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    valid: torch.Tensor  # (B, Ls) bool

    @classmethod
    def empty(cls, num_layers: int, rows: int, heads: int, dim: int, like: torch.Tensor) -> SuffixKV:
        shape = (rows, heads, 0, dim)
        return cls(
            keys=[like.new_zeros(shape) for _ in range(num_layers)],
            values=[like.new_zeros(shape) for _ in range(num_layers)],
            valid=torch.zeros((rows, 0), dtype=torch.bool, device=like.device),
        )


class SharedPrefixDecoder:
    """Runs a Llama-family ``language_model`` + ``lm_head`` with shared-prefix attention."""

    def __init__(self, language_model: nn.Module, lm_head: nn.Module, suppress_token_ids: tuple[int, ...] = ()):
        if not supports(language_model):
            raise ValueError("this language model does not have the Llama layer structure")
        self.lm = language_model
        self.lm_head = lm_head
        self.suppress = [t for t in suppress_token_ids if 0 <= t < lm_head.out_features]
        first = language_model.layers[0].self_attn
        self.head_dim = first.head_dim
        self.num_heads = first.q_proj.out_features // self.head_dim
        self.num_kv_heads = first.k_proj.out_features // self.head_dim
        self.scaling = first.scaling

    @property
    def num_layers(self) -> int:
        return len(self.lm.layers)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm + LM head, with input-only tokens suppressed."""
        logits = self.lm_head(self.lm.norm(hidden)).float()
        if self.suppress:
            logits[..., self.suppress] = torch.finfo(logits.dtype).min
        return logits

    def _qkv(self, layer: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        attention = layer.self_attn
        batch, length, _ = x.shape
        q = attention.q_proj(x).view(batch, length, -1, self.head_dim).transpose(1, 2)
        k = attention.k_proj(x).view(batch, length, -1, self.head_dim).transpose(1, 2)
        v = attention.v_proj(x).view(batch, length, -1, self.head_dim).transpose(1, 2)
        return _apply_rotary(q, cos, sin), _apply_rotary(k, cos, sin), v

    def _finish_layer(self, layer: nn.Module, residual: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        batch, heads, length, dim = attended.shape
        hidden = residual + layer.self_attn.o_proj(attended.transpose(1, 2).reshape(batch, length, heads * dim))
        return hidden + layer.mlp(layer.post_attention_layernorm(hidden))

    @torch.no_grad()
    def prefill_prefix(self, embeds: torch.Tensor) -> tuple[PrefixKV, torch.Tensor]:
        """Causal pass over one prefix (1, Lp, D); returns its KV and last hidden state (1, D)."""
        length = embeds.shape[1]
        positions = torch.arange(length, device=embeds.device)[None]
        cos, sin = self.lm.rotary_emb(embeds, position_ids=positions)
        causal = torch.ones(length, length, dtype=torch.bool, device=embeds.device).tril()
        hidden = embeds
        keys, values = [], []
        for layer in self.lm.layers:
            q, k, v = self._qkv(layer, layer.input_layernorm(hidden), cos, sin)
            keys.append(k[0])
            values.append(v[0])
            attended = self._attend(q, [], [], None, k, v, causal[None].expand(1, -1, -1))
            hidden = self._finish_layer(layer, hidden, attended)
        return PrefixKV(keys, values, length), hidden[:, -1]

    @torch.no_grad()
    def step(
        self,
        embeds: torch.Tensor,  # (B, Lq, D) new tokens of each row (left-padded)
        new_valid: torch.Tensor,  # (B, Lq) which new tokens are real
        positions: torch.Tensor,  # (B, Lq) absolute positions
        prefixes: list[PrefixKV],
        row_prefix: torch.Tensor,  # (B,) index into prefixes of each row
        suffix: SuffixKV,
        all_logits: bool = False,
    ) -> tuple[torch.Tensor, SuffixKV]:
        """Run new tokens of every row; returns logits of each row's last token (B, V) — or of
        every new token (B, Lq, V) with ``all_logits`` — and the grown cache."""
        batch, length, _ = embeds.shape
        cos, sin = self.lm.rotary_emb(embeds, position_ids=positions)
        valid = torch.cat([suffix.valid, new_valid], dim=1)  # (B, Ls + Lq)
        past = suffix.valid.shape[1]
        # new token i of a row sees its real past suffix tokens and real new tokens j <= i
        causal = torch.ones(length, length, dtype=torch.bool, device=embeds.device).tril()
        allowed = torch.cat(
            [suffix.valid[:, None, :].expand(-1, length, -1), causal[None] & new_valid[:, None, :]], dim=2
        )  # (B, Lq, Ls + Lq)
        hidden = embeds
        keys, values = [], []
        for index, layer in enumerate(self.lm.layers):
            q, k, v = self._qkv(layer, layer.input_layernorm(hidden), cos, sin)
            k_all = torch.cat([suffix.keys[index], k], dim=2)
            v_all = torch.cat([suffix.values[index], v], dim=2)
            keys.append(k_all)
            values.append(v_all)
            pk = [p.keys[index] for p in prefixes]
            pv = [p.values[index] for p in prefixes]
            attended = self._attend(q, pk, pv, row_prefix, k_all, v_all, allowed)
            hidden = self._finish_layer(layer, hidden, attended)
        del past
        return self.logits(hidden if all_logits else hidden[:, -1]), SuffixKV(keys, values, valid)

    def _attend(
        self,
        q: torch.Tensor,  # (B, H, Lq, D)
        prefix_keys: list[torch.Tensor],  # per prefix (Hkv, Lp, D)
        prefix_values: list[torch.Tensor],
        row_prefix: torch.Tensor | None,  # (B,)
        suffix_keys: torch.Tensor,  # (B, Hkv, Ls, D)
        suffix_values: torch.Tensor,
        allowed: torch.Tensor,  # (B, Lq, Ls) bool
    ) -> torch.Tensor:  # (B, H, Lq, D)
        batch, heads, length, dim = q.shape
        groups = heads // self.num_kv_heads
        qg = q.float().view(batch, self.num_kv_heads, groups, length, dim)
        suffix_scores = torch.einsum("bhgqd,bhkd->bhgqk", qg, suffix_keys.float()) * self.scaling
        suffix_scores = suffix_scores.masked_fill(~allowed[:, None, None], float("-inf"))
        parts = [suffix_scores]
        prefix_len = 0
        if prefix_keys:
            prefix_len = max(k.shape[1] for k in prefix_keys)
            prefix_scores = suffix_scores.new_full((batch, self.num_kv_heads, groups, length, prefix_len), float("-inf"))
            for p, keys in enumerate(prefix_keys):
                rows = (row_prefix == p).nonzero().flatten()
                if rows.numel() == 0:
                    continue
                # all rows of this prefix in one matmul: (Hkv, R*G*Lq, D) @ (Hkv, D, Lp)
                qr = qg[rows].permute(1, 0, 2, 3, 4).reshape(self.num_kv_heads, -1, dim)
                scores = torch.bmm(qr, keys.float().transpose(1, 2)) * self.scaling
                scores = scores.view(self.num_kv_heads, len(rows), groups, length, -1).permute(1, 0, 2, 3, 4)
                prefix_scores[rows, ..., : keys.shape[1]] = scores
            parts.insert(0, prefix_scores)
        weights = torch.softmax(torch.cat(parts, dim=-1), dim=-1)
        weights = torch.nan_to_num(weights)  # rows of padding attend to nothing
        out = torch.einsum("bhgqk,bhkd->bhgqd", weights[..., prefix_len:], suffix_values.float())
        for p, vals in enumerate(prefix_values):
            rows = (row_prefix == p).nonzero().flatten()
            if rows.numel() == 0:
                continue
            w = weights[rows][..., : vals.shape[1]].permute(1, 0, 2, 3, 4).reshape(self.num_kv_heads, -1, vals.shape[1])
            contrib = torch.bmm(w, vals.float()).view(self.num_kv_heads, len(rows), groups, length, dim)
            out[rows] += contrib.permute(1, 0, 2, 3, 4)
        return out.reshape(batch, heads, length, dim).to(q.dtype)
