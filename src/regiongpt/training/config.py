"""The training config: typed dataclasses, loaded from YAML plus ``key=value`` overrides.

The dataclasses below are the single source of truth for every key: their field metadata
carries the documentation (``configs/README.md`` is generated from it by
:func:`config_reference_markdown`), and :func:`load_config` checks every key and value
against them. A mistyped key fails with :class:`~regiongpt.errors.InvalidInputError` that
names the key, suggests the closest valid one and lists the valid ones.

What trains in which stage (``train.trainable``, ``train.lora``) lives here, never in the
model config.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from regiongpt.data.sources import make_source, resolve_spec_paths
from regiongpt.errors import InvalidInputError

# Parameter groups a training stage can unfreeze (see builders.trainable_groups).
TRAINABLE_GROUPS = ("vision_tower", "feature_refiner", "connector", "language_model")


def _doc(text: str, **kwargs: Any) -> Any:
    """A dataclass field whose documentation lives in its metadata."""
    return field(metadata={"doc": text}, **kwargs)


@dataclass
class ModelConfig:
    """Which model to train: an architecture preset trained from scratch, or a checkpoint."""

    preset: str | None = _doc(
        "Architecture preset (`regiongpt.model.presets`), e.g. `tiny-clip-llama`; the model is "
        "initialised from scratch and a tokenizer is trained on the training text. Ignored when "
        "`pretrained` is set.", default="tiny-clip-llama")
    pretrained: str | None = _doc(
        "Path of a saved RegionGPT checkpoint (e.g. a converted LLaVA-1.5 or a stage-1 run's "
        "`ckpt-XXXXXX/`); its processor and tokenizer are used as saved.", default=None)
    overrides: dict[str, Any] = _doc(
        "Top-level `RegionGPTConfig` fields that replace the preset's (e.g. `refine_factor`, "
        "`share_connector`).", default_factory=dict)
    text_overrides: dict[str, Any] = _doc(
        "Fields of the language model's config that replace the preset's (e.g. `hidden_size`).",
        default_factory=dict)
    vision_overrides: dict[str, Any] = _doc(
        "Fields of the vision tower's config that replace the preset's (e.g. `image_size`).",
        default_factory=dict)
    tokenizer_vocab_size: int = _doc(
        "Vocabulary size of the byte-level BPE tokenizer trained in-process for a preset (256 of "
        "it are the byte alphabet).", default=1024)
    tokenizer_max_samples: int = _doc(
        "At most this many training samples feed the in-process tokenizer.", default=20000)
    region_number_tokens: int = _doc(
        "For a preset: mark regions 1..N with the input embeddings of the trained tokenizer's tokens for "
        "\"1\"..\"N\" (the model's `region_number_token_ids`), so a small model answering \"Region [k]\" can "
        "copy k from the region it attends to (bench/demo_model.md). 0 = off.", default=0)
    image_labels: list[str] = _doc(
        "For a preset: category names for an image label head (the model's `image_label_names`): a per-cell "
        "category head on the refined map, trained by `train.segmentation_weight`, marks each image token with "
        "the input embeddings of the names of the categories it sees, so a small model can match a question's "
        "\"Is there a star\" against the cells that hold one (model/image_labels.py). Every training region's "
        "category must be one of them. Empty = off.", default_factory=list)
    image_attributes: dict[str, list[str]] = _doc(
        "For a preset with `model.image_labels`: value names per region attribute (e.g. `{colour: [red, blue, "
        "...]}`) that the image label head also predicts per cell (the model's `image_attribute_names`); image "
        "tokens are then marked with the names of the values their cells show too, so \"Is there a purple "
        "triangle?\" can tell a purple triangle from a blue one. Trained by the per-cell loss "
        "(`train.segmentation_weight`) like the categories; regions whose value is not listed are left out "
        "of its targets. Empty = off.", default_factory=dict)
    region_labels: dict[str, list[str]] = _doc(
        "For a preset: value names per labelled region field for a region label head (the model's "
        "`region_label_names`), e.g. `{colour: [red, blue, ...], category: [circle, ...]}`: one linear head per "
        "field on the pooled region feature marks each region token with the input embeddings of the names of "
        "the values it predicts, so a small model can copy a region's colour into a caption and match a REC "
        "phrase's words against the candidates (model/region_labels.py). Trained by its label loss in the "
        "region-path pretraining and by `train.region_label_weight`. A field is `category` or a region "
        "attribute; regions whose value is not listed are skipped by the loss. Empty = off.",
        default_factory=dict)
    image_processor: Literal["square", "llava15"] = _doc(
        "Image transform for a preset: `square` (pad to square, resize to the model's image "
        "size) or `llava15` (LLaVA-1.5's pad, resize and centre crop).", default="square")
    system_prompt: str | None = _doc(
        "System prompt of the conversation template for a preset, saved with its processor "
        "(null = LLaVA-1.5's; an empty string = none, shorter sequences for small models).", default=None)
    task_suffix: bool | None = _doc(
        "Whether questions keep their task-guided scope suffix (RegionGPT §3.2, e.g. \"Answer with a short "
        "phrase.\"); `false` strips it from every training question and saves the choice with the processor, "
        "so inference asks the same way (the paper's no-task-guided-prompt ablation). null = the checkpoint's "
        "choice (true for a preset).", default=None)


@dataclass
class TaskPhase:
    """One phase of the task schedule: until ``until_step``, train only ``tasks``."""

    until_step: int = _doc("The phase covers optimiser steps `< until_step`.", default=0)
    tasks: list[str] = _doc("Tasks trained during the phase (turn `task` names).", default_factory=list)


@dataclass
class SourceConfig:
    """One data source of the mixture with its options (a plain `READER:PATH` string takes the defaults)."""

    source: str = _doc(
        "`READER:PATH`: `native:FILE.jsonl`, `coco:INSTANCES.json`, `refcoco:ROOT:DATASET:SPLITBY` (e.g. "
        "`refcoco:refer:refcocog:umd`), `vg:region_descriptions.json`, `llava:CONVERSATIONS.json` "
        "(see docs/data.md).", default="")
    images: str | None = _doc(
        "Folder the data set's image file names are relative to (null = the reader's default: "
        "docs/data.md).", default=None)
    split: str | None = _doc(
        "Keep only this split (comma-separated for several, e.g. `val,test`): refer-layout ref splits, "
        "a COCO image's `split` field, a native sample's `split`, DenseCap splits for `vg`; null = all.",
        default=None)
    tasks: list[str] | None = _doc(
        "Tasks to build from this source (`classify`, `label`, `brief`, `detailed`, `rec`, `relation`, "
        "`existence`; `native` keeps only turns of these tasks); null = the reader's defaults (coco: "
        "classify, brief, detailed, existence; refcoco: brief, rec; vg: brief; llava: chat; native: all).",
        default=None)
    weight: float = _doc(
        "Mixture weight: the source contributes `weight` x its samples per epoch (2 = every sample "
        "twice, 0.5 = a seeded half).", default=1.0)
    seed: int = _doc("Seeds the prompt paraphrases, REC negatives and the weight's subset.", default=0)
    max_samples: int | None = _doc("Use only the source's first N samples (before weighting).", default=None)
    max_regions: int | None = _doc(
        "At most N regions per image (referred regions kept first); null = all.", default=None)
    rec_negatives: float = _doc(
        "Fraction of REC questions asked with a phrase of another image whose category is absent, "
        "answered \"No corresponding options found.\"", default=0.1)
    strict: bool | None = _doc(
        "Fail on the first malformed annotation instead of skipping it with a warning (null = "
        "`data.strict`).", default=None)


@dataclass
class DataConfig:
    """Where samples come from and how conversations become packed, padded sequences."""

    train: list[str | SourceConfig] = _doc(
        "Training sources (the data mixture): each `READER:PATH` (e.g. `native:world/native/train.jsonl`, "
        "`coco:instances.json`; a bare `.jsonl` path means `native:`) or a mapping `{source: READER:PATH, "
        "images: DIR, split: S, tasks: [...], weight: W, ...}` (see `data.train[]` below and docs/data.md).",
        default_factory=list)
    val: list[str | SourceConfig] = _doc("Held-out sources for evaluation (same form); empty = no evaluation.",
                                         default_factory=list)
    max_length: int = _doc(
        "Longest packed sequence in tokens (image and region placeholders included). A "
        "conversation that does not fit is split into several samples of whole turn pairs, "
        "each with the image; a single turn pair that does not fit is dropped with a warning.",
        default=2048)
    batch_size: int = _doc(
        "Images (native samples) per micro-batch; each contributes all of its packed sequences.",
        default=4)
    tasks: list[str] | None = _doc(
        "Tasks to train (turn `task` names; turns without one count as `chat`); null = all.",
        default=None)
    independent_tasks: list[str] = _doc(
        "Tasks whose turns are trained as if each were asked alone about the image: in a packed sequence "
        "such a turn sees the image and its own question, not the turns before it, so its answer cannot be "
        "copied from earlier answers (a REC phrase from a brief caption of the same region, a yes/no "
        "category from a classification answer). The image is still encoded once per sequence. With SDPA "
        "the language model computes only the attention such turns see (turn_attention.py: same results, "
        "a step of the demo recipe with every task 1.08 -> 0.88 s). "
        "See regiongpt/training/independent_turns.py.", default_factory=list)
    task_schedule: list[TaskPhase] = _doc(
        "Phases that restrict the tasks early in training, e.g. `[{until_step: 500, tasks: "
        "[classify]}]` trains classification only for 500 steps, then `tasks`.",
        default_factory=list)
    shuffle: bool = _doc("Shuffle the sample order every epoch (seeded by `train.seed` and the epoch).",
                         default=True)
    shuffle_turns: bool = _doc(
        "Shuffle the question-answer pairs within a conversation every epoch.", default=True)
    strict: bool = _doc(
        "Fail on a missing or unreadable image (and on a malformed annotation entry) instead of skipping "
        "it with a warning and a count.", default=False)
    max_samples: int | None = _doc("Use only the first N training samples (null = all).", default=None)
    num_workers: int = _doc("DataLoader worker processes (0 = load in the training process).",
                            default=0)
    streaming: bool = _doc(
        "Read the training data lazily: native JSON-lines sources are indexed by line byte offsets and each "
        "rank parses only the samples of its shard when it uses them (data sets larger than memory). Only "
        "`native` sources without `split`, `tasks`, `weight` or `max_regions`; task names are not checked "
        "ahead.", default=False)
    group_by_length: bool = _doc(
        "Length-grouped batching: each epoch's shuffled order is cut into windows of 64 micro-batches, each "
        "sorted by conversation length, so a micro-batch holds samples of similar length (less padding). "
        "Still a pure function of the seed and the epoch. Caution: in the demo recipe (a BatchNorm vision "
        "tower) it cut padding from 33% to 4% but collapsed brief captions and REC (bench/demo_model.md, tenth "
        "round); with `train.freeze_batchnorm_stats` brief captions held but REC fell 0.897 -> 0.817 and the "
        "longest conversations' eighth candidate was never chosen, for 7% less time (twenty-third round). "
        "Check held-out numbers before keeping it.", default=False)


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay; gradient accumulation and clipping."""

    lr: float = _doc("Peak learning rate.", default=1e-3)
    weight_decay: float = _doc("AdamW weight decay (not applied to biases and norms).", default=0.0)
    betas: list[float] = _doc("AdamW betas.", default_factory=lambda: [0.9, 0.999])
    eps: float = _doc("AdamW epsilon.", default=1e-8)
    warmup_steps: int = _doc("Linear warm-up steps from 0 to `lr`.", default=0)
    min_lr_ratio: float = _doc("The cosine decays to `lr * min_lr_ratio` at the last step.",
                               default=0.0)
    grad_accum: int = _doc(
        "Micro-batches per optimiser step (the loss is averaged over all answer tokens of "
        "the step).", default=1)
    max_grad_norm: float | None = _doc("Clip the gradient norm to this value (null = no clipping).",
                                       default=1.0)
    loss_average: Literal["token", "answer"] = _doc(
        "`token`: the loss is the mean over all answer tokens of the step (long answers such as detailed "
        "captions weigh by their length); `answer`: each answer's tokens are averaged first and the step's "
        "answers weigh equally, so one-word answers (classification, yes/no, REC) are not drowned by "
        "detailed captions in mixed-task batches (bench/demo_model.md).", default="token")
    task_weights: dict[str, float] = _doc(
        "Loss weight per task (turn `task` name, e.g. `{rec: 3.0}`); tasks not named weigh 1. It multiplies "
        "the task's tokens (`loss_average: token`) or answers (`answer`); the normaliser stays the count.",
        default_factory=dict)


