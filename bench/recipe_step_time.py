"""Seconds per training step of the recipe on real batches (CPU profiling aid).

    python bench/recipe_step_time.py runs/demo-build/world [--attention turns|sdpa] [--steps 12]
        [--profile] [--pretrain] [--fill-cache GB] [key=value config overrides]

Builds the recipe from ``configs/demo.yaml`` (or ``--config``) on the world's native files,
without region pretraining and with every task from step 0 (the recipe's slowest phase), and
times ``TrainingRecipe.train_step`` over ``--steps`` batches after two warm-up steps
(``train.padding_free=false`` times the padded batches the language model ran on before;
``--fill-cache GB`` first fills and clears the region pretraining's image cache, as a build with
``train.region_pretrain_cache_gb`` does before its language-model phase).
``--attention sdpa`` switches the language model back from turn attention
(``training/turn_attention.py``) to SDPA with the dense independent-turn mask, for comparison;
``--profile`` prints a torch.profiler table of three more steps. ``--pretrain`` times a step of
the region-path pretraining instead (``train.region_pretrain_*`` of the config: batch size,
loader workers, cache; 2 warm-up steps, then ``--steps``), its loader included. bench/demo_model.md ("Twelfth
round") has the numbers.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from regiongpt.training.builders import build_train_loader
from regiongpt.training.config import load_config
from regiongpt.training.recipe import TrainingRecipe
from regiongpt.training.region_pretrain import PreparedImages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("world", help="a `regiongpt synth` folder (its native/train.jsonl and val.jsonl)")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--attention", choices=["turns", "sdpa"], default="turns")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--pretrain", action="store_true", help="time the region-path pretraining's step instead")
    parser.add_argument("--fill-cache", type=float, default=0.0, metavar="GB",
                        help="first fill the region pretraining's image cache with up to GB GiB of the training "
                             "samples and clear it, as a build with train.region_pretrain_cache_gb does before "
                             "the language-model phase (the process's resident memory is printed)")
    args = parser.parse_intermixed_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as out:
        config = load_config(args.config, [
            f"data.train=native:{args.world}/native/train.jsonl", f"data.val=native:{args.world}/native/val.jsonl",
            f"train.output_dir={out}", "train.region_pretrain_steps=0", "train.progress=false", "eval.every_steps=0",
            "data.task_schedule=[]", *args.overrides])
        recipe = TrainingRecipe(config)
        recipe.setup()
        if args.pretrain:
            return time_pretraining(recipe, args.steps, args.profile)
        if args.fill_cache:
            fill_and_clear_cache(recipe, args.fill_cache)
        if args.attention == "sdpa":
            recipe.model.model.language_model.set_attn_implementation("sdpa")
        batches = iter(build_train_loader(recipe.train_dataset, recipe.processor, config, 0, args.steps + 5, 0, 1))
        recipe.model.train()
        seconds, tokens, real = [], [], []
        for step in range(args.steps + 2):
            batch = next(batches)
            started = time.perf_counter()
            recipe.train_step([batch])
            if step >= 2:  # warm-up: first allocations
                seconds.append(time.perf_counter() - started)
                tokens.append(batch.inputs["input_ids"].numel())
                real.append(batch.tokens)
        print(json.dumps({"attention": args.attention, "padding_free": recipe._padding_free(batch),
                          "steps": len(seconds), "seconds_per_step": round(sum(seconds) / len(seconds), 3),
                          "padded_tokens_per_step": sum(tokens) // len(tokens),
                          "real_tokens_per_step": sum(real) // len(real)}))
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(3):
                    recipe.train_step([next(batches)])
            print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25))
    return 0


def fill_and_clear_cache(recipe: TrainingRecipe, gigabytes: float) -> None:
    """Prepare every training sample into a pretraining image cache, then clear it."""
    started = time.perf_counter()
    cache = PreparedImages(recipe.processor, int(gigabytes * 2**30))
    samples = [s for s in recipe.train_samples if s.regions]
    for start in range(0, len(samples), 16):
        cache.prepare(samples[start:start + 16])
    filled = cache.used_bytes
    cache.clear()
    resident = next(line.split(":")[1].strip() for line in open("/proc/self/status") if line.startswith("RssAnon"))
    print(json.dumps({"cache_filled_mib": round(filled / 2**20, 1), "seconds": round(time.perf_counter() - started),
                      "resident_after_clear": resident}))


def time_pretraining(recipe: TrainingRecipe, steps: int, profile: bool) -> int:
    """Print the seconds per region-path pretraining step (the recipe's own pretraining settings)."""
    recipe.pretrain_region_path(2)  # warm-up: first allocations
    started = time.perf_counter()
    recipe.pretrain_region_path(steps)
    seconds = time.perf_counter() - started
    print(json.dumps({"phase": "region_pretrain", "steps": steps, "seconds_per_step": round(seconds / steps, 3)}))
    if profile:
        from torch.profiler import ProfilerActivity, profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            recipe.pretrain_region_path(3)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
