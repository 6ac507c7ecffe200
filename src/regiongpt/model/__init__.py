"""The RegionGPT model: config, vision feature selection, refinement + patch merge, region
pooling, connector and the Hugging Face model classes."""

from .configuration_regiongpt import RegionGPTConfig
from .modeling_regiongpt import (
    RegionGPTForConditionalGeneration,
    RegionGPTModel,
    RegionGPTPreTrainedModel,
    RegionReferenceError,
    VisionFeatures,
)
from .presets import PRESETS, build_config

__all__ = [
    "PRESETS",
    "RegionGPTConfig",
    "RegionGPTForConditionalGeneration",
    "RegionGPTModel",
    "RegionGPTPreTrainedModel",
    "RegionReferenceError",
    "VisionFeatures",
    "build_config",
]
