"""Builder functions: the only place where config values become objects.

Each builder takes the config section it needs and returns one thing: the model and its
processor, the trainable-parameter selection, the optimiser, the learning-rate schedule,
the data sets and their loaders. The recipe calls them in order and holds the results.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader

from regiongpt.data.native import NativeSample
from regiongpt.errors import InvalidInputError
from regiongpt.model import RegionGPTForConditionalGeneration, build_config
from regiongpt.processing.image_processors import llava15_image_processor, square_image_processor
from regiongpt.processing.processing_regiongpt import RegionGPTProcessor
from regiongpt.processing.templates import format_conversation
from regiongpt.processing.tokenizer import train_tokenizer

from .config import DataConfig, ModelConfig, OptimConfig, TrainConfig, TrainingConfig
from .data import (
    EvalBatchSampler,
    RegionCollator,
    RegionConversationDataset,
    StepBatchSampler,
    TaskSchedule,
    conversation_pairs,
    load_samples,
    pairs_to_turns,
)
from .lora import add_lora
from .lr_schedule import cosine_factor

_PLACEHOLDERS = re.compile(r"<image>|<region\d+>|</s>")


# ----- model ------------------------------------------------------------------------------------
def tokenizer_corpus(samples: Iterable[NativeSample], limit: int) -> list[str]:
    """Text a from-scratch tokenizer learns: each sample's conversation as the model will see it
    (Vicuna v1 template and system prompt included, so they get merged into few tokens),
    with the ``<image>`` / ``<regionK>`` placeholders removed (they are special tokens)."""
    texts = []
    for i, sample in enumerate(samples):
        if i >= limit:
            break
        text = format_conversation(pairs_to_turns(conversation_pairs(sample))).text
        texts.append(_PLACEHOLDERS.sub(" ", text))
    return texts


def load_model_and_processor(path: str | Path) -> tuple[RegionGPTForConditionalGeneration, RegionGPTProcessor]:
    """A saved RegionGPT checkpoint (fp32 weights, for training) and its processor."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise InvalidInputError(f"{path} is not a RegionGPT checkpoint folder (no config.json)")
    model = RegionGPTForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    processor = RegionGPTProcessor.from_pretrained(path)
    return model, processor


def number_token_ids(tokenizer: Any, count: int) -> list[int]:
    """The ids of the single tokens that write "1".."count" (``model.region_number_tokens``)."""
    ids = []
    for k in range(1, count + 1):
        pieces = tokenizer(str(k), add_special_tokens=False)["input_ids"]
        if len(pieces) != 1:
            raise InvalidInputError(f"model.region_number_tokens={count}: the tokenizer writes '{k}' as {len(pieces)} "
                                    f"tokens, not one; use at most {k - 1}")
        ids.append(pieces[0])
    return ids


def label_token_ids(tokenizer: Any, names: Sequence[str], setting: str = "model.image_labels") -> list[list[int]]:
    """The token ids of each label name as a question writes it, after a space ("Is there a star")."""
    ids = []
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise InvalidInputError(f"{setting}: every entry must be a label name, got {name!r}")
        ids.append(tokenizer(f" {name.strip()}", add_special_tokens=False)["input_ids"])
    return ids


