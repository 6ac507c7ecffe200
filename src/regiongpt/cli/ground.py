"""`regiongpt ground IMAGE --box ... "phrase"`: which region a referring expression means."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from regiongpt.cli.common import (
    add_model_arguments, add_region_arguments, check_inputs, load_model, parse_regions, save_picture,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ground",
        help="find the region a phrase refers to",
        description="Pick the candidate region a referring expression means (or none). "
        'Example: regiongpt ground scene.png --box 10,20,80,90 --box 100,40,160,120 "the red star"',
    )
    parser.add_argument("image", help="the image file")
    parser.add_argument("phrase", help="the referring expression")
    add_region_arguments(parser)
    add_model_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--save-vis", type=Path, default=None, metavar="OUT.png",
                        help="save the image with the candidates, marking the chosen one")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    regions = parse_regions(args)
    check_inputs(args.image, regions)
    model = load_model(args)
    result = model.ground(args.image, regions, args.phrase)
    if args.save_vis:
        captions = [f"<- '{args.phrase}'" if i == result.region else "" for i in range(len(regions))]
        save_picture(args.image, regions, captions, args.save_vis)
    if args.json:
        print(json.dumps({"image": str(args.image), "phrase": args.phrase,
                          "region": None if result.region is None else result.region + 1, "answer": result.text}))
    else:
        print(f"region {result.region + 1}" if result.region is not None else f"no region fits ({result.text})")
    return 0
