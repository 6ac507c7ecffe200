"""Why REC misses colours: where the colour of a REC phrase and of each candidate region is, at the
input of the layer whose head looks up the answer, and how that head splits its attention.

    OMP_NUM_THREADS=2 python bench/rec_colour_probe.py CHECKPOINT WORLD [--images 120] [--layer -1] [--head 0]

WORLD is a synthetic world with direct REC answers (`regiongpt synth`); the REC turns of its first
``--images`` validation conversations are fed with the right answer (teacher-forced). At the
position where the answer's number is written and at every candidate region token, the probe keeps
the layer's normalised input (what its queries and keys are projected from) and reports:

- ``phrase_colour_decodable`` / ``region_colour_decodable``: held-out accuracy of a linear
  classifier (fitted on the first half of the images, scored on the second) that reads the
  phrase's colour at the answer position (phrases that name one) and each candidate region's
  colour at its token. Both near 1 mean the colours are there for a query-key match to use.
- For phrases that name a colour while another candidate has the target's category
  (``colour_distractor``): the head's attention among the candidates on the target, on the other
  candidates of the target's category and on the rest, and how often the target gets the most.
- ``colour_swapped``: the same questions asked again naming the colour of another candidate of the
  target's category; the head's attention on the target and on that candidate before and after.
  A head that reads the colour moves its attention to the other candidate.

bench/demo_model.md ("Seventeenth round") has the numbers.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from teacher_forced import encode_turn, rec_turns  # noqa: E402
QUOTED = re.compile(r"'([^']*)'")


def linear_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                    classes: int, steps: int = 300) -> float:
    """Held-out accuracy of a softmax classifier fitted on (train_x, train_y) with a little weight decay."""
    if not len(train_y) or not len(test_y):
        return float("nan")
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    torch.manual_seed(0)
    head = torch.nn.Linear(train_x.shape[1], classes)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05, weight_decay=1e-4)
    with torch.enable_grad():  # callers may hold no_grad
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(head((train_x - mean) / std), train_y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return float((head((test_x - mean) / std).argmax(1) == test_y).float().mean())


@torch.no_grad()
def colour_lookup(api, samples, colours: list[str], layer: int = -1, head: int = 0) -> dict:
    """The probe's numbers (see the module docstring) over the samples' direct REC turns."""
    from regiongpt.evaluation.synth_suite import phrase_form
    from regiongpt.training.rec_pointer import AttentionInputCapture, digit_tokens, rec_pointers

    model, processor = api.model, api.processor
    digits = digit_tokens(processor.tokenizer.get_vocab())
    capture = AttentionInputCapture(model.model.language_model.layers[layer].self_attn)
    index = {c: i for i, c in enumerate(colours)}
    half = len(samples) // 2
    phrase_x: list[list[torch.Tensor]] = [[], []]  # [fit, score] halves
    phrase_y: list[list[int]] = [[], []]
    region_x: list[list[torch.Tensor]] = [[], []]
    region_y: list[list[int]] = [[], []]
    split = {"target": 0.0, "same_category": 0.0, "other": 0.0, "target_most": 0, "count": 0}
    swap = {"named_on_target": 0.0, "named_on_other": 0.0, "swapped_on_target": 0.0, "swapped_on_other": 0.0,
            "count": 0}
    try:
        for turn in rec_turns(api, samples):
            sample, inputs = turn.sample, turn.inputs
            part = 0 if turn.item < half else 1
            phrase = QUOTED.search(turn.question)
            pointers = rec_pointers(inputs["input_ids"], turn.answer_index, turn.answer_tasks,
                                    processor.region_token_id, inputs.get("region_token_index"), digits)
            if not pointers or phrase is None:
                continue  # no match: nothing to point at
            model(**{k: v.to(model.device) for k, v in inputs.items()})
            hidden = capture.hidden[0].float().cpu()  # (L, D): the layer's normalised input
            for p in pointers:
                if len(p.candidates) != len(sample.regions):
                    continue  # the world's questions list every region, in order
                candidates = list(sample.regions)
                target = candidates[p.answer]
                colour = (target.attributes or {}).get("colour")
                names_colour = "colour" in phrase_form(phrase.group(1), target.attributes or {})
                if names_colour and colour in index:
                    phrase_x[part].append(hidden[p.query])
                    phrase_y[part].append(index[colour])
                for position, region in zip(p.candidates, candidates):
                    if (region.attributes or {}).get("colour") in index:
                        region_x[part].append(hidden[position])
                        region_y[part].append(index[region.attributes["colour"]])
                same = [k for k, r in enumerate(candidates) if r.category == target.category and k != p.answer]
                if not (names_colour and same):
                    continue
                attention = capture.head_log_attention(0, p.query, head)[list(p.candidates)].softmax(0)
                split["target"] += float(attention[p.answer])
                split["same_category"] += float(attention[same].sum())
                split["other"] += float(1 - attention[p.answer] - attention[same].sum())
                split["target_most"] += int(int(attention.argmax()) == p.answer)
                split["count"] += 1
                # the same question naming a same-category candidate's colour instead: does the head follow?
                other = next((k for k in same if candidates[k].attributes.get("colour") != colour), None)
                if other is None:
                    continue
                swapped = re.sub(rf"\b{colour}\b", candidates[other].attributes["colour"], phrase.group(0))
                swapped_inputs, _, _ = encode_turn(api, sample, turn.regions, turn.prompt,
                                                   turn.text.replace(phrase.group(0), swapped, 1))
                if swapped_inputs["input_ids"].shape != inputs["input_ids"].shape:
                    continue  # the colour names differ in length: positions would not line up
                model(**{k: v.to(model.device) for k, v in swapped_inputs.items()})
                moved = capture.head_log_attention(0, p.query, head)[list(p.candidates)].softmax(0)
                swap["named_on_target"] += float(attention[p.answer])
                swap["named_on_other"] += float(attention[other])
                swap["swapped_on_target"] += float(moved[p.answer])
                swap["swapped_on_other"] += float(moved[other])
                swap["count"] += 1
    finally:
        capture.remove()

    def fit(xs, ys) -> float:
        if not all(xs):
            return float("nan")
        return linear_accuracy(torch.stack(xs[0]), torch.tensor(ys[0]), torch.stack(xs[1]), torch.tensor(ys[1]),
                               len(colours))

    count, swaps = split.pop("count"), swap.pop("count")
    return {"colour_swapped": {**{k: v / swaps if swaps else None for k, v in swap.items()}, "count": swaps},
            "phrase_colour_decodable": fit(phrase_x, phrase_y), "phrases": len(phrase_y[1]),
            "region_colour_decodable": fit(region_x, region_y), "regions": len(region_y[1]),
            "colour_distractor": {**{k: v / count if count else None for k, v in split.items()}, "count": count}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("world", type=Path)
    parser.add_argument("--images", type=int, default=120, help="validation images whose REC turns are read")
    parser.add_argument("--layer", type=int, default=-1, help="the language-model layer of the lookup head")
    parser.add_argument("--head", type=int, default=0, help="the lookup head")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from regiongpt import RegionGPT
    from regiongpt.data.native import read_native_jsonl
    from regiongpt.data.synth.world import COLOUR_NAMES

    samples = list(read_native_jsonl(args.world / "native" / "val.jsonl"))[: args.images]
    result = colour_lookup(RegionGPT.load(args.checkpoint), samples, list(COLOUR_NAMES), args.layer,
                           args.head)
    if not result["colour_distractor"]["count"] and not result["phrases"]:
        raise SystemExit(f"no direct REC answers naming a colour in {args.world}'s first {args.images} validation "
                         "images: write it with `regiongpt synth` (direct answers)")
    print(json.dumps(result, default=lambda v: round(v, 3)))


if __name__ == "__main__":
    main()
