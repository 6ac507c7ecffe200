"""Inference benchmark: the engine versus one transformers ``generate`` (with KV cache) per
region, same model and weights, in one run.

Reports regions/s, tokens/s, time to first token and peak memory for 1, 4, 16, 64, 256
regions of one image (each region asked the same question template, `--new-tokens` tokens
each, greedy, no early stop), for each engine decode path of `--decoder` (auto: static +
CUDA graphs + Triton attention on CUDA, dynamic on the CPU). Models: the built-in model (when
present), a tiny random model, and on a GPU the LLaVA-1.5-7B shape (random bf16 weights
built on the GPU). `--step-timing` also times one decode step of the static path (CUDA graph
replay on CUDA) per attention backend against the same step without attention (its weight
matmuls only), and the dynamic path's eager step.

    python bench/inference.py                      # CPU: built-in + tiny
    python bench/inference.py --models 7b --device cuda --regions 1 16 64 --decoder auto dynamic \
        --step-timing --reference-max-regions 16
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import regiongpt  # noqa: F401
from regiongpt.inference.api import BUILTIN_MODEL_DIR, RegionGPT
from regiongpt.inference.decoder import PrefixKV, SharedPrefixDecoder, SuffixKV
from regiongpt.inference.engine import DECODERS, Engine, Request, SamplingParams, VisualInputs, _common_prefix_length
from regiongpt.inference.static_decoder import StaticDecoder
from regiongpt.inference.triton_attention import triton_available
from regiongpt.model import RegionGPTForConditionalGeneration, build_config
from regiongpt.processing.image_processors import llava15_image_processor, square_image_processor
from regiongpt.processing.instructions import build_instruction
from regiongpt.processing.processing_regiongpt import RegionGPTProcessor
from regiongpt.processing.tokenizer import train_tokenizer

CORPUS = ["A chat between a curious human and an artificial intelligence assistant. USER: ASSISTANT: "
          "Provide a short description for the region. Answer with a short phrase. a red star left of a ring"] * 50


def tiny_model(device: str):
    tokenizer = train_tokenizer(CORPUS, vocab_size=400)
    torch.manual_seed(0)
    config = build_config("tiny-clip-llama", text_overrides={"vocab_size": len(tokenizer)},
                          image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                          region_token_id=tokenizer.convert_tokens_to_ids("<region>"))
    model = RegionGPTForConditionalGeneration(config).eval().to(device)
    processor = RegionGPTProcessor(square_image_processor(config.image_size), tokenizer,
                                   image_seq_length=config.image_seq_length)
    return model, processor


def llava_7b_model(device: str):
    """The LLaVA-1.5-7B shape with random bf16 weights, built directly on the device."""
    tokenizer = train_tokenizer(CORPUS, vocab_size=400)
    config = build_config("llava-1.5-7b", text_overrides={"vocab_size": 32002},
                          image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                          region_token_id=tokenizer.convert_tokens_to_ids("<region>"))
    with torch.device(device):
        model = RegionGPTForConditionalGeneration._from_config(config, dtype=torch.bfloat16).eval()
    processor = RegionGPTProcessor(llava15_image_processor(), tokenizer, image_seq_length=config.image_seq_length)
    return model, processor


def builtin_model(device: str):
    api = RegionGPT.load(None, device=device)
    return api.model, api.processor


def scene(n_regions: int, size=(192, 256)):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    h, w = size
    boxes = []
    for _ in range(n_regions):
        x, y = int(rng.integers(0, w - 24)), int(rng.integers(0, h - 24))
        boxes.append([x, y, x + int(rng.integers(6, 24)), y + int(rng.integers(6, 24))])
    return image, boxes


def prompts(processor, n_regions):
    return [processor.format_conversation(
        [{"role": "user", "content": "<image>\n" + build_instruction("brief", region=k)}],
        add_generation_prompt=True).text for k in range(n_regions)]


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_memory_mb(device) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_engine(engine, processor, image, boxes, new_tokens, device):
    texts = prompts(processor, len(boxes))
    params = SamplingParams(max_new_tokens=new_tokens)  # no stop token: fixed work per region
    sync(device)
    start = time.perf_counter()
    visual_inputs = processor.prepare_images([image], [boxes])
    visual = VisualInputs(*(visual_inputs[k].to(device) for k in
                            ("pixel_values", "region_masks", "region_boxes", "region_image_index")))
    requests = []
    for text in texts:
        ids, refs = processor.encode_prompt(text, len(boxes))
        requests.append(Request(ids, 0, refs, params))
    first = None
    tokens = 0
    for _ in engine.stream(requests, visual):
        if first is None:
            sync(device)
            first = time.perf_counter() - start
        tokens += 1
    sync(device)
    return time.perf_counter() - start, first, tokens


def run_reference(model, processor, image, boxes, new_tokens, device):
    """One transformers generate per region (the peers' way), KV cache on."""
    texts = prompts(processor, len(boxes))
    sync(device)
    start = time.perf_counter()
    first = None
    tokens = 0
    for text in texts:
        inputs = processor(images=image, text=text, regions=boxes).to(device)
        out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        if first is None:
            sync(device)
            first = time.perf_counter() - start
        tokens += out.shape[1] - inputs["input_ids"].shape[1]
    sync(device)
    return time.perf_counter() - start, first, tokens


def prefix_length(processor, region_token_id: int) -> int:
    """Tokens the benchmark's prompts share (system prompt + image tokens + shared text), as
    the engine finds them."""
    requests = []
    for text in prompts(processor, 2):
        ids, refs = processor.encode_prompt(text, 2)
        requests.append(Request(ids, 0, refs))
    return _common_prefix_length(requests, region_token_id)


def _random_kv(decoder, rows, length, like):
    """Per-layer (rows, Hkv, length, D) random keys and values in the model's dtype."""
    shape = (rows, decoder.num_kv_heads, length, decoder.head_dim)
    return ([torch.randn(shape, dtype=like.dtype, device=like.device) for _ in range(decoder.num_layers)],
            [torch.randn(shape, dtype=like.dtype, device=like.device) for _ in range(decoder.num_layers)])


def _time(fn, device, iters) -> float:
    """Milliseconds per call of ``fn`` (CUDA events on a GPU, wall clock elsewhere)."""
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / iters
    begin = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - begin) * 1e3 / iters


