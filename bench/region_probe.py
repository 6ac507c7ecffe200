"""Linear probes: which region attributes a checkpoint's region features carry, before and
after the connector (what the language model reads).

    OMP_NUM_THREADS=1 python bench/region_probe.py CHECKPOINT [--world runs/demo-build/world] [--images 300]
                                                              [--image-tokens]

Pools every region of the first N held-out images of a synthetic world, then fits one linear
classifier per attribute (category, colour, texture, size) on 70% of the regions and reports
its accuracy on the other 30%, for the pooled features (vision width) and for the region
embeddings after the connector. bench/demo_model.md uses it to find where colour is lost.

`--image-tokens` probes the image tokens too (what yes/no existence questions read): one
logistic head per category on each token, trained on 70% of the images to say whether an
object of that category covers part of the token's cell; on the other 30% it reports the
per-cell balanced accuracy and the image-level yes/no accuracy (a category is "present" when
any token says so) on balanced present/absent pairs, and an image-level head on the mean and
maximum of the tokens (what one summary of the image could answer).
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


def image_token_features(checkpoint: str, world: Path, n_images: int):
    """(tokens before the connector (B, T, C), after it (B, T, D), cell targets (B, T, K), categories)."""
    import regiongpt  # noqa: F401
    from regiongpt.data.native import read_native_jsonl
    from regiongpt.training.builders import load_model_and_processor
    from regiongpt.training.region_pretrain import image_cell_targets

    model, processor = load_model_and_processor(checkpoint)
    model.eval()
    samples = list(read_native_jsonl(world / "native" / "val.jsonl"))[:n_images]
    categories = sorted({r.category for s in samples for r in s.regions})
    grid = model.config.image_grid_size
    before, after, targets = [], [], []
    with torch.no_grad():
        for start in range(0, len(samples), 16):
            batch = samples[start : start + 16]
            visual = processor.prepare_images([str(s.image_path()) for s in batch],
                                              [[{"segmentation": r.mask} for r in s.regions] for s in batch])
            vision = model.model.encode_images(visual["pixel_values"])
            before.append(vision.image_features)
            after.append(vision.image_embeds)
            classes = torch.tensor([categories.index(r.category) for s in batch for r in s.regions])
            targets.append(image_cell_targets(visual["region_masks"], visual["region_image_index"], classes,
                                              len(batch), grid, len(categories)))
    return torch.cat(before), torch.cat(after), torch.cat(targets), categories


def probe_image_tokens(tokens: torch.Tensor, targets: torch.Tensor, steps: int = 300) -> tuple[float, float]:
    """(per-cell balanced accuracy, image-level yes/no accuracy) of per-category logistic heads."""
    split = int(len(tokens) * 0.7)
    flat = tokens.reshape(-1, tokens.shape[-1])
    train_rows = split * tokens.shape[1]
    x = (flat - flat[:train_rows].mean(0)) / (flat[:train_rows].std(0) + 1e-6)
    y = targets.reshape(-1, targets.shape[-1])
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], y.shape[1])
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    positive = y[:train_rows].mean(0).clamp(1e-3, 1 - 1e-3)
    weight = (1 - positive) / positive  # balance present against absent cells
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(head(x[:train_rows]), y[:train_rows], pos_weight=weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        logits = head(x[train_rows:])
        truth = y[train_rows:].bool()
        said = logits > 0
        balanced = 0.5 * ((said & truth).sum() / truth.sum().clamp(min=1)
                          + (~said & ~truth).sum() / (~truth).sum().clamp(min=1))
        image_logits = logits.reshape(-1, tokens.shape[1], y.shape[1]).amax(1)  # (images, K)
        image_truth = targets[split:].amax(1).bool()
        yes = (image_logits > 0)
        image_balanced = 0.5 * ((yes & image_truth).sum() / image_truth.sum().clamp(min=1)
                                + (~yes & ~image_truth).sum() / (~image_truth).sum().clamp(min=1))
    return float(balanced), float(image_balanced)


def probe_image_presence(tokens: torch.Tensor, targets: torch.Tensor, steps: int = 300) -> float:
    """Balanced yes/no accuracy of per-category logistic heads trained on *image-level* presence
    from the mean and the maximum of the image's tokens: what one image-level summary of the
    tokens could tell (70/30 split of the images)."""
    split = int(len(tokens) * 0.7)
    x = torch.cat([tokens.mean(1), tokens.amax(1)], 1)
    x = (x - x[:split].mean(0)) / (x[:split].std(0) + 1e-6)
    y = targets.amax(1)  # (images, K): the category covers some cell
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], y.shape[1])
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    positive = y[:split].mean(0).clamp(1e-3, 1 - 1e-3)
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(head(x[:split]), y[:split], pos_weight=(1 - positive) / positive)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        yes, truth = head(x[split:]) > 0, y[split:].bool()
        return float(0.5 * ((yes & truth).sum() / truth.sum().clamp(min=1)
                            + (~yes & ~truth).sum() / (~truth).sum().clamp(min=1)))


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
    parser.add_argument("--image-tokens", action="store_true", help="also probe the image tokens (existence)")
    args = parser.parse_args()
    pooled, embedded, labels = region_features(args.checkpoint, args.world, args.images)
    print("| attribute | pooled feature | region embedding |\n|---|---|---|")
    for name in ATTRIBUTES:
        print(f"| {name} | {probe(pooled, labels[name]):.3f} | {probe(embedded, labels[name]):.3f} |")
    if args.image_tokens:
        before, after, targets, _ = image_token_features(args.checkpoint, args.world, args.images)
        print("\n| image tokens: category present | before the connector | after it |\n|---|---|---|")
        cells = [probe_image_tokens(t, targets) for t in (before, after)]
        print(f"| per cell (balanced accuracy) | {cells[0][0]:.3f} | {cells[1][0]:.3f} |")
        print(f"| per image, any cell (balanced yes/no) | {cells[0][1]:.3f} | {cells[1][1]:.3f} |")
        pooled_yes = [probe_image_presence(t, targets) for t in (before, after)]
        print(f"| per image, from mean + max of the tokens (balanced yes/no) | {pooled_yes[0]:.3f} | "
              f"{pooled_yes[1]:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