@dataclass
class LoraSettings:
    """LoRA adapters (PEFT) on the language model's linear layers."""

    r: int = _doc("Adapter rank.", default=8)
    alpha: int = _doc("LoRA alpha (scale = alpha / r).", default=16)
    dropout: float = _doc("Dropout on the adapter input.", default=0.0)
    target_modules: list[str] = _doc(
        "Names of the language model's linear layers that get adapters.",
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class TrainConfig:
    """The run: its folder, length, precision, what trains, resuming and logging."""

    output_dir: str = _doc(
        "Run folder (checkpoints, `metrics.jsonl`, `samples.jsonl`, `config.yaml`).",
        default="runs/regiongpt")
    max_steps: int | None = _doc("Optimiser steps to train (set this or `epochs`).", default=None)
    epochs: float | None = _doc(
        "Train for this many passes over the training images instead of `max_steps`.", default=None)
    seed: int = _doc("Seeds model initialisation, data order and turn shuffling.", default=0)
    dtype: Literal["fp32", "bf16"] = _doc(
        "`fp32`, or `bf16` autocast (weights and optimiser states stay fp32).", default="fp32")
    device: str = _doc("`auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`.", default="auto")
    trainable: list[str] = _doc(
        "Parameter groups that train: any of `vision_tower`, `feature_refiner`, `connector` "
        "(both connectors when not shared), `language_model` (decoder, embeddings and LM head). "
        "Stage 1: `[feature_refiner, connector]`; stage 2: add `language_model`. Everything "
        "else is frozen.", default_factory=lambda: ["feature_refiner", "connector"])
    lora: LoraSettings | None = _doc(
        "LoRA adapters on the language model (null = none); its base weights stay frozen, so "
        "`language_model` must not also be in `trainable`.", default=None)
    resume: str = _doc(
        "`auto`: continue from the newest complete checkpoint in `output_dir` (if any); "
        "`never`: start fresh (fails if the folder has checkpoints); or a checkpoint path.",
        default="auto")
    distributed: Literal["none", "ddp", "fsdp"] = _doc(
        "Many processes (start with `torchrun --nproc_per_node N -m regiongpt.cli.main train ...`; world size "
        "and rank come from its environment; nccl on CUDA, gloo on CPU): `ddp` (DistributedDataParallel) or "
        "`fsdp` (FSDP2 `fully_shard` per decoder and vision layer, bf16 compute with `train.dtype: bf16`, "
        "sharded DCP checkpoints). `data.batch_size` is per rank: the global batch is `data.batch_size` x "
        "ranks x `optim.grad_accum`, in the sample order one process with `optim.grad_accum` x ranks would "
        "use (docs/distributed.md).", default="none")
    activation_checkpointing: bool = _doc(
        "Recompute each decoder layer's activations in the backward pass (torch `checkpoint_wrapper`): "
        "less memory, ~1/3 more compute.", default=False)
    padding_free: bool = _doc(
        "With `data.independent_tasks` (turn attention), run the language model on each micro-batch's real "
        "tokens only, all rows one after another in one row, so its linear layers skip the padding "
        "(turn_attention.py keeps the rows apart; same results, tested). The built-in recipe's batches were 38% "
        "padding (bench/demo_model.md, twenty-sixth round). Off: the padded (N, L) batch, as before.",
        default=True)
    freeze_batchnorm_stats: bool = _doc(
        "In the language-model phase (after the region pretraining), BatchNorm layers (a CNN vision tower's) "
        "normalise with their running statistics and keep them, as at evaluation; their weights still train. "
        "Batches then need not look alike in their images: with `data.group_by_length` a batch holds "
        "conversations of one length, often of one task (with it, the built-in recipe's brief captions no longer "
        "collapsed, bench/demo_model.md, twenty-third round).", default=False)
    region_pretrain_steps: int = _doc(
        "Before step 1 of a run from scratch: this many steps that train the region path (vision tower, "
        "refinement, shape encoder) through a linear head on the training regions' categories, then "
        "drop the head. A language model trained from scratch with region features that all look alike "
        "learns the label prior and ignores them; a region path that already separates categories avoids "
        "that (bench/demo_model.md). 0 = off.", default=0)
    region_pretrain_lr: float = _doc("Learning rate of the region-path pretraining.", default=1.0e-3)
    region_pretrain_min_lr_ratio: float = _doc(
        "The region-path pretraining's learning rate falls along a half cosine from `train.region_pretrain_lr` "
        "to this share of it at its last step; 1 = constant.", default=1.0)
    region_pretrain_batch_size: int = _doc(
        "Images a step of the region-path pretraining (0 = `data.batch_size`). Its steps are cheap (no language "
        "model): a larger batch buys the per-cell category head many more images for little time.", default=0)
    region_pretrain_cache_gb: float = _doc(
        "Keep up to this many GiB of prepared images and region masks during the region-path pretraining, so its "
        "later passes over the data skip decoding, resizing and rasterising them (the batches are the same, value "
        "for value). The built-in model's 8,000 images take ~3.5 GiB, held in a few large buffers that are given "
        "back whole after the pretraining (kept one tensor at a time, they stayed in the process and slowed the "
        "language-model phase ~10%; bench/demo_model.md, twenty-sixth round). 0 = off.",
        default=0.0)
    region_pretrain_workers: int = _doc(
        "Loader processes that prepare the region-path pretraining's next batches while it trains on one (0 = in "
        "the training process; the batches and results are the same). On the 2-core CPU a worker made it slower "
        "(63 s against 53 s for 150 steps of the demo pretraining): use it where cores are spare.", default=0)
    region_pretrain_attributes: list[str] = _doc(
        "Region attributes (names in the native regions' `attributes`, e.g. `[colour, texture, size]`) that get "
        "their own head in the region-path pretraining, beside the category: the features then separate them "
        "too (brief captions name them). Every training region must have them.", default_factory=list)
    region_pretrain_image_labels: list[str] = _doc(
        "Fields joined into one label per object (e.g. `[colour, category]` -> `red heart`) that each image token "
        "learns to detect in its cell during the region-path pretraining (before the connector): "
        "a signal for the image tokens, which existence questions read. [] = off.", default_factory=list)
    region_pretrain_heads_on: Literal["features", "embeddings"] = _doc(
        "What the region heads of the region-path pretraining read: the pooled `features` (vision width) or "
        "the region `embeddings` after the connector (which is then pretrained too), i.e. what the language "
        "model reads.", default="features")
    region_pretrain_image_weight: float = _doc(
        "Weight of the image-token loss against the region heads' in the region-path pretraining.", default=0.25)
    region_aux_weight: float = _doc(
        "Weight of auxiliary losses during language-model training: linear heads on the region embeddings "
        "(what the language model reads) predict each region's category and `train.region_pretrain_attributes`, "
        "so the connector keeps every attribute the language model must name (brief captions) instead of only "
        "what the first task needs (bench/demo_model.md); with `train.region_pretrain_image_labels`, a head on the "
        "image tokens likewise keeps what each token's cell holds (weighted by `train.region_pretrain_image_weight`). "
        "The heads live in the training state, never in the "
        "exported model. 0 = off.", default=0.0)
    segmentation_weight: float = _doc(
        "Weight of a per-cell category loss on the refined map (the map regions are pooled from and image tokens "
        "are merged from): a 1x1-convolution head says which category covers each cell, or background "
        "(`training/segmentation.py`). It teaches the vision tower to recognise shapes from pixels, which "
        "existence questions need (the region path reads them from the mask). Used in the region-path "
        "pretraining and, with `train.region_aux_weight`, as one more auxiliary loss during training. "
        "Every training region needs a category. The head is a training device unless `model.image_labels` "
        "gives the model one of its own, which this loss then trains; 0 = off.", default=0.0)
    segmentation_presence_weight: float = _doc(
        "Weight of an image-level term in the per-cell category loss (`train.segmentation_weight`, in the "
        "region-path pretraining and during training): per category, the binary cross-entropy of its largest "
        "per-cell probability against whether the image shows it. Image label marks (`model.image_labels`) carry "
        "those largest probabilities, so this is what a yes/no question reads: one confident cell of an absent "
        "category is a wrong \"yes\". 0 = off.", default=0.0)
    segmentation_peak_targets: bool = _doc(
        "In the per-cell category loss (`train.segmentation_weight`), divide each region's share of every cell by "
        "its largest share, so the cell a region covers most is wholly its category however small the region is "
        "(`training/segmentation.py`). With plain shares a small object is mostly background in every cell, and "
        "the head learns to be unsure of it.", default=False)
    segmentation_object_cells: float = _doc(
        "In the per-cell category loss (`train.segmentation_weight`), a region that covers fewer refined-map cells "
        "than this weighs, over its cells, as much as a region of this many cells: its cells' terms are scaled up "
        "by this / its cells (`training/segmentation.py`). Small objects then count in the loss as much as medium "
        "ones, instead of being outweighed by large objects and the background. 0 = off (every cell weighs the "
        "same).", default=0.0)
    region_label_weight: float = _doc(
        "Weight of the label loss of the model's region label head (`model.region_labels`) during training "
        "(after the region-path pretraining, where it weighs 1 like the other region heads). It keeps the marks "
        "saying what the region path sees while the tower goes on learning. 0 = the head learns in pretraining "
        "only.", default=1.0)
    region_pretrain_segmentation_weight: float | None = _doc(
        "The per-cell category loss's weight in the region-path pretraining only (null = "
        "`train.segmentation_weight`). There the region heads share the tower with it and at weight 2 the shapes "
        "are hardly learned (0.66 yes/no from pixels after 800 x 16 steps, 0.76 at 8); during language-model "
        "training a weight of 8 cost the brief captions their colours (bench/demo_model.md).", default=None)
    rec_pointer_weight: float = _doc(
        "Weight of an attention-supervision loss on REC answers: at each position that writes the number of "
        "\"Region [k]\", one head of the language model (`train.rec_pointer_layer`, `train.rec_pointer_head`) is "
        "asked to attend to region k's placeholder tokens (-log of its attention there), so the answer can look "
        "the phrase up among the candidates (a small model trained from scratch stays at chance without it, "
        "bench/demo_model.md). Training only; the model is unchanged. 0 = off.", default=0.0)
    rec_pointer_layer: int = _doc(
        "The language-model layer whose head `train.rec_pointer_weight` supervises (negative: from the last).",
        default=-1)
    rec_pointer_head: int = _doc("The attention head `train.rec_pointer_weight` supervises.", default=0)
    rec_pointer_second_head: int | None = _doc(
        "A second head of the same layer that shares the REC lookup: the loss then asks the mean of the two heads' "
        "attention to fall on region k, so one head can match the category and the other the colour, texture or "
        "size (one 32-wide head of the built-in model matched categories and hardly colours, bench/demo_model.md). "
        "null = one head.", default=None)
    rec_pointer_attribute_head: int | None = _doc(
        "A second head of the same layer for the REC answers whose region shares its category with another "
        "candidate: on those answers alone it is asked to attend to region k, while `train.rec_pointer_head` keeps "
        "the lookup of every answer, and the readout reads what the two write together. Only a region's colour, "
        "texture or size tells it apart there, which the lookup head ignored (a swapped colour word moved its "
        "attention by 0.0002, `bench/rec_colour_probe.py`). null = none; not with `train.rec_pointer_second_head`.",
        default=None)
    rec_pointer_attribute_weight: float = _doc(
        "Weight of `train.rec_pointer_attribute_head`'s attention term against the lookup head's (both are then "
        "scaled by `train.rec_pointer_weight`): those answers are a minority of the REC turns.", default=1.0)
    existence_pointer_weight: float = _doc(
        "Weight of an attention-supervision loss on existence answers (\"Is there a heart in the image?\"): at "
        "the position that writes \"Yes\"/\"No\", one head (`train.existence_pointer_layer`, "
        "`train.existence_pointer_head`) is asked to attend to the image tokens of the cells holding the answer's "
        "evidence regions, or to the first token when its evidence is empty, and to write the answer from what it "
        "reads there. Needs answers with `evidence` (docs/native-format.md; the synthetic world, COCO and refer "
        "readers write it). Training only; the model is unchanged. 0 = off.", default=0.0)
    existence_pointer_layer: int = _doc(
        "The language-model layer whose head `train.existence_pointer_weight` supervises (negative: from the last).",
        default=-1)
    existence_pointer_head: int = _doc("The attention head `train.existence_pointer_weight` supervises.", default=1)
    describe_pointer_weight: float = _doc(
        "Weight of an attention-supervision loss on answers that describe one region (classification and brief "
        "captions): at each position that writes one of the answer's tokens, one head "
        "(`train.describe_pointer_layer`, `train.describe_pointer_head`) is asked to attend to the asked region's "
        "placeholder tokens and to write the token from what it reads there (training/describe_pointer.py). A "
        "small model otherwise learned some caption words (the colour) from the region token only by chance "
        "(bench/demo_model.md). Training only; the model is unchanged. 0 = off.", default=0.0)
    describe_pointer_layer: int = _doc(
        "The language-model layer whose head `train.describe_pointer_weight` supervises (negative: from the last).",
        default=-1)
    describe_pointer_head: int = _doc("The attention head `train.describe_pointer_weight` supervises.", default=2)
    phrase_pointer_weight: float = _doc(
        "Weight of an attention-supervision loss on the first hop of REC and yes/no answers: at the position that "
        "writes a REC digit or the first token of a yes/no answer, one head of an earlier layer "
        "(`train.phrase_pointer_layer`, `train.phrase_pointer_head`) is asked to attend to the question's label "
        "words (the names of `model.image_labels` and `model.region_labels`), so the answer's lookup (the REC and "
        "existence pointers) can read the phrase there (training/phrase_pointer.py). Needs label names. Training "
        "only; the model is unchanged. 0 = off.", default=0.0)
    phrase_pointer_layer: int = _doc(
        "The language-model layer whose head `train.phrase_pointer_weight` supervises (negative: from the last).",
        default=-2)
    phrase_pointer_head: int = _doc("The attention head `train.phrase_pointer_weight` supervises.", default=0)
    phrase_pointer_spread: bool = _doc(
        "Ask the phrase pointer's head for an even share of its attention on every label word of the question "
        "(the cross-entropy against the uniform distribution over them) rather than for their total mass, which "
        "the category word alone satisfies: the built-in model's head put all of it on the category and none on "
        "the colour, size or texture, and REC phrases that tell a region from another of its category by its "
        "colour were answered 0.30-0.40 of the time (bench/demo_model.md).", default=False)
    phrase_attribute_pointer_weight: float = _doc(
        "Weight of a second first-hop loss, on REC answers whose phrase names an attribute: at the position that "
        "writes the REC digit, one head (`train.phrase_attribute_pointer_layer`, "
        "`train.phrase_attribute_pointer_head`) is asked to attend to the phrase's names of "
        "`train.phrase_attribute_fields` only (e.g. 'red' and 'small' in 'the small red star'), evenly with "
        "`train.phrase_pointer_spread`. The phrase pointer's head gathers every label word, most of its attention "
        "on the category, so the REC attribute head's query read colours faintly (bench/demo_model.md, nineteenth "
        "round). Training only; the model is unchanged. 0 = off.", default=0.0)
    phrase_attribute_pointer_layer: int = _doc(
        "The language-model layer whose head `train.phrase_attribute_pointer_weight` supervises (negative: from "
        "the last).", default=-2)
    phrase_attribute_pointer_head: int = _doc(
        "The attention head `train.phrase_attribute_pointer_weight` supervises.", default=1)
    phrase_attribute_fields: list[str] = _doc(
        "The `model.region_labels` fields whose value names `train.phrase_attribute_pointer_weight` points at, "
        "e.g. [colour, texture, size].", default_factory=list)
    log_every: int = _doc("Write training metrics every N steps.", default=1)
    progress: bool = _doc("Show a tqdm progress bar.", default=True)

    def pretrain_segmentation_weight(self) -> float:
        """The per-cell category loss's weight in the region-path pretraining."""
        if self.region_pretrain_segmentation_weight is None:
            return self.segmentation_weight
        return self.region_pretrain_segmentation_weight


@dataclass
class CheckpointConfig:
    """When checkpoints are written and how many are kept."""

    every_steps: int = _doc("Save every N optimiser steps (and always at the end).", default=500)
    keep_last: int = _doc("Keep the newest N checkpoints (older ones are deleted).", default=2)


@dataclass
class EvalConfig:
    """Periodic teacher-forced evaluation on `data.val`: loss and per-task answer accuracy."""

    every_steps: int = _doc("Evaluate every N optimiser steps (and at the end); 0 = only at the end.",
                            default=500)
    batch_size: int = _doc("Images per evaluation batch.", default=8)
    max_samples: int | None = _doc("Evaluate on the first N held-out images (null = all).", default=None)
    tasks: list[str] | None = _doc("Tasks to evaluate (null = all in the held-out data).", default=None)


@dataclass
class TrainingConfig:
    """A RegionGPT training run (`regiongpt train CONFIG [key=value ...]`)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (what `config.yaml` in the run folder holds)."""
        return dataclasses.asdict(self)


# ----- loading ---------------------------------------------------------------------------------
def _public_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unknown_key(key: str, valid: Sequence[str]) -> InvalidInputError:
    name = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
    hint = f" did you mean '{prefix}{close[0]}'?" if close else ""
    return InvalidInputError(f"unknown config key '{key}';{hint} valid keys here: {', '.join(valid)}")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against (and converted to) type ``tp``; errors name ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except InvalidInputError as error:
                if isinstance(value, dict) and dataclasses.is_dataclass(arg):
                    raise  # a mapping meant for this section: its own error (e.g. an unknown key) says more
                errors.append(error)
        raise errors[-1] if len(errors) == 1 else _bad_value(value, tp, key)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise _bad_value(value, tp, key)
        return value
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise _bad_value(value, tp, key)
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _bad_value(value, tp, key)
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise _bad_value(value, tp, key)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad_value(value, tp, key)
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                raise _bad_value(value, tp, key) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad_value(value, tp, key)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _bad_value(value, tp, key)
        return value
    if tp is Any:
        return value
    raise TypeError(f"config field {key} has an unsupported type {tp!r}")


def _bad_value(value: Any, tp: Any, key: str) -> InvalidInputError:
    return InvalidInputError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    """An instance of dataclass ``cls`` from a mapping, checking every key and value."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidInputError(f"config key '{prefix}' must be a mapping of keys to values, got {raw!r}")
    fields = {f.name: f for f in _public_fields(cls)}
    hints = _hints(cls)
    kwargs = {}
    for key, value in raw.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise _unknown_key(full, list(fields))
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def _schema_at(path: list[str]) -> tuple[Any, bool]:
    """The type at a dotted path of TrainingConfig, and whether the path ends inside a free mapping."""
    tp: Any = TrainingConfig
    walked: list[str] = []
    for part in path:
        tp = _strip_optional(tp)
        if typing.get_origin(tp) is dict:
            return tp, True
        if not dataclasses.is_dataclass(tp):
            raise InvalidInputError(
                f"config key '{'.'.join(walked)}' is {_type_name(tp)}; it has no sub-key '{part}'")
        valid = [f.name for f in _public_fields(tp)]
        if part not in valid:
            raise _unknown_key(".".join([*walked, part]), valid)
        tp = _hints(tp)[part]
        walked.append(part)
    return tp, False


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one ``dotted.key=value`` override (value parsed as a YAML scalar/flow) to ``raw``."""
    if "=" not in override:
        raise InvalidInputError(f"override {override!r} must look like key=value, e.g. train.max_steps=100")
    key, text = override.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise InvalidInputError(f"override {override!r} has an empty key; write e.g. optim.lr=2e-5")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as error:
        raise InvalidInputError(f"override {override!r}: the value is not valid YAML ({error})") from None
    path = key.split(".")
    _schema_at(path)  # raises for an unknown key
    node = raw
    for i, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:  # e.g. train.lora.r=4 while train.lora is null: start from defaults
            child = {}
            node[part] = child
        if not isinstance(child, dict):
            raise InvalidInputError(f"override {override!r}: '{'.'.join(path[: i + 1])}' is not a mapping")
        node = child
    node[path[-1]] = value


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainingConfig:
    """The typed config of a YAML file (or the defaults) with ``key=value`` overrides applied.

    Raises :class:`InvalidInputError` naming the key for unknown keys, mistyped values and
    inconsistent settings.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(2, "config file not found", str(path))
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise InvalidInputError(f"{path}: not valid YAML ({error})") from None
        if not isinstance(raw, dict):
            raise InvalidInputError(f"{path}: the config must be a mapping with sections "
                                    f"{', '.join(f.name for f in _public_fields(TrainingConfig))}")
        _single_sources_as_lists(raw)
        _resolve_file_paths(raw, path.resolve().parent)
    for override in overrides:
        apply_override(raw, override)
    _single_sources_as_lists(raw)
    config = _build(TrainingConfig, raw, "")
    validate_config(config)
    _apply_data_strict(config.data)
    return config


def _apply_data_strict(data: DataConfig) -> None:
    """``data.strict: true`` makes every source strict whose own ``strict`` is null (strings included)."""
    if not data.strict:
        return
    for key in ("train", "val"):
        setattr(data, key, [SourceConfig(source=s, strict=True) if isinstance(s, str)
                            else dataclasses.replace(s, strict=True) if s.strict is None else s
                            for s in getattr(data, key)])


def _single_sources_as_lists(raw: dict[str, Any]) -> None:
    """``data.train: native:x.jsonl`` (or one mapping) means a list of one source."""
    data = raw.get("data")
    for key in ("train", "val"):
        if isinstance(data, dict) and isinstance(data.get(key), (str, dict)):
            data[key] = [data[key]]


def _resolve_file_paths(raw: dict[str, Any], folder: Path) -> None:
    """Make the paths written in a config file relative to that file's folder (not the cwd)."""

    def resolve(path: Any) -> Any:
        if not isinstance(path, str) or not path:
            return path
        p = Path(path).expanduser()
        return str(p if p.is_absolute() else (folder / p).resolve())

    def resolve_source(spec: Any) -> Any:
        if isinstance(spec, dict):
            spec = dict(spec)
            if isinstance(spec.get("source"), str):
                spec["source"] = resolve_spec_paths(spec["source"], resolve)
            if isinstance(spec.get("images"), str):
                spec["images"] = resolve(spec["images"])
            return spec
        if not isinstance(spec, str):
            return spec
        return resolve_spec_paths(spec, resolve)

    data = raw.get("data")
    if isinstance(data, dict):
        for key in ("train", "val"):
            if isinstance(data.get(key), list):
                data[key] = [resolve_source(s) for s in data[key]]
    for section, key in (("model", "pretrained"), ("train", "output_dir")):
        node = raw.get(section)
        if isinstance(node, dict) and key in node:
            node[key] = resolve(node[key])
    node = raw.get("train")
    if isinstance(node, dict) and node.get("resume") not in (None, "auto", "never"):
        node["resume"] = resolve(node["resume"])


def validate_config(config: TrainingConfig) -> None:
    """Cross-field checks that typing alone cannot express."""
    t, d, o = config.train, config.data, config.optim
    if (t.max_steps is None) == (t.epochs is None):
        raise InvalidInputError("set exactly one of 'train.max_steps' and 'train.epochs'")
    if t.max_steps is not None and t.max_steps < 1:
        raise InvalidInputError(f"'train.max_steps' must be >= 1, got {t.max_steps}")
    if t.epochs is not None and t.epochs <= 0:
        raise InvalidInputError(f"'train.epochs' must be > 0, got {t.epochs}")
    for name in t.trainable:
        if name not in TRAINABLE_GROUPS:
            close = difflib.get_close_matches(name, TRAINABLE_GROUPS, n=1)
            hint = f" did you mean '{close[0]}'?" if close else ""
            raise InvalidInputError(
                f"'train.trainable' has unknown group {name!r};{hint} valid: {', '.join(TRAINABLE_GROUPS)}")
    if not t.trainable and t.lora is None:
        raise InvalidInputError("nothing to train: 'train.trainable' is empty and 'train.lora' is null")
    if t.lora is not None and "language_model" in t.trainable:
        raise InvalidInputError(
            "'train.lora' keeps the language model's base weights frozen; remove 'language_model' from "
            "'train.trainable' (LoRA) or set 'train.lora: null' (full fine-tuning)")
    if t.distributed == "fsdp" and t.lora is not None:
        raise InvalidInputError("'train.lora' is not supported with 'train.distributed: fsdp'; use ddp for LoRA")
    if t.resume not in ("auto", "never") and not t.resume:
        raise InvalidInputError("'train.resume' must be 'auto', 'never' or a checkpoint path")
    if not d.train:
        raise InvalidInputError("'data.train' is empty; give at least one source, e.g. native:world/native/train.jsonl")
    from regiongpt.training.data import READERS  # the readers the recipe knows (imports torch: lazily)

    for key in ("train", "val"):
        for i, spec in enumerate(getattr(d, key)):
            try:
                make_source(spec, check_exists=False, known_readers=READERS)  # syntax and options; files are checked when read
            except InvalidInputError as error:
                raise InvalidInputError(f"'data.{key}[{i}]': {error}") from None
    for key, value in (("data.max_length", d.max_length), ("data.batch_size", d.batch_size),
                       ("optim.grad_accum", o.grad_accum), ("checkpoint.every_steps", config.checkpoint.every_steps),
                       ("checkpoint.keep_last", config.checkpoint.keep_last), ("eval.batch_size", config.eval.batch_size),
                       ("train.log_every", t.log_every), ("model.tokenizer_vocab_size", config.model.tokenizer_vocab_size)):
        if value < 1:
            raise InvalidInputError(f"'{key}' must be >= 1, got {value}")
    if config.eval.every_steps < 0:
        raise InvalidInputError(f"'eval.every_steps' must be >= 0, got {config.eval.every_steps}")
    if config.model.region_number_tokens < 0:
        raise InvalidInputError(f"'model.region_number_tokens' must be >= 0 (0 = off), got "
                                f"{config.model.region_number_tokens}")
    if d.num_workers < 0:
        raise InvalidInputError(f"'data.num_workers' must be >= 0, got {d.num_workers}")
    if o.lr <= 0 or o.warmup_steps < 0 or not 0 <= o.min_lr_ratio <= 1:
        raise InvalidInputError("'optim.lr' must be > 0, 'optim.warmup_steps' >= 0 and 'optim.min_lr_ratio' in [0, 1]")
    if len(o.betas) != 2:
        raise InvalidInputError(f"'optim.betas' must be two numbers, got {o.betas}")
    previous = -1
    for i, phase in enumerate(d.task_schedule):
        if phase.until_step <= previous or not phase.tasks:
            raise InvalidInputError(
                f"'data.task_schedule[{i}]' needs tasks and an until_step greater than the previous phase's")
        previous = phase.until_step
    if config.model.preset is None and config.model.pretrained is None:
        raise InvalidInputError("set 'model.preset' (train from scratch) or 'model.pretrained' (a checkpoint path)")
    for task, value in o.task_weights.items():
        if not isinstance(value, (int, float)) or value < 0:
            raise InvalidInputError(f"'optim.task_weights.{task}' must be a number >= 0, got {value!r}")
    if t.region_aux_weight < 0:
        raise InvalidInputError(f"'train.region_aux_weight' must be >= 0 (0 = off), got {t.region_aux_weight}")
    if t.region_pretrain_batch_size < 0:
        raise InvalidInputError(f"'train.region_pretrain_batch_size' must be >= 0 (0 = data.batch_size), got "
                                f"{t.region_pretrain_batch_size}")
    if t.segmentation_object_cells < 0:
        raise InvalidInputError(f"'train.segmentation_object_cells' must be >= 0 (0 = off), got "
                                f"{t.segmentation_object_cells}")
    if t.region_pretrain_cache_gb < 0:
        raise InvalidInputError(f"'train.region_pretrain_cache_gb' must be >= 0 (0 = off), got "
                                f"{t.region_pretrain_cache_gb}")
    if not 0.0 <= t.region_pretrain_min_lr_ratio <= 1.0:
        raise InvalidInputError("'train.region_pretrain_min_lr_ratio' must be in [0, 1] (1 = a constant learning "
                                f"rate), got {t.region_pretrain_min_lr_ratio}")
    if t.region_pretrain_workers < 0:
        raise InvalidInputError(f"'train.region_pretrain_workers' must be >= 0 (0 = in the training process), got "
                                f"{t.region_pretrain_workers}")
    if t.segmentation_weight < 0:
        raise InvalidInputError(f"'train.segmentation_weight' must be >= 0 (0 = off), got {t.segmentation_weight}")
    if t.region_pretrain_segmentation_weight is not None and t.region_pretrain_segmentation_weight < 0:
        raise InvalidInputError("'train.region_pretrain_segmentation_weight' must be >= 0 or null (= "
                                f"train.segmentation_weight), got {t.region_pretrain_segmentation_weight}")
    if t.segmentation_presence_weight < 0:
        raise InvalidInputError("'train.segmentation_presence_weight' must be >= 0 (0 = off), got "
                                f"{t.segmentation_presence_weight}")
    if t.segmentation_presence_weight and not (t.segmentation_weight or t.region_pretrain_segmentation_weight):
        raise InvalidInputError("'train.segmentation_presence_weight' is a term of the per-cell category loss: set "
                                "'train.segmentation_weight' (or 'train.region_pretrain_segmentation_weight') too")
    if t.segmentation_peak_targets and not (t.segmentation_weight or t.region_pretrain_segmentation_weight):
        raise InvalidInputError("'train.segmentation_peak_targets' changes the per-cell category loss's targets: set "
                                "'train.segmentation_weight' (or 'train.region_pretrain_segmentation_weight') too")
    if t.segmentation_object_cells and not (t.segmentation_weight or t.region_pretrain_segmentation_weight):
        raise InvalidInputError("'train.segmentation_object_cells' weighs the per-cell category loss's cells: set "
                                "'train.segmentation_weight' (or 'train.region_pretrain_segmentation_weight') too")
    if t.segmentation_weight and not (t.region_pretrain_steps or t.region_aux_weight):
        raise InvalidInputError("'train.segmentation_weight' acts in the region-path pretraining and through the "
                                "auxiliary losses: set 'train.region_pretrain_steps' or 'train.region_aux_weight' "
                                "too, or set 'train.segmentation_weight=0'")
    if config.model.image_labels and not t.segmentation_weight:
        raise InvalidInputError("'model.image_labels' adds an image label head that only the per-cell category loss "
                                "trains: set 'train.segmentation_weight' (e.g. 2.0), or drop 'model.image_labels'")
    if config.model.image_attributes:
        attributes = config.model.image_attributes
        if not isinstance(attributes, dict) or not all(
                isinstance(f, str) and f != "category" and isinstance(v, list) and len(v) >= 2
                and all(isinstance(name, str) and name.strip() for name in v) for f, v in attributes.items()):
            raise InvalidInputError("'model.image_attributes' maps each region attribute (not category: "
                                    "model.image_labels names those) to a list of at least two value names, e.g. "
                                    f"{{colour: [red, blue]}}; got {attributes!r}")
        if not config.model.image_labels:
            raise InvalidInputError("'model.image_attributes' adds classifiers to the image label head: set "
                                    "'model.image_labels' too, or drop 'model.image_attributes'")
    if t.region_label_weight < 0:
        raise InvalidInputError(f"'train.region_label_weight' must be >= 0 (0 = off), got {t.region_label_weight}")
    if config.model.region_labels:
        labels = config.model.region_labels
        if not isinstance(labels, dict) or not all(
                isinstance(f, str) and isinstance(v, list) and len(v) >= 2 for f, v in labels.items()):
            raise InvalidInputError("'model.region_labels' maps each field (category or a region attribute) to a list "
                                    f"of at least two value names, e.g. {{colour: [red, blue]}}; got {labels!r}")
        if not (t.region_pretrain_steps or t.region_label_weight):
            raise InvalidInputError("'model.region_labels' adds a region label head that its label loss trains: set "
                                    "'train.region_pretrain_steps' or 'train.region_label_weight', or drop "
                                    "'model.region_labels'")
    for name in ("rec_pointer", "existence_pointer", "describe_pointer", "phrase_pointer", "phrase_attribute_pointer"):
        if getattr(t, f"{name}_weight") < 0:
            raise InvalidInputError(f"'train.{name}_weight' must be >= 0 (0 = off), got {getattr(t, f'{name}_weight')}")
        if getattr(t, f"{name}_head") < 0:
            raise InvalidInputError(f"'train.{name}_head' must be >= 0, got {getattr(t, f'{name}_head')}")
    if t.phrase_attribute_pointer_weight:
        fields = t.phrase_attribute_fields
        if not fields or not all(isinstance(f, str) for f in fields):
            raise InvalidInputError("'train.phrase_attribute_pointer_weight' points at the names of "
                                    "'train.phrase_attribute_fields': list the fields, e.g. "
                                    "'train.phrase_attribute_fields=[colour, texture, size]'")
        known = sorted(config.model.region_labels or {})
        unknown = [f for f in fields if f not in known]
        if unknown:
            raise InvalidInputError(f"'train.phrase_attribute_fields' names {unknown}, which 'model.region_labels' "
                                    f"does not have (its fields: {known or 'none'})")
        if (t.phrase_attribute_pointer_layer, t.phrase_attribute_pointer_head) == (t.phrase_pointer_layer,
                                                                                   t.phrase_pointer_head) \
                and t.phrase_pointer_weight:
            raise InvalidInputError("'train.phrase_attribute_pointer_head' is the phrase pointer's head of the same "
                                    "layer: choose another head ('train.phrase_attribute_pointer_head')")
    if t.rec_pointer_attribute_weight <= 0:
        raise InvalidInputError("'train.rec_pointer_attribute_weight' must be > 0 (to turn the attribute head off, set "
                                f"'train.rec_pointer_attribute_head=null'), got {t.rec_pointer_attribute_weight}")
    if t.rec_pointer_attribute_weight != 1.0 and t.rec_pointer_attribute_head is None:
        raise InvalidInputError("'train.rec_pointer_attribute_weight' weighs the attribute head's term: set "
                                "'train.rec_pointer_attribute_head' too, or leave the weight at 1")


# ----- documentation -----------------------------------------------------------------------------
def config_reference_markdown() -> str:
    """``configs/README.md``: every key with its type, default and meaning, from the dataclasses."""
    lines = [
        "# Training configs",
        "",
        "<!-- Generated by regiongpt.training.config.config_reference_markdown(); do not edit by hand. -->",
        "",
        "`regiongpt train CONFIG [key=value ...]` trains RegionGPT with the recipe in",
        "`regiongpt.training.recipe`. `CONFIG` is a YAML file with the sections below; each",
        "`key=value` override uses a dotted key (`optim.lr=2e-5`, `train.trainable=[feature_refiner,connector]`,",
        "`model.text_overrides.hidden_size=64`) and a YAML value. Unknown keys are errors.",
        "Paths written in a config file (`data.train`, `data.val` and their `images`, `model.pretrained`,",
        "`train.output_dir`, `train.resume`) are relative to that file's folder; paths given as overrides, to the",
        "current directory. Data sources and their options are described in `docs/data.md`.",
        "",
        "- `tiny.yaml`: a tiny model on a small synthetic world; trains on a CPU in seconds (tests use it).",
        "- `regiongpt-7b-stage1.yaml`, `regiongpt-7b-stage2.yaml`, `regiongpt-7b-stage2-lora.yaml`: the paper's",
        "  two stages (alignment, instruction tuning; full or LoRA) from a converted LLaVA-1.5-7B checkpoint on",
        "  COCO, RefCOCOg, Visual Genome and LLaVA-Instruct (placeholder paths: override them).",
        "- `tiny-stage1.yaml`, `tiny-stage2.yaml`: the same two-stage recipe at tiny scale on the synthetic world (CPU).",
        "",
        "Run folder (`train.output_dir`): `config.yaml` (the resolved config), `metrics.jsonl`",
        "(training and evaluation metrics, one JSON object per line; TensorBoard events in `tensorboard/`",
        "when `tensorboard` is installed), `samples.jsonl` (the ids of the packed sequences each step",
        "consumed) and `ckpt-XXXXXX/` checkpoints. A checkpoint folder loads with",
        "`AutoModelForImageTextToText.from_pretrained` / `AutoProcessor.from_pretrained` and holds",
        "`training_state.pt` (optimiser, scheduler, step, data position, RNG states; read with",
        "`torch.load(weights_only=True)`), `training_config.yaml` and, with LoRA, `lora_state.safetensors`",
        "(unmerged base weights and adapters; `model.safetensors` holds the merged weights).",
        "",
    ]
    for section in _public_fields(TrainingConfig):
        cls = _hints(TrainingConfig)[section.name]
        lines += [f"## `{section.name}`", "", (cls.__doc__ or "").strip(), ""]
        lines += _field_table(cls, section.name)
        documented: dict[type, str] = {}
        for name, nested, many in _nested_dataclasses(cls):
            key = f"{section.name}.{name}" + ("[]" if many else "")
            if nested in documented:
                lines += ["", f"`{key}` ({'each entry' if many else 'when set'}): the same keys as `{documented[nested]}`."]
                continue
            documented[nested] = key
            lines += ["", f"`{key}` ({'each entry' if many else 'when set'}): {(nested.__doc__ or '').strip()}", ""]
            lines += _field_table(nested, key)
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _nested_dataclasses(cls: type) -> list[tuple[str, type, bool]]:
    """(field name, dataclass, is a list of them) for fields that hold dataclasses."""
    out = []
    for name, tp in _hints(cls).items():
        tp = _strip_optional(tp)
        many = typing.get_origin(tp) is list
        if many:
            tp = typing.get_args(tp)[0]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):  # e.g. str or SourceConfig
            tp = next((a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)), tp)
        if dataclasses.is_dataclass(tp):
            out.append((name, tp, many))
    return out


def _field_table(cls: type, prefix: str) -> list[str]:
    hints = _hints(cls)
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for f in _public_fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        shown = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
        rows.append(f"| `{prefix}.{f.name}` | {_type_name(hints[f.name])} | `{shown}` | "
                    f"{f.metadata.get('doc', '').replace('|', '/')} |")
    return rows


__all__ = [
    "CheckpointConfig", "DataConfig", "EvalConfig", "LoraSettings", "ModelConfig", "OptimConfig", "SourceConfig",
    "TRAINABLE_GROUPS", "TaskPhase", "TrainConfig", "TrainingConfig", "apply_override",
    "config_reference_markdown", "load_config", "validate_config",
]
