"""The paper's ablations on the synthetic world, each with the same training budget.

    python bench/ablation.py [--steps 700] [--region-pretrain-steps 400] [--variants full no-refinement ...]

Every variant trains `configs/demo.yaml` (the built-in model's recipe) from scratch on the same
world, with the same seed, steps, batch and schedule, changing one thing:

  full                   RegionGPT as the built-in model: 2x residual feature refinement, mask
                         pooling, task-guided instruction suffixes
  no-refinement          refine_factor 1: regions pooled from the coarse 12x12 map
  roi-box                box RoI pooling (RoIAlign on the coarse map) instead of mask pooling
  no-task-suffix         questions without their task-guided scope suffix, in training and evaluation
  reference-refinement   the paper's plain (non-residual) refinement

then `regiongpt eval synth` on the held-out images (classification, brief-caption exact match,
REC with candidates, yes/no existence, per difficulty bucket). bench/ablation.md gets the tables
and the commands (text below its findings marker is kept). Note that every variant keeps the built-in recipe's small-model aids (region
shape encoder reading the region mask, grid position embedding, region-path pretraining): see
the report's caveats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth_report import bucket_table, headline  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

FINDINGS_MARKER = "<!-- findings: written by hand, kept when the tables are rewritten -->"

VARIANTS: dict[str, tuple[str, list[str]]] = {
    "full": ("RegionGPT (2x residual refinement, mask pooling, task suffixes)", []),
    "no-refinement": ("no feature refinement (coarse 12x12 map)", ["model.overrides.refine_factor=1"]),
    "roi-box": ("box RoI pooling on the coarse map", ["model.overrides.region_pooling=roi_box"]),
    "no-task-suffix": ("no task-guided instruction suffix", ["model.task_suffix=false"]),
    "reference-refinement": ("reference (non-residual) refinement", ["model.overrides.refine_residual=false"]),
}


def run(command: list[str], threads: int | None = None) -> float:
    print("$", " ".join(command), flush=True)
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    start = time.time()
    subprocess.run(command, check=True, cwd=ROOT, env=env)
    return time.time() - start


def newest_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = sorted(p for p in run_dir.glob("ckpt-*") if p.is_dir() and not p.name.endswith(".tmp"))
    return checkpoints[-1] if checkpoints else None


def name_label_set(checkpoint: Path) -> None:
    """Classification prompts name the world's label set, as in training (bench/demo_model.py step 3)."""
    import regiongpt  # noqa: F401
    from transformers import AutoProcessor

    from regiongpt.data.synth.conversation import CLASSIFY_VOCABULARY
    from regiongpt.data.synth.world import CATEGORIES

    processor = AutoProcessor.from_pretrained(checkpoint)
    processor.categories = list(CATEGORIES)
    processor.category_vocabulary = CLASSIFY_VOCABULARY
    processor.save_pretrained(checkpoint)


def train_and_eval(name: str, overrides: list[str], args, cli: list[str], world: Path) -> dict:
    """One variant: train (resumed if a run folder exists), evaluate, return its record."""
    run_dir, eval_dir = args.workdir / name / "run", args.workdir / name / "eval"
    record_path = args.workdir / name / "record.json"
    if record_path.exists():
        return json.loads(record_path.read_text())
    command = cli + ["train", "configs/demo.yaml", f"data.train=native:{world}/native/train.jsonl",
                     f"data.val=native:{world}/native/val.jsonl", f"train.output_dir={run_dir}",
                     "train.progress=false", "train.log_every=50", f"train.max_steps={args.steps}",
                     f"train.region_pretrain_steps={args.region_pretrain_steps}", "eval.every_steps=0",
                     "checkpoint.every_steps=250", f"data.max_samples={args.train_images}",
                     f"data.task_schedule=[{{until_step: {args.classify_steps}, tasks: [classify]}}]",
                     *overrides]
    threads = 1 if args.parallel > 1 else None
    train_s = run(command, threads)
    checkpoint = newest_checkpoint(run_dir)
    name_label_set(checkpoint)
    eval_command = cli + ["eval", "synth", "--model", str(checkpoint), "--data", str(world), "--split", "val",
                          "--out", str(eval_dir), "--overwrite", "--quiet"]
    if args.eval_images:
        eval_command += ["--limit", str(args.eval_images)]
    eval_s = run(eval_command, threads)
    metrics = json.loads((eval_dir / "results.json").read_text())["metrics"]
    record = {"name": name, "overrides": overrides, "train_command": " ".join(command[2:]),
              "train_s": train_s, "eval_s": eval_s, "metrics": metrics}
    record_path.write_text(json.dumps(record, indent=1))
    return record


