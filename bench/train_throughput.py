"""Training throughput of RegionGPT: tokens/s, samples/s and MFU of one training step.

One step = forward + backward over a batch of synthetic samples (one image each, its 576
(7B) image tokens, region placeholders and text up to ``--seq-len`` tokens) and, with
``--step full`` (default), the AdamW update. What trains is stage 2: everything but the
vision tower (frozen). Random weights are built directly on the device in ``--weights``
precision (bf16 on a GPU: initialising a 7B model on the CPU in fp32 costs minutes).

MFU (model FLOPs utilisation) counts the model's useful FLOPs per sample, without the
recomputation of activation checkpointing:

    6 * N_llm * T          LLM matmuls, forward + backward (N_llm: decoder layers + LM head; the
                           embedding lookup is no matmul), T tokens per sample
  + 12 * L * d * T * T     attention scores and values, forward + backward: 12 * L * d * T per
                           token (L layers, width d; the causal mask's halving is not taken)
  + 2 * N_vis * V          the frozen vision tower, forward only, V tokens per image (patches + class)

divided by the step time and the device's dense bf16 peak: 989 TFLOP/s for an H100 or H200
(SXM). On a CPU MFU is printed only against ``--peak-tflops``. The connector, feature
refinement and mask pooling are left out (< 0.1% of the 7B step).

    python bench/train_throughput.py                                   # 7B shape on the GPU, bf16
    python bench/train_throughput.py --step fwd-bwd                    # no optimiser (80 GB cards)
    python bench/train_throughput.py --preset tiny-clip-llama --device cpu --weights fp32 \\
        --batch-size 2 --seq-len 128 --steps 2 --warmup 1              # CPU smoke run (tests)

Prints one JSON object (``--json`` writes it to a file too). See bench/train_throughput.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from regiongpt.model import RegionGPTForConditionalGeneration, build_config
from regiongpt.training.distributed import apply_activation_checkpointing, decoder_layers

H100_H200_BF16_PEAK_TFLOPS = 989.0  # dense bf16, SXM (NVIDIA data sheets)


@dataclass
class Shape:
    """What one sample costs: its tokens and the model dimensions the MFU formula needs."""

    tokens: int  # LLM tokens per sample (image tokens + regions + text)
    image_tokens: int  # image placeholders per sample (LLM side)
    vision_tokens: int  # tokens through the vision tower per image (patches + class token)
    llm_params: int  # decoder layers + LM head
    vision_params: int
    layers: int
    width: int

    def flops_per_sample(self) -> float:
        llm = 6 * self.llm_params * self.tokens
        attention = 12 * self.layers * self.width * self.tokens * self.tokens
        vision = 2 * self.vision_params * self.vision_tokens
        return float(llm + attention + vision)


def build_model(args: argparse.Namespace, device: torch.device,
                dtype: torch.dtype) -> RegionGPTForConditionalGeneration:
    """A randomly initialised model, created on ``device`` in ``dtype`` (no CPU fp32 detour)."""
    config = build_config(args.preset, vision_overrides=json.loads(args.vision_overrides),
                          text_overrides=json.loads(args.text_overrides))
    config._attn_implementation = args.attention
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            model = RegionGPTForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.requires_grad_(True)
    model.model.vision_tower.requires_grad_(False)  # stage 2: the vision tower stays frozen
    if args.activation_checkpointing:
        apply_activation_checkpointing(model)
    return model.train()


def model_shape(model: RegionGPTForConditionalGeneration, tokens: int) -> Shape:
    inner, config = model.model, model.config
    llm = sum(p.numel() for p in decoder_layers(model).parameters()) + model.lm_head.weight.numel()
    vision = sum(p.numel() for p in inner.vision_tower.parameters())
    vc = config.vision_config
    patches = (vc.image_size // vc.patch_size) ** 2 if hasattr(vc, "patch_size") else config.image_seq_length
    return Shape(tokens=tokens, image_tokens=config.image_seq_length, vision_tokens=patches + 1, llm_params=llm,
                 vision_params=vision, layers=config.text_config.num_hidden_layers,
                 width=config.text_config.hidden_size)


def synthetic_batch(model: RegionGPTForConditionalGeneration, batch: int, seq_len: int, regions: int,
                    device: torch.device, dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    """``batch`` samples of exactly ``seq_len`` tokens: the image's placeholders, ``regions``
    region placeholders (one per region, each its own box mask) and random text; labels on
    the text after the image."""
    config = model.config
    g = torch.Generator().manual_seed(seed)
    n_image = config.image_seq_length
    if seq_len < n_image + regions + 2:
        raise SystemExit(f"--seq-len {seq_len} is shorter than the image's {n_image} tokens + regions + 2")
    vocab = config.text_config.vocab_size
    special = {config.image_token_id, config.region_token_id, config.text_config.pad_token_id}
    ids = torch.randint(0, vocab, (batch, seq_len), generator=g)
    for token in special - {None}:
        ids[ids == token] = (token + 7) % vocab if (token + 7) % vocab not in special else 1
    ids[:, 1:1 + n_image] = config.image_token_id
    # regions referred to in the text after the image, spread over the text
    slots = torch.linspace(2 + n_image, seq_len - 2, regions).long() if regions else torch.zeros(0, dtype=torch.long)
    ids[:, slots] = config.region_token_id
    size = config.vision_config.image_size
    masks = torch.zeros(batch * regions, size, size)
    for r in range(batch * regions):
        x0, y0 = torch.randint(0, size // 2, (2,), generator=g).tolist()
        w, h = torch.randint(size // 8, size // 2, (2,), generator=g).tolist()
        masks[r, y0:y0 + h, x0:x0 + w] = 1.0
    boxes = torch.tensor([[0.0, 0.0, size / 2, size / 2]]).repeat(batch * regions, 1)
    labels = ids.clone()
    labels[:, :2 + n_image] = -100
    labels[ids == config.region_token_id] = -100
    inputs = {
        "input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
        "pixel_values": torch.randn(batch, 3, size, size, generator=g),
        "region_masks": masks, "region_boxes": boxes,
        "region_image_index": torch.arange(batch).repeat_interleave(regions),
        "region_token_index": torch.arange(batch * regions),
    }
    out = {k: v.to(device) for k, v in inputs.items()}
    out["pixel_values"] = out["pixel_values"].to(dtype)
    return out


def loss_of(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled tokens (fp32), as the recipe computes it."""
    labels = inputs["labels"]
    logits = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                             ignore_index=-100)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Build, warm up, time ``--steps`` steps; return the numbers (and the settings they came from)."""
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.weights]
    torch.manual_seed(0)
    model = build_model(args, device, dtype)
    inputs = synthetic_batch(model, args.batch_size, args.seq_len, args.regions, device, dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, foreach=True) if args.step == "full" else None
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.autocast
                else contextlib.nullcontext())

    def step() -> float:
        with autocast:
            loss = loss_of(model, inputs)
        loss.backward()
        if optimizer is not None:
            optimizer.step()
        for p in params:
            p.grad = None
        return float(loss.detach())

    for _ in range(args.warmup):
        step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    synchronize(device)
    seconds = (time.perf_counter() - started) / args.steps

    shape = model_shape(model, args.seq_len)
    flops = shape.flops_per_sample() * args.batch_size
    peak = args.peak_tflops
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if peak is None and device.type == "cuda" and any(n in device_name for n in ("H100", "H200")):
        peak = H100_H200_BF16_PEAK_TFLOPS
    result: dict[str, Any] = {
        "device": device_name, "preset": args.preset, "step": args.step, "weights": args.weights,
        "autocast": args.autocast, "activation_checkpointing": args.activation_checkpointing,
        "batch_size": args.batch_size, "seq_len": args.seq_len, "regions": args.regions,
        "step_s": seconds, "tokens_per_s": args.batch_size * args.seq_len / seconds,
        "samples_per_s": args.batch_size / seconds, "model_tflops_per_s": flops / seconds / 1e12,
        "peak_tflops": peak, "mfu": (flops / seconds / 1e12 / peak) if peak else None,
        "loss": loss, "shape": asdict(shape),
    }
    if device.type == "cuda":
        result["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="llava-1.5-7b", help="model preset (regiongpt.model.presets)")
    parser.add_argument("--text-overrides", default="{}", help="JSON: language model config fields")
    parser.add_argument("--vision-overrides", default="{}", help="JSON: vision tower config fields")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--weights", choices=("bf16", "fp32"), default="bf16",
                        help="parameter precision (bf16: AdamW states in bf16 too; fp32 + --autocast: the recipe's)")
    parser.add_argument("--autocast", action="store_true", help="bf16 autocast (use with --weights fp32)")
    parser.add_argument("--step", choices=("full", "fwd-bwd"), default="full",
                        help="full: forward, backward, AdamW; fwd-bwd: without the optimiser")
    parser.add_argument("--batch-size", type=int, default=4, help="samples (images) per step")
    parser.add_argument("--seq-len", type=int, default=2048, help="LLM tokens per sample, image tokens included")
    parser.add_argument("--regions", type=int, default=8, help="region placeholders per sample")
    parser.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--attention", default="sdpa", help="transformers attention implementation")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="device peak for MFU (default: 989 on an H100/H200, else MFU is not reported)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = measure(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