@torch.no_grad()
def time_decode_step(model, rows: int, prefix_len: int, suffix_len: int, device: str, iters: int) -> dict:
    """ms per decode step of ``rows`` rows on one image's prefix of ``prefix_len`` tokens, each
    row with ``suffix_len`` suffix tokens (random KV: the step's cost does not depend on it):
    static path per attention backend, the same step without attention ("matmul-only": its
    weight matmuls, norms and KV writes) and the dynamic path's eager step."""
    lm = model.model.language_model
    decoder = SharedPrefixDecoder(lm, model.lm_head, (model.config.region_token_id,))
    embed = model.get_input_embeddings()
    weight = embed.weight
    keys, values = _random_kv(decoder, 1, prefix_len, weight)
    prefix = PrefixKV([k[0] for k in keys], [v[0] for v in values], prefix_len)
    keys, values = _random_kv(decoder, rows, suffix_len, weight)
    suffix = SuffixKV(keys, values, torch.ones(rows, suffix_len, dtype=torch.bool, device=weight.device))
    row_prefix = torch.zeros(rows, dtype=torch.long, device=weight.device)
    next_position = torch.full((rows,), prefix_len + suffix_len, dtype=torch.long, device=weight.device)
    tokens = torch.randint(10, 300, (rows,))
    backends = (["triton"] if device.startswith("cuda") and triton_available() else []) + ["torch", "none"]
    result = {"rows": rows, "prefix_len": prefix_len, "suffix_len": suffix_len}
    for attention in backends:
        static = StaticDecoder(decoder, embed, attention=attention)
        session = static.begin([prefix], row_prefix, suffix, next_position, max_steps=1)
        session.step(list(range(rows)), tokens)  # fills the step's inputs (and captures the graph)
        session.runner.buffers.alive.zero_()  # replays then rewrite the same slot: shapes and cost stay
        name = "matmul_only" if attention == "none" else f"static_{attention}"
        result[f"{name}_ms"] = _time(session.runner.run, device, iters)
        del static, session
    new = embed(tokens.to(weight.device))[:, None]
    ones = torch.ones(rows, 1, dtype=torch.bool, device=weight.device)
    dynamic_step = lambda: decoder.step(new, ones, next_position[:, None], [prefix], row_prefix, suffix)  # noqa: E731
    result["dynamic_eager_ms"] = _time(dynamic_step, device, max(iters // 4, 1))
    best = result.get("static_triton_ms", result["static_torch_ms"])
    result["static_over_matmul_only"] = best / result["matmul_only_ms"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["builtin", "tiny"], choices=["builtin", "tiny", "7b"])
    parser.add_argument("--regions", nargs="+", type=int, default=[1, 4, 16, 64, 256])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--reference-max-regions", type=int, default=64,
                        help="skip the slow one-generate-per-region baseline above this many regions")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON lines here")
    parser.add_argument("--decoder", nargs="+", default=["auto"], choices=DECODERS,
                        help="engine decode path(s) to measure (auto: static on CUDA, dynamic on the CPU)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed runs per row count before timing (default: 1 on CUDA: graph capture, "
                             "Triton compile; 0 on the CPU)")
    parser.add_argument("--step-timing", action="store_true",
                        help="also time one decode step: static per attention backend vs matmul-only")
    parser.add_argument("--step-rows", type=int, nargs="+", default=[16])
    parser.add_argument("--step-iters", type=int, default=50)
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    warmup = (1 if cuda else 0) if args.warmup is None else args.warmup
    builders = {"builtin": builtin_model, "tiny": tiny_model, "7b": llava_7b_model}
    card = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"device: {args.device} ({card}), torch {torch.__version__}, threads {torch.get_num_threads()}")
    rows = []
    for name in args.models:
        if name == "builtin" and not (BUILTIN_MODEL_DIR / "config.json").exists():
            print("builtin: not present, skipped")
            continue
        model, processor = builders[name](args.device)
        print(f"\n{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, {model.dtype}")
        if args.step_timing:
            rows.extend(step_timing(model, processor, name, args, card))
        reference = {}  # regions -> (seconds, ttft): the baseline does not depend on the decoder
        for decoder in args.decoder:
            engine = Engine(model, max_rows=64, decoder=decoder)  # one engine: its CUDA graphs are reused
            image, _ = scene(1)
            run_engine(engine, processor, image, scene(2)[1], 2, args.device)  # warm-up
            print(f"\ndecoder {decoder} ({engine.decode_path}"
                  f"{', attention ' + engine.static_decoder.attention if engine.static_decoder else ''}"
                  f"{', CUDA graphs' if engine.static_decoder and engine.static_decoder.cuda_graphs else ''})")
            print(f"{'regions':>8} {'engine reg/s':>13} {'engine tok/s':>13} {'TTFT s':>8} {'ref reg/s':>10} "
                  f"{'speed-up':>9} {'peak MB':>8}")
            for n in args.regions:
                rows.append(engine_row(engine, model, processor, name, decoder, n, args, warmup, card, reference))
    if args.out:
        with args.out.open("a") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
    return 0


