"""Teacher-forced accuracy of checked REC answers, part by part: does a checkpoint compare each
candidate with the phrase (the yes/no of each check), and does it caption the candidates?

    OMP_NUM_THREADS=1 python bench/rec_checked_probe.py CHECKPOINT WORLD [--images 40]

WORLD is a synthetic world written with `regiongpt synth --rec-answers checked`; its first
``--images`` validation conversations' REC turns are fed with the right answer, and each check's
yes/no and every other answer token is scored by the model's most likely next token. Greedy REC
accuracy (`regiongpt eval rec`) needs every check right; this tells which part fails
(bench/demo_model.md, "Sixth round").
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
VERDICT = re.compile(r", (yes|no)\.")


def first_tokens_of_runs(labels: torch.Tensor) -> list[int]:
    """Positions where a run of labelled (not -100) tokens starts."""
    marked = (labels != -100).tolist()
    return [i for i, m in enumerate(marked) if m and (i == 0 or not marked[i - 1])]


@torch.no_grad()
def checked_answer_accuracy(api, samples) -> dict:
    """{"yes", "no", "balanced", "other_tokens"} accuracies and counts over the samples' REC turns."""
    right = {"yes": 0, "no": 0, "other_tokens": 0}
    seen = dict(right)
    for sample in samples:
        regions = [{"segmentation": r.mask} if r.mask else {"box": r.box} for r in sample.regions]
        turns = sample.conversations
        for human, answer in zip(turns[0::2], turns[1::2]):
            if human.get("task") != "rec" or not VERDICT.search(answer["value"]):
                continue
            question = human["value"].replace("<image>\n", "")
            prompt = api._prompt([{"role": "user", "content": f"<image>\n{question}"}])
            text = prompt + answer["value"]
            verdicts = list(VERDICT.finditer(answer["value"]))
            spans = [(len(prompt) + m.start(1), len(prompt) + m.end(1)) for m in verdicts]
            image = str(sample.image_path())
            inputs = api.processor(images=image, text=text, regions=regions, target_spans=spans)
            whole = api.processor(images=image, text=text, regions=regions, target_spans=[(len(prompt), len(text))])
            logits = api.model(**{k: v.to(api.model.device) for k, v in inputs.items() if k != "labels"}).logits[0]
            predicted = logits.argmax(-1).cpu()  # position i predicts token i + 1
            labels = inputs["labels"][0]
            starts = first_tokens_of_runs(labels)
            if len(starts) != len(verdicts):
                raise SystemExit(f"{sample.id}: found {len(verdicts)} checks but {len(starts)} labelled runs")
            for position, match in zip(starts, verdicts):
                kind = match.group(1)
                seen[kind] += 1
                right[kind] += int(predicted[position - 1] == labels[position])
            others = (whole["labels"][0] != -100) & (labels == -100)
            others[0] = False
            positions = others.nonzero().flatten()
            seen["other_tokens"] += len(positions)
            right["other_tokens"] += int((predicted[positions - 1] == whole["labels"][0][positions]).sum())
    result = {k: right[k] / seen[k] if seen[k] else None for k in right}
    if seen["yes"] and seen["no"]:
        result["balanced"] = (result["yes"] + result["no"]) / 2
    result["counts"] = seen
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("world", type=Path)
    parser.add_argument("--images", type=int, default=40, help="validation images whose REC turns are scored")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from regiongpt import RegionGPT
    from regiongpt.data.native import read_native_jsonl

    samples = list(read_native_jsonl(args.world / "native" / "val.jsonl"))[: args.images]
    result = checked_answer_accuracy(RegionGPT.load(args.checkpoint), samples)
    if not result["counts"]["yes"] + result["counts"]["no"]:
        raise SystemExit(f"no checked REC answers in {args.world}: write it with `regiongpt synth --rec-answers checked`")
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
