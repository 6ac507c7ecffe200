"""Configuration of a RegionGPT model: vision tower, feature refinement, patch merge, region
pooling, connector and language model.

Only the architecture lives here. What trains in which stage belongs to the training
config, never to this one.

This file travels beside saved checkpoints as remote code: it imports only transformers,
torch and sibling files of this folder through relative imports.
"""

from __future__ import annotations

import math
from typing import Literal

from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec

from .image_labels import validate_label_token_ids
from .region_labels import validate_region_label_token_ids


def default_vision_feature_dim(vision_config: PreTrainedConfig, feature_layer: int) -> int:
    """Channels of the chosen vision feature layer: a ViT's width, or a CNN stage's channels."""
    hidden_sizes = getattr(vision_config, "hidden_sizes", None)
    if hidden_sizes:  # ConvNeXt / ResNet: hidden_states[0] is the stem, [i] is stage i.
        stem = getattr(vision_config, "embedding_size", None) or hidden_sizes[0]
        dims = [stem, *hidden_sizes]
        return int(dims[feature_layer])
    return int(vision_config.hidden_size)


def default_vision_grid_size(vision_config: PreTrainedConfig, feature_layer: int) -> int:
    """Side of the square feature grid the vision tower yields at its configured image size."""
    image_size = getattr(vision_config, "image_size", None)
    patch_size = getattr(vision_config, "patch_size", None)
    hidden_sizes = getattr(vision_config, "hidden_sizes", None)
    if hidden_sizes:
        raise ValueError(
            "set `vision_grid_size` in RegionGPTConfig for a convolutional vision tower: "
            "it is the side of the feature map of the chosen stage at the model's input size"
        )
    if not image_size or not patch_size:
        raise ValueError("set `vision_grid_size` in RegionGPTConfig: the vision config has no image_size/patch_size")
    return int(image_size) // int(patch_size)


def _hidden_state_count(vision_config: PreTrainedConfig) -> int | None:
    """How many hidden states the tower returns (embeddings + one per stage or layer), when known."""
    hidden_sizes = getattr(vision_config, "hidden_sizes", None)
    if hidden_sizes:
        return len(hidden_sizes) + 1
    layers = getattr(vision_config, "num_hidden_layers", None)
    return int(layers) + 1 if layers else None