def build_model_and_processor(
    config: ModelConfig, train_samples: Sequence[NativeSample], seed: int
) -> tuple[RegionGPTForConditionalGeneration, RegionGPTProcessor]:
    """The model to train: a checkpoint (``pretrained``) or a preset initialised from ``seed``.

    For a preset, a tokenizer is trained on the training text and the model's vocabulary,
    placeholder ids and padding id are set from it.
    """
    if config.pretrained:
        return load_model_and_processor(config.pretrained)
    tokenizer = train_tokenizer(tokenizer_corpus(train_samples, config.tokenizer_max_samples),
                                vocab_size=config.tokenizer_vocab_size)
    overrides = dict(config.overrides)
    if config.region_number_tokens:
        overrides["region_number_token_ids"] = number_token_ids(tokenizer, config.region_number_tokens)
    if config.image_labels:
        overrides["image_label_names"] = list(config.image_labels)
        overrides["image_label_token_ids"] = label_token_ids(tokenizer, config.image_labels)
    if config.image_attributes:
        overrides["image_attribute_names"] = {field: list(names) for field, names in config.image_attributes.items()}
        overrides["image_attribute_token_ids"] = {
            field: label_token_ids(tokenizer, names, f"model.image_attributes.{field}")
            for field, names in config.image_attributes.items()}
    if config.region_labels:
        overrides["region_label_names"] = {field: list(names) for field, names in config.region_labels.items()}
        overrides["region_label_token_ids"] = {
            field: label_token_ids(tokenizer, names, f"model.region_labels.{field}")
            for field, names in config.region_labels.items()}
    try:
        model_config = build_config(
            config.preset,
            text_overrides={"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
                            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                            **config.text_overrides},
            vision_overrides=config.vision_overrides,
            **{"image_token_id": tokenizer.convert_tokens_to_ids("<image>"),
               "region_token_id": tokenizer.convert_tokens_to_ids("<region>"), **overrides},
        )
    except (ValueError, TypeError) as error:
        raise InvalidInputError(f"model.preset {config.preset!r} with the given overrides: {error}") from None
    torch.manual_seed(seed)
    model = RegionGPTForConditionalGeneration(model_config)
    if config.image_processor == "llava15":
        image_processor = llava15_image_processor(model_config.image_size)
    else:
        image_processor = square_image_processor(model_config.image_size)
    system = {} if config.system_prompt is None else {"system_prompt": config.system_prompt}
    processor = RegionGPTProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                   image_seq_length=model_config.image_seq_length, **system)
    return model, processor


# ----- what trains ------------------------------------------------------------------------------
def parameter_groups(model: RegionGPTForConditionalGeneration) -> dict[str, list[nn.Module]]:
    """The modules behind each name ``train.trainable`` accepts."""
    inner = model.model
    connectors = [inner.connector] + [part for part in (inner.region_connector, inner.region_number_embedding)
                                      if part is not None]
    # The region-feature path: refinement plus, when configured, the shape encoder and the
    # grid position embedding (small-model extensions).
    # The image label head reads the same refined map, the region label head the features pooled from it.
    spatial = [inner.feature_refiner] + [part for part in (inner.region_shape_encoder, inner.position_embedding,
                                                           inner.image_label_head, inner.region_label_head)
                                         if part is not None]
    return {
        "vision_tower": [inner.vision_tower],
        "feature_refiner": spatial,
        "connector": connectors,
        "language_model": [inner.language_model, model.lm_head],
    }


def configure_trainable(model: RegionGPTForConditionalGeneration, config: TrainConfig) -> list[str]:
    """Freeze everything, unfreeze ``train.trainable`` groups, add LoRA when configured.

    Returns the names of the trainable parameters.
    """
    model.requires_grad_(False)
    groups = parameter_groups(model)
    for name in config.trainable:
        for module in groups[name]:
            module.requires_grad_(True)
    if config.lora is not None:
        add_lora(model.model.language_model, config.lora)  # new adapter parameters train
        for name, param in model.model.language_model.named_parameters():
            param.requires_grad_("lora_" in name)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise InvalidInputError("no parameter trains with this train.trainable / train.lora setting")
    return trainable


# ----- optimisation -----------------------------------------------------------------------------
def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no weight decay on biases and norm weights (ndim < 2)."""
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # foreach: one multi-tensor kernel per state update instead of a loop over parameters
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=tuple(config.betas),
                             eps=config.eps, foreach=True)


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig, total_steps: int) -> LambdaLR:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``lr * min_lr_ratio``.

    The factor for update ``s`` (0-based) is ``(s + 1) / warmup_steps`` during warm-up.
    """
    warmup, floor = config.warmup_steps, config.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return cosine_factor(min(1.0, (step - warmup) / max(1, total_steps - warmup)), floor)

    return LambdaLR(optimizer, factor)


