"""Linear probes: which region attributes a checkpoint's region features carry, before and
after the connector (what the language model reads).

    OMP_NUM_THREADS=1 python bench/region_probe.py CHECKPOINT [--world runs/demo-build/world] [--images 300]

Pools every region of the first N held-out images of a synthetic world, then fits one linear
classifier per attribute (category, colour, texture, size) on 70% of the regions and reports
its accuracy on the other 30%, for the pooled features (vision width) and for the region
embeddings after the connector. bench/demo_model.md uses it to find where colour is lost.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent.parent
ATTRIBUTES = ("category", "colour", "texture", "size")


def region_features(checkpoint: str, world: Path, n_images: int):
    """(pooled features (R, C), region embeddings (R, D), labels per attribute) of the held-out regions."""
    import regiongpt  # noqa: F401
    from regiongpt.data.native import read_native_jsonl
    from regiongpt.training.builders import load_model_and_processor

    model, processor = load_model_and_processor(checkpoint)
    model.eval()
    samples = list(read_native_jsonl(world / "native" / "val.jsonl"))[:n_images]
    pooled, embedded, labels = [], [], {a: [] for a in ATTRIBUTES}
    with torch.no_grad():
        for start in range(0, len(samples), 16):
            batch = samples[start : start + 16]
            visual = processor.prepare_images([str(s.image_path()) for s in batch],
                                              [[{"segmentation": r.mask} for r in s.regions] for s in batch])
            args = (visual["region_masks"], visual["region_image_index"], visual["region_boxes"])
            vision = model.model.encode_images(visual["pixel_values"])
            pooled.append(model.model.pool_regions(vision, *args))
            embedded.append(model.model.encode_regions(vision, *args))
            for region in (r for s in batch for r in s.regions):
                labels["category"].append(region.category)
                for name in ATTRIBUTES[1:]:
                    labels[name].append(region.attributes[name])
    return torch.cat(pooled), torch.cat(embedded), labels


def probe(features: torch.Tensor, labels: list[str], steps: int = 300) -> float:
    """Held-out accuracy of a linear classifier on standardised features (70/30 split)."""
    classes = sorted(set(labels))
    target = torch.tensor([classes.index(label) for label in labels])
    split = int(len(features) * 0.7)
    x = (features - features[:split].mean(0)) / (features[:split].std(0) + 1e-6)
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], len(classes))
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = F.cross_entropy(head(x[:split]), target[:split])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return (head(x[split:]).argmax(1) == target[split:]).float().mean().item()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--world", type=Path, default=ROOT / "runs" / "demo-build" / "world")
    parser.add_argument("--images", type=int, default=300)
    args = parser.parse_args()
    pooled, embedded, labels = region_features(args.checkpoint, args.world, args.images)
    print("| attribute | pooled feature | region embedding |\n|---|---|---|")
    for name in ATTRIBUTES:
        print(f"| {name} | {probe(pooled, labels[name]):.3f} | {probe(embedded, labels[name]):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
