"""How well could a yes/no answer read from the image label head alone be? (its ceiling for POPE)

    OMP_NUM_THREADS=2 python bench/label_head_roc.py [--model PATH] [--world runs/world0]

A model with image label marks (``model.image_labels``, model/image_labels.py) answers "Is there a
<category> in the image?" from marks that carry, on each image token, the largest per-cell
probability of each category. This script scores that probability alone as a yes/no classifier on
the world's POPE questions (``WORLD/pope/synth_pope_*.jsonl``, held-out images): per split, the
area under the ROC curve (the chance that a present category's probability exceeds an absent
one's), the accuracy at 0.5 and at the best threshold. The language model's own POPE accuracy
(``regiongpt eval synth``) cannot beat the best-threshold accuracy by much: what the marks do not
separate, the language model cannot tell apart either. Questions that name no category the head
knows are left out and counted; so are the adversarial split's colour questions ("Is there a purple
triangle?" beside a blue one, all answered "no") unless the head also classifies colours
(``model.image_attributes``): then a colour question's score is the largest, over cells, of the
category's probability times the colour's, and they get a row of their own. bench/demo_model.md
("Twenty-fourth round" on) has the numbers.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shape_probe import label_head_presence  # noqa: E402

SPLITS = ("random", "popular", "adversarial")
QUESTION = re.compile(r"Is there an? (.+?) in the image\?")


def auc(present: torch.Tensor, absent: torch.Tensor) -> float:
    """P(a present score > an absent one) + half the ties: the ROC curve's area."""
    greater = (present[:, None] > absent[None]).float().mean()
    ties = (present[:, None] == absent[None]).float().mean()
    return float(greater + 0.5 * ties)


def accuracy(present: torch.Tensor, absent: torch.Tensor, threshold: float) -> float:
    return float(((present > threshold).sum() + (absent <= threshold).sum()) / (len(present) + len(absent)))


def colour_presence(model, processor, images) -> torch.Tensor:
    """(N, K, C): per image, for each category k and colour c of the image label head, the largest over map
    cells of p(k) * p(c): how sure the head is that one cell shows a c-coloured k."""
    said = []
    with torch.no_grad():
        for i in range(0, len(images), 50):
            pixels = processor.prepare_images([str(image) for image in images[i:i + 50]])["pixel_values"]
            vision = model.model.encode_images(pixels)
            categories = vision.image_label_logits.float().softmax(1)[:, :-1].flatten(2)  # (B, K, cells)
            colours = vision.image_attribute_logits["colour"].float().softmax(1)[:, :-1].flatten(2)  # (B, C, cells)
            said.append((categories[:, :, None] * colours[:, None]).amax(-1))
    return torch.cat(said)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a model folder (default: the built-in model)")
    parser.add_argument("--world", default="runs/world0", help="a `regiongpt synth` folder with pope/ and images/")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from regiongpt import RegionGPT

    loaded = RegionGPT.load(args.model)
    model, processor = loaded.model.eval(), loaded.processor
    names = list(model.config.image_label_names or [])
    if not names:
        raise SystemExit(f"{args.model or 'the built-in model'} has no image label head (model.image_labels)")
    world = Path(args.world)
    questions = {split: [json.loads(line) for line in open(world / "pope" / f"synth_pope_{split}.jsonl")]
                 for split in SPLITS}
    images = sorted({q["image"] for qs in questions.values() for q in qs})
    # per image: (K,) each category's largest per-cell probability
    paths = [world / "images" / name for name in images]
    largest = dict(zip(images, label_head_presence(model, processor, paths)))
    colour_names = list((model.config.image_attribute_names or {}).get("colour") or [])
    joint = dict(zip(images, colour_presence(model, processor, paths))) if colour_names else {}
    print("| split | questions scored | left out (no category named) | ROC area | accuracy at 0.5 | "
          "best threshold: accuracy |\n|---|---|---|---|---|---|")
    scored_all: list[tuple[float, bool]] = []
    colour_scores: list[float] = []  # colour questions (all "no" in the world's POPE)
    left_out_all = 0
    for split in (*SPLITS, "all"):
        if split == "all":
            scored, left_out = scored_all, left_out_all
        else:
            scored, left_out = [], 0
            for q in questions[split]:
                match = QUESTION.search(q["text"])
                words = match.group(1).split() if match else []
                if len(words) == 1 and words[0] in names:
                    scored.append((float(largest[q["image"]][names.index(words[0])]), q["label"] == "yes"))
                elif joint and len(words) == 2 and words[0] in colour_names and words[1] in names:
                    score = float(joint[q["image"]][names.index(words[1]), colour_names.index(words[0])])
                    scored.append((score, q["label"] == "yes"))
                    if q["label"] == "no":
                        colour_scores.append(score)
                else:  # e.g. the adversarial split's colour questions when the marks name categories only
                    left_out += 1
            scored_all += scored
            left_out_all += left_out
        present = torch.tensor([s for s, yes in scored if yes])
        absent = torch.tensor([s for s, yes in scored if not yes])
        thresholds = torch.linspace(0.0, 1.0, 201).tolist()
        best = max(thresholds, key=lambda t: accuracy(present, absent, t))
        print(f"| {split} | {len(scored)} | {left_out} | {auc(present, absent):.3f} | {accuracy(present, absent, 0.5):.3f} | "
              f"{best:.3f}: {accuracy(present, absent, best):.3f} |")
    if colour_scores:
        said_no = torch.tensor(colour_scores)
        print(f"\nColour questions (\"no\" questions naming a present category in a colour it lacks): "
              f"{len(colour_scores)}; said no at 0.5: {float((said_no <= 0.5).float().mean()):.3f}, "
              f"at the best threshold of all ({best:.3f}): {float((said_no <= best).float().mean()):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
