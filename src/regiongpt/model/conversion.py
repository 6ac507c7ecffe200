"""LLaVA-1.5 (transformers ``LlavaForConditionalGeneration``) -> RegionGPT.

The converted model answers region-free prompts exactly as LLaVA did: the vision tower,
connector (LLaVA's ``multi_modal_projector``) and language model keep their weights, the
feature refinement starts in its residual form with a zero output layer (an identity on the
image tokens), a ``<region>`` token is added to the tokenizer (its logit is suppressed, so
it is never generated), and the image processor's settings are carried over unchanged.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .configuration_regiongpt import RegionGPTConfig
from .modeling_regiongpt import RegionGPTForConditionalGeneration

logger = logging.getLogger(__name__)

REGION_TOKEN = "<region>"

# LLaVA parameter name prefix -> RegionGPT parameter name prefix.
KEY_MAP = (
    ("model.multi_modal_projector.", "model.connector."),
    ("model.vision_tower.", "model.vision_tower."),
    ("model.language_model.", "model.language_model."),
    ("lm_head.", "lm_head."),
)


def convert_key(key: str) -> str:
    for old, new in KEY_MAP:
        if key.startswith(old):
            return new + key[len(old):]
    raise KeyError(f"unexpected LLaVA parameter {key!r}; is this a LlavaForConditionalGeneration checkpoint?")


def regiongpt_config_from_llava(llava_config, region_token_id: int, vocab_size: int, **overrides) -> RegionGPTConfig:
    """A RegionGPT config with LLaVA's towers, feature selection and projector settings."""
    text_config = llava_config.text_config.to_dict()
    text_config["vocab_size"] = vocab_size
    layer = llava_config.vision_feature_layer
    if not isinstance(layer, int):
        raise ValueError(f"LLaVA checkpoints with several vision feature layers ({layer}) are not supported")
    fields = dict(
        vision_config=llava_config.vision_config.to_dict(),
        text_config=text_config,
        image_token_id=llava_config.image_token_id,
        region_token_id=region_token_id,
        vision_feature_layer=layer,
        vision_feature_select_strategy=llava_config.vision_feature_select_strategy,
        projector_hidden_act=llava_config.projector_hidden_act,
        multimodal_projector_bias=llava_config.multimodal_projector_bias,
        tie_word_embeddings=llava_config.tie_word_embeddings,
    )
    fields.update(overrides)
    return RegionGPTConfig(**fields)


def convert_llava_model(llava, tokenizer, **config_overrides) -> tuple[RegionGPTForConditionalGeneration, object]:
    """Convert a loaded LLaVA model; returns (RegionGPT model, tokenizer with ``<region>``)."""
    if REGION_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [REGION_TOKEN]}, replace_extra_special_tokens=False)
    region_token_id = tokenizer.convert_tokens_to_ids(REGION_TOKEN)
    old_vocab = llava.config.text_config.vocab_size
    vocab_size = max(old_vocab, region_token_id + 1)
    config = regiongpt_config_from_llava(llava.config, region_token_id, vocab_size, **config_overrides)
    dtype = next(llava.parameters()).dtype
    model = RegionGPTForConditionalGeneration(config).to(dtype)

    state = {convert_key(k): v for k, v in llava.state_dict().items()}
    for name in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        if name in state and state[name].shape[0] < vocab_size:
            old = state[name]
            # New rows (the region token) start at the mean row; the region logit is suppressed anyway.
            extra = old.mean(0, keepdim=True).expand(vocab_size - old.shape[0], -1)
            state[name] = torch.cat([old, extra], 0)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if config.tie_word_embeddings:
        missing = [k for k in missing if k != "lm_head.weight"]
    new_parts = ("model.feature_refiner.", "model.region_connector.")
    missing = [k for k in missing if not k.startswith(new_parts)]
    if missing or unexpected:
        raise RuntimeError(f"conversion left parameters unmatched: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return model.eval(), tokenizer


def convert_llava(src: str | Path, dst: str | Path, dtype: torch.dtype | None = None, **config_overrides) -> Path:
    """Convert a LLaVA checkpoint (local folder or hub id) with its processor into ``dst``."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from ..processing.processing_regiongpt import RegionGPTProcessor

    dst = Path(dst)
    llava = LlavaForConditionalGeneration.from_pretrained(src, dtype=dtype or "auto")
    llava_processor = AutoProcessor.from_pretrained(src)
    model, tokenizer = convert_llava_model(llava, llava_processor.tokenizer, **config_overrides)
    processor = RegionGPTProcessor(
        image_processor=llava_processor.image_processor,
        tokenizer=tokenizer,
        image_seq_length=model.config.image_seq_length,
    )
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst)
    processor.save_pretrained(dst)
    logger.info("converted %s -> %s", src, dst)
    return dst
