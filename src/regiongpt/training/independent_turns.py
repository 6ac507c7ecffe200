"""Independent turns: questions trained as if each were asked alone about the image.

A packed training sequence holds many turns about one image. A turn's answer may be written
in the turns before it: "which of <region1>..<region5> is 'the red bar'?" is answered by
copying the region number from an earlier brief caption "<region3> -> small red checkered
bar", and "is there a bar?" by finding "bar" among earlier classification answers. A model
trained that way learns to read the conversation, not the image, and fails when the question
comes alone, as it does in evaluation (bench/demo_model.md measured REC and yes/no at
their priors this way).

Turns of the tasks in ``data.independent_tasks`` are laid out after the image as a
single-turn question would be ("<image>" then "\\nQUESTION ASSISTANT: ANSWER</s>") and an
attention mask lets each see only the image prefix and itself; its positions restart
after the prefix. So one encoding of the image still serves every turn, and each
independent turn is computed exactly as the same question asked alone (tested). The other
turns form one ordinary conversation before them and see each other, never the
independent ones.

Segments of a sequence (token level): 0 = the prefix up to the last image token (the
first token when the sequence has no image); then one segment per answer: the tokens after
the previous answer (or the prefix) through the end of this answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch

from regiongpt.processing.templates import FormattedConversation

IMAGE_TEXT = "<image>"
TURN_ATTENTION = "regiongpt_turns"  # the attention implementation of turn_attention.py (SDPA-like)


def split_pairs(pairs: Sequence, independent: frozenset[str]) -> tuple[list, list]:
    """(ordinary pairs, independent pairs), each in the given order."""
    return ([p for p in pairs if p.task not in independent], [p for p in pairs if p.task in independent])


def format_sequence(processor, pairs: Sequence, independent: frozenset[str]) -> FormattedConversation:
    """The text and learned spans of one packed sequence: the ordinary pairs as one conversation
    (the image at the start of its first question), then each independent pair as the text a
    single-turn question about the same image continues with after ``<image>``. The answers are
    laid out in that order (ordinary, then independent), whatever the order of ``pairs``."""
    ordinary, alone = split_pairs(pairs, independent)
    if not alone:
        return processor.format_conversation(pairs_to_turns(ordinary))
    if ordinary:
        base = processor.format_conversation(pairs_to_turns(ordinary))
        text, spans = base.text, list(base.target_spans)
    else:
        first = processor.format_conversation(pairs_to_turns(alone[:1]))
        text, spans, alone = first.text, list(first.target_spans), alone[1:]
    for pair in alone:
        single = processor.format_conversation(pairs_to_turns([pair]))
        cut = single.text.index(IMAGE_TEXT) + len(IMAGE_TEXT)  # the shared head: system, role, image
        offset = len(text) - cut
        text += single.text[cut:]
        spans += [(a + offset, b + offset) for a, b in single.target_spans]
    return FormattedConversation(text=text, target_spans=tuple(spans))


def pairs_to_turns(pairs: Sequence) -> list[dict[str, str]]:
    """LLaVA-style turns of packed pairs; the image goes at the start of the first question."""
    turns = []
    for i, pair in enumerate(pairs):
        question = f"{IMAGE_TEXT}\n{pair.question}" if i == 0 else pair.question
        turns += [{"from": "human", "value": question}, {"from": "gpt", "value": pair.answer}]
    return turns


def row_segments(input_ids: torch.Tensor, answers: Sequence[int], answer_independent: Sequence[bool],
                 image_token_id: int) -> tuple[int, list[tuple[int, int, bool]]]:
    """One row's prefix end and its answer segments ``(begin, end, independent)``, in order.

    ``answers`` numbers each token's answer (-1 elsewhere). The prefix is everything up to the
    last image token (the first token when the row has no image); tokens after the last answer
    (padding) belong to no segment.
    """
    image = (input_ids == image_token_id).nonzero()
    prefix = int(image[-1]) + 1 if len(image) else 1
    length, pos, segments = len(answers), prefix, []
    while pos < length:
        end = pos
        while end < length and answers[end] < 0:  # the question before the answer
            end += 1
        if end == length:
            break
        number = answers[end]
        while end < length and answers[end] == number:
            end += 1
        segments.append((pos, end, bool(answer_independent[number])))
        pos = end
    return prefix, segments


def segment_mask(input_ids: torch.Tensor, padding_mask: torch.Tensor, answer_index: torch.Tensor,
                 answer_independent: Sequence[bool], image_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (N, 1, L, L) boolean attention mask (True = may attend) and (N, L) position ids.

    ``answer_index`` (N, L) numbers each answer's tokens (-1 elsewhere), ``answer_independent``
    says per answer number whether its turn is independent. Position ids count the tokens a
    token sees, so an independent turn continues right after the prefix.
    """
    n, length = input_ids.shape
    causal = torch.ones(length, length, dtype=torch.bool, device=input_ids.device).tril()
    masks, positions = [], []
    for row in range(n):
        segment = torch.zeros(length, dtype=torch.long)
        alone = torch.zeros(length, dtype=torch.bool)
        prefix, segments = row_segments(input_ids[row], answer_index[row].tolist(), answer_independent,
                                        image_token_id)
        for number, (begin, end, independent) in enumerate(segments, start=1):
            segment[begin:end] = number
            alone[begin:end] = independent
        end = segments[-1][1] if segments else prefix
        segment[end:] = len(segments) + 1  # tokens after the last answer (padding): a segment of their own
        same = segment[:, None] == segment[None, :]
        ordinary = ~alone[:, None] & ~alone[None, :]
        visible = causal & (same | (segment[None, :] == 0) | ordinary) & padding_mask[row].bool()[None, :]
        visible |= torch.eye(length, dtype=torch.bool)  # every token sees itself (no empty softmax rows)
        masks.append(visible)
        positions.append(visible.sum(-1) - 1)
    return torch.stack(masks)[:, None], torch.stack(positions)


