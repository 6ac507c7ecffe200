"""Inference benchmark: the engine versus one transformers ``generate`` (with KV cache) per
region, same model and weights, in one run.

Reports regions/s, tokens/s, time to first token and peak memory for 1, 4, 16, 64, 256
regions of one image (each region asked the same question template, `--new-tokens` tokens
each, greedy, no early stop). Models: the built-in model (when present), a tiny random
model, and on a GPU the LLaVA-1.5-7B shape (random bf16 weights built on the GPU).

    python bench/inference.py                      # CPU: built-in + tiny
    python bench/inference.py --models 7b --device cuda --regions 1 16 64 256
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
from regiongpt.inference.engine import Engine, Request, SamplingParams, VisualInputs
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


def run_engine(model, processor, image, boxes, new_tokens, device):
    engine = Engine(model, max_rows=64)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["builtin", "tiny"], choices=["builtin", "tiny", "7b"])
    parser.add_argument("--regions", nargs="+", type=int, default=[1, 4, 16, 64, 256])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--reference-max-regions", type=int, default=64,
                        help="skip the slow one-generate-per-region baseline above this many regions")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON lines here")
    args = parser.parse_args()
    builders = {"builtin": builtin_model, "tiny": tiny_model, "7b": llava_7b_model}
    card = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"device: {args.device} ({card}), torch {torch.__version__}, threads {torch.get_num_threads()}")
    rows = []
    for name in args.models:
        if name == "builtin" and not (BUILTIN_MODEL_DIR / "config.json").exists():
            print("builtin: not present, skipped")
            continue
        model, processor = builders[name](args.device)
        image, _ = scene(1)
        run_engine(model, processor, image, scene(2)[1], 2, args.device)  # warm-up
        print(f"\n{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
        print(f"{'regions':>8} {'engine reg/s':>13} {'engine tok/s':>13} {'TTFT s':>8} {'ref reg/s':>10} "
              f"{'speed-up':>9} {'peak MB':>8}")
        for n in args.regions:
            image, boxes = scene(n)
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            seconds, ttft, tokens = run_engine(model, processor, image, boxes, args.new_tokens, args.device)
            peak = peak_memory_mb(args.device)
            row = {"model": name, "regions": n, "new_tokens": args.new_tokens, "engine_seconds": seconds,
                   "engine_regions_per_s": n / seconds, "engine_tokens_per_s": tokens / seconds,
                   "engine_ttft_s": ttft, "peak_memory_mb": peak, "device": args.device, "card": card}
            if n <= args.reference_max_regions:
                ref_seconds, ref_ttft, _ = run_reference(model, processor, image, boxes, args.new_tokens, args.device)
                row.update(reference_regions_per_s=n / ref_seconds, reference_ttft_s=ref_ttft,
                           speedup=ref_seconds / seconds)
            rows.append(row)
            ref = f"{row['reference_regions_per_s']:10.2f} {row['speedup']:8.1f}x" if "speedup" in row else f"{'-':>10} {'-':>9}"
            print(f"{n:8d} {row['engine_regions_per_s']:13.2f} {row['engine_tokens_per_s']:13.1f} {ttft:8.3f} {ref} "
                  f"{peak:8.0f}")
    if args.out:
        with args.out.open("a") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
