"""``regiongpt data inspect SOURCE``: validate a data source, count it, list problems, render samples."""

from __future__ import annotations

import argparse
import json
import sys

DESCRIPTION = """Data sources. A SOURCE is READER:PATH (see docs/data.md): native:FILE.jsonl,
coco:INSTANCES.json, refcoco:ROOT:DATASET:SPLITBY (e.g. refcoco:refer:refcocog:umd),
vg:region_descriptions.json, llava:CONVERSATIONS.json."""

INSPECT_DESCRIPTION = """Read SOURCE with the reader training uses, then print the number of
images, regions and question-answer pairs per task and split, and every problem found with its
file and index: malformed annotation entries, boxes outside the image, empty masks, missing or
unreadable images and images whose size differs from the annotations. --render N draws the first
N samples (regions numbered and coloured, the conversation below) as PNG files into --out.
--strict stops with an error at the first problem (exit code 2)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` command group."""
    parser = subparsers.add_parser("data", help="inspect and validate training data sources", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="data_command", metavar="COMMAND")
    inspect = commands.add_parser("inspect", help="validate a source, count it, list problems, render samples",
                                  description=INSPECT_DESCRIPTION)
    inspect.add_argument("source", metavar="SOURCE", help="READER:PATH, e.g. coco:annotations/instances_val2017.json")
    inspect.add_argument("--images", metavar="DIR", help="folder the image file names are relative to "
                         "(default: the reader's, see docs/data.md)")
    inspect.add_argument("--split", metavar="S", help="keep only this split (comma-separated for several)")
    inspect.add_argument("--tasks", metavar="T,T", help="tasks to build (default: the reader's), e.g. classify,brief")
    inspect.add_argument("--seed", type=int, default=0, help="seed of the prompt paraphrases (default 0)")
    inspect.add_argument("--max-samples", type=int, metavar="N", help="read only the first N samples")
    inspect.add_argument("--check-images", choices=("none", "exists", "header", "decode"), default="header",
                         help="how to check images: existence, header (size; default) or a full decode")
    inspect.add_argument("--render", type=int, default=0, metavar="N", help="draw the first N samples as PNG")
    inspect.add_argument("--out", metavar="DIR", help="folder for the rendered PNG files")
    inspect.add_argument("--strict", action="store_true", help="stop with an error at the first problem")
    inspect.add_argument("--json", action="store_true", help="print the result as JSON")
    inspect.add_argument("--max-problems", type=int, default=20, metavar="N", help="problems listed in the text report")
    inspect.set_defaults(func=run_inspect)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


def run_inspect(args: argparse.Namespace) -> int:
    """Inspect one source and print the report."""
    from regiongpt.data.inspect import format_result, inspect_source
    from regiongpt.errors import InvalidInputError
    from regiongpt.training.data import resolve_source

    if args.render < 0:
        raise InvalidInputError(f"--render must be >= 0, got {args.render}")
    if args.render and not args.out:
        raise InvalidInputError("--render needs --out DIR, the folder the PNG files go to")
    source = resolve_source(args.source, images=args.images, split=args.split, tasks=args.tasks, seed=args.seed,
                            max_samples=args.max_samples, strict=args.strict)
    result = inspect_source(source, check_images=args.check_images, render=args.render, out=args.out,
                            strict=args.strict)
    if args.json:
        print(json.dumps(result.to_json(), indent=2), file=sys.stdout)
    else:
        print(format_result(result, args.max_problems), file=sys.stdout)
    return 0