@dataclass
class TurnLayout:
    """Where a batch's independent turns sit, so attention computes only what the segment mask
    lets through (``turn_attention.py``) instead of every (query, key) pair of the row.

    Flat token indices are ``row * L + position``. Turns are padded to ``Q`` tokens by repeating
    their last token, prefixes to ``P`` by repeating their last token; ``key_mask`` hides both.

    :meth:`without_padding` gives the layout of the same batch run padding-free: the language
    model then sees only the real tokens, one (1, R) row in row-major order, flat indices count
    those R tokens, and ``main_index`` gathers each row's main part back into an (N, M) block.
    """

    main_length: int  # every row's prefix and ordinary turns lie in positions [0, main_length): causal
    query_index: torch.Tensor  # (T, Q) flat index of each turn's tokens
    key_index: torch.Tensor  # (T, P + Q) its row's prefix tokens, then its own tokens
    key_mask: torch.Tensor  # (T, 1, Q, P + Q) True = may attend: the prefix, and its own tokens causally
    output_index: torch.Tensor  # (N * L,) per token: its row output (< N * L) or N * L + t * Q + i
    # padding-free only (without_padding): the (R,) real tokens' flat indices in the padded (N, L)
    # batch, that batch's shape, and (N, M) the flat index of each row's first M tokens
    token_index: torch.Tensor | None = None
    padded_shape: tuple[int, int] | None = None
    main_index: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "TurnLayout":
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)
                                if isinstance(getattr(self, f.name), torch.Tensor)})

    @property
    def padding_free(self) -> bool:
        return self.token_index is not None

    def without_padding(self, padding_mask: torch.Tensor) -> "TurnLayout":
        """This layout for the batch's real tokens only (``padding_mask`` (N, L), True = real): the
        language model's linear layers then skip the padding, which was 39% of the demo recipe's
        tokens. Every turn and every row's prefix and ordinary turns must be real tokens."""
        if self.padding_free:
            raise ValueError("this layout is already padding-free")
        n, length = padding_mask.shape
        device = self.output_index.device
        token_index = padding_mask.reshape(-1).to(device).nonzero()[:, 0]  # (R,)
        position = torch.full((n * length,), -1, dtype=torch.long, device=device)
        position[token_index] = torch.arange(len(token_index), device=device)
        m = self.main_length
        rows = torch.arange(n, device=device)[:, None] * length + torch.arange(m, device=device)[None]  # (N, M)
        # beyond a row's own main part: any real token (those outputs are never picked)
        main_index = position[rows].clamp(min=0)
        query_index, key_index = position[self.query_index], position[self.key_index]
        source = self.output_index[token_index]  # per real token: its output in the padded layout
        in_main = source < n * length
        output_index = torch.where(in_main, token_index // length * m + token_index % length,
                                   source - n * length + n * m)
        if (query_index < 0).any() or (key_index < 0).any() or (in_main & (token_index % length >= m)).any():
            raise ValueError("a turn or a row's main part lies in the padding: the padding mask does not fit this "
                             "layout")
        return replace(self, query_index=query_index, key_index=key_index, output_index=output_index,
                       token_index=token_index, padded_shape=(n, length), main_index=main_index)