class RegionGPTConfig(PreTrainedConfig):
    r"""
    Args:
        vision_config: config of any transformers vision backbone that yields a patch grid
            (CLIP/SigLIP vision, ConvNeXt, ResNet).
        text_config: config of any transformers causal language model.
        image_token_id / region_token_id: ids of the `<image>` and `<region>` placeholders.
        image_seq_length: image tokens per image (= image_grid_size ** 2).
        vision_feature_layer: hidden state of the vision tower to use (-2 as in LLaVA-1.5).
        vision_feature_select_strategy: "default" drops a ViT's CLS token, "full" keeps all.
        vision_feature_dim: channels of that layer (derived when None).
        vision_grid_size: side of the vision feature grid (derived for ViTs when None).
        image_size: side of the square image the model takes (derived from the vision config when None).
        refine_factor: upsampling of the feature refinement module (power of 2; 1 = off).
        refine_skip_layer: a finer hidden state of the vision tower (e.g. -2 for a ResNet's
            stride-8 stage when ``vision_feature_layer`` is -1) added to the refined map through a
            zero-initialised 1x1 convolution: a feature pyramid's lateral connection, so small
            objects keep their shape (refinement.py). None = off.
        refine_residual: True for our residual form (exact LLaVA behaviour at step 0),
            False for the paper's reference form.
        image_grid_size: side of the image-token grid after patch merge (None = vision grid).
        region_pooling: "mask" (mask pooling on the refined map) or "roi_box" (ablation:
            box RoI pooling on the coarse map).
        roi_output_size: bins per side for "roi_box" pooling.
        share_connector: image and region features share one connector MLP (paper) or not.
        feature_position_embedding: add a learned (zero-initialised) position embedding to the
            vision grid, so pooled region features know where they are. ViT features carry
            position already; small CNN towers need it for spatial relations.
        region_shape_encoder: add an encoding of each region's mask shape and box geometry
            to its pooled feature (zero-initialised; for small models, see region_shape.py).
        region_shape_size: side of the cropped mask the shape encoder reads.
        region_shape_pixels: the shape encoder also reads the region's masked pixels in that
            crop (a focal crop: small objects' colour and texture at crop resolution).
        region_shape_context: with region_shape_pixels, read the *unmasked* image in the box
            widened by this fraction of its size on each side, plus the mask as a fourth
            channel (Describe Anything's focal crop; shows what covers an occluded region).
            0 = the region's masked pixels only.
        region_number_embedding: add a code of each region's number within its image
            (`<regionK>`'s K) to its embedding (zero-initialised; for small models that cannot
            count the candidate list of a REC prompt, see region_number.py).
        region_number_token_ids: token ids whose input embeddings mark region numbers: region
            number k (0-based, `<region{k+1}>`) gets the embedding of token ``ids[k]`` added (a
            small model's tokens for "1".."9"), so an answer naming a region ("Region [k]") can
            copy the number from the region token it attends to (region_number.py). Regions past
            the list get no mark. Empty = off.
        region_number_mark_scale: 0 adds the number token's input embedding as it is; s > 0
            rescales it to s times the region embedding's length, so that the number stays
            readable beside pooled features ~20x longer than an input embedding (bench/demo_model.md,
            twenty-first round: the built-in model confused "8" with "6").
        image_label_names: the category names an image label head knows, in its class order
            (saved so a checkpoint says what its head predicts; see image_labels.py).
        image_label_token_ids: per category name, the token ids of the name as a question writes
            it. Set: a per-cell category head on the refined map marks each image token with the
            names of the categories it sees (image_labels.py). Empty = off.
        image_label_context_layers: depthwise-separable 3x3 convolutions (dilations 1, 2, 4, ...) the image label head
            runs on the refined map before its per-cell classifier, so a cell's category is read
            from the shape around it, not the cell alone (0 = a 1x1 classifier only).
        image_attribute_names: per attribute field (e.g. "colour"), the value names the image label
            head also predicts per cell, in its class order (saved so a checkpoint says what it predicts).
        image_attribute_token_ids: per attribute field, the token ids of each value name as a question
            writes it. Set (with ``image_label_token_ids``): image tokens are also marked with the names
            of the values their cells show, so "Is there a purple triangle?" can tell a purple triangle
            from a blue one (image_labels.py). Empty = off.
        region_label_names: per labelled field (e.g. "category", "colour"), the value names a region
            label head knows, in its class order (saved so a checkpoint says what it predicts).
        region_label_token_ids: per field, the token ids of each value name as a phrase writes it.
            Set: one head per field on the pooled region feature marks each region token with the
            names of the values it predicts (region_labels.py). Empty = off.
    """

    model_type = "regiongpt"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="clip_vision_model",
            init_kwargs={
                "intermediate_size": 4096,
                "hidden_size": 1024,
                "patch_size": 14,
                "image_size": 336,
                "num_hidden_layers": 24,
                "num_attention_heads": 16,
                "projection_dim": 768,
            },
        ),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 32000
    region_token_id: int = 32001
    image_seq_length: int | None = None
    vision_feature_layer: int = -2
    vision_feature_select_strategy: Literal["default", "full"] = "default"
    vision_feature_dim: int | None = None
    vision_grid_size: int | None = None
    image_size: int | None = None
    refine_factor: int = 4
    refine_residual: bool = True
    refine_skip_layer: int | None = None
    image_grid_size: int | None = None
    region_pooling: Literal["mask", "roi_box"] = "mask"
    roi_output_size: int = 7
    share_connector: bool = True
    feature_position_embedding: bool = False
    region_shape_encoder: bool = False
    region_shape_size: int = 16
    region_shape_pixels: bool = False
    region_shape_context: float = 0.0
    region_number_embedding: bool = False
    region_number_token_ids: list[int] | None = None
    region_number_mark_scale: float = 0.0
    image_label_names: list[str] | None = None
    image_label_token_ids: list[list[int]] | None = None
    image_label_context_layers: int = 0
    image_attribute_names: dict[str, list[str]] | None = None
    image_attribute_token_ids: dict[str, list[list[int]]] | None = None
    region_label_names: dict[str, list[str]] | None = None
    region_label_token_ids: dict[str, list[list[int]]] | None = None
    projector_hidden_act: str = "gelu"
    multimodal_projector_bias: bool = True
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = self.text_config.tie_word_embeddings
        if self.vision_feature_dim is None:
            self.vision_feature_dim = default_vision_feature_dim(self.vision_config, self.vision_feature_layer)
        if self.vision_grid_size is None:
            self.vision_grid_size = default_vision_grid_size(self.vision_config, self.vision_feature_layer)
        if self.image_size is None:
            self.image_size = int(getattr(self.vision_config, "image_size", 0) or 0) or None
        if self.image_grid_size is None:
            self.image_grid_size = self.vision_grid_size
        if self.image_seq_length is None:
            self.image_seq_length = self.image_grid_size**2
        self.validate_architecture()

    def validate_architecture(self) -> None:
        """Fail early, naming the field, on settings that cannot build a model."""
        factor = int(self.refine_factor)
        if factor < 1 or 2 ** round(math.log2(factor)) != factor:
            raise ValueError(f"refine_factor must be 1 (off) or a power of 2, got {self.refine_factor}")
        skip = self.refine_skip_layer
        if skip is not None:
            if isinstance(skip, bool) or not isinstance(skip, int):
                raise ValueError(f"refine_skip_layer must be a hidden-state index (an int, e.g. -2) or None, got {skip!r}")
            n_states = _hidden_state_count(self.vision_config)
            if n_states is not None and not -n_states <= skip < n_states:
                raise ValueError(f"refine_skip_layer {skip} is out of range: the vision tower has {n_states} hidden "
                                 f"states (indices {-n_states}..{n_states - 1})")
            if n_states is not None and skip % n_states == self.vision_feature_layer % n_states:
                raise ValueError(f"refine_skip_layer ({skip}) is vision_feature_layer ({self.vision_feature_layer}) "
                                 "itself; name a finer stage, e.g. the one before it")
        if self.region_pooling not in ("mask", "roi_box"):
            raise ValueError(f"region_pooling must be 'mask' or 'roi_box', got {self.region_pooling!r}")
        if self.vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(
                f"vision_feature_select_strategy must be 'default' or 'full', got {self.vision_feature_select_strategy!r}"
            )
        if self.image_seq_length != self.image_grid_size**2:
            raise ValueError(
                f"image_seq_length ({self.image_seq_length}) must equal image_grid_size**2 ({self.image_grid_size**2})"
            )
        if self.image_grid_size > self.vision_grid_size * factor:
            raise ValueError(
                f"image_grid_size {self.image_grid_size} exceeds the refined grid {self.vision_grid_size * factor}"
            )
        if self.image_token_id == self.region_token_id:
            raise ValueError("image_token_id and region_token_id must differ")
        if self.region_shape_pixels and not self.region_shape_encoder:
            raise ValueError("region_shape_pixels needs region_shape_encoder=True (it is an input of that encoder)")
        if self.region_shape_context < 0:
            raise ValueError(f"region_shape_context must be >= 0 (a fraction of the box), got {self.region_shape_context}")
        ids = self.region_number_token_ids or []
        if not isinstance(ids, (list, tuple)) or not all(isinstance(i, int) and i >= 0 for i in ids):
            raise ValueError(f"region_number_token_ids must be a list of token ids (ints >= 0), got {ids!r}")
        if not isinstance(self.region_number_mark_scale, (int, float)) or self.region_number_mark_scale < 0:
            raise ValueError("region_number_mark_scale must be a number >= 0 (0 = the token's embedding as it is), "
                             f"got {self.region_number_mark_scale!r}")
        if not isinstance(self.image_label_context_layers, int) or self.image_label_context_layers < 0:
            raise ValueError("image_label_context_layers must be an int >= 0 (0 = a 1x1 classifier only), got "
                             f"{self.image_label_context_layers!r}")
        if self.image_label_token_ids:
            validate_label_token_ids(self.image_label_token_ids)
            names = self.image_label_names
            if names is not None and len(names) != len(self.image_label_token_ids):
                raise ValueError(f"image_label_names has {len(names)} names but image_label_token_ids "
                                 f"{len(self.image_label_token_ids)} entries; give one per category")
        if self.image_attribute_token_ids:
            if not self.image_label_token_ids:
                raise ValueError("image_attribute_token_ids needs image_label_token_ids: the attribute classifiers "
                                 "are part of the image label head; set both, or drop image_attribute_token_ids")
            validate_region_label_token_ids(self.image_attribute_token_ids, self.image_attribute_names,
                                            setting="image_attribute")
        if self.region_label_token_ids:
            validate_region_label_token_ids(self.region_label_token_ids, self.region_label_names)
        if self.region_shape_context and not self.region_shape_pixels:
            raise ValueError("region_shape_context needs region_shape_pixels=True (it widens that pixel crop)")


__all__ = ["RegionGPTConfig"]
