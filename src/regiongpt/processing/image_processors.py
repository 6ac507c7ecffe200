"""Image processors for RegionGPT models: LLaVA-1.5's transform and a square one for small models.

Both are transformers' own ``LlavaImageProcessorPil`` (no torchvision needed), so a saved
checkpoint's ``preprocessor_config.json`` loads with plain transformers.
"""

from __future__ import annotations

from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil


def llava15_image_processor(size: int = 336, pad: bool = True) -> LlavaImageProcessorPil:
    """LLaVA-1.5: pad to a square with the mean colour ("pad" aspect mode), resize, centre crop."""
    return LlavaImageProcessorPil(
        do_pad=pad,
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        do_center_crop=True,
        resample=PILImageResampling.BICUBIC,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
    )


def square_image_processor(size: int, pad: bool = True, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> LlavaImageProcessorPil:
    """Small models: pad to a square (keeps the whole image and its regions), resize to ``size``."""
    return LlavaImageProcessorPil(
        do_pad=pad,
        size={"height": size, "width": size},
        do_center_crop=False,
        resample=PILImageResampling.BILINEAR,
        image_mean=list(mean),
        image_std=list(std),
    )
