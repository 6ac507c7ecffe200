"""The inference engine: many questions about many images, each image encoded once, each
image's shared prompt prefix prefilled once, all questions decoded together.

The engine works on token ids and tensors only (it knows nothing of tokenisation): callers
give each request's full prompt ids (placeholders already expanded by the processor), the
image it is about and, for each ``<region>`` token of the prompt, the region it stands for.
The shared prefix of an image's requests is found as their longest common prefix (comparing
region placeholders by the region they stand for), so answers equal running each prompt
alone. Results stream as :class:`TokenEvent` s; :meth:`Engine.generate` collects them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from .decoder import PrefixKV, SharedPrefixDecoder, SuffixKV, supports
from .sampling import next_tokens

DECODERS = ("auto", "dynamic", "static")


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Request:
    """One prompt: full token ids, its image (index into the batch's images) and its regions."""

    input_ids: Sequence[int]
    image: int | None = None
    regions: Sequence[int] = ()  # region index (into the batch's regions) of each <region> token, in order
    sampling: SamplingParams = field(default_factory=SamplingParams)


@dataclass
class VisualInputs:
    """The images and regions a batch of requests refers to (as the processor returns them)."""

    pixel_values: torch.Tensor  # (N, 3, S, S)
    region_masks: torch.Tensor | None = None  # (R, S, S)
    region_boxes: torch.Tensor | None = None  # (R, 4)
    region_image_index: torch.Tensor | None = None  # (R,)
    # (R,) each region's number (<regionK> is K-1) where it is not its position among its image's
    # regions: a question that lists them in another order (models with region_number_embedding)
    region_numbers: torch.Tensor | None = None


@dataclass(frozen=True)
class TokenEvent:
    request: int
    token_id: int
    logprob: float
    finish_reason: str | None = None  # None while the request goes on; "stop" or "length" at its end


@dataclass
class Completion:
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None

    @property
    def score(self) -> float:
        """Log-likelihood of the answer under the model."""
        return float(sum(self.logprobs))


StopCheck = Callable[[int, list[int]], bool]


@dataclass
class ConversationState:
    """What a conversation keeps between turns: its image encoding and the KV of everything
    said so far, so the next turn prefills only its new tokens."""

    vision: object = None
    region_embeds: torch.Tensor | None = None
    ids: list[int] = field(default_factory=list)  # tokens whose KV is in ``kv``
    regions: list[int] = field(default_factory=list)  # region of each <region> token in ``ids``
    kv: PrefixKV | None = None
    prefilled_tokens: int = 0  # tokens run through the model over the conversation (for tests and stats)


class Engine:
    """Batched multi-region generation over a RegionGPT model.

    ``max_rows`` bounds how many questions decode together (a memory budget); more are
    processed in chunks that reuse the same image encodings and prefix KV.

    ``decoder`` picks the decode loop of Llama-family models: ``"dynamic"`` (the KV cache
    grows by concatenation; plain PyTorch), ``"static"`` (preallocated KV written in place,
    fixed shapes: captured in CUDA graphs with the fused Triton attention kernel on CUDA, run
    eagerly with the same math in PyTorch elsewhere; see ``static_decoder``) or ``"auto"``
    (static on CUDA, dynamic otherwise). Both give the same answers.
    """

    def __init__(self, model, max_rows: int = 64, decoder: str = "auto"):
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        self.model = model.eval()
        self.max_rows = max_rows
        lm = model.model.language_model
        self.decoder = (
            SharedPrefixDecoder(lm, model.lm_head, (model.config.region_token_id,)) if supports(lm) else None
        )
        self.static_decoder = None
        if self.decoder is not None and (decoder == "static" or decoder == "auto" and model.device.type == "cuda"):
            from .static_decoder import StaticDecoder  # imports Triton when installed: only when used

            self.static_decoder = StaticDecoder(self.decoder, model.get_input_embeddings())

    @property
    def decode_path(self) -> str:
        """Which decode loop runs: "static", "dynamic" or "fallback" (transformers generate)."""
        if self.decoder is None:
            return "fallback"
        return "static" if self.static_decoder is not None else "dynamic"

    @property
    def uses_shared_prefix(self) -> bool:
        return self.decoder is not None

    def generate(self, requests: Sequence[Request], visual: VisualInputs | None = None,
                 should_stop: StopCheck | None = None, seed: int | None = None) -> list[Completion]:
        """All completions, in request order."""
        completions = [Completion() for _ in requests]
        for event in self.stream(requests, visual, should_stop, seed):
            completion = completions[event.request]
            completion.token_ids.append(event.token_id)
            completion.logprobs.append(event.logprob)
            completion.finish_reason = event.finish_reason
        return completions

    @torch.no_grad()
    def stream(self, requests: Sequence[Request], visual: VisualInputs | None = None,
               should_stop: StopCheck | None = None, seed: int | None = None) -> Iterator[TokenEvent]:
        """Token events as they are decoded, interleaved across requests.

        ``should_stop(request, token_ids)`` lets a caller end a request early (stop strings);
        the token that triggered it is the request's last.
        """
        if not requests:
            return
        generator = torch.Generator(device="cpu").manual_seed(seed) if seed is not None else None
        vision, region_embeds = self._encode_visual(visual)
        self._check(requests, vision, region_embeds)
        if self.decoder is None:
            yield from self._fallback(requests, vision, region_embeds, should_stop, generator)
            return
        prefixes, prefix_of, prefix_len, order = self._prefill_prefixes(requests, vision, region_embeds)
        for start in range(0, len(order), self.max_rows):  # decode in chunks of at most max_rows rows
            chunk = order[start : start + self.max_rows]
            yield from self._decode_chunk(chunk, requests, prefixes, prefix_of, prefix_len, vision, region_embeds,
                                          should_stop, generator)

    @torch.no_grad()
    def score(self, requests: Sequence[Request], candidates: Sequence[Sequence[Sequence[int]]],
              visual: VisualInputs | None = None) -> list[list[float]]:
        """Log-likelihood of each candidate continuation (token ids) of each request's prompt:
        ``result[i][c] = log p(candidates[i][c] | request i)``. Used for per-category scores."""
        rows: list[Request] = []
        spans: list[tuple[int, int, int]] = []  # (request, candidate, length)
        for i, (request, options) in enumerate(zip(requests, candidates)):
            for c, option in enumerate(options):
                if not option:
                    raise ValueError(f"request {i}: candidate {c} is empty")
                rows.append(Request(list(request.input_ids) + list(option), request.image, request.regions))
                spans.append((i, c, len(option)))
        if not rows:
            return [[] for _ in requests]
        vision, region_embeds = self._encode_visual(visual)
        self._check(rows, vision, region_embeds)
        out = [[0.0] * len(options) for options in candidates]
        if self.decoder is None:
            for (i, c, length), row in zip(spans, rows):
                out[i][c] = self._score_plain(row, length, vision, region_embeds)
            return out
        # the prompt's last token must stay in each row's suffix: its logits predict the candidate
        prefixes, prefix_of, prefix_len, order = self._prefill_prefixes(rows, vision, region_embeds,
                                                                        keep_last=[s[2] + 1 for s in spans])
        for start in range(0, len(order), self.max_rows):
            chunk = order[start : start + self.max_rows]
            logits, suffix_ids = self._run_suffixes(chunk, rows, prefixes, prefix_of, prefix_len, vision,
                                                    region_embeds, all_logits=True)
            logprobs = torch.log_softmax(logits, dim=-1)  # (B, L, V), left-padded
            for r, i in enumerate(chunk):
                request, candidate, length = spans[i]
                ids = torch.tensor(suffix_ids[r][-length:])
                predicted = logprobs[r, -length - 1 : -1]  # positions that predict the candidate tokens
                out[request][candidate] = float(predicted.gather(1, ids[:, None]).sum())
        return out

    # ----- pieces ---------------------------------------------------------------------------
    def _check(self, requests, vision, region_embeds) -> None:
        n_images = 0 if vision is None else vision.image_embeds.shape[0]
        n_regions = 0 if region_embeds is None else region_embeds.shape[0]
        region_id = self.model.config.region_token_id
        for i, request in enumerate(requests):
            if request.image is not None and not 0 <= request.image < n_images:
                raise ValueError(f"request {i} refers to image {request.image} but {n_images} image(s) were given")
            if len(request.input_ids) == 0:
                raise ValueError(f"request {i} has an empty prompt")
            if _count(request.input_ids, region_id) != len(request.regions):
                raise ValueError(f"request {i}: its prompt has {_count(request.input_ids, region_id)} region tokens "
                                 f"but {len(request.regions)} region indices")
            bad = [r for r in request.regions if not 0 <= r < n_regions]
            if bad:
                raise ValueError(f"request {i} refers to region index {bad[0]} but {n_regions} region(s) were given")

    def _embed(self, ids: list[int], image: int | None, regions: list[int], vision, region_embeds) -> torch.Tensor:
        """(L, D) embeddings of ``ids`` with image and region features in place."""
        model = self.model
        input_ids = torch.tensor([ids], dtype=torch.long, device=model.device)
        embeds = model.get_input_embeddings()(input_ids)
        has_image = bool((input_ids == model.config.image_token_id).any())
        image_embeds = vision.image_embeds[image : image + 1] if has_image else None
        index = torch.tensor(regions, dtype=torch.long, device=model.device)
        return model.model.merge_embeddings(input_ids, embeds, image_embeds, region_embeds, index)[0]

    @torch.no_grad()
    def converse(self, state: ConversationState, request: Request, visual: VisualInputs | None = None,
                 should_stop: StopCheck | None = None, seed: int | None = None) -> Iterator[TokenEvent]:
        """One turn of a conversation: reuses ``state`` (image encoding and the KV of every
        earlier token the new prompt starts with) and updates it with this turn's tokens."""
        if self.decoder is None:
            raise RuntimeError("conversation KV reuse needs a Llama-family language model")
        if state.vision is None and visual is not None:
            state.vision, state.region_embeds = self._encode_visual(visual)
        self._check([request], state.vision, state.region_embeds)
        generator = torch.Generator(device="cpu").manual_seed(seed) if seed is not None else None
        region_id = self.model.config.region_token_id
        # reuse the longest stretch of earlier KV this prompt starts with
        known = Request(state.ids + [-1], request.image, state.regions)  # -1: never matches
        common = _common_prefix_length([known, request], region_id) if state.ids else 0
        common = min(common, len(request.input_ids) - 1)
        kv = _truncate(state.kv, common) if common else None
        new_ids = list(request.input_ids[common:-1])
        if new_ids:  # extend the conversation's KV with this prompt's new tokens (all but the last)
            n_before = _count(request.input_ids[:common], region_id)
            n_new = _count(new_ids, region_id)
            embeds = self._embed(new_ids, request.image, list(request.regions[n_before : n_before + n_new]),
                                 state.vision, state.region_embeds)
            kv = self._extend(kv, embeds, common)
            state.prefilled_tokens += len(new_ids)
        length = len(request.input_ids) - 1
        prefixes = [kv]
        result = yield from self._decode_chunk([0], [request], prefixes, {0: 0}, {0: length}, state.vision,
                                               state.region_embeds, should_stop, generator,
                                               generated_out=(generated := []))
        # the cache now holds the prompt's last token and every generated token but the last
        fed = len(generated)
        state.prefilled_tokens += fed
        cache = result[0]
        state.kv = _append(kv, [k[0, :, :fed] for k in cache.keys], [v[0, :, :fed] for v in cache.values])
        state.ids = list(request.input_ids) + generated[:-1]
        state.regions = list(request.regions)

    def _extend(self, kv: PrefixKV | None, embeds: torch.Tensor, start: int) -> PrefixKV:
        """``kv`` grown by a causal pass over ``embeds`` (L, D) at positions start.."""
        decoder = self.decoder
        length = embeds.shape[0]
        device = embeds.device
        cache = SuffixKV.empty(decoder.num_layers, 1, decoder.num_kv_heads, decoder.head_dim, embeds)
        positions = torch.arange(start, start + length, device=device)[None]
        valid = torch.ones(1, length, dtype=torch.bool, device=device)
        prefixes = [kv] if kv is not None else []
        row_prefix = torch.zeros(1, dtype=torch.long, device=device) if kv is not None else torch.full((1,), -1, device=device)
        _, cache = decoder.step(embeds[None], valid, positions, prefixes, row_prefix, cache)
        return _append(kv, [k[0] for k in cache.keys], [v[0] for v in cache.values])

    def _encode_visual(self, visual: VisualInputs | None):
        """Image encodings and region embeddings, each computed once for the whole batch."""
        if visual is None:
            return None, None
        model = self.model
        device = model.device
        vision = model.encode_images(visual.pixel_values.to(device))
        region_embeds = None
        if visual.region_masks is not None and len(visual.region_masks):
            index = visual.region_image_index
            if index is None:
                index = torch.zeros(len(visual.region_masks), dtype=torch.long)
            boxes = None if visual.region_boxes is None else visual.region_boxes.to(device)
            region_embeds = model.encode_regions(vision, visual.region_masks, index.to(device), boxes,
                                                 visual.region_numbers)
        return vision, region_embeds

    def _prefill_prefixes(self, requests, vision, region_embeds, keep_last: Sequence[int] | None = None):
        """One prefix per image: the longest common prefix of its requests, prefilled once.

        ``keep_last[i]`` tokens of request i are kept out of the prefix. Returns the prefixes,
        each request's prefix index and length, and the requests grouped by image.
        """
        region_id = self.model.config.region_token_id
        groups: dict[int | None, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(request.image, []).append(i)
        prefixes: list[PrefixKV] = []
        prefix_of: dict[int, int] = {}
        prefix_len: dict[int, int] = {}
        for image, members in groups.items():
            length = _common_prefix_length([requests[i] for i in members], region_id)
            if keep_last is not None:
                length = min([length] + [len(requests[i].input_ids) - keep_last[i] for i in members])
            length = max(length, 0)
            first = requests[members[0]]
            ids = list(first.input_ids[:length])
            n_regions = _count(ids, region_id)
            if length:
                embeds = self._embed(ids, image, list(first.regions[:n_regions]), vision, region_embeds)
                kv, _ = self.decoder.prefill_prefix(embeds[None])
            else:
                kv = None
            for i in members:
                prefix_of[i] = len(prefixes)
                prefix_len[i] = length
            prefixes.append(kv)
        order = [i for members in groups.values() for i in members]
        return prefixes, prefix_of, prefix_len, order

    def _run_suffixes(self, chunk, requests, prefixes, prefix_of, prefix_len, vision, region_embeds,
                      all_logits: bool = False):
        """Prefill every row's own tokens (left-padded) against its prefix; returns logits and the state."""
        model = self.model
        device = model.device
        region_id = model.config.region_token_id
        suffixes, suffix_ids = [], []
        for i in chunk:
            request = requests[i]
            ids = list(request.input_ids[prefix_len[i]:])
            skipped = _count(request.input_ids[: prefix_len[i]], region_id)
            suffix_ids.append(ids)
            suffixes.append(self._embed(ids, request.image, list(request.regions[skipped:]), vision, region_embeds))
        longest = max(len(s) for s in suffixes)
        dim = suffixes[0].shape[-1]
        rows = len(chunk)
        embeds = suffixes[0].new_zeros(rows, longest, dim)
        valid = torch.zeros(rows, longest, dtype=torch.bool, device=device)
        positions = torch.zeros(rows, longest, dtype=torch.long, device=device)
        for r, (i, s) in enumerate(zip(chunk, suffixes)):
            embeds[r, longest - len(s):] = s  # left padding
            valid[r, longest - len(s):] = True
            positions[r, longest - len(s):] = torch.arange(prefix_len[i], prefix_len[i] + len(s), device=device)
        decoder = self.decoder
        cache = SuffixKV.empty(decoder.num_layers, rows, decoder.num_kv_heads, decoder.head_dim, embeds)
        active = [p for p in prefixes if p is not None]
        remap = {id(p): k for k, p in enumerate(active)}
        row_prefix = torch.tensor([remap.get(id(prefixes[prefix_of[i]]), -1) for i in chunk], device=device)
        logits, cache = decoder.step(embeds, valid, positions, active, row_prefix, cache, all_logits=all_logits)
        if all_logits:
            return logits, suffix_ids
        return logits, (cache, row_prefix, positions[:, -1] + 1, active)

    def _decode_chunk(self, chunk, requests, prefixes, prefix_of, prefix_len, vision, region_embeds,
                      should_stop, generator, generated_out: list | None = None) -> Iterator[TokenEvent]:
        model = self.model
        device = model.device
        logits, (cache, row_prefix, next_position, prefixes) = self._run_suffixes(
            chunk, requests, prefixes, prefix_of, prefix_len, vision, region_embeds)
        rows = len(chunk)
        decoder = self.decoder
        params = [requests[i].sampling for i in chunk]
        temperature = torch.tensor([p.temperature for p in params], dtype=torch.float32)
        top_p = torch.tensor([p.top_p for p in params], dtype=torch.float32)
        alive = list(range(rows))  # rows of the chunk still decoding, in cache order
        generated = [[] for _ in chunk]
        if generated_out is not None:
            generated[0] = generated_out  # the caller sees the first row's tokens
        embed_tokens = model.get_input_embeddings()
        session = None  # the static decoder's state, made at the first decode step
        while True:
            tokens, logprobs = _choose(logits, temperature[alive], top_p[alive], generator)
            keep = []
            for slot, r in enumerate(alive):
                token = int(tokens[slot])
                generated[r].append(token)
                reason = None
                if token in params[r].stop_token_ids:
                    reason = "stop"
                elif should_stop is not None and should_stop(chunk[r], generated[r]):
                    reason = "stop"
                elif len(generated[r]) >= params[r].max_new_tokens:
                    reason = "length"
                yield TokenEvent(chunk[r], token, float(logprobs[slot]), reason)
                if reason is None:
                    keep.append(slot)
            if not keep:
                return (cache if session is None else session.suffix_kv()), prefixes, row_prefix
            if self.static_decoder is not None:  # fixed shapes: finished rows stay, marked not alive
                if session is None:
                    steps = max(p.max_new_tokens for p in params) - 1
                    session = self.static_decoder.begin(prefixes, row_prefix, cache, next_position, steps)
                alive = [alive[s] for s in keep]
                logits = session.step(alive, tokens[keep])
                continue
            if len(keep) < len(alive):
                index = torch.tensor(keep, device=device)
                cache = SuffixKV([k[index] for k in cache.keys], [v[index] for v in cache.values], cache.valid[index])
                row_prefix = row_prefix[index]
                next_position = next_position[index]
                tokens = tokens[keep]
                alive = [alive[s] for s in keep]
            new = embed_tokens(tokens.to(device))[:, None]
            ones = torch.ones(len(alive), 1, dtype=torch.bool, device=device)
            logits, cache = decoder.step(new, ones, next_position[:, None], prefixes, row_prefix, cache)
            next_position = next_position + 1

    def _score_plain(self, row: Request, length: int, vision, region_embeds) -> float:
        """Candidate log-likelihood with a plain forward (language models without the Llama structure)."""
        embeds = self._embed(list(row.input_ids), row.image, list(row.regions), vision, region_embeds)
        logits = self.model(inputs_embeds=embeds[None]).logits[0].float()
        logprobs = torch.log_softmax(logits[-length - 1 : -1], dim=-1)
        ids = torch.tensor(list(row.input_ids[-length:]), device=logprobs.device)
        return float(logprobs.gather(1, ids[:, None]).sum())

    def _fallback(self, requests, vision, region_embeds, should_stop, generator) -> Iterator[TokenEvent]:
        """Any other language model: transformers' generate on the merged embeddings, one request at a time."""
        model = self.model
        for i, request in enumerate(requests):
            embeds = self._embed(list(request.input_ids), request.image, list(request.regions), vision, region_embeds)
            params = request.sampling
            out = model.generate(
                inputs_embeds=embeds[None], attention_mask=torch.ones(1, len(embeds), dtype=torch.long),
                max_new_tokens=params.max_new_tokens, do_sample=params.temperature > 0,
                temperature=params.temperature or None, top_p=params.top_p,
                eos_token_id=list(params.stop_token_ids) or None, output_scores=True, return_dict_in_generate=True,
            )
            tokens = out.sequences[0].tolist()
            generated = []
            for step, token in enumerate(tokens):
                logprob = float(torch.log_softmax(out.scores[step][0].float(), -1)[token])
                generated.append(token)
                reason = None
                if token in params.stop_token_ids or (should_stop is not None and should_stop(i, generated)):
                    reason = "stop"
                elif step == len(tokens) - 1:
                    reason = "length"
                yield TokenEvent(i, token, logprob, reason)
                if reason:
                    break


def _choose(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
            generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``next_tokens`` on the host: greedy-only batches pick on the logits' device and copy
    only the chosen ids and log-probabilities (not (B, V) logits); sampling stays on the host
    (its generator is a CPU one, for reproducible seeds)."""
    if bool((temperature > 0).any()):
        logits = logits.cpu()
    tokens, logprobs = next_tokens(logits, temperature, top_p, generator)
    return tokens.cpu(), logprobs.cpu()


def _append(kv: PrefixKV | None, keys: list[torch.Tensor], values: list[torch.Tensor]) -> PrefixKV:
    """``kv`` followed by per-layer (Hkv, L, D) keys and values (always new storage: the
    inputs may be views of buffers the static decoder reuses)."""
    length = keys[0].shape[1]
    if kv is None:
        return PrefixKV([k.clone() for k in keys], [v.clone() for v in values], length)
    return PrefixKV([torch.cat([a, b], dim=1) for a, b in zip(kv.keys, keys)],
                    [torch.cat([a, b], dim=1) for a, b in zip(kv.values, values)], kv.length + length)


def _truncate(kv: PrefixKV | None, length: int) -> PrefixKV | None:
    if kv is None:
        return None
    return PrefixKV([k[:, :length] for k in kv.keys], [v[:, :length] for v in kv.values], length)


def _count(ids: Sequence[int], token_id: int) -> int:
    return sum(1 for t in ids if t == token_id)


def _common_prefix_length(requests: list[Request], region_token_id: int) -> int:
    """Longest common prefix (region tokens equal only if they stand for the same region),
    leaving every request at least one token of its own."""
    limit = min(len(r.input_ids) for r in requests) - 1
    first = requests[0]
    seen_regions = 0
    counters = [0] * len(requests)
    for position in range(limit):
        token = first.input_ids[position]
        for k, request in enumerate(requests):
            if request.input_ids[position] != token:
                return position
            if token == region_token_id:
                if request.regions[counters[k]] != first.regions[seen_regions]:
                    return position
        if token == region_token_id:
            seen_regions += 1
            counters = [c + 1 for c in counters]
    return max(limit, 0)
