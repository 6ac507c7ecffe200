"""Retrain the built-in demo model from scratch and report its held-out accuracy.

    python bench/demo_model.py [--images 8000] [--workdir runs/demo-build] [--no-export]

Steps (each a real `regiongpt` command, so this is what a user can rerun):
1. `regiongpt synth` a synthetic world (seeded; 8,000 train + 500 val images at 256x192);
2. `regiongpt train configs/demo.yaml` on it (CPU; classification + brief captions first,
   then every task);
3. name the world's label set in the checkpoint's processor (classification prompts use it);
4. `regiongpt eval synth` on the held-out images: region classification, brief-caption exact
   match, REC with candidate regions and yes/no existence, overall and per difficulty tag;
5. export to src/regiongpt/assets/demo-model (safetensors) and write bench/demo_model_results.md
   (with --no-export: nothing is replaced, and the record goes to WORKDIR/results.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth_report import bucket_table, headline  # noqa: E402

from regiongpt.data.synth.conversation import REC_PHRASE_STYLES  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"classification": 0.95, "brief": 0.80, "rec": 0.90, "existence": 0.90}  # issue: the built-in model
ASSET = ROOT / "src" / "regiongpt" / "assets" / "demo-model"
REC_ANSWERS = "direct"  # the world's REC answer style (bench/demo_model.md, "Sixth round")
REC_PER_IMAGE = 8  # REC questions a training conversation at most (bench/demo_model.md, "Eleventh round")
# how the world's REC questions pick their phrases (`regiongpt synth --rec-phrases`): what "first" asks
# and the other expressions of objects that share their category (bench/demo_model.md, twenty-first round)
REC_PHRASES = "both"
EXISTENCE_PER_IMAGE = 2  # yes/no questions a training conversation: this many present, as many absent


def run(command: list[str]) -> float:
    print("$", " ".join(command), flush=True)
    start = time.time()
    subprocess.run(command, check=True, cwd=ROOT)
    return time.time() - start


def planned_steps(run_dir: Path) -> int:
    """train.max_steps of the run (0 when its config.yaml says nothing)."""
    import yaml

    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    return int((config.get("train") or {}).get("max_steps") or 0)


def newest_checkpoint(run_dir: Path) -> Path:
    checkpoints = sorted(p for p in run_dir.glob("ckpt-*") if p.is_dir() and not p.name.endswith(".tmp"))
    if not checkpoints:
        raise SystemExit(f"no checkpoint in {run_dir}")
    return checkpoints[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8500, help="world size (train + val)")
    parser.add_argument("--val-images", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rec-answers", choices=("direct", "checked"), default=REC_ANSWERS,
                        help="how the world's conversations answer REC questions (`regiongpt synth --rec-answers`)")
    parser.add_argument("--rec-per-image", type=lambda v: v if v == "all" else int(v), default=REC_PER_IMAGE,
                        help="REC questions per training conversation (`regiongpt synth --rec-per-image`)")
    parser.add_argument("--rec-phrases", choices=REC_PHRASE_STYLES, default=REC_PHRASES,
                        help="how the world's REC questions pick their phrases (`regiongpt synth --rec-phrases`)")
    parser.add_argument("--existence-per-image", type=int, default=EXISTENCE_PER_IMAGE,
                        help="present (and as many absent) things a training conversation asks about "
                             "(`regiongpt synth --existence-per-image`)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "demo-build")
    parser.add_argument("--no-export", action="store_true", help="do not replace the shipped model")
    parser.add_argument("--skip-train", action="store_true",
                        help="use the newest checkpoint of an existing (possibly stopped) run in WORKDIR/run")
    parser.add_argument("train_overrides", nargs="*", help="extra key=value overrides for `regiongpt train`")
    args = parser.parse_args()
    cli = [sys.executable, "-m", "regiongpt.cli.main"]
    world, run_dir, eval_dir = args.workdir / "world", args.workdir / "run", args.workdir / "eval"
    times = {}
    wanted = {"images": args.images, "seed": args.seed, "rec_answers": args.rec_answers,
              "rec_per_image": args.rec_per_image, "rec_phrases": args.rec_phrases,
              "existence_per_image": args.existence_per_image}
    # worlds written before these options existed
    meta = {"rec_answers": "direct", "rec_per_image": 2, "rec_phrases": "first", "existence_per_image": 1}
    if (world / "meta.json").exists():
        meta.update(json.loads((world / "meta.json").read_text()))
    if {k: meta.get(k) for k in wanted} != wanted:
        times["synth_s"] = run(cli + ["synth", str(world), "--images", str(args.images), "--seed", str(args.seed),
                                      "--val-fraction", str(args.val_images / args.images),
                                      "--rec-answers", args.rec_answers, "--rec-per-image", str(args.rec_per_image),
                                      "--rec-phrases", args.rec_phrases,
                                      "--existence-per-image", str(args.existence_per_image), "--quiet", "--overwrite"])
    train_command = cli + ["train", "configs/demo.yaml", f"data.train=native:{world}/native/train.jsonl",
                                 f"data.val=native:{world}/native/val.jsonl", f"train.output_dir={run_dir}",
                                 "train.progress=false", "train.log_every=50", *args.train_overrides]
    if args.skip_train:
        checkpoint = newest_checkpoint(run_dir)
        times["train_s"] = checkpoint.stat().st_mtime - (run_dir / "config.yaml").stat().st_mtime
    else:
        times["train_s"] = run(train_command)
        checkpoint = newest_checkpoint(run_dir)
    times["steps"] = int(checkpoint.name.split("-")[-1])

    # 3. the world's label set, named in classification prompts as in training
    import regiongpt  # noqa: F401
    from transformers import AutoProcessor

    from regiongpt.data.synth.conversation import CLASSIFY_VOCABULARY
    from regiongpt.data.synth.world import CATEGORIES

    processor = AutoProcessor.from_pretrained(checkpoint)
    processor.categories = list(CATEGORIES)
    processor.category_vocabulary = CLASSIFY_VOCABULARY
    processor.save_pretrained(checkpoint)

    times["eval_s"] = run(cli + ["eval", "synth", "--model", str(checkpoint), "--data", str(world),
                                       "--split", "val", "--out", str(eval_dir), "--overwrite", "--quiet"])
    results = json.loads((eval_dir / "results.json").read_text())
    if not args.no_export:
        if ASSET.exists():
            shutil.rmtree(ASSET)
        shutil.copytree(checkpoint, ASSET, ignore=shutil.ignore_patterns("training_state.pt", "training_config.yaml"))
    size_mb = sum(f.stat().st_size for f in ASSET.glob("*.safetensors")) / 2**20 if ASSET.exists() else 0.0
    write_report(args, train_command, times, results, size_mb)
    print(json.dumps({"times": times, "metrics": results.get("metrics")}, indent=2))
    return 0


def write_report(args, train_command, times, results, size_mb) -> None:
    metrics = results.get("metrics", {})
    lines = [
        "# The built-in demo model",
        "",
        f"Trained by `python bench/demo_model.py` on {platform.processor() or platform.machine()} "
        f"({os.cpu_count()} cores), {time.strftime('%Y-%m-%d')}.",
        "",
        f"- world: {args.images} images (seed {args.seed}, REC answers {args.rec_answers}, "
        f"{args.rec_per_image} REC questions a conversation, REC phrases {args.rec_phrases}, "
        f"{args.existence_per_image} present + {args.existence_per_image} absent yes/no questions), "
        f"{args.val_images} held out",
        f"- training command: `{' '.join(str(c) for c in train_command[2:])}`",
        f"- trained {times['steps']} optimiser steps"
        + (" (stopped before the configured end)" if times["steps"] < planned_steps(args.workdir / "run") else ""),
        f"- time: synth {times.get('synth_s', 0):.0f} s, train {times['train_s'] / 60:.1f} min, "
        f"eval {times['eval_s']:.0f} s",
        f"- weights: {size_mb:.1f} MB safetensors",
        "",
        f"## Held-out accuracy (`regiongpt eval synth`, {args.val_images} images, greedy)",
        "",
        "| task | result | target |",
        "|---|---|---|",
    ]
    for key, value in headline(metrics).items():
        lines.append(f"| {key} | {'–' if value is None else f'{value:.3f}'} | {TARGETS[key]:.2f} |")
    lines += ["", "Per difficulty bucket:", "", *bucket_table(metrics)]
    # the shipped model's record; a build that is not exported keeps its own beside its run
    target = args.workdir / "results.md" if args.no_export else ROOT / "bench" / "demo_model_results.md"
    target.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
