"""Named architecture presets, each a small builder function (as timm's registry).

``build_config(name, **overrides)`` returns a RegionGPTConfig; overrides replace top-level
fields, and ``vision_overrides`` / ``text_overrides`` replace sub-config fields.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterable

from transformers import CONFIG_MAPPING

from .configuration_regiongpt import RegionGPTConfig

_TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, vocab_size=512)
_TINY_VIT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 image_size=64, patch_size=8)


def _vicuna_7b_text() -> dict:
    return dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, vocab_size=32002, max_position_embeddings=4096,
                rms_norm_eps=1e-5, pad_token_id=0)


def llava15_7b() -> dict:
    """CLIP ViT-L/14-336 + Vicuna-7B, as LLaVA-1.5-7B (+ the `<region>` token)."""
    return dict(
        vision_config=dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096,
                           num_hidden_layers=24, num_attention_heads=16, image_size=336, patch_size=14,
                           projection_dim=768, hidden_act="quick_gelu"),
        text_config=_vicuna_7b_text(),
        image_token_id=32000, region_token_id=32001, refine_factor=4,
    )


def tiny_clip_llama() -> dict:
    return dict(vision_config=dict(model_type="clip_vision_model", **_TINY_VIT),
                text_config=dict(model_type="llama", **_TINY_TEXT),
                image_token_id=4, region_token_id=5, refine_factor=4)


def tiny_siglip_qwen2() -> dict:
    return dict(vision_config=dict(model_type="siglip_vision_model", **_TINY_VIT),
                text_config=dict(model_type="qwen2", **_TINY_TEXT),
                vision_feature_select_strategy="full", image_token_id=4, region_token_id=5, refine_factor=4)


def tiny_convnext_mistral() -> dict:
    # ConvNeXt with 2 stages: stem /4 then /2 -> 8x8 map at 64 px from stage 2.
    return dict(vision_config=dict(model_type="convnext", num_channels=3, num_stages=2, hidden_sizes=[16, 32], depths=[1, 1],
                                   image_size=64),
                text_config=dict(model_type="mistral", **_TINY_TEXT),
                vision_feature_layer=-1, vision_grid_size=8, image_size=64,
                image_token_id=4, region_token_id=5, refine_factor=2)


def tiny_resnet_llama() -> dict:
    # ResNet: stem /4, stages /1 and /2 -> 8x8 map at 64 px from the last stage.
    return dict(vision_config=dict(model_type="resnet", num_channels=3, embedding_size=16, hidden_sizes=[16, 32],
                                   depths=[1, 1], layer_type="basic", downsample_in_first_stage=False),
                text_config=dict(model_type="llama", **_TINY_TEXT),
                vision_feature_layer=-1, vision_grid_size=8, image_size=64,
                image_token_id=4, region_token_id=5, refine_factor=2)


PRESETS: dict[str, Callable[[], dict]] = {
    "llava-1.5-7b": llava15_7b,
    "tiny-clip-llama": tiny_clip_llama,
    "tiny-siglip-qwen2": tiny_siglip_qwen2,
    "tiny-convnext-mistral": tiny_convnext_mistral,
    "tiny-resnet-llama": tiny_resnet_llama,
}


def build_config(name: str, vision_overrides: dict | None = None, text_overrides: dict | None = None,
                 **overrides) -> RegionGPTConfig:
    """The RegionGPTConfig of preset ``name`` with the given overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    fields = PRESETS[name]()
    for key, extra in (("vision_config", vision_overrides), ("text_config", text_overrides)):
        model_type = fields[key]["model_type"]
        _check_field_names(extra or {}, _sub_config_fields(model_type),
                           f"{key.split('_')[0]}_overrides ({model_type} config)")
        fields[key] = {**fields[key], **(extra or {})}
    _check_field_names(overrides, (f.name for f in dataclasses.fields(RegionGPTConfig)), "RegionGPTConfig overrides")
    fields.update(overrides)
    return RegionGPTConfig(**fields)


def _sub_config_fields(model_type: str) -> set[str]:
    """The field names a transformers config of ``model_type`` knows (its own and the base class's)."""
    default = CONFIG_MAPPING[model_type]()
    return set(default.to_dict()) | {k for k in vars(default) if not k.startswith("__")}


def _check_field_names(given: dict, known: Iterable[str], where: str) -> None:
    """Fail on a misspelt field instead of letting the config keep it as an unused attribute."""
    known = set(known)
    for key in given:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            if ":" in str(key):
                hint += " (YAML needs a space after each colon in {key: value})"
            raise ValueError(f"unknown field {key!r} in {where}{hint}")
