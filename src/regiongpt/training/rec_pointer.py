"""Attention supervision for REC answers during training (``train.rec_pointer_weight``).

A REC answer ("Region [k]") names the candidate that fits the phrase. Writing k means looking
the phrase up among the candidates' region tokens: one attention head whose query (at the
position that writes k) matches the phrase's words against the candidates' features. A small
language model trained from scratch did not find that lookup through the answer loss alone:
held-out REC stayed at chance through every recipe of bench/demo_model.md, while the same
model named a region's category and attributes ("brief") 0.83 of the time.

This loss asks one chosen head (``train.rec_pointer_layer``, ``train.rec_pointer_head``) to put
its attention, at each position that writes a digit of k, on the placeholder tokens of region k
(the k-th candidate of the question, and that region's placeholders earlier in the sequence):
``-log(attention mass on them)``. The head's value then carries region k's number code to the
output, where the answer loss reads it. Training only: the model and its inference are unchanged.

The attention is recomputed for the supervised rows only, from the layer's input (captured by a
forward pre-hook on the attention module), whatever attention implementation the model runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from regiongpt.errors import InvalidInputError


@dataclass(frozen=True)
class RecPointer:
    """One supervised attention row: in batch row ``row``, the query at ``query`` should attend to
    the positions ``targets`` (region k's placeholders); ``candidates`` are the question's own
    placeholder positions, in order (for the pointer accuracy)."""

    row: int
    query: int
    targets: tuple[int, ...]
    candidates: tuple[int, ...]
    answer: int  # 0-based index of the target among ``candidates``
    token: int  # the digit token the query writes

    @property
    def choices(self) -> tuple[tuple[int, ...], ...]:
        """The positions the pointer accuracy compares: each candidate's placeholder."""
        return tuple((c,) for c in self.candidates)


@dataclass(frozen=True)
class TargetPointer:
    """One supervised attention row whose targets compete with everything else the query sees: in
    batch row ``row`` the query at ``query`` (which writes ``token``) should attend to ``targets``;
    the pointer is right when it puts more attention there than on ``others`` (existence: the
    first token and the remaining image tokens; phrase: every other position before the query)."""

    row: int
    query: int
    targets: tuple[int, ...]
    others: tuple[int, ...]
    token: int
    answer: int = 0  # ``targets`` is the first of ``choices``

    @property
    def choices(self) -> tuple[tuple[int, ...], ...]:
        return (self.targets, self.others)


class SupervisedRow(Protocol):
    """What :func:`pointer_loss` needs of one supervised attention row (REC and existence pointers)."""

    row: int
    query: int
    targets: tuple[int, ...]  # where the attention should go
    answer: int  # which of ``choices`` holds the targets
    token: int  # the token the query writes

    @property
    def choices(self) -> tuple[tuple[int, ...], ...]: ...


def digit_tokens(vocab: Mapping[str, int]) -> dict[int, str]:
    """The tokenizer's tokens that spell only digits (after its word-boundary marks), by id."""
    digits = {}
    for token, token_id in vocab.items():
        text = token.replace("\u0120", "").replace("\u2581", "").strip()  # byte-level BPE / SentencePiece
        if text and text.isascii() and text.isdigit():
            digits[token_id] = text
    if not digits:
        raise InvalidInputError("train.rec_pointer_weight needs a tokenizer that has digit tokens (REC answers "
                                "write 'Region [k]'); this tokenizer has none")
    return digits


def _first_digit_group(ids: Sequence[int], digits: Mapping[int, str]) -> tuple[list[int], str] | None:
    """Offsets (within ``ids``) and text of the first run of digit tokens; None if there is none or
    the answer names more than one number (a checked answer: only its direct form is supervised)."""
    groups: list[list[int]] = []
    for offset, token in enumerate(ids):
        if token in digits:
            if groups and groups[-1][-1] == offset - 1:
                groups[-1].append(offset)
            else:
                groups.append([offset])
    if len(groups) != 1:
        return None
    return groups[0], "".join(digits[ids[o]] for o in groups[0])


def rec_pointers(input_ids: torch.Tensor, answer_index: torch.Tensor, answer_tasks: Sequence[str],
                 region_token_id: int, region_token_index: torch.Tensor | None, digits: Mapping[int, str],
                 tasks: Iterable[str] = ("rec",)) -> list[RecPointer]:
    """The supervised rows of a batch: one per digit of each direct REC answer ("Region [k]").

    ``input_ids`` and ``answer_index`` are (N, L); the question of an answer is the text between
    the previous answer of its row and it, and its placeholders are the candidates in order.
    Answers without exactly one number (no match, checked chains) and numbers past the question's
    candidates are skipped.
    """
    if region_token_index is None or region_token_index.numel() == 0:
        return []
    tasks = frozenset(tasks)
    ids = input_ids.tolist()
    region_of = placeholder_regions(input_ids, region_token_id, region_token_index)
    pointers = []
    for row, a, question_start, start, end in answer_spans(answer_index):
        row_ids = ids[row]
        if answer_tasks[a] in tasks:
            group = _first_digit_group(row_ids[start:end], digits)
            candidates = [p for p in range(question_start, start) if row_ids[p] == region_token_id]
            if group is not None and 1 <= int(group[1]) <= len(candidates):
                k = int(group[1]) - 1
                region = region_of[row][candidates[k]]
                for offset in group[0]:
                    query = start + offset - 1
                    targets = tuple(p for p in range(query + 1) if region_of[row].get(p) == region)
                    pointers.append(RecPointer(row, query, targets, tuple(candidates), k, row_ids[query + 1]))
    return pointers


def placeholder_regions(input_ids: torch.Tensor, region_token_id: int,
                        region_token_index: torch.Tensor) -> list[dict[int, int]]:
    """Per batch row, the region of each placeholder position (``region_token_index`` (P,) maps the
    placeholders, in row-major order, to regions)."""
    region_of = region_token_index.tolist()
    rows: list[dict[int, int]] = [{} for _ in range(input_ids.shape[0])]
    for ordinal, (row, position) in enumerate((input_ids == region_token_id).nonzero().tolist()):
        rows[row][position] = region_of[ordinal]
    return rows


def answer_spans(answer_index: torch.Tensor) -> Iterator[tuple[int, int, int, int, int]]:
    """(row, answer, question start, answer start, answer end) of each answer of an (N, L) answer
    index (-1 = no answer): an answer's question is the text between its row's previous answer and it."""
    for row, row_index in enumerate(answer_index.tolist()):
        question_start = 0
        for a, run in groupby(range(len(row_index)), key=row_index.__getitem__):  # one answer's tokens, or none
            if a < 0:
                continue
            positions = list(run)
            yield row, a, question_start, positions[0], positions[-1] + 1
            question_start = positions[-1] + 1


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _padded(x: torch.Tensor, layout: Any) -> torch.Tensor:  # (1, R, D) -> (N, L, D)
    n, length = layout.padded_shape
    full = x.new_zeros(n * length, x.shape[-1]).index_copy(0, layout.token_index, x[0])
    return full.view(n, length, x.shape[-1])


class AttentionInputCapture:
    """A forward pre-hook on one attention module that keeps its last input (the normalised hidden
    states and the rotary position embeddings), so one head's attention can be recomputed."""

    def __init__(self, attention: nn.Module, option: str = "train.rec_pointer_weight"):
        for name in ("q_proj", "k_proj"):
            if not isinstance(getattr(attention, name, None), nn.Module):
                raise InvalidInputError(f"{option} needs a Llama-style attention module (with "
                                        f"{name}); the language model's is {type(attention).__name__}")
        self.attention = attention
        self.hidden: torch.Tensor | None = None
        self.rotary: tuple[torch.Tensor, torch.Tensor] | None = None
        self._handle = attention.register_forward_pre_hook(self._capture, with_kwargs=True)

    def _capture(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        self.rotary = kwargs.get("position_embeddings")
        layout = kwargs.get("turn_layout")
        if layout is not None and layout.padding_free:  # (1, R, .) -> the padded batch's (N, L, .), zeros on padding
            self.hidden = _padded(self.hidden, layout)
            if self.rotary is not None:
                self.rotary = tuple(_padded(t, layout) for t in self.rotary)

    def remove(self) -> None:
        self._handle.remove()

    def rows_attention(self, rows: Sequence[int], queries: Sequence[int], head: int,
                       visible: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # (P, L), (P, D)
        """Log attention of ``head`` at each (``rows[i]``, ``queries[i]``) over the row's positions,
        recomputed from the captured input (-inf after the query: causal; ``visible`` (P, L) bool
        masks further: padding, independent turns), and what the head adds to the residual stream
        there (its slice of the output projection, without bias). One pass for all P rows: keys
        and values are projected once per batch row, not once per query."""
        return self.heads_attention(rows, queries, [head], visible)[0]

    def heads_attention(self, rows: Sequence[int], queries: Sequence[int], heads: Sequence[int],
                        visible: torch.Tensor | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`rows_attention` of each of ``heads``, from one projection of the queries, keys
        and values."""
        if self.hidden is None:
            raise RuntimeError("no captured attention input: run the model's forward first")
        module = self.attention
        head_dim = module.head_dim
        group = module.config.num_attention_heads // module.config.num_key_value_heads
        hidden = self.hidden  # (N, L, D)
        n_rows, length, device = hidden.shape[0], hidden.shape[1], hidden.device
        # Queries grouped by batch row, so each row's scores are one (queries x keys) matmul: indexing
        # the keys per query (P, L, d) cost ~10x more on CPU, mostly in the backward of the index.
        # index_select throughout, not advanced indexing, for the same reason.
        order = sorted(range(len(rows)), key=lambda i: (rows[i], i))  # stable: by row, then as given
        used = sorted(set(rows))  # the batch rows that hold a query
        counts = [sum(1 for r in rows if r == u) for u in used]
        order_t = torch.tensor(order, device=device)
        restore = torch.empty_like(order_t)
        restore[order_t] = torch.arange(len(order), device=device)  # sorted position of each query
        flat_query = torch.tensor([rows[i] * length + queries[i] for i in order], device=device)
        h = hidden if used == list(range(n_rows)) else hidden.index_select(0, torch.tensor(used, device=device))
        q = module.q_proj(hidden.reshape(-1, hidden.shape[-1]).index_select(0, flat_query))
        q = q.view(len(rows), -1, head_dim)  # (P, H, d), in sorted order
        k = module.k_proj(h).view(len(used), length, -1, head_dim)  # (U, L, KV, d)
        v = module.v_proj(h).view(len(used), length, -1, head_dim)  # (U, L, KV, d)
        query_t = flat_query % length  # (P,) sorted
        if self.rotary is not None:
            # (N or 1, L, d): per row, or shared by the batch when the positions are; or (L, d)
            cos, sin = self.rotary
            if cos.dim() == 3 and cos.shape[0] > 1:
                used_t = torch.tensor(used, device=device)
                q_cos = cos.reshape(-1, cos.shape[-1]).index_select(0, flat_query)
                q_sin = sin.reshape(-1, sin.shape[-1]).index_select(0, flat_query)
                k_cos, k_sin = cos.index_select(0, used_t), sin.index_select(0, used_t)
            else:
                cos, sin = (cos[0], sin[0]) if cos.dim() == 3 else (cos, sin)
                q_cos, q_sin, k_cos, k_sin = cos.index_select(0, query_t), sin.index_select(0, query_t), cos, sin
            q = q * q_cos[:, None] + _rotate_half(q) * q_sin[:, None]
            k = k * k_cos[..., None, :] + _rotate_half(k) * k_sin[..., None, :]
        allowed = torch.arange(length, device=device)[None] <= query_t[:, None]  # causal, (P, L) sorted
        if visible is not None:
            allowed = allowed & visible.to(device).index_select(0, order_t)
        results = []
        for head in heads:
            k_head, v_head = k[:, :, head // group].float(), v[:, :, head // group]  # (U, L, d)
            q_rows = q[:, head].float().split(counts)  # per used row: (P_u, d)
            scores = torch.cat([q_u @ k_head[u].T for u, q_u in enumerate(q_rows)]) * module.scaling  # (P, L)
            log_attention = torch.log_softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
            weights = log_attention.exp().to(v_head.dtype).split(counts)
            mixed = torch.cat([w_u @ v_head[u] for u, w_u in enumerate(weights)])  # (P, d)
            written = mixed @ module.o_proj.weight[:, head * head_dim : (head + 1) * head_dim].T  # (P, D)
            results.append((log_attention.index_select(0, restore), written.index_select(0, restore)))
        return results

    def head_attention(self, row: int, query: int, head: int, visible: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:  # (query + 1,), (D,)
        """:meth:`rows_attention` for one query: the log attention over positions 0..query
        (``visible`` (query + 1,) bool) and what the head writes."""
        if visible is not None:
            length = self.hidden.shape[1] if self.hidden is not None else query + 1
            full = torch.zeros(length, dtype=torch.bool, device=visible.device)
            full[: query + 1] = visible
            visible = full[None]
        log_attention, written = self.rows_attention([row], [query], head, visible)
        return log_attention[0, : query + 1], written[0]

    def head_log_attention(self, row: int, query: int, head: int,
                           visible: torch.Tensor | None = None) -> torch.Tensor:  # (query + 1,)
        """The log attention of :meth:`head_attention`."""
        return self.head_attention(row, query, head, visible)[0]


def visible_positions(attention_mask: torch.Tensor | None, row: int, query: int) -> torch.Tensor | None:
    """Which positions 0..query the query may see: a (N, 1, L, L) boolean mask (independent turns)
    or a (N, L) padding mask; None when everything before it is visible."""
    if attention_mask is None:
        return None
    if attention_mask.dim() == 4:
        return attention_mask[row, 0, query, : query + 1].bool()
    return attention_mask[row, : query + 1].bool()


@dataclass
class PointerLoss:
    """Means over the supervised rows: ``attention`` = -log(attention mass on the targets);
    ``readout`` = cross-entropy of the answer token read from what the head alone writes (through
    the model's output head); ``correct`` = how many rows' head puts more attention on the
    choice holding the targets than on any other choice (REC: the question's candidates)."""

    attention: torch.Tensor
    readout: torch.Tensor
    correct: int


def visible_rows(attention_mask: torch.Tensor | None, rows: Sequence[int], queries: Sequence[int]
                 ) -> torch.Tensor | None:  # (P, L) bool
    """:func:`visible_positions` for many queries at once, over the whole row (the causal limit
    is left to :meth:`AttentionInputCapture.rows_attention`)."""
    if attention_mask is None:
        return None
    row_t = torch.tensor(list(rows), device=attention_mask.device)
    if attention_mask.dim() == 4:
        return attention_mask[row_t, 0, torch.tensor(list(queries), device=attention_mask.device)].bool()
    return attention_mask[row_t].bool()


def _target_mask(log_attention: torch.Tensor, pointers: Sequence[SupervisedRow]) -> torch.Tensor:  # (P, L) bool
    targets = torch.zeros_like(log_attention, dtype=torch.bool)
    for i, p in enumerate(pointers):
        targets[i, list(p.targets)] = True
    return targets


def _mean_log_attention(log_attentions: Sequence[torch.Tensor]) -> torch.Tensor:  # (P, L)
    """The log of several heads' mean attention."""
    # -inf (masked) clamped: logsumexp's gradient where every input is -inf is NaN
    stacked = torch.stack(list(log_attentions)).clamp(min=-1e4)  # (H, P, L)
    return torch.logsumexp(stacked, dim=0) - math.log(len(log_attentions))


def _judged_right(log_attention: torch.Tensor, pointers: Sequence[SupervisedRow]) -> int:
    """How many pointers put the most attention on their answer's choice."""
    detached = log_attention.detach().float().cpu().numpy()
    return sum(int(int(np.argmax([np.logaddexp.reduce(detached[i, list(c)]) for c in p.choices])) == p.answer)
               for i, p in enumerate(pointers))


def _readout_loss(readout: Callable[[torch.Tensor], torch.Tensor], written: torch.Tensor,
                  pointers: Sequence[SupervisedRow]) -> torch.Tensor:
    """Summed cross-entropy of the token each pointer writes, read from what the heads write (P, D)."""
    logits = readout(written).float()  # (P, V)
    tokens = torch.tensor([p.token for p in pointers], device=logits.device)
    return torch.nn.functional.cross_entropy(logits, tokens, reduction="sum")


def pointer_loss(capture: AttentionInputCapture, pointers: Sequence[SupervisedRow], head: int | Sequence[int],
                 attention_mask: torch.Tensor | None,
                 readout: Callable[[torch.Tensor], torch.Tensor] | None = None, spread: bool = False) -> PointerLoss:
    """The supervision of ``pointers`` (REC's or existence's). ``readout`` maps what the head
    writes, (P, D), to vocabulary logits (the model's final norm and output head); without it
    ``readout`` is zero. Several heads of the layer (``head`` a sequence) share the pointer: their
    mean attention is supervised and judged, and the readout reads what they write together.
    ``spread``: the attention loss asks for an even share on every target (the cross-entropy against
    the uniform distribution over them) instead of their total mass, which one target alone can
    satisfy."""
    zero = torch.zeros((), device=capture.hidden.device if capture.hidden is not None else None)
    if not pointers:
        return PointerLoss(zero, zero, 0)
    rows, queries = [p.row for p in pointers], [p.query for p in pointers]
    visible = visible_rows(attention_mask, rows, queries)
    heads = [head] if isinstance(head, int) else list(head)
    per_head = capture.heads_attention(rows, queries, heads, visible)  # each (P, L), (P, D)
    log_attention, written = per_head[0]
    if len(heads) > 1:
        log_attention = _mean_log_attention([a for a, _ in per_head])
        written = torch.stack([w for _, w in per_head]).sum(0)
    targets = _target_mask(log_attention, pointers)
    if spread:
        attention = -(log_attention.masked_fill(~targets, 0.0).sum(-1) / targets.sum(-1)).sum()
    else:
        attention = -torch.logsumexp(log_attention.masked_fill(~targets, float("-inf")), dim=-1).sum()
    read = zero if readout is None else _readout_loss(readout, written, pointers)
    n = len(pointers)
    return PointerLoss(attention / n, read / n, _judged_right(log_attention, pointers))


def attribute_pointer_loss(capture: AttentionInputCapture, pointers: Sequence[RecPointer], head: int,
                           attribute_head: int, shared: Sequence[bool], attention_mask: torch.Tensor | None,
                           readout: Callable[[torch.Tensor], torch.Tensor],
                           attribute_weight: float = 1.0) -> PointerLoss:
    """REC supervision with a second head for the answers whose region shares its category with another
    candidate (``shared[i]``). ``head`` is supervised on every pointer as :func:`pointer_loss` does,
    ``attribute_head`` on the shared ones only (the sum of the two attention losses, the second times
    ``attribute_weight``); the readout reads what the two heads write together, and a pointer is judged
    by their mean attention."""
    zero = torch.zeros((), device=capture.hidden.device if capture.hidden is not None else None)
    if not pointers:
        return PointerLoss(zero, zero, 0)
    rows, queries = [p.row for p in pointers], [p.query for p in pointers]
    visible = visible_rows(attention_mask, rows, queries)
    (log_lookup, written_lookup), (log_attribute, written_attribute) = capture.heads_attention(
        rows, queries, [head, attribute_head], visible)  # each (P, L), (P, D)
    targets = _target_mask(log_lookup, pointers)
    on_target = -torch.logsumexp(log_lookup.masked_fill(~targets, float("-inf")), dim=-1)  # (P,)
    on_target_attribute = -torch.logsumexp(log_attribute.masked_fill(~targets, float("-inf")), dim=-1)
    mask = torch.tensor(list(shared), dtype=torch.bool, device=on_target.device)
    attention = on_target.sum() + attribute_weight * on_target_attribute.masked_fill(~mask, 0.0).sum()
    read = _readout_loss(readout, written_lookup + written_attribute, pointers)
    judged = _judged_right(_mean_log_attention([log_lookup, log_attribute]), pointers)
    n = len(pointers)
    return PointerLoss(attention / n, read / n, judged)


def shares_category(pointer: RecPointer, region_of: Mapping[int, int], categories: Sequence[str | None]) -> bool:
    """Whether another of the pointer's candidates has its region's category (``categories``: per region)."""
    mine = categories[region_of[pointer.candidates[pointer.answer]]]
    return mine is not None and sum(categories[region_of[c]] == mine for c in pointer.candidates) > 1


__all__ = ["AttentionInputCapture", "PointerLoss", "RecPointer", "SupervisedRow", "TargetPointer", "answer_spans",
           "attribute_pointer_loss", "digit_tokens", "placeholder_regions", "pointer_loss", "rec_pointers",
           "shares_category", "visible_positions", "visible_rows"]
