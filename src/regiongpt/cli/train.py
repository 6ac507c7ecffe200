"""``regiongpt train CONFIG [key=value ...]``: run the training recipe on a YAML config."""

from __future__ import annotations

import argparse
import json
import sys

DESCRIPTION = """Train RegionGPT with the recipe in regiongpt.training.recipe. CONFIG is a YAML
file (sections model, data, optim, train, checkpoint, eval; every key is documented in
configs/README.md); each KEY=VALUE overrides one dotted key with a YAML value, e.g.
train.max_steps=100 optim.lr=2e-5 "train.trainable=[feature_refiner,connector]". A run
folder (train.output_dir) that holds checkpoints is resumed from its newest one
(train.resume=auto)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` sub-command."""
    parser = subparsers.add_parser("train", help="train or fine-tune a model (resumable)", description=DESCRIPTION)
    parser.add_argument("config", metavar="CONFIG", help="YAML training config, e.g. configs/tiny.yaml")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the config, train, and print where the final checkpoint is."""
    from regiongpt.training.config import load_config

    config = load_config(args.config, args.overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    from regiongpt.training.checkpointing import latest_checkpoint
    from regiongpt.training.recipe import TrainingRecipe

    recipe = TrainingRecipe(config)
    recipe.setup()
    metrics = recipe.train()
    summary = {"run_dir": str(recipe.run_dir), "checkpoint": str(latest_checkpoint(recipe.run_dir)),
               "step": recipe.step, **{k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}}
    if recipe.dist.is_main:  # under torchrun, one summary line (rank 0's), not one per rank
        print(json.dumps(summary), file=sys.stdout)
    return 0
