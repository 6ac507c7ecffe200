"""LoRA adapters (PEFT) on the language model, and the two forms a checkpoint stores them in.

- ``model.safetensors`` gets the *merged* weights (``W + scale * B @ A``) under the plain
  model's parameter names, so the checkpoint loads as an ordinary RegionGPT model with
  ``AutoModelForImageTextToText`` (no PEFT needed).
- ``lora_state.safetensors`` keeps the *unmerged* base weights of the adapted layers and the
  adapters themselves, so resuming continues bit-exactly (re-splitting merged weights would
  not be exact).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from regiongpt.errors import InvalidInputError

from .config import LoraSettings

ADAPTER = "default"


def add_lora(language_model: nn.Module, settings: LoraSettings) -> None:
    """Inject LoRA adapters into ``language_model`` in place (its base weights stay as they are)."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise InvalidInputError("train.lora needs PEFT: pip install 'regiongpt[lora]'") from None
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.target_modules), bias="none")
    try:
        inject_adapter_in_model(config, language_model, adapter_name=ADAPTER)
    except ValueError as error:
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in language_model.named_modules() if isinstance(m, nn.Linear)})
        raise InvalidInputError(f"train.lora.target_modules {settings.target_modules}: {error}; the language model's "
                                f"linear layers are named: {', '.join(linear)}") from None


def is_lora_key(name: str) -> bool:
    return "lora_" in name or ".base_layer." in name


def has_lora(model: nn.Module) -> bool:
    return any(is_lora_key(name) for name, _ in model.named_parameters())


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapters and the unmerged base weights of adapted layers (what resuming needs)."""
    return {k: v.detach().contiguous() for k, v in model.state_dict().items() if is_lora_key(k)}


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights with adapters merged, under the plain (PEFT-free) parameter names."""
    from peft.tuners.lora import LoraLayer

    state = model.state_dict()
    merged: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and hasattr(module, "base_layer"):
            base = module.base_layer.weight
            merged[f"{name}.weight"] = base + module.get_delta_weight(ADAPTER).to(base.dtype)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if "lora_" in key:
            continue
        plain = key.replace(".base_layer.", ".")
        out[plain] = merged.get(plain, value).detach().contiguous()
    return out


def save_lora_state(model: nn.Module, path: Path) -> None:
    save_file(lora_state_dict(model), str(path))


def load_lora_state(model: nn.Module, path: Path) -> None:
    """Load adapters and base weights saved by :func:`save_lora_state` into a LoRA-injected model."""
    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    expected = set(lora_state_dict(model))
    if unexpected or expected - set(state):
        raise InvalidInputError(
            f"{path} does not match the LoRA settings of this run (missing {sorted(expected - set(state))[:3]}, "
            f"unexpected {unexpected[:3]}); resume with the same train.lora settings")


__all__ = ["add_lora", "has_lora", "load_lora_state", "lora_state_dict", "merged_state_dict", "save_lora_state"]
