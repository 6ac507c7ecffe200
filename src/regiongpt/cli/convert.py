"""`regiongpt convert llava SRC DST`: turn a transformers LLaVA-1.5 checkpoint into RegionGPT."""

from __future__ import annotations

import argparse
from pathlib import Path

from regiongpt.errors import InvalidInputError

DTYPES = {"auto": None, "float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a LLaVA-1.5 checkpoint into a RegionGPT one",
        description="Convert a transformers LlavaForConditionalGeneration checkpoint (local folder or hub id) "
        "and its processor into a RegionGPT checkpoint whose region-free answers are unchanged.",
    )
    parser.add_argument("source_format", choices=["llava"], help="format of SRC")
    parser.add_argument("src", help="LLaVA checkpoint folder or hub id (e.g. llava-hf/llava-1.5-7b-hf)")
    parser.add_argument("dst", type=Path, help="output folder for the RegionGPT checkpoint")
    parser.add_argument("--dtype", choices=list(DTYPES), default="auto", help="weight dtype (default: as saved)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty DST")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from regiongpt.model.conversion import convert_llava

    if args.dst.exists() and any(args.dst.iterdir()) and not args.overwrite:
        raise InvalidInputError(f"{args.dst} is not empty; choose a new folder or pass --overwrite")
    src_path = Path(args.src)
    if (src_path.is_absolute() or args.src.startswith(".")) and not src_path.exists():
        raise InvalidInputError(f"{args.src} does not exist; give a LLaVA checkpoint folder or a hub id")
    dtype = getattr(torch, DTYPES[args.dtype]) if DTYPES[args.dtype] else None
    try:
        out = convert_llava(args.src, args.dst, dtype=dtype)
    except OSError as error:
        raise InvalidInputError(f"could not load a LLaVA checkpoint from {args.src}: {error}") from None
    print(f"wrote RegionGPT checkpoint to {out}")
    return 0
