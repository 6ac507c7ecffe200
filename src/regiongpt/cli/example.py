"""`regiongpt example`: the built-in model on a freshly generated synthetic scene.

Draws a new scene of the synthetic world (not seen in training), then asks the model, for
all its regions at once, for a brief description and a category, and asks it to locate one
object from a referring expression. Prints the answers next to the truth and saves a
picture with the numbered, coloured regions and the model's captions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from regiongpt.cli.common import add_model_arguments, load_model


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "example",
        help="run the built-in model on a new synthetic scene (text + picture)",
        description="Generate a synthetic scene, describe, classify and locate its regions with the model "
        "(default: the built-in one), print the answers beside the truth and save a picture.",
    )
    parser.add_argument("--out", type=Path, default=Path("regiongpt-example"),
                        help="folder for scene.png and answers.png (default ./regiongpt-example)")
    parser.add_argument("--seed", type=int, default=2024, help="which scene to draw (default 2024)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_model_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from regiongpt.cli.common import save_picture
    from regiongpt.data.synth.generate import generate_scene
    from regiongpt.processing.rle import encode_rle

    rng = np.random.default_rng(args.seed)
    scene = generate_scene(rng)
    while len(scene.objects) < 3:  # a scene with a few regions shows more
        scene = generate_scene(rng)
    args.out.mkdir(parents=True, exist_ok=True)
    image_path = args.out / "scene.png"
    Image.fromarray(scene.image).save(image_path)
    regions = [{"segmentation": encode_rle(obj.mask)} for obj in scene.objects]

    model = load_model(args)
    briefs = model.describe(str(image_path), regions, task="brief")
    classes = model.describe(str(image_path), regions, task="classify")
    target = max(range(len(scene.objects)), key=lambda k: scene.objects[k].area)
    phrase = scene.objects[target].referring[0] if scene.objects[target].referring else scene.objects[target].brief
    grounded = model.ground(str(image_path), regions, phrase)
    captions = [f"{b.text} ({c.text})" for b, c in zip(briefs, classes)]
    picture = args.out / "answers.png"
    save_picture(str(image_path), regions, captions, picture)

    rows = [{"region": k + 1, "brief": b.text, "category": c.text, "true_brief": obj.brief,
             "true_category": obj.category} for k, (b, c, obj) in enumerate(zip(briefs, classes, scene.objects))]
    found = None if grounded.region is None else grounded.region + 1
    if args.json:
        print(json.dumps({"scene": str(image_path), "picture": str(picture), "regions": rows,
                          "ground": {"phrase": phrase, "answer": found, "truth": target + 1}}, indent=2))
        return 0
    print(f"scene: {image_path} ({len(regions)} regions)")
    for row in rows:
        mark = "ok " if row["brief"] == row["true_brief"] else "   "
        print(f"{mark}{row['region']}: {row['brief']:<34} class: {row['category']:<10} "
              f"(truth: {row['true_brief']})")
    print(f"ground '{phrase}': region {found} (truth: region {target + 1})")
    print(f"picture: {picture}")
    return 0
