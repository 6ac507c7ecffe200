"""RegionGPT: a LLaVA-style vision-language model that understands image regions.

Importing ``regiongpt`` registers its config, model and processor with the transformers
Auto classes (``AutoConfig``, ``AutoModelForImageTextToText``, ``AutoProcessor``).
"""

__version__ = "0.1.0"

from regiongpt.hf_registration import register as _register_with_transformers

_register_with_transformers()

from regiongpt.model import RegionGPTConfig, RegionGPTForConditionalGeneration  # noqa: E402
from regiongpt.processing.processing_regiongpt import RegionGPTProcessor  # noqa: E402

__all__ = ["RegionGPT", "RegionGPTConfig", "RegionGPTForConditionalGeneration", "RegionGPTProcessor", "__version__"]


def __getattr__(name: str):
    # The Python API pulls in the inference engine; load it on first use.
    if name == "RegionGPT":
        from regiongpt.inference.api import RegionGPT

        return RegionGPT
    raise AttributeError(f"module 'regiongpt' has no attribute {name!r}")
