"""The paper's ablations on the synthetic world, each with the same training budget.

    python bench/ablation.py [--steps 700] [--region-pretrain-steps 600] [--parallel 2] [--variants ...]

Every variant trains `configs/demo.yaml` (the built-in model's recipe) from scratch on the same
world, with the same seed, steps, batch and task schedule, changing one thing:

  full                   RegionGPT as the built-in model: 2x residual feature refinement, mask
                         pooling, task-guided instruction suffixes
  no-refinement          refine_factor 1: regions pooled from the coarse 12x12 map
  roi-box                box RoI pooling (RoIAlign on the coarse map) instead of mask pooling
  no-task-suffix         questions without their task-guided scope suffix, in training and evaluation
  reference-refinement   the paper's plain (non-residual) refinement

then `regiongpt eval synth` on held-out images (classification, brief-caption exact match, REC
with candidates, yes/no existence, per difficulty bucket). The default budget (700 steps) covers
the schedule's classification and brief-caption phases: the region-level tasks these parts
serve. bench/ablation.md gets the tables and the commands (text below its findings marker is
kept). Every variant keeps the built-in recipe's small-model aids (region shape encoder reading
the region mask, grid position embedding, region number code, region-path pretraining).
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


def train_and_eval(name: str, seed: int, overrides: list[str], args, cli: list[str], world: Path) -> dict:
    """One variant and seed: train (resumed if a run folder exists), evaluate, return its record."""
    folder = args.workdir / (name if seed == 0 else f"{name}-seed{seed}")
    run_dir, eval_dir, record_path = folder / "run", folder / "eval", folder / "record.json"
    if record_path.exists():
        return {"seed": 0, **json.loads(record_path.read_text())}
    command = cli + ["train", "configs/demo.yaml", f"data.train=native:{world}/native/train.jsonl",
                     f"data.val=native:{world}/native/val.jsonl", f"train.output_dir={run_dir}",
                     "train.progress=false", "train.log_every=50", f"train.max_steps={args.steps}",
                     f"train.region_pretrain_steps={args.region_pretrain_steps}", "eval.every_steps=0",
                     f"train.seed={seed}",
                     "checkpoint.every_steps=250", f"data.max_samples={args.train_images}",
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
    shown = " ".join(os.path.relpath(c, ROOT) if c.startswith(str(ROOT)) else c for c in command[3:])
    shown = shown.replace(f"{ROOT}/", "")
    record = {"name": name, "seed": seed, "overrides": overrides, "train_command": shown,
              "train_s": train_s, "eval_s": eval_s, "metrics": metrics}
    record_path.write_text(json.dumps(record, indent=1))
    return record


def _mean_and_seeds(values: list[float | None]) -> str:
    """``0.818`` for one seed, ``0.830 (0.818, 0.842)`` for several."""
    if any(v is None for v in values):
        return "–"
    mean = f"{sum(values) / len(values):.3f}"
    return mean if len(values) == 1 else f"{mean} ({', '.join(f'{v:.3f}' for v in values)})"


def write_report(args, records: list[dict], world: Path) -> None:
    from regiongpt.training.config import load_config

    phases = load_config(ROOT / "configs" / "demo.yaml").data.task_schedule
    schedule = ", ".join(f"{'+'.join(p.tasks)} until step {p.until_step}" for p in phases) + ", then every task"
    lines = [
        "# Ablations on the synthetic world",
        "",
        f"`python bench/ablation.py {' '.join(sys.argv[1:])}` on {platform.machine()} ({os.cpu_count()} cores), "
        f"{time.strftime('%Y-%m-%d')}. Each variant: `configs/demo.yaml` from scratch, seed "
        f"{', '.join(map(str, args.seeds))} (tables: mean over seeds, then each seed), "
        f"{args.region_pretrain_steps} region-pretraining steps, {args.steps} optimiser steps of batch 8 "
        f"on the config's task schedule ({schedule}), "
        f"{args.train_images} training images of `{os.path.relpath(world, ROOT)}`; evaluated with `regiongpt eval synth --split val`"
        + (f" on the first {args.eval_images} held-out images." if args.eval_images else " on the held-out images."),
        "",
        "## Overall",
        "",
        "| variant | change | classification | brief exact | REC | yes/no | train min |",
        "|---|---|---|---|---|---|---|",
    ]
    keys = ("classification", "brief", "rec", "existence")
    for name in args.variants:
        runs = [r for r in records if r["name"] == name]
        values = {k: [headline(r["metrics"])[k] for r in runs] for k in keys}
        cells = " | ".join(_mean_and_seeds(values[k]) for k in keys)
        change = ", ".join(f"`{o}`" for o in runs[0]["overrides"]) or "–"
        minutes = sum(r["train_s"] for r in runs) / len(runs) / 60
        lines.append(f"| {name} | {change} | {cells} | {minutes:.1f} |")
    for record in records:
        seed = f" (seed {record['seed']})" if len(args.seeds) > 1 else ""
        command = record["train_command"].replace(f"{ROOT}/", "").removeprefix("regiongpt.cli.main ")
        lines += ["", f"## {record['name']}{seed}: {VARIANTS[record['name']][0]}", "",
                  *bucket_table(record["metrics"]), "", f"Command: `regiongpt {command}`"]
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
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds per variant")
    parser.add_argument("--region-pretrain-steps", type=int, default=600)
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
        jobs = [(name, seed) for seed in args.seeds for name in args.variants]
        records = list(pool.map(lambda job: train_and_eval(job[0], job[1], VARIANTS[job[0]][1], args, cli, world), jobs))
    write_report(args, records, world)
    return 0


if __name__ == "__main__":
    sys.exit(main())
