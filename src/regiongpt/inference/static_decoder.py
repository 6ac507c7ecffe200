"""A static-cache decode path for :class:`~regiongpt.inference.decoder.SharedPrefixDecoder`.

The dynamic decoder grows each row's suffix KV by ``torch.cat`` every step and drops rows as
they finish, so every step has new shapes. This path keeps every tensor one decode step
touches at a fixed shape and address, so the whole step (32 layers of projections,
attention, MLP and the LM head) can be captured once in a CUDA graph and replayed:

* prefix KV of the chunk's images copied into per-layer buffers (P, Hkv, Lp, D) + lengths;
* per-row suffix KV buffers (B, Hkv, S, D) per layer, written in place at a per-row write
  index (``scatter_``), with a (B, S) mask of the slots that hold real tokens;
* the step's inputs (token ids, positions, which rows are alive) live in static buffers the
  host fills before each replay; rows that finished stay in the batch but stop advancing
  (their output is ignored), so shapes never change within a chunk;
* attention is :mod:`~regiongpt.inference.triton_attention`'s fused kernel on CUDA, or its
  PyTorch reference (the same math; used on the CPU and in the tests).

Capacities (rows, prefixes, prefix length, suffix length) are rounded up to buckets so one
captured graph serves many chunks; a few graphs are kept, least recently used dropped. A
graph's buffers belong to one chunk at a time (interleaved streams get their own).
Prefill of the prefixes and of the rows' prompts stays in the dynamic decoder (one pass each).
On the CPU the same step runs eagerly; it gives the dynamic decoder's logits (fp32, ~1e-6).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .decoder import PrefixKV, SharedPrefixDecoder, SuffixKV
from . import triton_attention as fused

ATTENTION_BACKENDS = ("auto", "triton", "torch", "none")


@dataclass(frozen=True)
class Capacity:
    """The fixed sizes of one set of static buffers (and of the graph captured on them)."""

    rows: int
    prefixes: int
    prefix_len: int
    suffix_len: int

    def fits(self, other: Capacity) -> bool:
        """Whether a chunk needing ``other`` (exact sizes) can run on buffers of this capacity
        without wasting rows (same row bucket: padded rows cost a full row of compute)."""
        return (self.rows == _pow2(other.rows) and self.prefixes >= other.prefixes
                and self.prefix_len >= other.prefix_len and self.suffix_len >= other.suffix_len)


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _round_up(n: int, step: int) -> int:
    return max(step, -(-n // step) * step)


def bucket_capacity(rows: int, prefixes: int, prefix_len: int, suffix_len: int) -> Capacity:
    """Buckets: rows and prefixes to powers of two, prefix length to a multiple of 128,
    suffix length to a power of two >= 16."""
    return Capacity(_pow2(rows), _pow2(max(prefixes, 1)), _round_up(prefix_len, 128), max(16, _pow2(suffix_len)))


class StaticBuffers:
    """Every tensor one decode step reads or writes, at fixed shapes and addresses.

    Zero-initialised: masked-out slots must hold finite values (weight 0 x NaN is NaN).
    """

    def __init__(self, capacity: Capacity, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device, block_rows: int):
        rows, prefixes = capacity.rows, capacity.prefixes
        self.capacity = capacity
        prefix_shape = (prefixes, kv_heads, capacity.prefix_len, head_dim)
        suffix_shape = (rows, kv_heads, capacity.suffix_len, head_dim)
        zeros = dict(dtype=dtype, device=device)
        self.prefix_keys = [torch.zeros(prefix_shape, **zeros) for _ in range(layers)]
        self.prefix_values = [torch.zeros(prefix_shape, **zeros) for _ in range(layers)]
        self.suffix_keys = [torch.zeros(suffix_shape, **zeros) for _ in range(layers)]
        self.suffix_values = [torch.zeros(suffix_shape, **zeros) for _ in range(layers)]
        longs = dict(dtype=torch.long, device=device)
        self.prefix_lengths = torch.zeros(prefixes, **longs)  # (P,)
        self.row_prefix = torch.full((rows,), -1, **longs)  # (B,) -1 = none
        self.suffix_valid = torch.zeros(rows, capacity.suffix_len, dtype=torch.bool, device=device)  # (B, S)
        self.write_index = torch.zeros(rows, **longs)  # (B,) suffix slot the next token goes to
        self.positions = torch.zeros(rows, **longs)  # (B,) absolute position of the next token
        self.tokens = torch.zeros(rows, **longs)  # (B,) the next token of each row
        self.alive = torch.zeros(rows, **longs)  # (B,) 1 while a row decodes, 0 after
        blocks = fused.max_row_blocks(rows, prefixes, block_rows)
        self.blocks = fused.plan_row_blocks([-1] * rows, block_rows, blocks, device)  # for the Triton kernel


class StaticDecoder:
    """Static-cache, fixed-shape decode steps over a :class:`SharedPrefixDecoder`'s model.

    ``attention``: ``"triton"`` (fused kernel), ``"torch"`` (reference), ``"none"`` (skip
    attention: the step's weight matmuls only, a benchmark yardstick) or ``"auto"`` (Triton
    on CUDA when installed, else PyTorch). ``cuda_graphs``: capture and replay the step
    (default: on CUDA, unless the rotary embedding is a dynamic one that cannot be captured).
    """

    def __init__(self, decoder: SharedPrefixDecoder, embed_tokens: nn.Module, attention: str = "auto",
                 cuda_graphs: bool | None = None, max_graphs: int = 4, block_rows: int | None = None):
        if attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, got {attention!r}")
        self.decoder = decoder
        self.embed_tokens = embed_tokens
        weight = embed_tokens.weight
        self.device, self.dtype = weight.device, weight.dtype
        on_cuda = self.device.type == "cuda"
        if attention == "auto":
            attention = "triton" if on_cuda and fused.triton_available() else "torch"
        self.attention = attention
        rope = str(getattr(decoder.lm.rotary_emb, "rope_type", "default"))
        self.cuda_graphs = on_cuda and "dynamic" not in rope if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and not on_cuda:
            raise ValueError("CUDA graphs need the model on a CUDA device")
        self.block_rows = block_rows or fused.block_rows_for(decoder.num_heads, decoder.num_kv_heads)
        self.max_graphs = max_graphs
        self._runners: list[_Runner] = []  # least recently used first
        suppress = decoder.suppress
        self._suppress = torch.tensor(suppress, dtype=torch.long, device=self.device) if suppress else None

    # ----- one decode step on fixed shapes (what the CUDA graph captures) ----------------------
    def step_on(self, buffers: StaticBuffers) -> torch.Tensor:  # (B, V) float32
        """Feed ``buffers.tokens`` at ``buffers.positions``; write their KV at the write index;
        return next-token logits and advance alive rows. No host syncs, no shape changes."""
        dec = self.decoder
        embeds = self.embed_tokens(buffers.tokens)[:, None]  # (B, 1, Dm)
        cos, sin = dec.lm.rotary_emb(embeds, position_ids=buffers.positions[:, None])
        slot = buffers.write_index[:, None]  # (B, 1)
        buffers.suffix_valid.scatter_(1, slot, True)
        index = slot[:, None, :, None].expand(-1, dec.num_kv_heads, 1, dec.head_dim)  # (B, Hkv, 1, D)
        hidden = embeds
        for layer_index, layer in enumerate(dec.lm.layers):
            q, k, v = dec._qkv(layer, layer.input_layernorm(hidden), cos, sin)  # (B, H|Hkv, 1, D)
            buffers.suffix_keys[layer_index].scatter_(2, index, k)
            buffers.suffix_values[layer_index].scatter_(2, index, v)
            attended = self._attend(q[:, :, 0], layer_index, buffers)  # (B, H, D)
            hidden = dec._finish_layer(layer, hidden, attended[:, :, None])
        logits = self._logits(hidden[:, 0])
        buffers.write_index.add_(buffers.alive)
        buffers.positions.add_(buffers.alive)
        return logits

    def _attend(self, q: torch.Tensor, layer: int, buffers: StaticBuffers) -> torch.Tensor:  # (B, H, D)
        scale = self.decoder.scaling
        args = (buffers.prefix_keys[layer], buffers.prefix_values[layer], buffers.prefix_lengths)
        suffix = (buffers.suffix_keys[layer], buffers.suffix_values[layer], buffers.suffix_valid)
        if self.attention == "triton":
            return fused.shared_prefix_attention_triton(q, *args, *suffix, scale, buffers.blocks)
        if self.attention == "torch":
            return fused.shared_prefix_attention_reference(q, *args, buffers.row_prefix, *suffix, scale)
        return q  # "none": the same step without attention (weight matmuls only)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, V) float32
        """The dynamic decoder's ``logits`` with a device index for the suppressed tokens
        (a Python list index would copy host memory inside a graph capture)."""
        logits = self.decoder.lm_head(self.decoder.lm.norm(hidden)).float()
        if self._suppress is not None:
            logits.index_fill_(-1, self._suppress, torch.finfo(logits.dtype).min)
        return logits

    # ----- chunks -------------------------------------------------------------------------------
    @torch.no_grad()
    def begin(self, prefixes: Sequence[PrefixKV], row_prefix: torch.Tensor, suffix: SuffixKV,
              next_position: torch.Tensor, max_steps: int) -> DecodeSession:
        """Load a prefilled chunk into static buffers; returns a session to step it.

        ``prefixes`` the chunk's prefix KV, ``row_prefix`` (B,) index into them (-1 = none),
        ``suffix`` the rows' prompt KV from the dynamic prefill (B, Hkv, Ls, D) per layer,
        ``next_position`` (B,) position of each row's next token, ``max_steps`` the most
        decode steps any row will take. Only the prefixes some row uses are copied in.
        """
        prefixes, row_prefix = _used_prefixes(prefixes, row_prefix)
        rows, prompt_len = suffix.valid.shape
        needed = Capacity(rows, len(prefixes), max([p.length for p in prefixes], default=0),
                          prompt_len + max_steps)
        runner = self._runner(needed)
        runner.load(prefixes, row_prefix, suffix, next_position, self.block_rows)
        session = DecodeSession(runner, rows, prompt_len)
        runner.owner = weakref.ref(session)  # busy until the session is gone
        return session

    def _runner(self, needed: Capacity) -> _Runner:
        """A free cached runner (buffers + graph) that fits ``needed``, or a new one (dropping
        the least recently used free ones beyond ``max_graphs``)."""
        for runner in self._runners:
            if runner.free and runner.buffers.capacity.fits(needed):
                self._runners.remove(runner)
                self._runners.append(runner)
                return runner
        idle = [r for r in self._runners if r.free]
        while len(self._runners) >= self.max_graphs and idle:
            self._runners.remove(idle.pop(0))
        capacity = bucket_capacity(needed.rows, needed.prefixes, needed.prefix_len, needed.suffix_len)
        dec = self.decoder
        buffers = StaticBuffers(capacity, dec.num_layers, dec.num_kv_heads, dec.head_dim, self.dtype, self.device,
                                self.block_rows)
        runner = _Runner(self.step_on, buffers, self.cuda_graphs)
        self._runners.append(runner)
        return runner


def _used_prefixes(prefixes: Sequence[PrefixKV], row_prefix: torch.Tensor) -> tuple[list[PrefixKV], torch.Tensor]:
    """The prefixes the rows use, in order, and ``row_prefix`` renumbered to match (a chunk
    may hold a few of many images: copying only theirs bounds the prefix buffers)."""
    ids = row_prefix.tolist()
    used = sorted({p for p in ids if p >= 0})
    renumber = {p: i for i, p in enumerate(used)}
    local = torch.tensor([renumber.get(p, -1) for p in ids], dtype=torch.long, device=row_prefix.device)
    return [prefixes[p] for p in used], local


class _Runner:
    """Static buffers and the step on them: captured in a CUDA graph, or run eagerly."""

    def __init__(self, step: Callable[[StaticBuffers], torch.Tensor], buffers: StaticBuffers, cuda_graphs: bool,
                 warmup: int = 2):
        self.step = step
        self.buffers = buffers
        self.graph = None
        self.logits = None
        self.owner: weakref.ref | None = None  # the session decoding on these buffers
        if cuda_graphs:
            self._capture(warmup)

    @property
    def free(self) -> bool:
        return self.owner is None or self.owner() is None

    @torch.no_grad()
    def _capture(self, warmup: int) -> None:
        """Warm up on a side stream (Triton compiles, cuBLAS picks kernels), then capture.
        The buffers hold zeros (no row alive): the steps only write garbage that ``load``
        resets."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                self.step(self.buffers)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self.step(self.buffers)

    def run(self) -> torch.Tensor:  # (B_cap, V)
        if self.graph is None:
            return self.step(self.buffers)
        self.graph.replay()
        return self.logits

    def load(self, prefixes: Sequence[PrefixKV], row_prefix: torch.Tensor, suffix: SuffixKV,
             next_position: torch.Tensor, block_rows: int) -> None:
        """Copy a chunk's prefixes and prefilled rows in; reset every per-row buffer."""
        b = self.buffers
        rows, prompt_len = suffix.valid.shape
        b.prefix_lengths.zero_()
        for p, kv in enumerate(prefixes):
            b.prefix_lengths[p] = kv.length
            for layer in range(len(b.prefix_keys)):
                b.prefix_keys[layer][p, :, : kv.length].copy_(kv.keys[layer])
                b.prefix_values[layer][p, :, : kv.length].copy_(kv.values[layer])
        for layer in range(len(b.suffix_keys)):
            b.suffix_keys[layer][:rows, :, :prompt_len].copy_(suffix.keys[layer])
            b.suffix_values[layer][:rows, :, :prompt_len].copy_(suffix.values[layer])
        b.suffix_valid.zero_()
        b.suffix_valid[:rows, :prompt_len].copy_(suffix.valid)
        b.row_prefix.fill_(-1)
        b.row_prefix[:rows].copy_(row_prefix)
        b.write_index.zero_()
        b.write_index[:rows] = prompt_len
        b.positions.zero_()
        b.positions[:rows].copy_(next_position)
        b.tokens.zero_()
        b.alive.zero_()
        plan = fused.plan_row_blocks(b.row_prefix.tolist(), block_rows, b.blocks.rows.shape[0], b.row_prefix.device)
        b.blocks.rows.copy_(plan.rows)
        b.blocks.prefix.copy_(plan.prefix)


