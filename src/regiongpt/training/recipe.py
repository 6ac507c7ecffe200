"""The RegionGPT training recipe: one class to read top to bottom.

    recipe = TrainingRecipe(load_config("configs/tiny.yaml", ["train.max_steps=20"]))
    recipe.setup()      # run folder, resume point, data, model, what trains, optimiser, schedule
    recipe.train()      # the loop: micro-batches -> loss -> step; logs, evaluates, checkpoints
    recipe.evaluate()   # teacher-forced loss and per-task answer accuracy on data.val
    recipe.save_checkpoint()

Everything configurable reaches this file through the builders (``builders.py``); the
loop itself is plain PyTorch. Resuming restores the model, optimiser, scheduler, data
position and RNG states, so an interrupted run continues exactly as if it had never stopped.

The same recipe runs on many processes under ``torchrun`` (``train.distributed``: ddp or
fsdp; ``distributed.py`` holds the process group, wrapping, collectives and DCP): each rank
reads its shard of the one sample stream, the loss is normalised by the step's global token
count, and only rank 0 logs and writes the run folder's files.
"""

from __future__ import annotations

import contextlib
import random
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from regiongpt.errors import InvalidInputError

from . import checkpointing as ckpt
from . import distributed
from .builders import (
    build_eval_loader,
    build_model_and_processor,
    build_optimizer,
    build_scheduler,
    build_train_dataset,
    build_train_loader,
    configure_trainable,
    load_model_and_processor,
)
from .config import TrainingConfig
from .data import Batch, load_samples, stream_samples
from .describe_pointer import describe_pointers
from .existence_pointer import existence_pointers
from .phrase_pointer import label_word_sequences, phrase_pointers
from .independent_turns import TURN_ATTENTION, attention_mask_for
from .lora import load_lora_state, merged_state_dict, save_lora_state
from .metrics import AnswerAccuracy, MetricsWriter, StepLog, answer_loss_sum, compact_logits, compact_targets
from .rec_pointer import (AttentionInputCapture, PointerLoss, attribute_pointer_loss, digit_tokens,
                          placeholder_regions, pointer_loss, rec_pointers, shares_category)
from .region_aux import RegionAuxiliaryHeads
from .region_labels import RegionLabelLoss
from .region_pretrain import pretrain_region_path
from .turn_attention import use_turn_attention, without_padding

STATE_VERSION = 1
# train.<name>_pointer_weight: attention supervision of REC, existence, or one-region description answers,
# of the phrase REC and existence answers look up, and of a REC phrase's attribute words
POINTER_TASKS = ("rec", "existence", "describe", "phrase", "phrase_attribute")


