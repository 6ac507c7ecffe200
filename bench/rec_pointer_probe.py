"""Teacher-forced look at direct REC answers ("Region [k]"): does one attention head point at the
right candidate, does the model write the right number, and does the number follow the head?

    OMP_NUM_THREADS=1 python bench/rec_pointer_probe.py CHECKPOINT WORLD [--images 40] [--layer -1] [--head 0]

WORLD is a synthetic world with direct REC answers (`regiongpt synth`); the REC turns of its first
``--images`` validation conversations are fed with the right answer. For each number written:
``head`` = the head's attention is highest on the right candidate (among the question's
candidates); ``number`` = the model's most likely token is the right digit; ``number_follows_head``
= the most likely digit names the candidate the head attends to most. A head trained with
``train.rec_pointer_weight`` that points well while ``number`` stays at chance means the answer
does not read the head yet (bench/demo_model.md, "Seventh round").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from teacher_forced import rec_turns  # noqa: E402


@torch.no_grad()
def pointer_accuracy(api, samples, layer: int = -1, head: int = 0) -> dict:
    """{"head", "number", "number_follows_head", "count"} over the samples' direct REC turns."""
    from regiongpt.training.rec_pointer import AttentionInputCapture, digit_tokens, rec_pointers

    model, processor = api.model, api.processor
    digits = digit_tokens(processor.tokenizer.get_vocab())
    capture = AttentionInputCapture(model.model.language_model.layers[layer].self_attn)
    counts = {"head": 0, "number": 0, "number_follows_head": 0, "count": 0}
    try:
        for turn in rec_turns(api, samples):
            inputs = turn.inputs
            pointers = rec_pointers(inputs["input_ids"], turn.answer_index, turn.answer_tasks,
                                    processor.region_token_id, inputs.get("region_token_index"), digits)
            if not pointers:
                continue  # no match: nothing to point at
            logits = model(**{k: v.to(model.device) for k, v in inputs.items()}).logits[0]
            for p in pointers:
                log_attention = capture.head_log_attention(0, p.query, head)
                pointed = int(log_attention[list(p.candidates)].argmax())
                written = digits.get(int(logits[p.query].argmax()))
                counts["count"] += 1
                counts["head"] += int(pointed == p.answer)
                counts["number"] += int(written is not None and int(written) - 1 == p.answer)
                counts["number_follows_head"] += int(written is not None and int(written) - 1 == pointed)
    finally:
        capture.remove()
    n = counts.pop("count")
    return {**{k: v / n if n else None for k, v in counts.items()}, "count": n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("world", type=Path)
    parser.add_argument("--images", type=int, default=40, help="validation images whose REC turns are scored")
    parser.add_argument("--layer", type=int, default=-1, help="the language-model layer of the head")
    parser.add_argument("--head", type=int, default=0, help="the head")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from regiongpt import RegionGPT
    from regiongpt.data.native import read_native_jsonl

    samples = list(read_native_jsonl(args.world / "native" / "val.jsonl"))[: args.images]
    result = pointer_accuracy(RegionGPT.load(args.checkpoint), samples, args.layer, args.head)
    if not result["count"]:
        raise SystemExit(f"no direct REC answers naming a region in {args.world}'s first {args.images} validation "
                         "images: write it with `regiongpt synth` (direct answers)")
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