def write_report(args, records: list[dict], world: Path) -> None:
    lines = [
        "# Ablations on the synthetic world",
        "",
        f"`python bench/ablation.py {' '.join(sys.argv[1:])}` on {platform.machine()} ({os.cpu_count()} cores), "
        f"{time.strftime('%Y-%m-%d')}. Each variant: `configs/demo.yaml` from scratch, seed 0, "
        f"{args.region_pretrain_steps} region-pretraining steps, {args.steps} optimiser steps of batch 8 "
        f"(classification alone until step {args.classify_steps}, then every task), "
        f"{args.train_images} training images of `{world}`; evaluated with `regiongpt eval synth --split val`"
        + (f" on the first {args.eval_images} held-out images." if args.eval_images else " on the held-out images."),
        "",
        "## Overall",
        "",
        "| variant | change | classification | brief exact | REC | yes/no | train min |",
        "|---|---|---|---|---|---|---|",
    ]
    for record in records:
        h = headline(record["metrics"])
        cells = " | ".join("–" if h[k] is None else f"{h[k]:.3f}" for k in ("classification", "brief", "rec", "existence"))
        change = ", ".join(f"`{o}`" for o in record["overrides"]) or "–"
        lines.append(f"| {record['name']} | {change} | {cells} | {record['train_s'] / 60:.1f} |")
    for record in records:
        lines += ["", f"## {record['name']}: {VARIANTS[record['name']][0]}", "", *bucket_table(record["metrics"]),
                  "", f"Command: `regiongpt {record['train_command']}`"]
    path = ROOT / "bench" / "ablation.md"
    kept = path.read_text().split(FINDINGS_MARKER, 1)[1] if path.exists() and FINDINGS_MARKER in path.read_text() else ""
    path.write_text("\n".join(lines) + f"\n\n{FINDINGS_MARKER}" + (kept or "\n"))
    print(f"wrote {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, default=ROOT / "runs" / "demo-build" / "world",
                        help="synthetic world (generated with --images if missing)")
    parser.add_argument("--images", type=int, default=8500, help="world size when it is generated")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "ablation")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=700, help="optimiser steps per variant")
    parser.add_argument("--region-pretrain-steps", type=int, default=600)
    parser.add_argument("--classify-steps", type=int, default=300,
                        help="steps of classification alone before every task is mixed in")
    parser.add_argument("--train-images", type=int, default=8000)
    parser.add_argument("--eval-images", type=int, default=250, help="held-out images evaluated (0 = all)")
    parser.add_argument("--parallel", type=int, default=1,
                        help="variants trained at once (each with OMP_NUM_THREADS=1 when > 1)")
    args = parser.parse_args()
    cli = [sys.executable, "-m", "regiongpt.cli.main"]
    world = args.world.resolve()
    if not (world / "meta.json").exists():
        run(cli + ["synth", str(world), "--images", str(args.images), "--seed", "0",
                   "--val-fraction", str(500 / args.images), "--quiet"])
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:  # each variant is its own processes
        records = list(pool.map(lambda name: train_and_eval(name, VARIANTS[name][1], args, cli, world), args.variants))
    write_report(args, records, world)
    return 0


if __name__ == "__main__":
    sys.exit(main())
