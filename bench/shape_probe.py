"""Can the vision tower tell categories apart from pixels alone (what existence questions need)?

    # the demo model's vision path alone, from scratch, on one target
    OMP_NUM_THREADS=2 python bench/shape_probe.py train [--world runs/demo-build/world] [--target segmentation]
                                                      [--steps 1200] [--batch 16] [--lr 2e-3] [--background-weight 1]
    # a checkpoint's frozen features: fresh heads on its refined map and on its image tokens
    OMP_NUM_THREADS=2 python bench/shape_probe.py probe CHECKPOINT [--world runs/demo-build/world]
    # the recipe's own region-path pretraining (train.region_pretrain_*), then what the model's
    # image label head says (needs model.image_labels)
    OMP_NUM_THREADS=2 python bench/shape_probe.py pretrain [--world ...] [key=value overrides of configs/demo.yaml]

`train` builds the model of `configs/demo.yaml` and trains its vision path (tower, position
embedding, refinement; no shape encoder, no language model) on one target:
`segmentation` (each refined-map cell: the category covering most of it, or background;
`training/segmentation.py`) or `presence` (image level: which categories are in the picture,
from the maximum over the image tokens of a per-token head). Every 100 steps it reports, on
held-out images, the region accuracy from pixels (the segmentation probabilities averaged over
each region's mask) and the balanced yes/no accuracy of "is there a <category>?" (a category
is present when some cell says so with probability > 0.5).

`pretrain` runs the recipe's stage 0 (`training/region_pretrain.py`) as `configs/demo.yaml` with the
given overrides sets it up, and reports the balanced yes/no accuracy of the model's own image
label head on held-out images (at 0.5 and best threshold): what a build's marks will say when the
language model starts.

`probe` encodes 1,500 training and 400 held-out images with a checkpoint, then fits a
segmentation head on the frozen refined map and a per-token presence head on the frozen image
tokens, and reports the same two yes/no accuracies (best over a few thresholds); for a model with
an image label head (`model.image_labels`) also what that head itself says.
bench/demo_model.md ("Ninth round") has the numbers.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent.parent
THRESHOLDS = (0.1, 0.2, 0.3, 0.5, 0.7)


def balanced(said: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean of the recall on present and on absent (image, category) pairs."""
    truth = truth.bool()
    return float(0.5 * ((said & truth).sum() / truth.sum().clamp(min=1)
                        + (~said & ~truth).sum() / (~truth).sum().clamp(min=1)))


def encode_targets(processor, samples, categories: list[str]):
    """(pixel values, region masks, region image index, region class ids, (B, K) presence)."""
    visual = processor.prepare_images([str(s.image_path()) for s in samples],
                                      [[{"segmentation": r.mask} for r in s.regions] for s in samples])
    classes = torch.tensor([categories.index(r.category) for s in samples for r in s.regions], dtype=torch.long)
    presence = torch.zeros(len(samples), len(categories))
    presence[visual["region_image_index"], classes] = 1
    return visual["pixel_values"], visual["region_masks"], visual["region_image_index"], classes, presence


def train(args: argparse.Namespace) -> int:
    from regiongpt.data.native import read_native_jsonl
    from regiongpt.training.builders import build_model_and_processor
    from regiongpt.training.config import load_config
    from regiongpt.training.segmentation import SegmentationHead

    world = Path(args.world)
    config = load_config(ROOT / "configs" / "demo.yaml", [f"data.train=native:{world}/native/train.jsonl",
                                                           "data.val=[]", *args.overrides])
    train_samples = [s for s in read_native_jsonl(world / "native" / "train.jsonl") if s.regions]
    val_samples = [s for s in read_native_jsonl(world / "native" / "val.jsonl") if s.regions][:args.val_images]
    model, processor = build_model_and_processor(config.model, train_samples[:500], config.train.seed)
    inner = model.model
    categories = sorted({r.category for s in [*train_samples, *val_samples] for r in s.regions})
    head = SegmentationHead(model.config.vision_feature_dim, categories, args.background_weight)
    token_head = nn.Linear(model.config.vision_feature_dim, len(categories))
    params = [p for part in (inner.vision_tower, inner.feature_refiner) for p in part.parameters()]
    if inner.position_embedding is not None:
        params.append(inner.position_embedding)
    params += list(head.parameters() if args.target == "segmentation" else token_head.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr)
    held_out = [encode_targets(processor, val_samples[i:i + 50], categories) for i in range(0, len(val_samples), 50)]

    def evaluate() -> tuple[float, float]:
        inner.eval()
        right = total = 0
        said, truth = [], []
        with torch.no_grad():
            for pixels, masks, image_index, classes, presence in held_out:
                vision = inner.encode_images(pixels)
                if args.target == "segmentation":
                    probs = head(vision.region_maps).softmax(1)[:, :-1]  # (B, K, h, w)
                    cover = F.adaptive_avg_pool2d(masks.float()[:, None], probs.shape[-1])[:, 0]
                    pooled = torch.einsum("rhw,rkhw->rk", cover, probs[image_index])
                    right += int((pooled.argmax(1) == classes).sum())
                    total += len(classes)
                    said.append(probs.amax((2, 3)) > 0.5)
                else:
                    said.append(token_head(vision.image_features).amax(1).sigmoid() > 0.5)
                truth.append(presence)
        inner.train()
        return (right / total if total else float("nan")), balanced(torch.cat(said), torch.cat(truth))

    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    start = time.time()
    print(f"| step | loss | region accuracy from pixels | yes/no (balanced) | seconds |\n|---|---|---|---|---|")
    for step in range(1, args.steps + 1):
        pixels, masks, image_index, classes, presence = encode_targets(
            processor, rng.sample(train_samples, args.batch), categories)
        vision = inner.encode_images(pixels)
        if args.target == "segmentation":
            loss = head.loss(vision.region_maps, masks, image_index, [categories[c] for c in classes.tolist()])
        else:
            loss = F.binary_cross_entropy_with_logits(token_head(vision.image_features).amax(1), presence)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % args.every == 0 or step == args.steps:
            region, yes_no = evaluate()
            print(f"| {step} | {loss.item():.3f} | {region:.3f} | {yes_no:.3f} | {time.time() - start:.0f} |", flush=True)
    return 0


