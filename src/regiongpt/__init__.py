"""RegionGPT: a LLaVA-style vision-language model that understands image regions.

Importing ``regiongpt`` registers its config, model and processor with the transformers
Auto classes (``AutoConfig``, ``AutoModelForImageTextToText``, ``AutoProcessor``).
"""

__version__ = "0.1.0"