def turn_layout(input_ids: torch.Tensor, answer_index: torch.Tensor, answer_independent: Sequence[bool],
                image_token_id: int) -> TurnLayout | None:
    """The :class:`TurnLayout` of a batch laid out as :func:`format_sequence` does (prefix, ordinary
    turns, independent turns); None when a row has an ordinary turn after an independent one or
    there is no independent turn (then only :func:`segment_mask` describes the batch)."""
    n, length = input_ids.shape
    turns, main_length = [], 1  # turns: (row, begin, end, prefix)
    for row in range(n):
        prefix, segments = row_segments(input_ids[row], answer_index[row].tolist(), answer_independent,
                                        image_token_id)
        main_end, seen_independent = prefix, False
        for begin, end, independent in segments:
            if independent:
                seen_independent = True
                turns.append((row, begin, end, prefix))
            elif seen_independent:
                return None
            else:
                main_end = end
        main_length = max(main_length, main_end)
    if not turns:
        return None
    q = max(end - begin for _, begin, end, _ in turns)
    p = max(prefix for *_, prefix in turns)
    query_index = torch.empty(len(turns), q, dtype=torch.long)
    key_index = torch.empty(len(turns), p + q, dtype=torch.long)
    key_mask = torch.zeros(len(turns), 1, q, p + q, dtype=torch.bool)
    output_index = torch.arange(n * length)
    offsets, causal = torch.arange(q), torch.ones(q, q, dtype=torch.bool).tril()
    for t, (row, begin, end, prefix) in enumerate(turns):
        size = end - begin
        query_index[t] = row * length + begin + offsets.clamp(max=size - 1)
        key_index[t, :p] = row * length + torch.arange(p).clamp(max=prefix - 1)
        key_index[t, p:] = query_index[t]
        key_mask[t, 0, :, :prefix] = True
        key_mask[t, 0, :, p:p + size] = causal[:, :size]
        output_index[row * length + begin:row * length + end] = n * length + t * q + offsets[:size]
    return TurnLayout(main_length, query_index, key_index, key_mask, output_index)


def causal_layout(padding_mask: torch.Tensor) -> TurnLayout:
    """The :class:`TurnLayout` of a right-padded batch without independent turns (``padding_mask``
    (N, L), True = real token): every row one causal conversation. Turn attention then gives the
    padded causal attention's outputs on every real token, and the batch can run padding-free
    (``TurnLayout.without_padding``) like one with independent turns."""
    n, length = padding_mask.shape
    no_turns = torch.zeros(0, 1, dtype=torch.long, device=padding_mask.device)
    return TurnLayout(max(1, int(padding_mask.sum(1).max())), no_turns, no_turns,
                      torch.zeros(0, 1, 1, 1, dtype=torch.bool, device=padding_mask.device),
                      torch.arange(n * length, device=padding_mask.device))


def attention_mask_for(mask: torch.Tensor, implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """A boolean 4D mask in the form the language model's attention takes: boolean for SDPA,
    additive (0 / dtype minimum) for the others, which add the mask to the scores."""
    if implementation in ("sdpa", TURN_ATTENTION):
        return mask
    return torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)


__all__ = ["TURN_ATTENTION", "TurnLayout", "attention_mask_for", "causal_layout", "format_sequence", "pairs_to_turns", "row_segments", "segment_mask",
           "split_pairs", "turn_layout"]
