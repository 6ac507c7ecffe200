"""The static-cache decode path and the fused shared-prefix attention give the dynamic
decoder's results: attention against a one-softmax loop, decode steps against
SharedPrefixDecoder (logits, fp32 atol 1e-5), the engine's answers against its dynamic path,
and the Triton kernel (in Triton's CPU interpreter) against the PyTorch reference."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_model, make_processor, randomise_refiner
from regiongpt.inference.decoder import SharedPrefixDecoder, SuffixKV
from regiongpt.inference.engine import ConversationState, Engine, Request, SamplingParams, VisualInputs
from regiongpt.inference.static_decoder import StaticDecoder, bucket_capacity
from regiongpt.inference.triton_attention import (
    block_rows_for,
    plan_row_blocks,
    shared_prefix_attention_reference,
)

# The CPU-interpreter tests pass with Triton 3.7.1 (what the CUDA build of torch 2.13 brings) and 3.9.0;
# an older one skips them rather than fail on interpreter differences.
TESTED_TRITON = "3.7"

PRESETS = ["tiny-clip-llama", "tiny-siglip-qwen2", "tiny-convnext-mistral"]
ROOT = Path(__file__).resolve().parents[1]


# ----- attention ---------------------------------------------------------------------------------


def _attention_inputs(heads=4, kv_heads=2, dim=8, rows=7, seed=0, dtype=torch.float32):
    """Rows on 3 prefixes (one empty) and none (-1); suffixes left-padded, one row with none."""
    g = torch.Generator().manual_seed(seed)
    n_prefix, capacity, suffix = 3, 37, 11
    q = torch.randn(rows, heads, dim, generator=g)
    pk, pv = (torch.randn(n_prefix, kv_heads, capacity, dim, generator=g) for _ in range(2))
    lengths = torch.tensor([37, 5, 0])
    row_prefix = torch.tensor([0, 1, 0, -1, 2, 1, 0][:rows])
    sk, sv = (torch.randn(rows, kv_heads, suffix, dim, generator=g) for _ in range(2))
    valid = torch.rand(rows, suffix, generator=g) > 0.4
    valid[3] = False  # row 3: no prefix and no suffix -> zeros
    cast = [t.to(dtype) for t in (q, pk, pv)] + [lengths, row_prefix] + [t.to(dtype) for t in (sk, sv)]
    return (*cast, valid, dim**-0.5)


def _one_softmax(q, pk, pv, lengths, row_prefix, sk, sv, valid, scale):
    """Per row and head: softmax over [its prefix; its valid suffix slots], in float64."""
    rows, heads, dim = q.shape
    group = heads // pk.shape[1]
    out = torch.zeros(rows, heads, dim, dtype=torch.float64)
    for b in range(rows):
        for h in range(heads):
            kv = h // group
            keys, values = [sk[b, kv][valid[b]]], [sv[b, kv][valid[b]]]
            if row_prefix[b] >= 0:
                n = int(lengths[row_prefix[b]])
                keys.insert(0, pk[row_prefix[b], kv, :n])
                values.insert(0, pv[row_prefix[b], kv, :n])
            k, v = torch.cat(keys).double(), torch.cat(values).double()
            if len(k):
                out[b, h] = torch.softmax(k @ q[b, h].double() * scale, 0) @ v
    return out


@pytest.mark.parametrize("heads,kv_heads,dim", [(4, 2, 8), (4, 4, 8), (6, 2, 20), (8, 1, 32)])
def test_reference_attention_is_one_softmax_over_prefix_and_suffix(heads, kv_heads, dim):
    inputs = _attention_inputs(heads, kv_heads, dim)
    got = shared_prefix_attention_reference(*inputs)
    want = _one_softmax(*inputs)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    assert got[3].abs().max() == 0  # nothing visible: zeros, not NaN


def test_reference_ignores_garbage_in_masked_slots():
    inputs = list(_attention_inputs())
    base = shared_prefix_attention_reference(*inputs)
    inputs[1] = inputs[1].clone()
    inputs[1][1, :, 5:] = 1e4  # past prefix 1's length
    for i in (5, 6):  # invalid suffix slots (keys and values)
        inputs[i] = inputs[i].clone()
        inputs[i].transpose(1, 2)[~inputs[7]] = -1e4
    torch.testing.assert_close(shared_prefix_attention_reference(*inputs), base)


def test_row_blocks_group_rows_by_prefix():
    blocks = plan_row_blocks([0, 1, 0, -1, 2, 1, 0], block_rows=2, num_blocks=8)
    rows, prefix = blocks.rows.tolist(), blocks.prefix.tolist()
    assert rows[:5] == [[0, 2], [6, -1], [1, 5], [3, -1], [4, -1]] and prefix[:5] == [0, 0, 1, -1, 2]
    assert rows[5:] == [[-1, -1]] * 3 and prefix[5:] == [-1] * 3
    assert block_rows_for(32, 32) == 16 and block_rows_for(32, 8) == 4 and block_rows_for(6, 2) == 4
    with pytest.raises(ValueError):
        plan_row_blocks(list(range(5)), block_rows=1, num_blocks=3)


# ----- decode steps: static versus dynamic ------------------------------------------------------


def _prefill(decoder, lm, prefix_lengths, row_prefix, suffix_lengths, seed):
    """Prefixes of the given lengths and left-padded row prompts, prefilled by the dynamic decoder."""
    g = torch.Generator().manual_seed(seed)
    vocab, device = lm.embed_tokens.num_embeddings, lm.embed_tokens.weight.device

    def embed(n):
        return lm.embed_tokens(torch.randint(6, vocab, (n,), generator=g).to(device))

    prefixes = [decoder.prefill_prefix(embed(n)[None])[0] for n in prefix_lengths]
    rows, longest = len(row_prefix), max(suffix_lengths)
    embeds = torch.zeros(rows, longest, lm.config.hidden_size, device=device, dtype=lm.embed_tokens.weight.dtype)
    valid = torch.zeros(rows, longest, dtype=torch.bool, device=device)
    positions = torch.zeros(rows, longest, dtype=torch.long, device=device)
    for r, (p, n) in enumerate(zip(row_prefix, suffix_lengths)):
        start = prefix_lengths[p] if p >= 0 else 0
        embeds[r, longest - n :] = embed(n)
        valid[r, longest - n :] = True
        positions[r, longest - n :] = torch.arange(start, start + n)
    cache = SuffixKV.empty(decoder.num_layers, rows, decoder.num_kv_heads, decoder.head_dim, embeds)
    row_prefix = torch.tensor(row_prefix, device=device)
    logits, cache = decoder.step(embeds, valid, positions, prefixes, row_prefix, cache)
    return prefixes, row_prefix, logits, cache, positions[:, -1] + 1


def _compare_decoding(decoder, static, lm, prefix_lengths, row_prefix, suffix_lengths, steps_of_row, seed):
    """Greedy decoding, dynamic (finished rows dropped) and static (finished rows kept, not
    alive), fed the same tokens; logits of the alive rows compared at every step."""
    prefixes, row_prefix, logits, cache, next_position = _prefill(
        decoder, lm, prefix_lengths, row_prefix, suffix_lengths, seed)
    session = static.begin(prefixes, row_prefix, cache, next_position, max(steps_of_row))
    alive = list(range(len(steps_of_row)))
    step = 0
    compared = 0
    while True:
        alive_after = [r for r in alive if steps_of_row[r] > step]
        if not alive_after:
            break
        keep = torch.tensor([alive.index(r) for r in alive_after], device=logits.device)
        tokens = logits.argmax(-1)[keep]
        cache = SuffixKV([k[keep] for k in cache.keys], [v[keep] for v in cache.values], cache.valid[keep])
        row_prefix, next_position = row_prefix[keep], next_position[keep]
        ones = torch.ones(len(alive_after), 1, dtype=torch.bool, device=logits.device)
        embeds = lm.embed_tokens(tokens)[:, None]
        logits, cache = decoder.step(embeds, ones, next_position[:, None], prefixes, row_prefix, cache)
        next_position = next_position + 1
        static_logits = session.step(alive_after, tokens)
        torch.testing.assert_close(static_logits, logits, atol=1e-5, rtol=1e-5)
        top2 = logits.topk(2, dim=-1).values
        clear = (top2[:, 0] - top2[:, 1]) > 1e-4
        assert torch.equal(static_logits.argmax(-1)[clear], logits.argmax(-1)[clear])
        compared += len(alive_after)
        alive = alive_after
        step += 1
    # the static buffers hold what the dynamic cache holds for the rows still alive at the end
    kept = session.suffix_kv()
    assert torch.equal(kept.valid[alive], cache.valid)
    for layer in range(decoder.num_layers):
        for got, want in ((kept.keys[layer], cache.keys[layer]), (kept.values[layer], cache.values[layer])):
            got = got[alive].transpose(1, 2)[cache.valid]  # (real tokens, Hkv, D)
            torch.testing.assert_close(got, want.transpose(1, 2)[cache.valid], atol=1e-6, rtol=1e-5)
    return compared


@pytest.mark.parametrize("preset", PRESETS)
def test_static_decode_steps_equal_dynamic(tokenizer, preset):
    model = make_model(preset, tokenizer)
    lm = model.model.language_model
    decoder = SharedPrefixDecoder(lm, model.lm_head, (model.config.region_token_id,))
    static = StaticDecoder(decoder, lm.embed_tokens)
    assert static.attention == "torch" and not static.cuda_graphs
    with torch.no_grad():
        # two images (prefixes of 9 and 4 tokens) and a row with no prefix; rows of different
        # prompt lengths; rows finishing after 1..6 steps
        n = _compare_decoding(decoder, static, lm, [9, 4], [0, 1, 0, -1, 1], [3, 5, 1, 4, 2], [6, 2, 4, 6, 1], 0)
        assert n == 19
        # a second chunk reuses the same buffers (same row bucket): stale state must not leak;
        # prefix 1 is no row's, so only two prefixes are loaded
        [runner] = static._runners
        n = _compare_decoding(decoder, static, lm, [12, 5, 7], [2, 0, -1, 2, 0, 2, 0],
                              [2, 1, 6, 3, 2, 4, 1], [3, 5, 5, 1, 2, 5, 4], 1)
        assert n == 25
        assert static._runners == [runner]


def test_capacity_buckets():
    assert bucket_capacity(5, 3, 130, 20) == bucket_capacity(8, 4, 256, 32)
    assert bucket_capacity(1, 0, 0, 1).rows == 1 and bucket_capacity(1, 0, 0, 1).prefixes == 1
    assert bucket_capacity(5, 1, 600, 51).prefix_len == 640


# ----- the engine --------------------------------------------------------------------------------

BOXES = [[2, 2, 30, 20], [40, 10, 78, 46], [10, 25, 35, 47]]


def _engine_batch(processor, sampling):
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)),
              Image.fromarray(rng.integers(0, 255, (60, 40, 3), dtype=np.uint8))]
    boxes = [BOXES, [[1, 1, 20, 30], [10, 20, 39, 59]]]
    visual = processor(images=images, text=["<image>"] * 2, regions=boxes)
    questions = ["What is <region{k}>?", "Describe <region{k}> in detail please."]
    requests = []
    for image, count, offset in ((0, 3, 0), (1, 2, 3)):
        for q in questions:
            for k in range(1, count + 1):
                enc = processor(images=images[image], text=f"USER: <image>\n{q.format(k=k)} ASSISTANT:",
                                regions=boxes[image])
                regions = (enc["region_token_index"] + offset).tolist()
                requests.append(Request(enc["input_ids"][0].tolist(), image, regions, sampling))
    return requests, VisualInputs(visual["pixel_values"], visual["region_masks"], visual["region_boxes"],
                                  visual["region_image_index"])


def _assert_same(a, b):
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [r.finish_reason for r in a] == [r.finish_reason for r in b]
    np.testing.assert_allclose([p for r in a for p in r.logprobs], [p for r in b for p in r.logprobs], atol=1e-5)


def test_engine_static_path_answers_as_the_dynamic_path(tokenizer):
    model = make_model("tiny-clip-llama", tokenizer)
    randomise_refiner(model, scale=2.0)
    processor = make_processor(model, tokenizer)
    requests, visual = _engine_batch(processor, SamplingParams(max_new_tokens=6))
    dynamic, static = Engine(model, max_rows=4, decoder="dynamic"), Engine(model, max_rows=4, decoder="static")
    assert Engine(model).decode_path == "dynamic" and static.decode_path == "static"
    want = dynamic.generate(requests, visual)
    _assert_same(static.generate(requests, visual), want)
    assert np.ptp([r.logprobs[0] for r in want]) > 1e-4  # rows differ: a mix-up would show
    # rows finishing early: a stop token of one request, a caller's stop check on others
    stop = want[1].token_ids[1]
    early = [Request(r.input_ids, r.image, r.regions, SamplingParams(max_new_tokens=3 + i % 4, stop_token_ids=(stop,)))
             for i, r in enumerate(requests)]
    check = lambda i, ids: i % 3 == 0 and len(ids) == 2  # noqa: E731
    got = static.generate(early, visual, should_stop=check)
    _assert_same(got, dynamic.generate(early, visual, should_stop=check))
    assert {len(r.token_ids) for r in got} != {6}
    # two streams interleaved on one engine: each chunk keeps its own static buffers
    fresh = Engine(model, max_rows=4, decoder="static")
    first, second = fresh.stream(requests[:4], visual), fresh.stream(requests[2:6], visual)
    pairs = list(zip(first, second))
    assert len(fresh.static_decoder._runners) == 2
    for offset, events in ((0, [a for a, _ in pairs]), (2, [b for _, b in pairs])):
        answers = {}
        for e in events:
            answers.setdefault(e.request + offset, []).append(e.token_id)
        assert [answers[i] for i in range(offset, offset + 4)] == [r.token_ids for r in want[offset : offset + 4]]
    # sampling by seed
    hot = [Request(r.input_ids, r.image, r.regions, SamplingParams(max_new_tokens=4, temperature=1.2))
           for r in requests]
    _assert_same(static.generate(hot, visual, seed=5), dynamic.generate(hot, visual, seed=5))
    with pytest.raises(ValueError, match="decoder must be"):
        Engine(model, decoder="fast")


def test_engine_static_path_keeps_conversations(tokenizer):
    model = make_model("tiny-clip-llama", tokenizer)
    randomise_refiner(model, scale=2.0)
    processor = make_processor(model, tokenizer)
    requests, visual = _engine_batch(processor, SamplingParams(max_new_tokens=4))
    answers = {}
    for kind in ("dynamic", "static"):
        engine = Engine(model, decoder=kind)
        state = ConversationState()
        first = [e.token_id for e in engine.converse(state, requests[0], visual)]
        follow = Request(list(requests[0].input_ids) + first + list(requests[2].input_ids[1:]), 0,
                         list(requests[0].regions) + list(requests[2].regions), SamplingParams(max_new_tokens=4))
        second = [e.token_id for e in engine.converse(state, follow)]
        answers[kind] = (first, second, state.prefilled_tokens, [k.clone() for k in state.kv.keys])
    assert answers["static"][:3] == answers["dynamic"][:3]
    for a, b in zip(answers["static"][3], answers["dynamic"][3]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# ----- the Triton kernel, in Triton's CPU interpreter ----------------------------------------------

_INTERPRETER_SCRIPT = textwrap.dedent("""
    import torch
    from regiongpt.inference import triton_attention as fused
    import triton  # noqa: F401  (TRITON_INTERPRET=1 is set before this first import)

    def inputs(heads, kv_heads, dim, seed, capacity=37, suffix=11):
        g = torch.Generator().manual_seed(seed)
        q = torch.randn(7, heads, dim, generator=g)
        pk, pv = (torch.randn(3, kv_heads, capacity, dim, generator=g) for _ in range(2))
        sk, sv = (torch.randn(7, kv_heads, suffix, dim, generator=g) for _ in range(2))
        valid = torch.rand(7, suffix, generator=g) > 0.4
        valid[3] = False
        return q, pk, pv, torch.tensor([37, 5, 0]), torch.tensor([0, 1, 0, -1, 2, 1, 0]), sk, sv, valid, dim ** -0.5

    for shape in [(4, 2, 8), (4, 4, 8), (6, 2, 20), (8, 1, 32), (2, 2, 64)]:
        args = inputs(*shape, seed=sum(shape))
        want = fused.shared_prefix_attention(*args, backend="torch")
        got = fused.shared_prefix_attention(*args, backend="triton")
        err = (got - want).abs().max().item()
        assert err < 1e-5, (shape, err)
        # a non-contiguous q (as the decoder passes it) and wider row blocks
        q = torch.zeros(*args[0].shape[:2], 2 * args[0].shape[2])[..., : args[0].shape[2]].copy_(args[0])
        assert not q.is_contiguous()
        blocks = fused.plan_row_blocks(args[4], 2 * fused.block_rows_for(shape[0], shape[1]), 8)
        got = fused.shared_prefix_attention_triton(q, *args[1:4], *args[5:], blocks, block_n=16, block_s=4)
        assert (got - want).abs().max().item() < 1e-5, shape
    # capacities that are multiples of the tiles and D = 16: the unmasked-load ("EVEN") path,
    # reading (finite) garbage past the lengths that the score masks must hide
    for shape in [(4, 2, 16), (2, 2, 32)]:
        args = inputs(*shape, seed=7, capacity=128, suffix=16)
        want = fused.shared_prefix_attention(*args, backend="torch")
        got = fused.shared_prefix_attention(*args, backend="triton")
        assert (got - want).abs().max().item() < 1e-5, shape
    # fp16: the tensor-core path (probabilities cast to the value dtype). bf16 is left to the GPU
    # test: the interpreter's tl.dot mis-handles bf16 operands (garbage even for a plain dot)
    args = [a.half() if torch.is_tensor(a) and a.is_floating_point() else a for a in inputs(8, 2, 64, seed=3)]
    want = fused.shared_prefix_attention(*args, backend="torch").float()
    got = fused.shared_prefix_attention(*args, backend="triton").float()
    assert (got - want).abs().max().item() < 3e-3, (got - want).abs().max().item()
    print("kernel ok")