@dataclass(frozen=True)
class SupervisedHead:
    """One attention head under a pointer loss: the capture of its layer's input, which head, its weight."""

    capture: AttentionInputCapture
    head: int | tuple[int, ...]  # several heads share one pointer (train.rec_pointer_second_head)
    weight: float


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InvalidInputError(f"train.device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"train.device is {name!r} but CUDA is not available here")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): tree}


@contextlib.contextmanager
def _quiet_transformers_progress():
    """No "Writing model shards" bar from save_pretrained under the training bar."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


class TrainingRecipe:
    """Supervised training of RegionGPT on packed multi-turn region conversations."""

    def __init__(self, config: TrainingConfig):
        self.config = config
        self.run_dir = Path(config.train.output_dir).resolve()
        self.device = resolve_device(config.train.device)
        self.dist = distributed.DistEnv()  # one process until setup() joins the torchrun group
        self.step = 0  # optimiser steps done
        self.micro_batches = 0  # data position: micro-batches consumed from the sample stream
        self.skipped_samples = 0
        self.dropped_pairs = 0
        self.last_eval: dict[str, float] = {}
        self._last_batch: Batch | None = None  # distributed: what an empty micro-batch stands in with

    # ----- setup ------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Build everything, from a checkpoint when resuming, else from the config."""
        cfg = self.config
        self.dist = distributed.init(cfg.train.distributed, self.device.type)
        self.device = distributed.rank_device(self.device, self.dist)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resume_from = self._checkpoint_to_resume()
        seed_everything(cfg.train.seed)

        read = stream_samples if cfg.data.streaming else load_samples  # streaming: an index, parsed on use
        self.train_samples = read(cfg.data.train, cfg.data.max_samples)
        if not self.train_samples:
            raise InvalidInputError(f"data.train {cfg.data.train} has no samples")
        if resume_from is not None:
            self.model, self.processor = load_model_and_processor(resume_from)
        else:
            self.model, self.processor = build_model_and_processor(cfg.model, self.train_samples, cfg.train.seed)
        if cfg.model.task_suffix is not None:
            self.processor.task_suffix = cfg.model.task_suffix
        distributed.check_same(self.dist, sorted(self.processor.tokenizer.get_vocab().items()), "tokenizer vocabulary")
        self.trainable = configure_trainable(self.model, cfg.train)
        if resume_from is not None and cfg.train.lora is not None:
            load_lora_state(self.model, resume_from / ckpt.LORA_FILE)
        if cfg.data.independent_tasks and self.model.config.text_config._attn_implementation == "sdpa":
            use_turn_attention(self.model.model.language_model)  # same results, without the masked-out work
        self.model.to(self.device)
        if cfg.train.activation_checkpointing:
            distributed.apply_activation_checkpointing(self.model)
        # What the loop calls: the model, its DDP wrapper, or the model sharded in place (FSDP2).
        self.wrapped = distributed.wrap(self.model, self.dist, self.device, bf16=cfg.train.dtype == "bf16")

        self.train_dataset = build_train_dataset(cfg, self.train_samples, self.processor)
        self.eval_loader = build_eval_loader(cfg, self.processor)
        per_step = self._global_batch()
        self.total_steps = cfg.train.max_steps or max(1, int(np.ceil(cfg.train.epochs * len(self.train_samples) / per_step)))
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.total_steps)
        self._setup_region_aux()
        # model.region_labels: the model's region label head keeps learning its labels (region_labels.py)
        self.region_label_loss = (RegionLabelLoss(self.model)
                                  if self.model.model.region_label_head is not None and cfg.train.region_label_weight
                                  else None)
        self._setup_pointers()

        main = self.dist.is_main  # only rank 0 writes logs
        self.metrics = MetricsWriter(self.run_dir) if main else distributed.Discard()
        self.sample_log = StepLog(self.run_dir / "samples.jsonl") if main else distributed.Discard()
        if resume_from is not None:
            self._load_training_state(resume_from)
        # Logs past the resume point (or of a run killed before its first checkpoint) are replayed.
        self.metrics.log.truncate(self.step)
        self.sample_log.truncate(self.step)
        if main:
            self._write_run_config()

    def _setup_region_aux(self) -> None:
        """``train.region_aux_weight``: heads on the region embeddings with an optimiser of their
        own (at the model's learning rate), kept in the training state (``region_aux.py``)."""
        cfg = self.config
        self.region_aux: RegionAuxiliaryHeads | None = None
        self.region_aux_optimizer: torch.optim.Optimizer | None = None
        if not cfg.train.region_aux_weight:
            return
        if self.dist.world_size > 1:
            raise InvalidInputError("train.region_aux_weight runs in one process; start it without torchrun")
        if cfg.data.streaming:
            raise InvalidInputError("train.region_aux_weight reads every training region's labels up front; "
                                    "set data.streaming=false")
        self.region_aux = RegionAuxiliaryHeads.from_samples(
            self.train_samples, cfg.train.region_pretrain_attributes, self.model.config.text_config.hidden_size,
            cfg.train.region_pretrain_image_labels, cfg.train.region_pretrain_image_weight,
            self.model.config.image_grid_size, cfg.train.segmentation_weight, self.model.config.vision_feature_dim,
            self.model, cfg.train.segmentation_presence_weight, cfg.train.segmentation_peak_targets,
            cfg.train.segmentation_object_cells,
        ).to(self.device)
        self.region_aux_optimizer = torch.optim.AdamW(self.region_aux.parameters(), lr=cfg.optim.lr,
                                                      betas=tuple(cfg.optim.betas), weight_decay=0.0)

    def _setup_pointers(self) -> None:
        """``train.rec_pointer_weight`` / ``existence_pointer_weight`` / ``describe_pointer_weight`` /
        ``phrase_pointer_weight``: capture the input of each supervised head's attention module
        (``rec_pointer.py``, ``existence_pointer.py``, ``describe_pointer.py``, ``phrase_pointer.py``); the
        losses are added in ``train_step``."""
        t = self.config.train
        self.pointers: dict[str, SupervisedHead] = {}  # a name of POINTER_TASKS -> its head
        wanted = [name for name in POINTER_TASKS if getattr(t, f"{name}_pointer_weight")]
        if not wanted:
            return
        option = f"train.{wanted[0]}_pointer_weight"
        if self.dist.world_size > 1:
            raise InvalidInputError(f"{option} runs in one process; start it without torchrun")
        if t.activation_checkpointing:
            raise InvalidInputError(f"{option} recomputes one head's attention from the layer's input, which "
                                    "activation checkpointing discards; set train.activation_checkpointing=false")
        lm = self.model.model.language_model
        layers = getattr(lm, "layers", None)
        if not isinstance(layers, torch.nn.ModuleList) or not layers:
            raise InvalidInputError(f"{option} needs a language model with a `layers` list of decoder layers; "
                                    f"{type(lm).__name__} has none")
        if not isinstance(getattr(lm, "norm", None), torch.nn.Module):
            raise InvalidInputError(f"{option} reads the supervised head's output through the language model's "
                                    "final `norm`; this language model has none")
        n_layers, n_heads = len(layers), self.model.config.text_config.num_attention_heads
        captures: dict[int, AttentionInputCapture] = {}
        for name in wanted:
            layer, head = getattr(t, f"{name}_pointer_layer"), getattr(t, f"{name}_pointer_head")
            if not -n_layers <= layer < n_layers:
                raise InvalidInputError(f"train.{name}_pointer_layer is {layer} but the language model has "
                                        f"{n_layers} layers: use 0..{n_layers - 1} (or -1 for the last)")
            if head >= n_heads:
                raise InvalidInputError(f"train.{name}_pointer_head is {head} but the language model has "
                                        f"{n_heads} attention heads: use 0..{n_heads - 1}")
            layer %= n_layers
            if layer not in captures:
                captures[layer] = AttentionInputCapture(layers[layer].self_attn, f"train.{name}_pointer_weight")
            second = t.rec_pointer_second_head if name == "rec" else None
            if second is not None and not (0 <= second < n_heads and second != head):
                raise InvalidInputError(f"train.rec_pointer_second_head is {second}: use another head of the "
                                        f"layer than train.rec_pointer_head ({head}), 0..{n_heads - 1}, or null")
            self.pointers[name] = SupervisedHead(captures[layer], head if second is None else (head, second),
                                                 getattr(t, f"{name}_pointer_weight"))
        self.rec_attribute_head = t.rec_pointer_attribute_head if "rec" in self.pointers else None
        if self.rec_attribute_head is not None:
            attribute, head = self.rec_attribute_head, t.rec_pointer_head
            if not (0 <= attribute < n_heads and attribute != head):
                raise InvalidInputError(f"train.rec_pointer_attribute_head is {attribute}: use another head of the "
                                        f"layer than train.rec_pointer_head ({head}), 0..{n_heads - 1}, or null")
            if t.rec_pointer_second_head is not None:
                raise InvalidInputError("train.rec_pointer_attribute_head and train.rec_pointer_second_head both add "
                                        "a head to the REC lookup: set one of them to null")
        if {"rec", "phrase", "phrase_attribute"} & set(self.pointers):
            self.rec_digits = digit_tokens(self.processor.tokenizer.get_vocab())
        if {"phrase", "phrase_attribute"} & set(self.pointers):
            config = self.model.config
            self.label_words = label_word_sequences(config.image_label_token_ids, config.region_label_token_ids)
            if not self.label_words:
                raise InvalidInputError("train.phrase_pointer_weight points at the question's label words, the names "
                                        "of model.image_labels and model.region_labels; this model has neither: "
                                        "set one of them or train.phrase_pointer_weight=0")
        if "phrase_attribute" in self.pointers:
            region_ids = self.model.config.region_label_token_ids or {}
            missing = [f for f in t.phrase_attribute_fields if f not in region_ids]
            if missing:
                raise InvalidInputError(f"train.phrase_attribute_fields names {missing}, which the model's region "
                                        f"labels do not have (its fields: {sorted(region_ids) or 'none'})")
            self.attribute_words = set(label_word_sequences(None, {f: region_ids[f] for f in t.phrase_attribute_fields}))
        if "existence" in self.pointers:
            config = self.model.config
            if config.image_seq_length != config.image_grid_size ** 2:
                raise InvalidInputError(
                    f"train.existence_pointer_weight points at image-token cells, but the model has "
                    f"{config.image_seq_length} image tokens for a {config.image_grid_size}x{config.image_grid_size} "
                    "grid; it needs image_seq_length == image_grid_size ** 2")

    def _pointer_loss(self, name: str, b: Batch) -> tuple[PointerLoss | None, int]:
        """The batch's attention supervision for ``name`` (one of POINTER_TASKS) and its
        number of supervised rows."""
        if name == "rec":
            rows = rec_pointers(b.inputs["input_ids"], b.answer_index, b.answer_tasks,
                                self.processor.region_token_id, b.inputs.get("region_token_index"), self.rec_digits)
        elif name == "describe":
            rows = describe_pointers(b.inputs["input_ids"], b.answer_index, b.answer_tasks,
                                     self.processor.region_token_id, b.inputs.get("region_token_index"))
        elif name == "phrase":
            rows = phrase_pointers(b.inputs["input_ids"], b.answer_index, b.answer_tasks, self.label_words,
                                   self.rec_digits)
        elif name == "phrase_attribute":
            rows = phrase_pointers(b.inputs["input_ids"], b.answer_index, b.answer_tasks, self.label_words,
                                   self.rec_digits, tasks=("rec",), target_words=self.attribute_words)
        else:
            rows = existence_pointers(b.inputs["input_ids"], b.answer_index, b.answer_tasks, b.answer_evidence,
                                      self.processor.image_token_id, b.inputs.get("region_masks"),
                                      b.inputs.get("region_image_index"), self.model.config.image_grid_size)
        if not rows:
            return None, 0
        lm = self.model.model.language_model
        supervised = self.pointers[name]
        if name == "rec" and self.rec_attribute_head is not None:
            region_of = placeholder_regions(b.inputs["input_ids"], self.processor.region_token_id,
                                            b.inputs["region_token_index"])
            categories = [labels.get("category") for labels in b.region_labels]
            shared = [shares_category(p, region_of[p.row], categories) for p in rows]
            return attribute_pointer_loss(supervised.capture, rows, supervised.head, self.rec_attribute_head, shared,
                                          b.inputs.get("attention_mask"),
                                          lambda x: self.model.lm_head(lm.norm(x)),
                                          self.config.train.rec_pointer_attribute_weight), len(rows)
        first_hop = name in ("phrase", "phrase_attribute")  # feeds the next layer: no readout
        losses = pointer_loss(supervised.capture, rows, supervised.head, b.inputs.get("attention_mask"),
                              readout=None if first_hop else lambda x: self.model.lm_head(lm.norm(x)),
                              spread=first_hop and self.config.train.phrase_pointer_spread)
        return losses, len(rows)

    def _checkpoint_to_resume(self) -> Path | None:
        """``train.resume``: auto (newest complete checkpoint, if any), never, or a path."""
        resume = self.config.train.resume
        if self.dist.is_main:
            for partial in ckpt.remove_partial_checkpoints(self.run_dir):
                warnings.warn(f"removed an incomplete checkpoint left by an interrupted run: {partial}", stacklevel=2)
        distributed.barrier(self.dist)
        if resume == "never":
            if ckpt.list_checkpoints(self.run_dir):
                raise InvalidInputError(f"{self.run_dir} already has checkpoints and train.resume is 'never'; "
                                        "choose a new train.output_dir or set train.resume=auto")
            return None
        if resume == "auto":
            return ckpt.latest_checkpoint(self.run_dir)
        path = Path(resume)
        if not (path / ckpt.STATE_FILE).is_file():
            raise InvalidInputError(f"train.resume {resume!r} is not a checkpoint folder (no {ckpt.STATE_FILE})")
        return path

    def _write_run_config(self) -> None:
        """Write ``config.yaml``; warn about settings that differ from the run being resumed."""
        path = self.run_dir / "config.yaml"
        new = self.config.to_dict()
        if path.exists() and self.step > 0:
            old = _flatten(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
            changed = sorted(k for k, v in _flatten(new).items() if old.get(k, v) != v)
            if changed:
                warnings.warn(f"resuming with changed settings: {', '.join(changed)}", stacklevel=2)
        path.write_text(yaml.safe_dump(new, sort_keys=False), encoding="utf-8")

    # ----- the loop -----------------------------------------------------------------------------------
    def train(self, stop_after: int | None = None) -> dict[str, float]:
        """Train to ``total_steps`` (or stop after step ``stop_after`` without a final checkpoint).

        Returns the last training metrics and the last evaluation's.
        """
        cfg = self.config
        if self.step == 0 and cfg.train.region_pretrain_steps and cfg.model.pretrained is None:
            self._pretrain_region_path()
        accum, world = cfg.optim.grad_accum, self.dist.world_size
        # micro_batches counts the global stream's micro-batches; this rank reads every world-th.
        loader = build_train_loader(self.train_dataset, self.processor, cfg, self.micro_batches,
                                    self.total_steps * accum * world, self.dist.rank, world)
        batches = iter(loader)
        self._train_mode()
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", file=sys.stderr,
                   disable=not (cfg.train.progress and self.dist.is_main), dynamic_ncols=True)
        last: dict[str, float] = {}
        try:
            while self.step < self.total_steps:
                started = time.perf_counter()
                micro = [next(batches) for _ in range(accum)]
                last = self.train_step(micro)
                self.step += 1
                self.micro_batches += accum * world
                # Every rank's micro-batches, in the global stream's order (as one process logs them).
                consumed = distributed.interleave_micro(distributed.all_gather(
                    self.dist, [(b.sequence_ids, [s.sample_id for s in b.skipped]) for b in micro]))
                self.sample_log.append({"step": self.step, "sequences": [i for ids, _ in consumed for i in ids],
                                        "skipped": [i for _, skipped in consumed for i in skipped]})
                seconds = time.perf_counter() - started
                last["epoch"] = self.micro_batches * cfg.data.batch_size / len(self.train_samples)
                last["samples_per_s"] = last.pop("images") / seconds
                last["tokens_per_s"] = last.pop("tokens") / seconds
                if self.step % cfg.train.log_every == 0 or self.step == self.total_steps:
                    self.metrics.write(self.step, "train", last)
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss']:.3f}", acc=f"{last.get('token_acc', 0):.2f}",
                                img_s=f"{last['samples_per_s']:.1f}", tok_s=f"{last['tokens_per_s']:.0f}")
                finished = self.step == self.total_steps
                every = cfg.eval.every_steps
                if self.eval_loader is not None and (finished or (every and self.step % every == 0)):
                    self.evaluate()
                if finished or self.step % cfg.checkpoint.every_steps == 0:
                    self.save_checkpoint()
                if stop_after is not None and self.step >= stop_after:
                    break
        finally:
            bar.close()
            self.metrics.flush()
        if self.skipped_samples or self.dropped_pairs:
            warnings.warn(f"{self.skipped_samples} sample(s) skipped (unreadable image or nothing to train on) and "
                          f"{self.dropped_pairs} turn pair(s) longer than data.max_length dropped; see samples.jsonl",
                          stacklevel=2)
        return {**last, **{f"val/{k}": v for k, v in self.last_eval.items()}}

    def _pretrain_region_path(self) -> None:
        """Optional stage 0 (``train.region_pretrain_steps``): see ``region_pretrain.py``."""
        if self.dist.world_size > 1:
            raise InvalidInputError("train.region_pretrain_steps runs in one process; start it without torchrun")
        losses = self.pretrain_region_path(self.config.train.region_pretrain_steps)
        self.metrics.write(0, "region_pretrain", {"loss_first": losses[0], "loss_last": losses[-1],
                                                  "steps": len(losses)})

    def pretrain_region_path(self, steps: int) -> list[float]:
        """``steps`` steps of the region-path pretraining with this config's ``train.region_pretrain_*``
        settings (the learning rate's schedule spans ``steps``); the per-step losses."""
        cfg = self.config
        return pretrain_region_path(self.model, self.processor, self.train_samples, steps,
                                    cfg.train.region_pretrain_lr,
                                    cfg.train.region_pretrain_batch_size or cfg.data.batch_size, cfg.train.seed,
                                    self.device,
                                    attributes=cfg.train.region_pretrain_attributes,
                                    image_labels=cfg.train.region_pretrain_image_labels,
                                    image_weight=cfg.train.region_pretrain_image_weight,
                                    heads_on=cfg.train.region_pretrain_heads_on,
                                    segmentation_weight=cfg.train.pretrain_segmentation_weight(),
                                    segmentation_presence_weight=cfg.train.segmentation_presence_weight,
                                    num_workers=cfg.train.region_pretrain_workers,
                                    segmentation_peak_targets=cfg.train.segmentation_peak_targets,
                                    segmentation_object_cells=cfg.train.segmentation_object_cells,
                                    cache_bytes=int(cfg.train.region_pretrain_cache_gb * 2**30),
                                    min_lr_ratio=cfg.train.region_pretrain_min_lr_ratio)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.config.train.dtype == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _model_inputs(self, b: Batch) -> dict[str, torch.Tensor]:
        """The batch's model inputs; an independent-turn mask (data.independent_tasks) in the form the
        language model's attention takes."""
        inputs = {k: v for k, v in b.inputs.items() if k != "labels"}
        mask = inputs.get("attention_mask")
        if mask is not None and mask.dim() == 4:
            implementation = self.model.config.text_config._attn_implementation
            if implementation not in ("sdpa", "eager", TURN_ATTENTION):
                raise InvalidInputError(
                    f"data.independent_tasks needs SDPA or eager attention (a per-token attention mask); the "
                    f"language model uses {implementation!r}: load it with attn_implementation='sdpa'")
            inputs["attention_mask"] = attention_mask_for(mask, implementation, torch.float32)
        return inputs

    def _padding_free(self, b: Batch) -> bool:
        """Whether ``b`` runs padding-free (``train.padding_free``): only with turn attention, which
        keeps the rows apart."""
        return (self.config.train.padding_free and b.padding_mask is not None and "turn_layout" in b.inputs
                and self.model.config.text_config._attn_implementation == TURN_ATTENTION)

    def train_step(self, micro: list[Batch]) -> dict[str, float]:
        """One optimiser step over ``grad_accum`` micro-batches (on each rank); the loss is the mean
        over all learned tokens of the step on all ranks (so accumulation and more ranks equal one
        large batch)."""
        per_answer = self.config.optim.loss_average == "answer"
        # what the loss is averaged over: learned tokens, or answers (optim.loss_average)
        local_tokens = sum(len(b.answer_tasks) if per_answer else int((b.inputs["labels"][:, 1:] != -100).sum())
                           for b in micro if not b.empty)
        n_tokens = int(distributed.all_sum(self.dist, [local_tokens])[0])
        for b in micro:
            self.skipped_samples += len(b.skipped)
            self.dropped_pairs += b.dropped_pairs
            for s in b.skipped:
                warnings.warn(f"skipped sample {s.sample_id}: {s.reason}", stacklevel=2)
        self.optimizer.zero_grad(set_to_none=True)
        if self.region_aux_optimizer is not None:
            self.region_aux_optimizer.zero_grad(set_to_none=True)
        accuracy = AnswerAccuracy()
        loss_sum, tokens, aux_sum, label_sum = 0.0, 0, 0.0, 0.0
        pointer_sums = {name: [0.0, 0.0, 0, 0] for name in self.pointers}  # attention, readout, rows, correct
        scale = distributed.loss_scale(self.dist) / max(1, n_tokens)
        for i, b in enumerate(micro):
            if n_tokens == 0:
                break
            weight = 1.0
            if b.empty:
                if not self.dist.enabled:
                    continue
                b, weight = self._stand_in(), 0.0  # every rank must join each forward and backward
            b.to(self.device)
            # logits only where a learned token is predicted: the output head and loss skip the rest
            keep, labels, answer_index = compact_targets(b.inputs["labels"], b.answer_index)
            with distributed.gradient_sync(self.wrapped, self.dist, sync=i == len(micro) - 1):
                with self._autocast():
                    inputs = self._model_inputs(b)
                    inputs["logits_to_keep"] = keep
                    if self._padding_free(b):
                        inputs = without_padding(inputs, b.padding_mask)
                    vision = None
                    if self.region_aux is not None and self.region_aux.segmentation is not None \
                            and inputs.get("pixel_values") is not None:
                        # encoded here so the segmentation head can read the refined map
                        vision = self.model.model.encode_images(inputs.pop("pixel_values"))
                        inputs["vision_features"] = vision
                    # no KV cache in training (activation checkpointing recomputes layers; a cache would grow)
                    outputs = self.wrapped(**inputs, use_cache=False)
                    logits = compact_logits(outputs.logits)  # (1, K + 1, V)
                loss = answer_loss_sum(logits, labels, answer_index, per_answer, self._answer_weights(b))
                total = loss * (weight * scale)
                if self.region_aux is not None and outputs.region_embeds is not None:
                    aux = self.region_aux.loss(outputs.region_embeds, b.region_labels)
                    if outputs.image_embeds is not None:
                        aux = aux + self.region_aux.image_loss(outputs.image_embeds, b.inputs["region_masks"],
                                                               b.inputs["region_image_index"], b.region_labels)
                    if vision is not None:
                        aux = aux + self.region_aux.segmentation_loss(vision.region_maps, b.inputs["region_masks"],
                                                                      b.inputs["region_image_index"], b.region_labels,
                                                                      vision.image_label_logits,
                                                                      vision.image_attribute_logits)
                    total = total + aux * (self.config.train.region_aux_weight / len(micro))
                    aux_sum += float(aux.detach()) / len(micro)
                if self.region_label_loss is not None and outputs.region_embeds is not None:
                    labels_loss = self.region_label_loss.loss(b.region_labels)
                    total = total + labels_loss * (self.config.train.region_label_weight / len(micro))
                    label_sum += float(labels_loss.detach()) / len(micro)
                for name, supervised in self.pointers.items() if weight else ():
                    pointer, n_pointers = self._pointer_loss(name, b)
                    if pointer is not None:
                        total = total + (pointer.attention + pointer.readout) * (
                            supervised.weight / len(micro))
                        sums = pointer_sums[name]
                        sums[0] += float(pointer.attention.detach()) / len(micro)
                        sums[1] += float(pointer.readout.detach()) / len(micro)
                        sums[2] += n_pointers
                        sums[3] += pointer.correct
                total.backward()
            if weight:
                self._last_batch = b
                loss_sum += float(loss.detach())
                tokens += b.tokens
                accuracy.update(logits.detach(), labels, answer_index, b.answer_tasks)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if n_tokens:
            max_norm = self.config.optim.max_grad_norm
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm is not None else float("inf"))
            grad_norm = distributed.plain_tensor(grad_norm)
            self.optimizer.step()
            if self.region_aux_optimizer is not None:
                for group in self.region_aux_optimizer.param_groups:
                    group["lr"] = self.scheduler.get_last_lr()[0]
                self.region_aux_optimizer.step()
        else:
            warnings.warn(f"step {self.step + 1}: no learned tokens in the batch; no update", stacklevel=2)
            grad_norm = torch.tensor(0.0)
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        loss_sum, tokens, sequences, images = distributed.all_sum(self.dist, [
            loss_sum, tokens, sum(len(b.sequence_ids) for b in micro), sum(b.n_images for b in micro)])
        acc = distributed.merge_accuracy(self.dist, accuracy).compute()
        extra = {"region_aux_loss": aux_sum} if self.region_aux is not None else {}
        if self.region_label_loss is not None:
            extra["region_label_loss"] = label_sum
        for name, (attention, readout, rows, correct) in pointer_sums.items():
            extra[f"{name}_pointer_attention_loss"] = attention
            extra[f"{name}_pointer_readout_loss"] = readout
            if rows:
                extra[f"{name}_pointer_acc"] = correct / rows
        # per task too: the overall numbers hide a task stuck at its prior (NOTES.md)
        per_task = {k: v for k, v in acc.items() if k.endswith("/exact_match") and not k.startswith("all/")}
        return {**extra, "loss": loss_sum / max(1, n_tokens), "lr": lr, "grad_norm": float(grad_norm),
                "token_acc": acc.get("all/token_acc", 0.0), "exact_match": acc.get("all/exact_match", 0.0),
                **per_task, ("answers" if per_answer else "answer_tokens"): n_tokens, "sequences": int(sequences),
                "tokens": int(tokens), "images": int(images)}

    def _answer_weights(self, batch: Batch) -> torch.Tensor | None:
        """(A,) loss weight of each answer of the batch from ``optim.task_weights`` (None: all 1)."""
        weights = self.config.optim.task_weights
        if not weights:
            return None
        return torch.tensor([float(weights.get(task, 1.0)) for task in batch.answer_tasks])

    def _stand_in(self) -> Batch:
        """The batch a rank computes with weight 0 when its own micro-batch is empty (all samples
        skipped): the ranks' collectives must match, so every rank runs every forward/backward."""
        if self._last_batch is None:
            raise InvalidInputError("a rank's first micro-batch has no usable sample (all skipped); "
                                    "fix or drop the unreadable samples (data.strict=true names them)")
        return self._last_batch

    def _train_mode(self) -> None:
        """The model in training mode; with ``train.freeze_batchnorm_stats`` its BatchNorm layers stay in
        evaluation mode (they normalise with, and keep, their running statistics; their weights still train)."""
        self.model.train()
        if self.config.train.freeze_batchnorm_stats:
            for module in self.model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()

    # ----- evaluation ---------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Teacher-forced loss and per-task answer accuracy (token accuracy, exact match) on data.val."""
        if self.eval_loader is None:
            raise InvalidInputError("evaluation needs data.val")
        was_training = self.model.training
        self.model.eval()
        accuracy = AnswerAccuracy()
        loss_sum, n_tokens, skipped = 0.0, 0, []
        for b in self.eval_loader:
            skipped += b.skipped
            if b.empty:
                continue
            b.to(self.device)
            labels = b.inputs["labels"]
            with self._autocast():
                logits = self.model(**self._model_inputs(b)).logits
            loss_sum += float(answer_loss_sum(logits, labels))
            n_tokens += int((labels[:, 1:] != -100).sum())
            accuracy.update(logits, labels, b.answer_index, b.answer_tasks)
        if was_training:
            self._train_mode()
        if skipped:  # a warning, not an error: training goes on (and keeps its checkpoints)
            none_left = "; nothing was left to evaluate" if n_tokens == 0 else ""
            warnings.warn(f"evaluation skipped {len(skipped)} validation sample(s){none_left} (first: "
                          f"{skipped[0].sample_id}: {skipped[0].reason}); fix data.val", stacklevel=2)
        results = {"loss": loss_sum / max(1, n_tokens), **accuracy.compute()}
        self.metrics.write(self.step, "val", results)
        self.last_eval = results
        return results

    # ----- checkpoints --------------------------------------------------------------------------------
    def training_state(self, optimizer: bool = True) -> dict[str, Any]:
        """Everything besides the weights that resuming needs (tensors and plain values only);
        the optimiser's state is left out when it is saved sharded (``dcp/``)."""
        return {
            "version": STATE_VERSION,
            "step": self.step,
            "total_steps": self.total_steps,
            "micro_batches": self.micro_batches,
            "samples_consumed": self.micro_batches * self.config.data.batch_size,
            "skipped_samples": self.skipped_samples,
            "dropped_pairs": self.dropped_pairs,
            "optimizer": self.optimizer.state_dict() if optimizer else None,
            "scheduler": self.scheduler.state_dict(),
            "rng": ckpt.capture_rng_state(),  # rank 0's
            "world_size": self.dist.world_size,
            "global_batch": self._global_batch(),
            "region_aux": None if self.region_aux is None else {
                "heads": self.region_aux.state_dict(), "optimizer": self.region_aux_optimizer.state_dict()},
        }

    def _global_batch(self) -> int:
        """Images per optimiser step over all ranks."""
        return self.config.data.batch_size * self.config.optim.grad_accum * self.dist.world_size

    def save_checkpoint(self) -> Path:
        """Write ``ckpt-XXXXXX/`` atomically (a loadable HF model folder + training state).

        Distributed: rank 0 creates the ``.tmp`` folder; under FSDP every rank writes its model
        and optimiser shards to ``dcp/`` and the full weights are gathered to rank 0; rank 0
        writes the rest and renames the folder after all ranks are done.
        """
        cfg = self.config
        sharded = self.dist.mode == "fsdp"
        weights = distributed.full_model_state(self.model, self.dist) if sharded else None  # collective
        if self.dist.is_main:
            ckpt.begin_checkpoint(self.run_dir, self.step)
        distributed.barrier(self.dist)
        folder = ckpt.temporary_path(self.run_dir, self.step)
        if sharded:
            distributed.save_sharded(folder / distributed.DCP_FOLDER, self.model, self.optimizer)
        if self.dist.is_main:
            with _quiet_transformers_progress():
                if cfg.train.lora is not None:
                    self.model.save_pretrained(folder, state_dict=merged_state_dict(self.model))
                    save_lora_state(self.model, folder / ckpt.LORA_FILE)
                else:
                    with distributed.as_plain_class(self.model) as model:
                        model.save_pretrained(folder, state_dict=weights)
                self.processor.save_pretrained(folder)
            (folder / ckpt.CONFIG_FILE).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
            ckpt.save_training_state(folder / ckpt.STATE_FILE, self.training_state(optimizer=not sharded))
        distributed.barrier(self.dist)
        if self.dist.is_main:
            ckpt.commit_checkpoint(self.run_dir, self.step, cfg.checkpoint.keep_last)
        distributed.barrier(self.dist)
        return ckpt.checkpoint_path(self.run_dir, self.step)

    def _load_training_state(self, folder: Path) -> None:
        state = ckpt.load_training_state(folder / ckpt.STATE_FILE)
        if state.get("version") != STATE_VERSION:
            raise InvalidInputError(f"{folder}: training state version {state.get('version')} is not {STATE_VERSION}")
        if state["total_steps"] != self.total_steps:
            warnings.warn(f"resuming a run planned for {state['total_steps']} steps with {self.total_steps}; "
                          "the learning-rate schedule changes", stacklevel=2)
        if state.get("global_batch", self._global_batch()) != self._global_batch():
            warnings.warn(f"resuming a run with {state['global_batch']} images per step with {self._global_batch()} "
                          "(data.batch_size x processes x optim.grad_accum); the curve will differ", stacklevel=2)
        if (folder / distributed.DCP_FOLDER).is_dir():  # sharded model + optimiser, resharded to this run
            distributed.load_sharded(folder / distributed.DCP_FOLDER, self.model, self.optimizer)
        else:
            distributed.load_indexed_optimizer_state(self.model, self.optimizer, state["optimizer"], self.dist)
        self.scheduler.load_state_dict(state["scheduler"])
        self._load_region_aux_state(state.get("region_aux"), folder)
        self.step = int(state["step"])
        self.micro_batches = int(state["micro_batches"])
        self.skipped_samples = int(state["skipped_samples"])
        self.dropped_pairs = int(state["dropped_pairs"])
        ckpt.restore_rng_state(state["rng"])

    def _load_region_aux_state(self, saved: dict[str, Any] | None, folder: Path) -> None:
        """Restore the auxiliary heads and their optimiser (``train.region_aux_weight``)."""
        if self.region_aux is None:
            return
        if saved is None:
            warnings.warn(f"{folder} was saved without train.region_aux_weight: its auxiliary heads start fresh",
                          stacklevel=2)
            return
        try:
            self.region_aux.load_state_dict(saved["heads"])
        except RuntimeError as error:
            raise InvalidInputError(f"{folder}: the saved auxiliary region heads do not match this run's labels "
                                    f"(train.region_pretrain_attributes or the data changed): {error}") from None
        self.region_aux_optimizer.load_state_dict(saved["optimizer"])


def run_training(config: TrainingConfig) -> dict[str, float]:
    """Set up and run a whole training run; returns the final metrics."""
    recipe = TrainingRecipe(config)
    recipe.setup()
    return recipe.train()


__all__ = ["TrainingRecipe", "resolve_device", "run_training"]
