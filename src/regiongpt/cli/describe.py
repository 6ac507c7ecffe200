"""`regiongpt describe IMAGE --box ... [--task brief|detailed|classify|label]`: one answer per region."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from regiongpt.cli.describe_batch import is_batch_input, run_batch
from regiongpt.cli.common import (
    add_model_arguments, add_region_arguments, check_inputs, load_model, parse_regions, save_picture,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "describe",
        help="describe, classify or label every region of an image",
        description="Answer one task-guided question per region, all regions in one batch. "
        "Example: regiongpt describe scene.png --box 10,20,80,90 --box 100,40,160,120 --task brief",
    )
    parser.add_argument("image", help="an image file; or, for a batch job, a folder of images, a native .jsonl "
                        "or a COCO instances .json (every annotation is a region)")
    add_region_arguments(parser)
    parser.add_argument("--task", default="brief", choices=["brief", "detailed", "classify", "label"],
                        help="brief caption, detailed description, classification or free label (default brief)")
    parser.add_argument("--categories", default=None, metavar="A,B,C",
                        help="category names for --task classify (default: the model's own list)")
    parser.add_argument("--scores", action="store_true", help="also report log-likelihood scores")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="answer length limit")
    add_model_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--save-vis", type=Path, default=None, metavar="OUT.png",
                        help="save the image with numbered coloured regions and their answers")
    batch = parser.add_argument_group("batch jobs (folder / .jsonl / COCO .json input)")
    batch.add_argument("--output", type=Path, default=None, metavar="OUT.jsonl",
                       help="results, one line per image, written as they come; rerun to resume")
    batch.add_argument("--images", default=None, metavar="DIR", help="image folder of a COCO file")
    batch.add_argument("--batch-images", type=int, default=4, help="images answered together (default 4)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if is_batch_input(args.image):
        regions = parse_regions(args) if args.regions else None
        return run_batch(load_model(args), args, regions)
    regions = parse_regions(args)
    check_inputs(args.image, regions)
    model = load_model(args)
    categories = [c.strip() for c in args.categories.split(",") if c.strip()] if args.categories else None
    answers = model.describe(args.image, regions, task=args.task, categories=categories,
                             return_scores=args.scores, max_new_tokens=args.max_new_tokens)
    if args.save_vis:
        save_picture(args.image, regions, [a.text for a in answers], args.save_vis)
    if args.json:
        payload = {"image": str(args.image), "task": args.task, "answers": [
            {"region": a.region + 1, "answer": a.text,
             **({"score": a.score} if a.score is not None else {}),
             **({"category_scores": a.category_scores} if a.category_scores else {})}
            for a in answers]}
        if args.save_vis:
            payload["picture"] = str(args.save_vis)
        print(json.dumps(payload, indent=2))
    else:
        for a in answers:
            score = f"  (score {a.score:.2f})" if a.score is not None else ""
            print(f"{a.region + 1}: {a.text}{score}")
        if args.save_vis:
            print(f"picture: {args.save_vis}")
    return 0
