"""`regiongpt chat IMAGE --box ... "question about <region1>"`: one reply, streamed as it is written."""

from __future__ import annotations

import argparse
import json
import sys

from regiongpt.cli.common import add_model_arguments, add_region_arguments, check_inputs, load_model, parse_regions


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "chat",
        help="ask a free question about an image and its regions",
        description="Ask about the image and its numbered regions; write <region1>, <region2>, ... in the "
        'question. Example: regiongpt chat scene.png --box 10,20,80,90 "What is <region1>?"',
    )
    parser.add_argument("image", help="the image file")
    parser.add_argument("message", help="your question; refer to regions as <region1>, <region2>, ...")
    add_region_arguments(parser)
    add_model_arguments(parser)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="reply length limit")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    parser.add_argument("--json", action="store_true", help="print JSON instead of streaming text")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    regions = parse_regions(args) if args.regions else []
    check_inputs(args.image, regions)
    model = load_model(args)
    messages = [{"role": "user", "content": args.message}]
    if args.json:
        reply = model.chat(args.image, regions, messages, max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature, top_p=args.top_p)
        print(json.dumps({"image": str(args.image), "message": args.message, "reply": reply}))
        return 0
    for piece in model.chat(args.image, regions, messages, max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature, top_p=args.top_p, stream=True):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
