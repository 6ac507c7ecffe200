"""Registers RegionGPT with the transformers Auto classes, and marks the classes so that
``save_pretrained`` writes their code beside the weights (``auto_map``) for
``trust_remote_code=True`` loading without this package."""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from regiongpt.model.configuration_regiongpt import RegionGPTConfig
from regiongpt.model.modeling_regiongpt import RegionGPTForConditionalGeneration
from regiongpt.processing.processing_regiongpt import RegionGPTProcessor


def register() -> None:
    """Idempotent: safe to call more than once."""
    AutoConfig.register(RegionGPTConfig.model_type, RegionGPTConfig, exist_ok=True)
    AutoModelForImageTextToText.register(RegionGPTConfig, RegionGPTForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(RegionGPTConfig, RegionGPTProcessor, exist_ok=True)
    RegionGPTConfig.register_for_auto_class()
    RegionGPTForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
    RegionGPTProcessor.register_for_auto_class("AutoProcessor")