""")

_INTERPRETER_DECODER_SCRIPT = textwrap.dedent("""
    import torch
    from regiongpt.model import RegionGPTForConditionalGeneration, build_config
    from regiongpt.inference.decoder import SharedPrefixDecoder
    from regiongpt.inference.static_decoder import StaticDecoder
    from test_static_decoder import _compare_decoding

    for preset in ("tiny-clip-llama", "tiny-siglip-qwen2"):
        torch.manual_seed(0)
        model = RegionGPTForConditionalGeneration(build_config(preset)).eval()
        lm = model.model.language_model
        decoder = SharedPrefixDecoder(lm, model.lm_head, (model.config.region_token_id,))
        static = StaticDecoder(decoder, lm.embed_tokens, attention="triton")
        with torch.no_grad():
            n = _compare_decoding(decoder, static, lm, [9, 4], [0, 1, 0, -1, 1], [3, 5, 1, 4, 2], [3, 2, 1, 3, 1], 0)
        assert n == 10, n
    print("decoder ok")
""")


def _interpret(script: str, timeout: int = 240) -> str:
    """Run ``script`` in a fresh interpreter with TRITON_INTERPRET=1 set before Triton loads."""
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_triton_kernel_in_the_interpreter_equals_the_reference():
    pytest.importorskip("triton", minversion=TESTED_TRITON)
    assert "kernel ok" in _interpret(_INTERPRETER_SCRIPT)


def test_static_decoder_with_the_triton_kernel_in_the_interpreter():
    pytest.importorskip("triton", minversion=TESTED_TRITON)
    assert "decoder ok" in _interpret(_INTERPRETER_DECODER_SCRIPT)


_COMPILE_SCRIPT = textwrap.dedent("""
    from regiongpt.inference.triton_attention import compile_for_target
    compile_for_target("bf16", 32, 32, 128, arch=90)  # LLaVA-1.5-7B on H100 / H200: MHA, D = 128
    compile_for_target("fp16", 28, 4, 128, arch=80, even=False)  # GQA 7 (padded to 8), masked loads, A100
    print("compiled")
