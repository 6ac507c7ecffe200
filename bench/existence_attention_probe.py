"""Teacher-forced look at yes/no existence answers: where does each head of one layer look when it
writes "Yes" or "No"?

    OMP_NUM_THREADS=1 python bench/existence_attention_probe.py CHECKPOINT WORLD [--images 40] [--layer -1]

WORLD is a synthetic world (`regiongpt synth`); the existence turns of its first ``--images``
validation conversations are asked as the evaluation asks them (the image, no regions) and fed
with the right answer. For each head of ``--layer`` it prints, at the position that writes the
answer, the mean attention on the sequence's first token, on the image tokens of the cells that
hold the asked category's regions ("Yes" answers only) and on all image tokens, for "Yes" and
"No" answers apart. A head that answers by lookup (``train.existence_pointer_weight``: the first
token for "No", the asked cells for "Yes") puts far more on the first token for "No"; when the two
rows match, where it looks does not depend on the question (bench/demo_model.md, fifteenth round).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


@torch.no_grad()
def existence_attention(api, samples, layer: int = -1) -> dict[str, list[dict[str, float]]]:
    """{"yes": [per head: {"first", "asked", "image", "count"}], "no": [...]} ("asked" is nan for "no")."""
    from regiongpt.training.data import answer_runs
    from regiongpt.training.existence_pointer import existence_pointers
    from regiongpt.training.rec_pointer import AttentionInputCapture

    model, processor = api.model, api.processor
    grid = model.config.image_grid_size
    heads = model.config.text_config.num_attention_heads
    capture = AttentionInputCapture(model.model.language_model.layers[layer].self_attn)
    sums = {kind: [{"first": 0.0, "asked": 0.0, "image": 0.0, "count": 0} for _ in range(heads)]
            for kind in ("yes", "no")}
    try:
        for sample in samples:
            regions = [{"segmentation": r.mask} if r.mask else {"box": r.box} for r in sample.regions]
            image = str(sample.image_path())
            masks = processor.prepare_images([image], [regions])["region_masks"] if regions else None
            turns = sample.conversations
            for human, answer in zip(turns[0::2], turns[1::2]):
                if human.get("task") != "existence" or answer.get("evidence") is None:
                    continue
                question = human["value"].replace("<image>\n", "")
                prompt = api._prompt([{"role": "user", "content": f"<image>\n{question}"}])
                text = prompt + answer["value"]
                inputs = processor(images=image, text=text, target_spans=[(len(prompt), len(text))])
                labels = inputs.pop("labels")
                answer_index, tasks = answer_runs(labels, [["existence"]])
                index = torch.zeros(len(regions), dtype=torch.long) if regions else None
                pointers = existence_pointers(inputs["input_ids"], answer_index, tasks, [tuple(answer["evidence"])],
                                              processor.image_token_id, masks, index, grid)
                if not pointers:
                    continue  # the asked regions cover no cell
                model(**{k: v.to(model.device) for k, v in inputs.items()})
                p = pointers[0]
                kind = "no" if p.targets == (0,) else "yes"
                image_positions = [q for q in (*p.targets, *p.others) if q != 0]
                for head in range(heads):
                    attention = capture.head_log_attention(0, p.query, head).exp()
                    row = sums[kind][head]
                    row["first"] += float(attention[0])
                    row["asked"] += float(attention[list(p.targets)].sum()) if kind == "yes" else 0.0
                    row["image"] += float(attention[image_positions].sum())
                    row["count"] += 1
    finally:
        capture.remove()
    for kind, rows in sums.items():
        for row in rows:
            n = row["count"]
            for key in ("first", "asked", "image"):
                row[key] = row[key] / n if n and not (kind == "no" and key == "asked") else float("nan")
    return sums


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("world", type=Path)
    parser.add_argument("--images", type=int, default=40, help="validation images whose yes/no turns are scored")
    parser.add_argument("--layer", type=int, default=-1, help="the language-model layer whose heads are read")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from regiongpt import RegionGPT
    from regiongpt.data.native import read_native_jsonl

    samples = list(read_native_jsonl(args.world / "native" / "val.jsonl"))[: args.images]
    result = existence_attention(RegionGPT.load(args.checkpoint), samples, args.layer)
    if not result["yes"][0]["count"] + result["no"][0]["count"]:
        raise SystemExit(f"no yes/no answers with evidence in {args.world}'s first {args.images} validation images: "
                         "write it with `regiongpt synth`")
    print("| answer | head | questions | first token | asked cells | all image tokens |\n|---|---|---|---|---|---|")
    for kind, rows in result.items():
        for head, row in enumerate(rows):
            print(f"| {kind} | {head} | {row['count']} | {row['first']:.3f} | {row['asked']:.3f} | {row['image']:.3f} |")


if __name__ == "__main__":
    main()
