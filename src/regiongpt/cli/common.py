"""Options shared by the commands that ask a model about regions (describe, ground, chat)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from regiongpt.errors import InvalidInputError


class _RegionAction(argparse.Action):
    """Collects --box / --mask / --polygon / --rle in command-line order (their numbering)."""

    def __call__(self, parser, namespace, values, option_string=None):
        regions = getattr(namespace, "regions", None) or []
        regions.append((self.dest, values))
        namespace.regions = regions


def add_region_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("regions (numbered 1, 2, ... in the order given)")
    group.add_argument("--box", dest="box", action=_RegionAction, metavar="X1,Y1,X2,Y2",
                       help="a box in pixels (see --box-format, --normalized); repeat for more regions")
    group.add_argument("--mask", dest="mask", action=_RegionAction, metavar="PNG",
                       help="a binary mask image the size of IMAGE (non-zero = inside)")
    group.add_argument("--polygon", dest="polygon", action=_RegionAction, metavar="X1,Y1,X2,Y2,...",
                       help="a polygon's vertices in pixels")
    group.add_argument("--rle", dest="rle", action=_RegionAction, metavar="JSON",
                       help="a COCO RLE as JSON text or a .json file ({\"size\": [h, w], \"counts\": ...})")
    group.add_argument("--box-format", choices=["xyxy", "xywh"], default="xyxy", help="box layout (default xyxy)")
    group.add_argument("--normalized", action="store_true", help="box and polygon coordinates are in 0..1")
    parser.set_defaults(regions=None)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="model folder or hub id (default: the built-in demo model)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="weight dtype")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0")


def _numbers(text: str, what: str, count: int | None = None) -> list[float]:
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise InvalidInputError(f"{what} {text!r} must be comma-separated numbers") from None
    if count is not None and len(values) != count:
        raise InvalidInputError(f"{what} {text!r} needs {count} numbers, got {len(values)}")
    return values


def parse_regions(args: argparse.Namespace) -> list[Any]:
    """The regions as the processor takes them, in command-line order."""
    out: list[Any] = []
    for kind, value in args.regions or []:
        if kind == "box":
            out.append({"box": _numbers(value, "--box", 4), "format": args.box_format, "normalized": args.normalized})
        elif kind == "mask":
            out.append({"mask": value})
        elif kind == "polygon":
            points = _numbers(value, "--polygon")
            if len(points) < 6 or len(points) % 2:
                raise InvalidInputError(f"--polygon {value!r} needs at least 3 x,y pairs")
            if args.normalized:
                out.append({"polygon": [points], "normalized": True})
            else:
                out.append({"polygon": [points]})
        elif kind == "rle":
            text = Path(value).read_text() if value.endswith(".json") else value
            try:
                out.append({"segmentation": json.loads(text)})
            except json.JSONDecodeError as error:
                raise InvalidInputError(f"--rle {value!r} is not valid JSON: {error}") from None
    if not out:
        raise InvalidInputError("give at least one region: --box X1,Y1,X2,Y2, --mask PNG, --polygon ... or --rle ...")
    return out


def check_inputs(image: Any, regions: list[Any]) -> None:
    """Fail fast, before loading a model, on an unreadable image or a bad region."""
    from regiongpt.processing.processing_regiongpt import load_image
    from regiongpt.processing.regions import parse_region

    pil = load_image(image)
    for index, region in enumerate(regions):
        parse_region(region, (pil.height, pil.width), index=index)


def load_model(args: argparse.Namespace):
    from transformers.utils import logging as hf_logging

    from regiongpt.inference.api import RegionGPT

    hf_logging.disable_progress_bar()  # keep stderr for our own one-line messages
    return RegionGPT.load(args.model, dtype=args.dtype, device=args.device)


def save_picture(image: Any, regions: list[Any], captions: list[str], out: Path) -> None:
    """The image with numbered coloured regions and their captions (like the paper's figures)."""
    from regiongpt.processing.processing_regiongpt import load_image
    from regiongpt.processing.regions import parse_region
    from regiongpt.visualize import draw_regions

    pil = load_image(image)
    parsed = [parse_region(r, (pil.height, pil.width), index=i) for i, r in enumerate(regions)]
    masks = [p.mask if p.kind != "box" else None for p in parsed]
    boxes = [p.box for p in parsed]
    out.parent.mkdir(parents=True, exist_ok=True)
    draw_regions(pil, masks, boxes, captions).save(out)