""")


def test_triton_kernel_compiles_for_gpus_without_one(tmp_path):
    """Ahead-of-time compilation to cubin for sm_90 / sm_80 with Triton's bundled ptxas: the
    checks the interpreter cannot make (layouts, tl.dot shapes, types)."""
    pytest.importorskip("triton", minversion=TESTED_TRITON)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(OMP_NUM_THREADS="1", TRITON_DEFAULT_FP_FUSION="1", TRITON_CACHE_DIR=str(tmp_path),
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stdout + done.stderr[-3000:]


# ----- CUDA (skipped without a GPU) ----------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("attention", ["torch", "triton"])
def test_cuda_graph_steps_equal_dynamic_fp32(tokenizer, attention):
    if attention == "triton":
        pytest.importorskip("triton")
    model = make_model("tiny-clip-llama", tokenizer).cuda()
    lm = model.model.language_model
    decoder = SharedPrefixDecoder(lm, model.lm_head, (model.config.region_token_id,))
    static = StaticDecoder(decoder, lm.embed_tokens, attention=attention, cuda_graphs=True)
    assert static._runners == [] and static.attention == attention
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 matmuls on both paths
    try:
        with torch.no_grad():
            _compare_decoding(decoder, static, lm, [9, 4], [0, 1, 0, -1, 1], [3, 5, 1, 4, 2], [6, 2, 4, 6, 1], 0)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    assert static._runners[0].graph is not None


@cuda
def test_triton_kernel_bf16_on_cuda_matches_reference():
    pytest.importorskip("triton")
    from regiongpt.inference.triton_attention import shared_prefix_attention

    args = [a.cuda() if isinstance(a, torch.Tensor) else a
            for a in _attention_inputs(32, 32, 128, rows=7, dtype=torch.bfloat16)]
    want = shared_prefix_attention(*args, backend="torch").float()
    got = shared_prefix_attention(*args, backend="triton").float()
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)


@cuda
def test_engine_auto_on_cuda_uses_the_static_path(tokenizer):
    model = make_model("tiny-clip-llama", tokenizer)
    randomise_refiner(model, scale=2.0)
    processor = make_processor(model, tokenizer)
    requests, visual = _engine_batch(processor, SamplingParams(max_new_tokens=6))
    want = Engine(model, decoder="dynamic").generate(requests, visual)
    engine = Engine(model.cuda(), decoder="auto")
    assert engine.decode_path == "static" and engine.static_decoder.cuda_graphs
    fields = (visual.pixel_values, visual.region_masks, visual.region_boxes, visual.region_image_index)
    visual = VisualInputs(*(None if t is None else t.cuda() for t in fields))
    got = engine.generate(requests, visual)
    agree = sum(a.token_ids == b.token_ids for a, b in zip(got, want))
    assert agree >= len(want) - 1  # CPU vs GPU arithmetic: a near-tie may flip one answer

