"""Teacher-forced look at the first hop of REC answers: which of the phrase's words does the
phrase head gather where the answer's number is written?

    OMP_NUM_THREADS=1 python bench/phrase_attention_probe.py CHECKPOINT WORLD [--images 60] [--layer -2] [--head 0]

WORLD is a synthetic world (`regiongpt synth`); the REC turns of its first ``--images`` validation
conversations are fed with the right answer, each as a turn of its own (the question alone after
the image, as the evaluation asks it). At the position that writes the answer's number, the head
(``train.phrase_pointer_layer`` / ``train.phrase_pointer_head``) is read: its attention on the
phrase's words, summed per label field (category, colour, size, texture: the names of
``model.region_labels``), averaged over the phrases that name a field beside the category. A head
that gathers the whole phrase splits its attention between the fields; the forty-first build put
1.00 on the category and nothing on the rest (bench/demo_model.md, sixteenth round).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from teacher_forced import rec_turns  # noqa: E402


def label_word_spans(ids: list[int], targets: Sequence[int], words: Sequence[tuple[int, ...]]
                     ) -> list[tuple[list[int], tuple[int, ...]]]:
    """(positions, word) of each label word the pointer's ``targets`` cover, read left to right with
    the longest name first (as ``label_word_positions`` found them)."""
    spans, held, p = [], set(targets), 0
    while p < len(ids):
        word = next((w for w in words if p in held and tuple(ids[p : p + len(w)]) == w), None)
        if word is None:
            p += 1
            continue
        spans.append((list(range(p, p + len(word))), word))
        p += len(word)
    return spans


@torch.no_grad()
def phrase_attention(api, samples, layer: int = -2, head: int = 0) -> tuple[dict[str, float], int]:
    """({field: mean attention on that field's words}, number of phrases read), over REC phrases
    that name a label field beside the category."""
    from regiongpt.training.phrase_pointer import label_word_sequences, phrase_pointers
    from regiongpt.training.rec_pointer import AttentionInputCapture, digit_tokens

    model, processor = api.model, api.processor
    config = model.config
    if not config.region_label_token_ids:
        raise SystemExit("the model has no model.region_labels: its phrase words have no fields to read")
    field_of = {tuple(ids): field for field, names in config.region_label_token_ids.items() for ids in names}
    words = label_word_sequences(config.image_label_token_ids, config.region_label_token_ids)
    digits = digit_tokens(processor.tokenizer.get_vocab())
    capture = AttentionInputCapture(model.model.language_model.layers[layer].self_attn)
    sums: dict[str, float] = defaultdict(float)
    count = 0
    try:
        for turn in rec_turns(api, samples):
            inputs = turn.inputs
            rows = phrase_pointers(inputs["input_ids"], turn.answer_index, turn.answer_tasks, words, digits)
            if not rows:
                continue
            row = rows[0]
            model(**{k: v.to(model.device) for k, v in inputs.items()})
            attention = capture.head_log_attention(0, row.query, head).exp()
            per_field: dict[str, float] = defaultdict(float)
            for span, word in label_word_spans(inputs["input_ids"][0].tolist(), row.targets, words):
                if word in field_of:
                    per_field[field_of[word]] += float(attention[span].sum())
            if len([f for f in per_field if f != "category"]) == 0:
                continue  # the phrase names the category alone
            count += 1
            for field in config.region_label_token_ids:
                sums[field] += per_field.get(field, 0.0)
    finally:
        capture.remove()
    return {field: value / count for field, value in sums.items()} if count else {}, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("world", type=Path)
    parser.add_argument("--images", type=int, default=60, help="validation images whose REC turns are read")
    parser.add_argument("--layer", type=int, default=-2, help="the phrase head's language-model layer")
    parser.add_argument("--head", type=int, default=0, help="the phrase head")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from regiongpt import RegionGPT
    from regiongpt.data.native import read_native_jsonl

    samples = list(read_native_jsonl(args.world / "native" / "val.jsonl"))[: args.images]
    shares, count = phrase_attention(RegionGPT.load(args.checkpoint), samples, args.layer, args.head)
    if not count:
        raise SystemExit(f"no REC phrase naming a colour, size or texture in {args.world}'s first {args.images} "
                         "validation images: write it with `regiongpt synth`")
    print(f"{count} REC phrases naming a field beside the category; layer {args.layer}, head {args.head}\n")
    print("| field | attention on its words |\n|---|---|")
    for field, share in shares.items():
        print(f"| {field} | {share:.3f} |")


if __name__ == "__main__":
    main()