class DecodeSession:
    """One chunk being decoded on static buffers: feed tokens, get logits."""

    def __init__(self, runner: _Runner, rows: int, prompt_len: int):
        self.runner = runner
        self.rows = rows
        self.steps = 0  # decode steps run so far
        self._prompt_len = prompt_len
        capacity = runner.buffers.capacity.rows
        self._tokens = torch.zeros(capacity, dtype=torch.long)  # host copies of the step's inputs
        self._alive = torch.zeros(capacity, dtype=torch.long)
        self._index_key: tuple[int, ...] | None = None
        self._index: torch.Tensor | None = None

    @torch.no_grad()
    def step(self, rows: Sequence[int], tokens: torch.Tensor) -> torch.Tensor:  # (len(rows), V)
        """Feed ``tokens`` (len(rows),) to the chunk's rows ``rows`` (the rows still alive,
        increasing); returns their next-token logits. Other rows are finished."""
        buffers = self.runner.buffers
        self._alive.zero_()
        self._alive[list(rows)] = 1
        self._tokens[list(rows)] = tokens.to(torch.long).cpu()
        buffers.tokens.copy_(self._tokens)  # blocking: the host buffers are reused next step
        buffers.alive.copy_(self._alive)
        logits = self.runner.run()
        self.steps += 1
        return logits[self._rows_index(rows)]

    def _rows_index(self, rows: Sequence[int]) -> torch.Tensor | slice:
        key = tuple(rows)
        if key == tuple(range(len(key))):
            return slice(0, len(key))
        if key != self._index_key:  # rows change only when some finish: one small copy then
            self._index_key = key
            self._index = torch.tensor(key, dtype=torch.long).to(self.runner.buffers.tokens.device)
        return self._index

    def suffix_kv(self) -> SuffixKV:
        """The rows' suffix KV so far (views of the static buffers, valid until the next chunk):
        the prompt tokens and every fed token, as the dynamic decoder's cache holds them (rows
        that finished early hold one extra, unused slot)."""
        buffers = self.runner.buffers
        length = self._prompt_len + self.steps
        return SuffixKV([k[: self.rows, :, :length] for k in buffers.suffix_keys],
                        [v[: self.rows, :, :length] for v in buffers.suffix_values],
                        buffers.suffix_valid[: self.rows, :length])
