"""Evaluation speed: queries per second of each benchmark on the built-in model.

    OMP_NUM_THREADS=2 python bench/eval_speed.py [--images 40] [--workdir runs/eval-speed]

Every benchmark runs through `regiongpt eval` (the engine: all queries about an image in one
batch, 8 images per engine call) on the held-out images of a synthetic world, which `regiongpt
synth` writes in each benchmark's own layout: COCO instances (coco-cls), the refer layout
(refcocog-caption, rec) and POPE files (pope); for vg-caption this script writes a Visual
Genome `region_descriptions.json` of the same images (region phrase = the brief caption).
DLC-Bench is left out: its time is the judge's (an external LLM server); the model's part is
detailed captioning. Writes bench/eval_speed.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def write_vg(world: Path, out: Path) -> Path:
    """A Visual Genome region_descriptions.json (and test-split id file) of the world's val images."""
    from PIL import Image

    instances = json.loads((world / "instances.json").read_text())
    val = {img["id"] for img in instances["images"] if img.get("split") == "val"}
    by_image: dict[int, list] = {}
    for ann in instances["annotations"]:
        if ann["image_id"] in val:
            x, y, w, h = ann["bbox"]
            by_image.setdefault(ann["image_id"], []).append(
                {"region_id": ann["id"], "image_id": ann["image_id"], "phrase": ann["attributes"]["brief"],
                 "x": int(x), "y": int(y), "width": max(1, int(w)), "height": max(1, int(h))})
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    files = {img["id"]: img["file_name"] for img in instances["images"]}
    for image_id in by_image:
        target = images / f"{image_id}.jpg"  # VG's layout: <id>.jpg
        if not target.exists():
            Image.open(world / "images" / Path(files[image_id]).name).convert("RGB").save(target, quality=95)
    path = out / "region_descriptions.json"
    path.write_text(json.dumps([{"id": i, "regions": r} for i, r in sorted(by_image.items())]))
    (out / "test.json").write_text(json.dumps(sorted(by_image)))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=40, help="held-out images per benchmark")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "eval-speed")
    parser.add_argument("--model", default=None, help="model (default: the built-in one)")
    args = parser.parse_args()
    world = args.workdir / "world"
    cli = [sys.executable, "-m", "regiongpt.cli.main"]
    if not (world / "meta.json").exists():
        subprocess.run(cli + ["synth", str(world), "--images", str(args.images * 2), "--seed", "1",
                              "--val-fraction", "0.5", "--quiet", "--overwrite"], check=True, cwd=ROOT)
    vg = write_vg(world, args.workdir / "vg")
    model = ["--model", args.model] if args.model else []
    benchmarks = {
        "synth": ["--data", str(world), "--split", "val"],
        "coco-cls": ["--data", str(world / "instances.json"), "--images", str(world / "images")],
        "rec": ["--data", str(world), "--images", str(world / "images"), "--split", "val"],
        "refcocog-caption": ["--data", str(world), "--images", str(world / "images"), "--split", "val"],
        "vg-caption": ["--data", str(vg), "--images", str(vg.parent / "images"),
                       "--split-file", str(vg.parent / "test.json")],
        "pope": ["--data", str(world / "pope"), "--images", str(world / "images")],
    }
    rows = []
    for name, data in benchmarks.items():
        out = args.workdir / name
        command = cli + ["eval", name, *model, *data, "--out", str(out), "--limit", str(args.images),
                         "--overwrite", "--quiet", "--no-semantic"]
        print("$", " ".join(command[2:]), flush=True)
        started = time.time()
        subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        wall = time.time() - started
        results = json.loads((out / "results.json").read_text())
        timing = results["timing"]
        queries = sum(1 for _ in (out / "predictions.jsonl").open())
        shown = " ".join(os.path.relpath(c, ROOT) if c.startswith(str(ROOT)) else c for c in command[3:])
        rows.append((name, queries, timing["model_s"], timing["queries_per_s"], wall, shown))
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    lines = [
        "# Evaluation speed on the built-in model",
        "",
        f"`OMP_NUM_THREADS={threads} python bench/eval_speed.py {' '.join(sys.argv[1:])}` on {platform.machine()} "
        f"({os.cpu_count()} cores, CPU, fp32), {time.strftime('%Y-%m-%d')}. {args.images} held-out synthetic "
        "images per benchmark; model time is the engine's (image encoding, prefill, decoding), wall time "
        "includes loading the model and the data and scoring (METEOR/CIDEr for captions). coco-cls also "
        "scores every category's likelihood per region (COCOeval's mAP needs them), 14 extra scored "
        "answers per query here.",
        "",
        "| benchmark | queries | model s | queries/s | wall s |",
        "|---|---|---|---|---|",
        *[f"| {n} | {q} | {m:.1f} | {qps:.1f} | {w:.1f} |" for n, q, m, qps, w, _ in rows],
        "",
        "Commands:",
        "",
        *[f"- `regiongpt {c}`" for *_, c in rows],
    ]
    (ROOT / "bench" / "eval_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
