"""Training on many processes with PyTorch's own engine: process group, wrapping, sharded
sampling arithmetic, collectives the recipe needs, and DCP checkpoints.

``train.distributed`` selects the mode:

- ``none``: one process (the recipe as it always was).
- ``ddp``: :class:`~torch.nn.parallel.DistributedDataParallel`; every rank holds the whole
  model and optimiser, gradients are all-reduced. Checkpoints are written by rank 0 in the
  single-process format (the optimiser state is replicated), so any number of processes
  resumes them.
- ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``): parameters, gradients and
  optimiser states sharded per decoder layer, per vision layer and for the rest at the
  root; bf16 compute through :class:`MixedPrecisionPolicy` when ``train.dtype`` is bf16.
  Checkpoints add a ``dcp/`` folder written with ``torch.distributed.checkpoint`` by all
  ranks (model and optimiser, sharded); DCP reshards on load, so a different number of
  processes (one included) resumes them. Rank 0 also writes the full weights with
  ``save_pretrained``.

The world size and rank come from the ``torchrun`` environment (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``); the backend is nccl on CUDA and gloo on CPU.

Data: rank ``r`` of ``W`` takes the micro-batches ``m`` of the run's sample stream with
``m % W == r`` (see :class:`~regiongpt.training.data.StepBatchSampler`), so a run with
per-rank batch ``B``, ``A`` accumulation steps on ``W`` ranks consumes exactly the samples,
in the same steps, as one process with batch ``B`` and ``A * W`` accumulation steps, and
its loss curve is the same (the loss of a step is normalised by the step's global number of
learned tokens).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

DCP_FOLDER = "dcp"  # the sharded model + optimiser inside a checkpoint folder (fsdp)
_CHECKPOINT_PREFIX = "_checkpoint_wrapped_module."


# ----- the process group --------------------------------------------------------------------------
@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: its rank among ``world_size`` and the training mode."""

    mode: str = "none"  # none | ddp | fsdp
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, shows progress and writes the run folder's files."""
        return self.rank == 0


def env_world() -> tuple[int, int, int]:
    """(world size, rank, local rank) from the torchrun environment; (1, 0, 0) without it."""
    return (int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")),
            int(os.environ.get("LOCAL_RANK", "0")))


def init(mode: str, device_type: str) -> DistEnv:
    """Start the process group for ``mode`` (ddp/fsdp) from the torchrun environment.

    ``mode`` none returns the one-process environment and touches nothing. A distributed
    mode started without torchrun runs as a world of one (still wrapped, so the code path is
    the same), which needs ``MASTER_ADDR``/``MASTER_PORT``: they default to a local port.
    """
    if mode == "none":
        return DistEnv()
    world, rank, local = env_world()
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29517")
        backend = "nccl" if device_type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {}
        if device_type == "cuda":
            kwargs["device_id"] = torch.device("cuda", local)
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(minutes=30),
                                **kwargs)
        atexit.register(shutdown)
    return DistEnv(mode, dist.get_rank(), dist.get_world_size(), local)


def shutdown() -> None:
    """Leave the process group (no-op when none was started)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device: torch.device, env: DistEnv) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` on CUDA, else ``device`` unchanged."""
    if env.enabled and device.type == "cuda":
        torch.cuda.set_device(env.local_rank)
        return torch.device("cuda", env.local_rank)
    return device


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


# ----- collectives the training step needs ------------------------------------------------------------
def all_sum(env: DistEnv, values: Sequence[float]) -> list[float]:
    """Element-wise sum over ranks of a few numbers (float64, so token counts stay exact)."""
    if not env.enabled:
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def all_gather(env: DistEnv, obj: Any) -> list[Any]:
    """Every rank's ``obj`` (small picklable values: ids, counters), in rank order."""
    if not env.enabled:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def check_same(env: DistEnv, value: Any, what: str) -> None:
    """Fail unless every rank holds the same ``value`` (e.g. the tokenizer each rank trained)."""
    if not env.enabled:
        return
    digest = hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
    if len(set(all_gather(env, digest))) != 1:
        raise RuntimeError(f"the ranks disagree on the {what}; every rank must build the same model")


def merge_accuracy(env: DistEnv, accuracy: Any) -> Any:
    """An :class:`~regiongpt.training.metrics.AnswerAccuracy` with every rank's counts summed."""
    if not env.enabled:
        return accuracy
    fields = ("tokens", "correct", "answers", "exact")
    merged = type(accuracy)()
    for part in all_gather(env, [dict(getattr(accuracy, f)) for f in fields]):
        for name, counts in zip(fields, part):
            for key, value in counts.items():
                getattr(merged, name)[key] += value
    return merged


def interleave_micro(per_rank: list[list[Any]]) -> list[Any]:
    """Per-rank lists of per-micro-batch items -> the global micro-batch order.

    Rank ``r``'s ``k``-th micro-batch of a step is global micro-batch ``k * W + r``.
    """
    return [per_rank[r][k] for k in range(len(per_rank[0])) for r in range(len(per_rank))]


# ----- wrapping --------------------------------------------------------------------------------------
def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return model.model.language_model.layers


