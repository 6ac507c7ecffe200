"""How well a checkpoint's region label head (``model.region_labels``) sees, and how long its marks are.

    python bench/region_label_probe.py CHECKPOINT --world WORLD [--images 40] [--batch 8]

On the first ``--images`` held-out images of a synthetic world (or any native data set whose
regions carry the head's fields), prints per field how often the head's most likely value is the
region's label, and the mean length of the region marks over that of the connector's output (the
marks are rescaled to about 1: much less and the language model cannot see them). The model runs in
evaluation mode, as at inference. bench/demo_model.md (fourteenth round) reads it.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch

from regiongpt.data.native import read_native_jsonl
from regiongpt.training.builders import load_model_and_processor
from regiongpt.training.region_pretrain import region_label


def probe(checkpoint: Path, world: Path, images: int, batch: int) -> tuple[dict[str, float], float, int]:
    """(accuracy per field, mean mark length / region-embedding length, regions scored)."""
    model, processor = load_model_and_processor(checkpoint)
    head = model.model.region_label_head
    if head is None:
        raise SystemExit(f"{checkpoint} has no region label head: train it with model.region_labels")
    names = model.config.region_label_names
    samples = [s for s in itertools.islice(read_native_jsonl(world / "native" / "val.jsonl"), images) if s.regions]
    right = dict.fromkeys(names, 0)
    counted = dict.fromkeys(names, 0)
    ratios, n = [], 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(samples), batch):
            chunk = samples[i:i + batch]
            regions = [r for s in chunk for r in s.regions]
            visual = processor.prepare_images(
                [str(s.image_path()) for s in chunk],
                [[{"segmentation": r.mask} if r.mask else {"box": r.box} for r in s.regions] for s in chunk])
            vision = model.model.encode_images(visual["pixel_values"])
            pooled = model.model.pool_regions(vision, visual["region_masks"], visual["region_image_index"],
                                              visual["region_boxes"])
            logits = head(pooled)
            embeds = model.model.connector(pooled)
            marks = head.marks(logits, model.get_input_embeddings(), embeds)
            ratios.append(float((marks.norm(dim=-1) / embeds.norm(dim=-1)).mean()))
            for field, values in names.items():
                for guess, region in zip(logits[field].argmax(-1).tolist(), regions):
                    label = region_label(region, field)
                    if label is not None:
                        counted[field] += 1
                        right[field] += values[guess] == label
            n += len(regions)
    if not n:
        raise SystemExit(f"no held-out region in {world}/native/val.jsonl")
    return {f: right[f] / max(1, counted[f]) for f in names}, sum(ratios) / len(ratios), n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--world", type=Path, required=True, help="a synthetic world (WORLD/native/val.jsonl)")
    parser.add_argument("--images", type=int, default=40, help="held-out images to score")
    parser.add_argument("--batch", type=int, default=8, help="images a forward pass")
    args = parser.parse_args(argv)
    accuracy, ratio, n = probe(args.checkpoint, args.world, args.images, args.batch)
    print(f"| field | head accuracy ({n} held-out regions) |\n|---|---|")
    for field, value in accuracy.items():
        print(f"| {field} | {value:.3f} |")
    print(f"\nmark length / region embedding length: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