# ----- data -------------------------------------------------------------------------------------
def check_tasks(requested: Iterable[str] | None, present: set[str], key: str) -> None:
    """Fail, naming ``key``, when a requested task does not occur in the data."""
    for task in requested or ():
        if task not in present:
            close = difflib.get_close_matches(task, sorted(present), n=1)
            hint = f" did you mean '{close[0]}'?" if close else ""
            raise InvalidInputError(f"'{key}' names task {task!r}, which no turn of the data has;{hint} "
                                    f"tasks in the data: {', '.join(sorted(present))}")


def build_train_dataset(config: TrainingConfig, samples: Sequence[NativeSample], processor: RegionGPTProcessor) -> RegionConversationDataset:
    """The training set: per-epoch turn shuffling, packing to ``data.max_length``; tasks checked."""
    d = config.data
    dataset = RegionConversationDataset(samples, processor, d.max_length, seed=config.train.seed,
                                        shuffle_turns=d.shuffle_turns, strict=d.strict,
                                        independent_tasks=d.independent_tasks)
    if not dataset.streamed:  # streamed data is not read ahead: a task of a later sample would be missed
        present = dataset.tasks_present()
        check_tasks(d.tasks, present, "data.tasks")
        for i, phase in enumerate(d.task_schedule):
            check_tasks(phase.tasks, present, f"data.task_schedule[{i}].tasks")
        check_tasks(config.optim.task_weights, present, "optim.task_weights")
        check_tasks(d.independent_tasks, present, "data.independent_tasks")
    return dataset


def task_schedule(config: DataConfig) -> TaskSchedule:
    return TaskSchedule(tuple((p.until_step, tuple(p.tasks)) for p in config.task_schedule),
                        tuple(config.tasks) if config.tasks is not None else None)


def build_train_loader(dataset: RegionConversationDataset, processor: RegionGPTProcessor, config: TrainingConfig,
                       start_micro: int, total_micro: int, rank: int = 0, world_size: int = 1) -> DataLoader:
    """Micro-batches ``start_micro .. total_micro - 1`` of the run's deterministic sample stream
    (with ``world_size`` ranks: this rank's share of them, every ``world_size``-th)."""
    d = config.data
    lengths = dataset.text_lengths() if d.group_by_length else None
    sampler = StepBatchSampler(len(dataset), d.batch_size, config.optim.grad_accum * world_size, config.train.seed,
                               d.shuffle, task_schedule(d), start_micro, total_micro, rank=rank,
                               world_size=world_size, lengths=lengths)
    # Its own generator, so creating the loader never draws from the global torch RNG.
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=RegionCollator(processor, d.independent_tasks),
                      num_workers=d.num_workers, generator=torch.Generator().manual_seed(config.train.seed))


def build_eval_loader(config: TrainingConfig, processor: RegionGPTProcessor) -> DataLoader | None:
    """The held-out loader (None when ``data.val`` is empty)."""
    if not config.data.val:
        return None
    e = config.eval
    samples = load_samples(config.data.val, e.max_samples)
    if not samples:
        raise InvalidInputError(f"data.val {config.data.val} has no samples")
    independent = config.data.independent_tasks
    dataset = RegionConversationDataset(samples, processor, config.data.max_length, strict=config.data.strict,
                                        independent_tasks=independent)
    check_tasks(e.tasks, dataset.tasks_present(), "eval.tasks")
    sampler = EvalBatchSampler(len(dataset), e.batch_size, tuple(e.tasks) if e.tasks is not None else None)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=RegionCollator(processor, independent),
                      num_workers=config.data.num_workers, generator=torch.Generator().manual_seed(0))


__all__ = [
    "build_eval_loader", "build_model_and_processor", "build_optimizer", "build_scheduler", "build_train_dataset",
    "build_train_loader", "check_tasks", "configure_trainable", "load_model_and_processor", "parameter_groups",
    "task_schedule", "tokenizer_corpus",
]