def vision_layers(model: nn.Module) -> nn.ModuleList | None:
    """The vision tower's transformer layers (None for towers without ``vision_model.encoder``)."""
    tower = model.model.vision_tower
    encoder = getattr(getattr(tower, "vision_model", None), "encoder", None)
    return getattr(encoder, "layers", None)


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each decoder layer's activations in the backward pass (torch's own
    ``checkpoint_wrapper``, non-reentrant), independent of transformers' method names."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    layers = decoder_layers(model)
    for i, layer in enumerate(layers):
        layers[i] = checkpoint_wrapper(layer, checkpoint_impl=CheckpointImpl.NO_REENTRANT)


def shard(model: nn.Module, bf16: bool) -> nn.Module:
    """FSDP2 in place: one group per decoder layer, per vision layer, and the rest at the root.

    With ``bf16`` the all-gathered parameters compute in bf16 and gradients reduce in fp32;
    the sharded master weights and optimiser states stay fp32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16
              else MixedPrecisionPolicy())
    for layer in vision_layers(model) or ():
        fully_shard(layer, mp_policy=policy)
    for layer in decoder_layers(model):
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def wrap(model: nn.Module, env: DistEnv, device: torch.device, bf16: bool) -> nn.Module:
    """What the training loop calls: the model itself, its DDP wrapper, or the model sharded
    in place by FSDP2 (then ``model`` and the result are the same object)."""
    if env.mode == "fsdp":
        return shard(model, bf16)
    if env.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        # Frozen parts get no gradients; parts a batch does not reach (e.g. the region path of an
        # image without regions) must not stall the all-reduce.
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
    return model


@contextlib.contextmanager
def gradient_sync(wrapped: nn.Module, env: DistEnv, sync: bool) -> Iterator[None]:
    """Accumulate locally (``sync`` False) or reduce gradients across ranks in this backward."""
    if env.mode == "ddp" and not sync:
        with wrapped.no_sync():
            yield
        return
    if env.mode == "fsdp":
        wrapped.set_requires_gradient_sync(sync)
    yield


def loss_scale(env: DistEnv) -> float:
    """DDP and FSDP average gradients over ranks; the recipe's loss is a sum over the step's
    tokens divided by their global count, so each rank's loss is scaled by the world size."""
    return float(env.world_size) if env.enabled else 1.0


def plain_tensor(value: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (e.g. the gradient norm under FSDP), else the tensor itself."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


# ----- state dicts and DCP -----------------------------------------------------------------------------
def full_model_state(model: nn.Module, env: DistEnv) -> dict[str, torch.Tensor]:
    """The whole model's state dict on the CPU with plain keys (collective under FSDP; rank 0
    gets the tensors, the other ranks an empty dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if env.mode != "fsdp":
        state = model.state_dict()
        return {k.replace(_CHECKPOINT_PREFIX, ""): v for k, v in state.items()}
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_sharded(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """All ranks write the model and optimiser shards to ``folder`` with DCP (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(folder))


def load_sharded(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load a DCP checkpoint into this model and optimiser, resharding to however they are
    laid out now (FSDP on any number of ranks, DDP, or one plain process)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)  # initialises empty optimiser states
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def load_indexed_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                                 env: DistEnv) -> None:
    """Load a single-process optimiser state (``torch.optim`` format: parameters by index).

    Plain and DDP models share the optimiser's parameter order, so it loads as is; under
    FSDP the indices are mapped to parameter names and the full state is sharded.
    """
    if env.mode != "fsdp":
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = {id(p): n.replace(_CHECKPOINT_PREFIX, "") for n, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    named = {
        "state": {order[int(i)]: s for i, s in state["state"].items()},
        "param_groups": [{**g, "params": [order[int(i)] for i in g["params"]]} for g in state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, named, options=StateDictOptions(full_state_dict=True))


@contextlib.contextmanager
def as_plain_class(model: nn.Module) -> Iterator[nn.Module]:
    """The model seen as its own class while it is saved.

    FSDP2 subclasses the model in place (``FSDPRegionGPT...``, defined in torch's modules);
    ``save_pretrained`` would record that class and copy torch's files as the model's remote
    code. Saving with an explicit full state dict needs nothing FSDP adds.
    """
    wrapped_class = type(model)
    model.__class__ = next(c for c in wrapped_class.__mro__ if not c.__name__.startswith("FSDP"))
    try:
        yield model
    finally:
        model.__class__ = wrapped_class


class Discard:
    """Stands in for the run folder's log writers on ranks other than 0: every attribute and
    call does nothing, so the recipe calls them unconditionally."""

    def __getattr__(self, name: str) -> "Discard":
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        return None


__all__ = [
    "DCP_FOLDER", "Discard", "DistEnv", "all_gather", "all_sum", "apply_activation_checkpointing", "as_plain_class",
    "barrier", "check_same", "decoder_layers", "env_world", "full_model_state", "gradient_sync", "init",
    "interleave_micro", "load_indexed_optimizer_state", "load_sharded", "loss_scale", "merge_accuracy",
    "plain_tensor", "rank_device", "save_sharded", "shard", "shutdown", "vision_layers", "wrap",
]