def probe(args: argparse.Namespace) -> int:
    from regiongpt.data.native import read_native_jsonl
    from regiongpt.training.builders import load_model_and_processor
    from regiongpt.training.segmentation import segmentation_targets

    model, processor = load_model_and_processor(args.checkpoint)
    model.eval()
    world = Path(args.world)
    train_samples = [s for s in read_native_jsonl(world / "native" / "train.jsonl") if s.regions][:args.train_images]
    val_samples = [s for s in read_native_jsonl(world / "native" / "val.jsonl") if s.regions][:args.val_images]
    categories = sorted({r.category for s in [*train_samples, *val_samples] for r in s.regions})

    def encode(samples):
        maps, tokens, cells, presence = [], [], [], []
        with torch.no_grad():
            for i in range(0, len(samples), 50):
                pixels, masks, image_index, classes, present = encode_targets(processor, samples[i:i + 50], categories)
                vision = model.model.encode_images(pixels)
                maps.append(vision.region_maps.float())
                tokens.append(vision.image_features.float())
                cells.append(segmentation_targets(masks, image_index, classes, len(pixels),
                                                  vision.region_maps.shape[-1], len(categories)))
                presence.append(present)
        return torch.cat(maps), torch.cat(tokens), torch.cat(cells), torch.cat(presence)

    train_maps, train_tokens, train_cells, train_presence = encode(train_samples)
    val_maps, val_tokens, _, val_presence = encode(val_samples)
    torch.manual_seed(0)
    mean, std = train_maps.mean((0, 2, 3), keepdim=True), train_maps.std((0, 2, 3), keepdim=True) + 1e-6
    head = nn.Conv2d(train_maps.shape[1], len(categories) + 1, 1)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(300):
        rows = torch.randint(0, len(train_maps), (256,))
        loss = F.cross_entropy(head((train_maps[rows] - mean) / std), train_cells[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        map_yes = head((val_maps - mean) / std).softmax(1)[:, :-1].amax((2, 3))
    mean, std = train_tokens.mean((0, 1)), train_tokens.std((0, 1)) + 1e-6
    token_head = nn.Linear(train_tokens.shape[-1], len(categories))
    optimizer = torch.optim.Adam(token_head.parameters(), lr=1e-2)
    for _ in range(300):
        loss = F.binary_cross_entropy_with_logits(token_head((train_tokens - mean) / std).amax(1), train_presence)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        token_yes = token_head((val_tokens - mean) / std).amax(1).sigmoid()
    print(f"| frozen features of {args.checkpoint} | yes/no (balanced, best threshold) |\n|---|---|")
    print(f"| refined map, segmentation head | {max(balanced(map_yes > t, val_presence) for t in THRESHOLDS):.3f} |")
    print(f"| image tokens, per-token presence head (max over tokens) | "
          f"{max(balanced(token_yes > t, val_presence) for t in THRESHOLDS):.3f} |")
    if model.model.image_label_head is not None:  # the model's own head (model.image_labels): what its marks say
        order = [model.config.image_label_names.index(c) for c in categories]
        yes = label_head_presence(model, processor, [s.image_path() for s in val_samples])[:, order]
        print(f"| the model's own image label head (what its marks say; at 0.5: "
              f"{balanced(yes > 0.5, val_presence):.3f}) | {max(balanced(yes > t, val_presence) for t in THRESHOLDS):.3f} |")
    return 0


def label_head_presence(model, processor, images) -> torch.Tensor:
    """(N, K) the model's image label head's largest probability of each of its categories per image
    (``images``: paths or anything the processor reads)."""
    said = []
    with torch.no_grad():
        for i in range(0, len(images), 50):
            pixels = processor.prepare_images([str(image) for image in images[i:i + 50]])["pixel_values"]
            logits = model.model.encode_images(pixels).image_label_logits  # (B, K+1, h, w)
            said.append(logits.float().softmax(1)[:, :-1].amax((2, 3)))
    return torch.cat(said)


def pretrain(args: argparse.Namespace) -> int:
    from regiongpt.data.native import read_native_jsonl
    from regiongpt.data.synth import SIZES
    from regiongpt.training.builders import build_model_and_processor, configure_trainable
    from regiongpt.training.config import load_config
    from regiongpt.training.region_pretrain import pretrain_region_path

    world = Path(args.world)
    config = load_config(ROOT / "configs" / "demo.yaml", [f"data.train=native:{world}/native/train.jsonl",
                                                           "data.val=[]", *args.overrides])
    t = config.train
    if not config.model.image_labels:
        raise SystemExit("pretrain reports the model's image label head: add model.image_labels=[...]")
    train_samples = [s for s in read_native_jsonl(world / "native" / "train.jsonl") if s.regions]
    val_samples = [s for s in read_native_jsonl(world / "native" / "val.jsonl") if s.regions][:args.val_images]
    model, processor = build_model_and_processor(config.model, train_samples, t.seed)
    configure_trainable(model, t)
    batch = t.region_pretrain_batch_size or config.data.batch_size
    weight = t.pretrain_segmentation_weight()
    start = time.time()
    pretrain_region_path(model, processor, train_samples, t.region_pretrain_steps, t.region_pretrain_lr, batch, t.seed,
                         torch.device("cpu"), attributes=t.region_pretrain_attributes,
                         image_labels=t.region_pretrain_image_labels, image_weight=t.region_pretrain_image_weight,
                         heads_on=t.region_pretrain_heads_on, segmentation_weight=weight,
                         segmentation_presence_weight=t.segmentation_presence_weight,
                         num_workers=t.region_pretrain_workers, segmentation_peak_targets=t.segmentation_peak_targets,
                         segmentation_object_cells=t.segmentation_object_cells, min_lr_ratio=t.region_pretrain_min_lr_ratio)
    seconds = time.time() - start
    model.eval()
    names = model.config.image_label_names
    truth = torch.zeros(len(val_samples), len(names), dtype=torch.bool)
    clearest = torch.full((len(val_samples), len(names)), -1, dtype=torch.long)  # size of the largest instance
    for i, sample in enumerate(val_samples):
        for region in sample.regions:
            k = names.index(region.category)
            truth[i, k] = True
            size = region.attributes.get("size")
            clearest[i, k] = max(int(clearest[i, k]), SIZES.index(size) if size in SIZES else -1)
    said = label_head_presence(model, processor, [s.image_path() for s in val_samples])
    best = max(THRESHOLDS, key=lambda th: balanced(said > th, truth))
    recall = [float((said > best)[clearest == j].float().mean()) if (clearest == j).any() else float("nan")
              for j in range(len(SIZES))]
    print("| steps x batch | lr | segmentation weight | yes/no at 0.5 | best threshold | "
          "present said at it: small / medium / large | seconds |\n|---|---|---|---|---|---|---|")
    print(f"| {t.region_pretrain_steps} x {batch} | {t.region_pretrain_lr:g} | {weight:g} | "
          f"{balanced(said > 0.5, truth):.3f} | {balanced(said > best, truth):.3f} ({best:g}) | "
          f"{' / '.join(f'{r:.2f}' for r in recall)} | {seconds:.0f} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("train", help="train the vision path alone on one target")
    run.add_argument("--target", choices=["segmentation", "presence"], default="segmentation")
    run.add_argument("--steps", type=int, default=1200)
    run.add_argument("--batch", type=int, default=16)
    run.add_argument("--lr", type=float, default=2e-3)
    run.add_argument("--background-weight", type=float, default=1.0)
    run.add_argument("--every", type=int, default=100, help="evaluate every N steps")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("overrides", nargs="*", help="key=value overrides of configs/demo.yaml (e.g. model.vision_overrides=...)")
    check = commands.add_parser("probe", help="fresh heads on a checkpoint's frozen features")
    check.add_argument("checkpoint")
    check.add_argument("--train-images", type=int, default=1500)
    stage = commands.add_parser("pretrain", help="the recipe's region-path pretraining, then the image label head")
    stage.add_argument("overrides", nargs="*", help="key=value overrides of configs/demo.yaml (e.g. "
                                                    "train.region_pretrain_steps=800 model.image_labels=[...])")
    for sub in (run, check, stage):
        sub.add_argument("--world", default=str(ROOT / "runs" / "demo-build" / "world"))
        sub.add_argument("--val-images", type=int, default=400 if sub is check else 300)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    return {"train": train, "probe": probe, "pretrain": pretrain}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
