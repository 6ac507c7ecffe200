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
knows (the adversarial split's colour questions) are left out and counted. bench/demo_model.md ("Twenty-fourth
round") has the numbers.
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
    largest = dict(zip(images, label_head_presence(model, processor, [world / "images" / name for name in images])))
    print("| split | questions scored | left out (no category named) | ROC area | accuracy at 0.5 | "
          "best threshold: accuracy |\n|---|---|---|---|---|---|")
    scored_all: list[tuple[float, bool]] = []
    left_out_all = 0
    for split in (*SPLITS, "all"):
        if split == "all":
            scored, left_out = scored_all, left_out_all
        else:
            scored, left_out = [], 0
            for q in questions[split]:
                match = QUESTION.search(q["text"])
                if match and match.group(1) in names:
                    scored.append((float(largest[q["image"]][names.index(match.group(1))]), q["label"] == "yes"))
                else:  # e.g. the adversarial split's colour questions: the marks name categories only
                    left_out += 1
            scored_all += scored
            left_out_all += left_out
        present = torch.tensor([s for s, yes in scored if yes])
        absent = torch.tensor([s for s, yes in scored if not yes])
        thresholds = torch.linspace(0.0, 1.0, 201).tolist()
        best = max(thresholds, key=lambda t: accuracy(present, absent, t))
        print(f"| {split} | {len(scored)} | {left_out} | {auc(present, absent):.3f} | {accuracy(present, absent, 0.5):.3f} | "
              f"{best:.3f}: {accuracy(present, absent, best):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