def engine_row(engine, model, processor, name, decoder, n, args, warmup, card, reference) -> dict:
    """Time the engine on ``n`` regions (after ``warmup`` untimed runs) and the baseline once."""
    image, boxes = scene(n)
    for _ in range(warmup):
        run_engine(engine, processor, image, boxes, args.new_tokens, args.device)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    seconds, ttft, tokens = run_engine(engine, processor, image, boxes, args.new_tokens, args.device)
    peak = peak_memory_mb(args.device)
    row = {"model": name, "decoder": decoder, "decode_path": engine.decode_path, "regions": n,
           "new_tokens": args.new_tokens, "engine_seconds": seconds, "engine_regions_per_s": n / seconds,
           "engine_tokens_per_s": tokens / seconds, "engine_ttft_s": ttft, "peak_memory_mb": peak,
           "device": args.device, "card": card}
    if n <= args.reference_max_regions:
        if n not in reference:
            reference[n] = run_reference(model, processor, image, boxes, args.new_tokens, args.device)[:2]
        ref_seconds, ref_ttft = reference[n]
        row.update(reference_regions_per_s=n / ref_seconds, reference_ttft_s=ref_ttft, speedup=ref_seconds / seconds)
    ref = (f"{row['reference_regions_per_s']:10.2f} {row['speedup']:8.1f}x" if "speedup" in row
           else f"{'-':>10} {'-':>9}")
    print(f"{n:8d} {row['engine_regions_per_s']:13.2f} {row['engine_tokens_per_s']:13.1f} {ttft:8.3f} {ref} "
          f"{peak:8.0f}")
    return row


def step_timing(model, processor, name, args, card) -> list[dict]:
    """Decode-step timings (see :func:`time_decode_step`) at the benchmark's prefix length and
    a mid-answer suffix (the question's own tokens + half the new tokens)."""
    prefix = prefix_length(processor, model.config.region_token_id)
    question = len(processor.encode_prompt(prompts(processor, 1)[0], 1)[0]) - prefix
    suffix = question + args.new_tokens // 2
    out = []
    print(f"decode step, ms (prefix {prefix} tokens, suffix {suffix}):")
    for rows in args.step_rows:
        result = time_decode_step(model, rows, prefix, suffix, args.device, args.step_iters)
        result.update(model=name, kind="decode_step", device=args.device, card=card)
        timings = ", ".join(f"{k[:-3]} {v:.3f}" for k, v in result.items() if k.endswith("_ms"))
        print(f"  {rows} rows: {timings}; static / matmul-only {result['static_over_matmul_only']:.2f}x "
              f"(target <= 1.25x)")
        out.append(result)
    return out


if __name__ == "__main__":
    sys.exit(main())
