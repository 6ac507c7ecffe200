"""Shared-prefix decode attention: one new query token per row, exact, in two forms.

Every row (one question) attends to its image's prompt prefix, stored once per image, and to
its own suffix (its question tokens and the tokens it has generated so far). Both forms below
compute, per row and head, a partial attention state over the prefix and one over the
suffix, then merge them by log-sum-exp — the same result as one softmax over
``[prefix; suffix]`` (Hydragen / FlashInfer "cascade" attention):

* :func:`shared_prefix_attention_reference` — plain PyTorch, fixed shapes (no ``nonzero``),
  so it also runs inside a CUDA graph. The CPU path and the tests use it.
* :func:`shared_prefix_attention_triton` — one Triton kernel per layer. A program handles a
  block of rows that share one prefix and one KV head: it reads that prefix's keys and
  values once for all the block's rows and heads of the group (tensor-core ``tl.dot``),
  then the rows' own suffixes (one tile of all the block's rows, masked block-diagonally),
  and writes the merged output. Rows are grouped into blocks by :func:`plan_row_blocks`
  once per decode chunk (the grouping does not change per step).
  :func:`compile_for_target` builds it for a GPU architecture without a GPU.

Shapes (B rows, H query heads, Hkv key/value heads, G = H / Hkv, D head size, P prefixes,
Lp prefix capacity, S suffix capacity):

    q                     (B, H, D)
    prefix keys / values  (P, Hkv, Lp, D)   prefix p holds real tokens [0, prefix_lengths[p])
    row_prefix            (B,)              prefix of each row, -1 = none
    suffix keys / values  (B, Hkv, S, D)
    suffix_valid          (B, S) bool       which suffix slots of a row hold real tokens
    output                (B, H, D)         in q's dtype; all-masked rows give zeros

Triton is optional (``pip install regiongpt[gpu]``); this module imports without it.
Set ``TRITON_INTERPRET=1`` before Triton is first imported to run the kernel on the CPU
(fp32 and fp16; the interpreter's ``tl.dot`` mis-handles bf16 operands).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

_TINY = torch.finfo(torch.float32).tiny
_NEG = -1e30  # running-max start value: finite, so exp(-inf - _NEG) = 0 and exp(_NEG - _NEG) = 1

# ----------------------------------------------------------------------------------------------
# the PyTorch reference
# ----------------------------------------------------------------------------------------------


def _partial_state(scores: torch.Tensor, visible: torch.Tensor, values: torch.Tensor, equation: str):
    """Unnormalised attention state over one key set: (acc, running max, sum of weights).

    scores (..., K) float32; visible broadcastable to scores; ``equation`` contracts the
    weights with ``values`` to (..., D). Keys that are not visible get weight 0 (even when
    the stale values behind them are garbage, as long as they are finite).
    """
    scores = scores.masked_fill(~visible, float("-inf"))
    top = scores.amax(dim=-1).clamp_min(_NEG)  # (...,), finite even when nothing is visible
    weights = torch.exp(scores - top[..., None])
    acc = torch.einsum(equation, weights, values)
    return acc, top, weights.sum(dim=-1)


def merge_states(a: tuple, b: tuple) -> torch.Tensor:
    """Normalised output of two partial states (acc, max, sum) merged by log-sum-exp."""
    acc_a, top_a, sum_a = a
    acc_b, top_b, sum_b = b
    top = torch.maximum(top_a, top_b)
    scale_a, scale_b = torch.exp(top_a - top), torch.exp(top_b - top)
    total = sum_a * scale_a + sum_b * scale_b
    acc = acc_a * scale_a[..., None] + acc_b * scale_b[..., None]
    return acc / total.clamp_min(_TINY)[..., None]  # nothing visible: 0 / tiny = 0


def shared_prefix_attention_reference(
    q: torch.Tensor,  # (B, H, D)
    prefix_keys: torch.Tensor,  # (P, Hkv, Lp, D)
    prefix_values: torch.Tensor,  # (P, Hkv, Lp, D)
    prefix_lengths: torch.Tensor,  # (P,) int
    row_prefix: torch.Tensor,  # (B,) int, -1 = no prefix
    suffix_keys: torch.Tensor,  # (B, Hkv, S, D)
    suffix_values: torch.Tensor,  # (B, Hkv, S, D)
    suffix_valid: torch.Tensor,  # (B, S) bool
    scale: float,
) -> torch.Tensor:  # (B, H, D)
    """Exact decode attention over each row's prefix and own suffix, in float32.

    The prefix part is one matmul per KV head of all rows against all prefixes laid end to
    end (each prefix read once), masked to the row's own prefix; with P prefixes it does P
    times the needed multiply-adds, which is cheap next to reading the keys for P small.
    """
    batch, heads, dim = q.shape
    n_prefix, kv_heads, capacity, _ = prefix_keys.shape
    qg = q.float().view(batch, kv_heads, heads // kv_heads, dim)  # (B, Hkv, G, D)
    # prefix: keys of every prefix end to end, (Hkv, P*Lp, D)
    keys = prefix_keys.float().permute(1, 0, 2, 3).reshape(kv_heads, n_prefix * capacity, dim)
    values = prefix_values.float().permute(1, 0, 2, 3).reshape(kv_heads, n_prefix * capacity, dim)
    slot = torch.arange(n_prefix * capacity, device=q.device)
    owner, position = slot // capacity, slot % capacity
    visible = (owner[None] == row_prefix[:, None]) & (position < prefix_lengths[owner])[None]  # (B, P*Lp)
    scores = torch.einsum("bhgd,hkd->bhgk", qg, keys) * scale  # (B, Hkv, G, P*Lp)
    prefix_state = _partial_state(scores, visible[:, None, None], values, "bhgk,hkd->bhgd")
    # suffix: each row's own keys, (B, Hkv, S, D)
    scores = torch.einsum("bhgd,bhsd->bhgs", qg, suffix_keys.float()) * scale  # (B, Hkv, G, S)
    suffix_state = _partial_state(scores, suffix_valid[:, None, None], suffix_values.float(), "bhgs,bhsd->bhgd")
    return merge_states(prefix_state, suffix_state).reshape(batch, heads, dim).to(q.dtype)


# ----------------------------------------------------------------------------------------------
# row blocks: which rows each Triton program handles
# ----------------------------------------------------------------------------------------------


@dataclass
class RowBlocks:
    """Rows grouped into blocks of at most ``block_rows`` rows sharing one prefix.

    rows (NB, block_rows) int32 row indices, -1 = empty slot; prefix (NB,) int32, -1 = none.
    Blocks past the used ones are all empty (a fixed NB lets a CUDA graph replay any plan).
    """

    rows: torch.Tensor
    prefix: torch.Tensor

    @property
    def block_rows(self) -> int:
        return self.rows.shape[1]


def block_rows_for(heads: int, kv_heads: int, block_m: int = 16) -> int:
    """Rows per program so a block's queries (rows x padded group) fill ``block_m`` >= 16 lanes
    (``tl.dot`` needs at least 16 rows)."""
    group = triton_next_power_of_2(heads // kv_heads)
    return max(1, max(block_m, 16) // group)


def max_row_blocks(rows: int, prefixes: int, block_rows: int) -> int:
    """Upper bound on the blocks :func:`plan_row_blocks` makes: each prefix group (and the
    no-prefix group) adds at most one partly filled block."""
    return math.ceil(rows / block_rows) + prefixes + 1


def plan_row_blocks(row_prefix: Sequence[int] | torch.Tensor, block_rows: int, num_blocks: int | None = None,
                    device: torch.device | str | None = None) -> RowBlocks:
    """Group rows by prefix into blocks; pad with empty blocks to ``num_blocks`` if given."""
    if isinstance(row_prefix, torch.Tensor):
        row_prefix = row_prefix.tolist()
    groups: dict[int, list[int]] = {}
    for row, prefix in enumerate(row_prefix):
        groups.setdefault(int(prefix), []).append(row)
    blocks, owners = [], []
    for prefix, members in groups.items():
        for start in range(0, len(members), block_rows):
            chunk = members[start : start + block_rows]
            blocks.append(chunk + [-1] * (block_rows - len(chunk)))
            owners.append(prefix)
    total = len(blocks) if num_blocks is None else num_blocks
    if len(blocks) > total:
        raise ValueError(f"{len(blocks)} row blocks do not fit in {total}")
    blocks += [[-1] * block_rows] * (total - len(blocks))
    owners += [-1] * (total - len(owners))
    rows = torch.tensor(blocks, dtype=torch.int32).reshape(total, block_rows)
    return RowBlocks(rows.to(device), torch.tensor(owners, dtype=torch.int32, device=device))


def triton_next_power_of_2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


# ----------------------------------------------------------------------------------------------
# the Triton kernel
# ----------------------------------------------------------------------------------------------

try:  # Triton is optional: the CPU path and the default install do without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None


def triton_available() -> bool:
    return triton is not None


if triton is not None:

    @triton.jit
    def _attend_tile(q, k, v, visible, top, total, acc, qk_scale, IEEE: tl.constexpr):
        """One online-softmax step: lanes q (M, BD) against a key tile k, v (N, BD) where
        ``visible`` (M, N); updates the running max ``top`` (M,) (base 2), sum of weights
        ``total`` (M,) and unnormalised output ``acc`` (M, BD)."""
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = tl.where(visible, s * qk_scale, float("-inf"))  # (M, N)
        new_top = tl.maximum(top, tl.max(s, 1))
        alpha = tl.exp2(top - new_top)
        p = tl.exp2(s - new_top[:, None])
        total = total * alpha + tl.sum(p, 1)
        if IEEE:
            pv = tl.dot(p, v, input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        return new_top, total, acc * alpha[:, None] + pv

    @triton.jit
    def _shared_prefix_decode_kernel(
        q_ptr, prefix_k_ptr, prefix_v_ptr, prefix_len_ptr, suffix_k_ptr, suffix_v_ptr, suffix_valid_ptr, out_ptr,
        block_rows_ptr, block_prefix_ptr,
        stride_qb, stride_qh,  # q (B, H, D), unit stride on D
        stride_pp, stride_ph, stride_pl,  # prefix keys and values (P, Hkv, Lp, D), unit stride on D
        stride_sb, stride_sh, stride_sl,  # suffix keys and values (B, Hkv, S, D), unit stride on D
        stride_vb,  # suffix_valid (B, S) as uint8, unit stride on S
        stride_ob, stride_oh,  # out (B, H, D), unit stride on D
        suffix_len, qk_scale,  # S; softmax scale * log2(e) (the kernel works in base 2)
        HEAD_DIM: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK_R: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, IEEE: tl.constexpr,
        EVEN: tl.constexpr,
    ):
        """Program (block of rows sharing a prefix, KV head): prefix pass + suffix pass + merge.

        Everything is 2-D over M = BLOCK_R x GROUP_PAD query lanes (lane m: row slot
        m // GROUP_PAD of the block, query head m % GROUP_PAD of the KV head's group), so both
        passes are tensor-core ``tl.dot`` s. The suffix pass loads BLOCK_S slots of every row
        of the block as one (BLOCK_R x BLOCK_S)-key tile and masks it block-diagonally (a lane
        sees only its own row's keys): BLOCK_R-fold wasted multiply-adds, which tensor cores
        absorb, in exchange for few registers and wide loads.

        EVEN: D == BLOCK_D and the prefix and suffix capacities are multiples of their tiles,
        so key loads need no masks (every loaded slot is in bounds; slots past a length or of
        an empty row are masked out of the scores instead, which needs finite values there).
        """
        block = tl.program_id(0)
        kv_head = tl.program_id(1)
        m = tl.arange(0, BLOCK_R * GROUP_PAD)
        d = tl.arange(0, BLOCK_D)
        d_ok = d < HEAD_DIM
        lane_slot = m // GROUP_PAD  # (M,) row slot of the block
        lane_group = m % GROUP_PAD
        lane_row = tl.load(block_rows_ptr + block * BLOCK_R + lane_slot)  # (M,) -1 = empty
        lane_ok = (lane_row >= 0) & (lane_group < GROUP)
        lane_row = tl.where(lane_row >= 0, lane_row, 0).to(tl.int64)  # 64-bit offsets: buffers can be large
        lane_head = kv_head * GROUP + lane_group
        q_mask = lane_ok[:, None] & d_ok[None, :]
        q = tl.load(q_ptr + lane_row[:, None] * stride_qb + lane_head[:, None] * stride_qh + d[None, :],
                    mask=q_mask, other=0.0)  # (M, BD)

        # ---- prefix pass: all the block's lanes against the shared prefix keys, read once
        prefix = tl.load(block_prefix_ptr + block)
        has_prefix = prefix >= 0
        prefix = tl.where(has_prefix, prefix, 0).to(tl.int64)
        prefix_len = tl.load(prefix_len_ptr + prefix, mask=has_prefix, other=0)
        top_p = tl.full((BLOCK_R * GROUP_PAD,), -1e30, tl.float32)
        sum_p = tl.zeros((BLOCK_R * GROUP_PAD,), tl.float32)
        acc_p = tl.zeros((BLOCK_R * GROUP_PAD, BLOCK_D), tl.float32)
        prefix_base = prefix * stride_pp + kv_head * stride_ph
        for start in range(0, prefix_len, BLOCK_N):
            n = start + tl.arange(0, BLOCK_N)
            n_ok = n < prefix_len
            offsets = prefix_base + n[:, None] * stride_pl + d[None, :]
            if EVEN:
                k = tl.load(prefix_k_ptr + offsets)  # (N, BD)
                v = tl.load(prefix_v_ptr + offsets)
            else:
                kv_mask = n_ok[:, None] & d_ok[None, :]
                k = tl.load(prefix_k_ptr + offsets, mask=kv_mask, other=0.0)
                v = tl.load(prefix_v_ptr + offsets, mask=kv_mask, other=0.0)
            top_p, sum_p, acc_p = _attend_tile(q, k, v, n_ok[None, :], top_p, sum_p, acc_p, qk_scale, IEEE)

        # ---- suffix pass: key lane j is slot start + j % BLOCK_S of row slot j // BLOCK_S
        j = tl.arange(0, BLOCK_R * BLOCK_S)
        key_slot = j // BLOCK_S
        key_row = tl.load(block_rows_ptr + block * BLOCK_R + key_slot)  # (NS,)
        key_ok = key_row >= 0
        key_row = tl.where(key_ok, key_row, 0).to(tl.int64)
        own = lane_slot[:, None] == key_slot[None, :]  # (M, NS) block-diagonal
        top_s = tl.full((BLOCK_R * GROUP_PAD,), -1e30, tl.float32)
        sum_s = tl.zeros((BLOCK_R * GROUP_PAD,), tl.float32)
        acc_s = tl.zeros((BLOCK_R * GROUP_PAD, BLOCK_D), tl.float32)
        any_row = tl.sum(lane_ok.to(tl.int32), 0) > 0
        suffix_end = tl.where(any_row, suffix_len, 0)
        suffix_base = key_row * stride_sb + kv_head * stride_sh
        for start in range(0, suffix_end, BLOCK_S):
            slot = start + j % BLOCK_S
            slot_ok = key_ok & (slot < suffix_len)
            valid = tl.load(suffix_valid_ptr + key_row * stride_vb + slot, mask=slot_ok, other=0) != 0  # (NS,)
            offsets = suffix_base[:, None] + slot[:, None] * stride_sl + d[None, :]
            if EVEN:
                k = tl.load(suffix_k_ptr + offsets)  # (NS, BD)
                v = tl.load(suffix_v_ptr + offsets)
            else:
                kv_mask = slot_ok[:, None] & d_ok[None, :]
                k = tl.load(suffix_k_ptr + offsets, mask=kv_mask, other=0.0)
                v = tl.load(suffix_v_ptr + offsets, mask=kv_mask, other=0.0)
            top_s, sum_s, acc_s = _attend_tile(q, k, v, own & valid[None, :], top_s, sum_s, acc_s, qk_scale, IEEE)

        # ---- merge the two states by log-sum-exp and write (M, D)
        top = tl.maximum(top_p, top_s)
        scale_p = tl.exp2(top_p - top)
        scale_s = tl.exp2(top_s - top)
        total = sum_p * scale_p + sum_s * scale_s
        total = tl.where(total > 0, total, 1.0)  # nothing visible: output 0
        out = (acc_p * scale_p[:, None] + acc_s * scale_s[:, None]) / total[:, None]
        out_offsets = lane_row[:, None] * stride_ob + lane_head[:, None] * stride_oh + d[None, :]
        tl.store(out_ptr + out_offsets, out.to(out_ptr.dtype.element_ty), mask=q_mask)


def shared_prefix_attention_triton(
    q: torch.Tensor,  # (B, H, D)
    prefix_keys: torch.Tensor,  # (P, Hkv, Lp, D)
    prefix_values: torch.Tensor,  # (P, Hkv, Lp, D)
    prefix_lengths: torch.Tensor,  # (P,) int
    suffix_keys: torch.Tensor,  # (B, Hkv, S, D)
    suffix_values: torch.Tensor,  # (B, Hkv, S, D)
    suffix_valid: torch.Tensor,  # (B, S) bool
    scale: float,
    blocks: RowBlocks,
    block_n: int = 64,
    block_s: int | None = None,
    num_warps: int = 4,
) -> torch.Tensor:  # (B, H, D)
    """The fused kernel: one launch for all rows and heads of one layer (see module doc).

    ``blocks`` comes from :func:`plan_row_blocks` with ``block_rows_for(H, Hkv)`` rows per
    block (or more, a power of two); it fixes which row shares which prefix. Shapes stay
    fixed across decode steps, so the launch can be captured in a CUDA graph. Tiles:
    ``block_n`` prefix keys, ``block_s`` suffix slots of each row (default: block_n / rows
    per block, so both passes use tiles of ``block_n`` keys).
    """
    if triton is None:
        raise RuntimeError("the fused attention kernel needs Triton: pip install 'regiongpt[gpu]'")
    batch, heads, dim = q.shape
    kv_heads = prefix_keys.shape[1]
    group = heads // kv_heads
    group_pad = triton_next_power_of_2(group)
    block_r = blocks.block_rows
    block_s = block_s or max(1, block_n // block_r)
    for name, n in (("rows per block", block_r), ("block_n", block_n), ("block_s", block_s)):
        if n & (n - 1):
            raise ValueError(f"{name} must be a power of two, got {n}")
    if min(block_r * group_pad, block_n, block_r * block_s) < 16:
        raise ValueError("tl.dot needs tiles of at least 16: raise the rows per block, block_n or block_s")
    for name, t in (("q", q), ("prefix_keys", prefix_keys), ("prefix_values", prefix_values),
                    ("suffix_keys", suffix_keys), ("suffix_values", suffix_values)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} needs a unit stride on its last dimension")
    if prefix_keys.stride() != prefix_values.stride() or suffix_keys.stride() != suffix_values.stride():
        raise ValueError("keys and values must have the same layout")
    valid = suffix_valid.view(torch.uint8) if suffix_valid.dtype == torch.bool else suffix_valid
    out = torch.empty((batch, heads, dim), dtype=q.dtype, device=q.device)
    block_d = max(16, triton_next_power_of_2(dim))
    grid = (blocks.rows.shape[0], kv_heads)
    _shared_prefix_decode_kernel[grid](
        q, prefix_keys, prefix_values, prefix_lengths, suffix_keys, suffix_values, valid, out,
        blocks.rows, blocks.prefix,
        q.stride(0), q.stride(1),
        prefix_keys.stride(0), prefix_keys.stride(1), prefix_keys.stride(2),
        suffix_keys.stride(0), suffix_keys.stride(1), suffix_keys.stride(2),
        valid.stride(0),
        out.stride(0), out.stride(1),
        suffix_keys.shape[2], scale * math.log2(math.e),
        HEAD_DIM=dim, GROUP=group, GROUP_PAD=group_pad, BLOCK_R=block_r,
        BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_S=block_s,
        IEEE=q.dtype == torch.float32, num_warps=num_warps,
        EVEN=dim == block_d and prefix_keys.shape[2] % block_n == 0 and suffix_keys.shape[2] % block_s == 0,
    )
    return out


def compile_for_target(dtype: str = "bf16", heads: int = 32, kv_heads: int = 32, head_dim: int = 128,
                       arch: int = 90, block_n: int = 64, num_warps: int = 4, even: bool = True):
    """Compile the kernel ahead of time for CUDA compute capability ``arch`` (no GPU needed:
    Triton's own ptxas) with the specialisation a real launch gets (16-aligned pointers,
    strides divisible by 16). Checks that it builds; ``.asm["cubin"]`` is the binary."""
    if triton is None:
        raise RuntimeError("needs Triton: pip install 'regiongpt[gpu]'")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = _shared_prefix_decode_kernel
    floats = {"q_ptr", "prefix_k_ptr", "prefix_v_ptr", "suffix_k_ptr", "suffix_v_ptr", "out_ptr"}
    types = {"prefix_len_ptr": "*i64", "suffix_valid_ptr": "*u8", "block_rows_ptr": "*i32",
             "block_prefix_ptr": "*i32", "qk_scale": "fp32"}
    signature = {name: ("*" + dtype if name in floats else types.get(name, "constexpr" if name.isupper() else "i32"))
                 for name in fn.arg_names}
    group = heads // kv_heads
    block_r = block_rows_for(heads, kv_heads)
    constants = dict(HEAD_DIM=head_dim, GROUP=group, GROUP_PAD=triton_next_power_of_2(group), BLOCK_R=block_r,
                     BLOCK_D=max(16, triton_next_power_of_2(head_dim)), BLOCK_N=block_n,
                     BLOCK_S=max(1, block_n // block_r), IEEE=dtype == "fp32", EVEN=even)
    aligned = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
               if signature[name].startswith("*") or signature[name] == "i32"}
    source = ASTSource(fn, signature, constants, aligned)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})


def shared_prefix_attention(
    q: torch.Tensor, prefix_keys: torch.Tensor, prefix_values: torch.Tensor, prefix_lengths: torch.Tensor,
    row_prefix: torch.Tensor, suffix_keys: torch.Tensor, suffix_values: torch.Tensor, suffix_valid: torch.Tensor,
    scale: float, backend: str = "torch",
) -> torch.Tensor:  # (B, H, D)
    """Either form with one signature (plans the row blocks on the fly for ``"triton"``:
    convenient for tests; the decoder plans once per chunk instead)."""
    if backend == "torch":
        return shared_prefix_attention_reference(q, prefix_keys, prefix_values, prefix_lengths, row_prefix,
                                                 suffix_keys, suffix_values, suffix_valid, scale)
    if backend != "triton":
        raise ValueError(f"unknown attention backend {backend!r}")
    rows = block_rows_for(q.shape[1], prefix_keys.shape[1])
    blocks = plan_row_blocks(row_prefix, rows, device=q.device)
    return shared_prefix_attention_triton(q, prefix_keys, prefix_values, prefix_lengths, suffix_keys,
                                          suffix_values, suffix_valid, scale, blocks)
