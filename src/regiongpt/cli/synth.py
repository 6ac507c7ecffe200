"""``regiongpt synth``: write the procedural synthetic world (images + COCO/refer/POPE/native files)."""

from __future__ import annotations

import argparse
import sys

from regiongpt.data.synth.conversation import REC_PHRASE_STYLES
from regiongpt.processing.instructions import REC_ANSWER_STYLES

DESCRIPTION = """Generate the synthetic region-understanding world: PNG scenes of 1-8 shapes
(14 categories, 10 colours, 4 textures, 3 sizes) with occlusion and clutter, exact visible
masks, captions, referring expressions, relations and yes/no questions. Writes
OUT/images/, OUT/instances.json (COCO), OUT/refcocog/ (refer layout), OUT/pope/ (POPE
questions), OUT/native/{train,val}.jsonl (native samples), OUT/meta.json, OUT/README.md and
OUT/gallery.png. The same seed gives byte-identical files."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``synth`` sub-command."""
    parser = subparsers.add_parser(
        "synth",
        help="generate the synthetic world data set",
        description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("out", metavar="OUT", help="output folder (new or empty, unless --overwrite)")
    parser.add_argument("--images", type=int, default=1000, help="number of images to generate")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    parser.add_argument("--width", type=int, default=256, help="image width in pixels")
    parser.add_argument("--height", type=int, default=192, help="image height in pixels")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="fraction of images held out for validation")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT, replacing a previous world")
    parser.add_argument("--rec-per-image", type=_count_or_all, default=2, metavar="N|all",
                        help="REC questions per native conversation; 'all': one per referring expression of "
                             "every region (train them with data.independent_tasks=[rec])")
    parser.add_argument("--existence-per-image", type=_count_or_all, default=1, metavar="N|all",
                        help="yes/no existence questions per native conversation: N present and N absent; "
                             "'all': every category, and each present one in its colour and in another")
    parser.add_argument("--rec-phrases", choices=REC_PHRASE_STYLES, default="first",
                        help="how native REC questions pick their phrases: 'first' (each asked object by its first "
                             "referring expression), 'either' (the same objects, those that share their category by "
                             "either of their two referring expressions), 'referring' (by either expression, "
                             "objects that share their category asked 3x as often) or 'both' (what 'first' asks, "
                             "then, up to --rec-per-image, the other expressions of objects that share their "
                             "category)")
    parser.add_argument("--rec-answers", choices=REC_ANSWER_STYLES, default="direct",
                        help="how native conversations answer REC questions: 'direct' (\"Region [2]\", the paper's "
                             "form) or 'checked' (each candidate's brief caption and yes/no before the choice, "
                             "\"Region [1]: small red bar, no. Region [2]: large blue ring, yes. So it is Region [2].\")")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _count_or_all(text: str) -> int | None:
    """A non-negative count, or None for 'all'."""
    if text.strip().lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a count >= 0 or 'all', got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    """Write the world and print a one-line summary."""
    from regiongpt.data.synth.writers import write_world

    meta = write_world(
        args.out,
        images=args.images,
        seed=args.seed,
        width=args.width,
        height=args.height,
        val_fraction=args.val_fraction,
        overwrite=args.overwrite,
        progress=not args.quiet,
        rec_per_image=args.rec_per_image,
        existence_per_image=args.existence_per_image,
        rec_answers=args.rec_answers,
        rec_phrases=args.rec_phrases,
    )
    print(
        f"wrote {meta['images']} images ({meta['splits']['train']} train, {meta['splits']['val']} val), "
        f"{meta['annotations']} regions, {meta['refs']} referred objects ({meta['sentences']} referring expressions) to {args.out}",
        file=sys.stdout,
    )
    return 0
