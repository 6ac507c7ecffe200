"""RegionGPT: a LLaVA-style vision-language model that also reads image *regions*.

Data flow for one batch (shapes in comments):
    pixel_values (B, 3, S, S) -> vision tower -> coarse map (B, C, g, g)
    -> feature refiner -> refined map (B, C, g*f, g*f)          (regions)
                       -> patch merge -> image map (B, C, m, m)  (image tokens, m*m per image)
    region masks (R, S, S) -> mask pooling on the refined map -> (R, C)
    connector MLP (shared by image and region features) -> LLM width D
    image features land on the `<image>` placeholders, region features on the `<region>`
    placeholders (the k-th placeholder takes region ``region_token_index[k]``), via masked_scatter.

This file travels beside saved checkpoints as remote code (``trust_remote_code=True``): it
imports only torch, transformers and sibling files of this folder (relative imports).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils import ModelOutput

from .configuration_regiongpt import RegionGPTConfig, default_vision_feature_dim
from .connector import Connector
from .image_labels import ImageLabelHead
from .pooling import mask_pool, roi_box_pool
from .refinement import FeatureRefiner
from .region_labels import RegionLabelHead
from .region_shape import RegionShapeEncoder
from .region_number import RegionNumberEmbedding, number_token_marks
from .region_number import region_numbers as region_numbers_in_image
from .vision import select_feature_maps

# Inputs that only the prefill step consumes; later decode steps must not recompute them.
REGION_INPUTS = ("region_masks", "region_boxes", "region_image_index", "region_token_index")


class RegionReferenceError(IndexError):
    """A `<region>` placeholder refers to a region that was not given."""


@dataclass
class VisionFeatures(ModelOutput):
    """What one image encoding yields, reusable for any number of region questions."""

    image_embeds: torch.Tensor | None = None  # (B, m*m, D) image tokens in LLM width
    image_features: torch.Tensor | None = None  # (B, m*m, C) the same tokens before the connector
    region_maps: torch.Tensor | None = None  # (B, C, g*f, g*f) refined map for mask pooling
    coarse_maps: torch.Tensor | None = None  # (B, C, g, g) vision grid (RoI ablation)
    pixel_values: torch.Tensor | None = None  # (B, 3, S, S) the input, kept when the shape encoder reads pixels
    image_label_logits: torch.Tensor | None = None  # (B, K+1, g*f, g*f) per-cell categories (image label head)
    # per attribute field of the image label head, (B, K_field+1, g*f, g*f) per-cell values
    image_attribute_logits: dict[str, torch.Tensor] | None = None


@dataclass
class RegionGPTOutput(CausalLMOutputWithPast):
    """Causal-LM output plus the region embeddings that were placed in the sequence."""

    region_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None  # (B, m*m, D) the image tokens placed in the sequence


class RegionGPTPreTrainedModel(PreTrainedModel):
    config_class = RegionGPTConfig
    config: RegionGPTConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = []

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, RegionGPTModel) and module.position_embedding is not None:
            init.zeros_(module.position_embedding)
        if getattr(module, "zero_init", False):  # the residual refinement branch's output layer
            init.zeros_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)


class RegionGPTModel(RegionGPTPreTrainedModel):
    """Vision tower + refinement + pooling + connector + the language model (no LM head)."""

    def __init__(self, config: RegionGPTConfig):
        super().__init__(config)
        text_dim = config.text_config.hidden_size
        self.vision_tower = AutoModel.from_config(config.vision_config)
        lateral = (default_vision_feature_dim(config.vision_config, config.refine_skip_layer)
                   if config.refine_skip_layer is not None else None)
        self.feature_refiner = FeatureRefiner(config.vision_feature_dim, config.refine_factor, config.refine_residual,
                                              lateral_channels=lateral)
        self.connector = Connector(
            config.vision_feature_dim, text_dim, config.projector_hidden_act, config.multimodal_projector_bias
        )
        self.region_connector = (
            None
            if config.share_connector
            else Connector(config.vision_feature_dim, text_dim, config.projector_hidden_act, config.multimodal_projector_bias)
        )
        self.region_shape_encoder = (
            RegionShapeEncoder(config.vision_feature_dim, config.region_shape_size, pixels=config.region_shape_pixels,
                               context=config.region_shape_context)
            if config.region_shape_encoder
            else None
        )
        grid = config.vision_grid_size
        self.position_embedding = (
            nn.Parameter(torch.zeros(config.vision_feature_dim, grid, grid))
            if config.feature_position_embedding
            else None
        )
        self.region_number_embedding = (
            RegionNumberEmbedding(text_dim) if config.region_number_embedding else None
        )
        self.image_label_head = (
            ImageLabelHead(config.vision_feature_dim, config.image_label_token_ids,
                           config.image_label_context_layers, config.image_attribute_token_ids)
            if config.image_label_token_ids else None
        )
        self.region_label_head = (
            RegionLabelHead(config.vision_feature_dim, config.region_label_token_ids)
            if config.region_label_token_ids else None
        )
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    # ----- encoders -------------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor) -> VisionFeatures:
        """Encode (B, 3, S, S) images once: image tokens and the maps regions are pooled from."""
        config = self.config
        dtype = next(self.vision_tower.parameters()).dtype
        skip = config.refine_skip_layer
        layers = [config.vision_feature_layer] + ([skip] if skip is not None else [])
        maps = select_feature_maps(
            self.vision_tower,
            pixel_values.to(dtype),
            layers,
            config.vision_feature_select_strategy,
            config.vision_grid_size,
        )
        coarse = maps[0]  # (B, C, g, g)
        connector_dtype = self.connector.linear_1.weight.dtype
        coarse = coarse.to(connector_dtype)
        if self.position_embedding is not None:
            coarse = coarse + self.position_embedding.to(connector_dtype)
        lateral = maps[1] if skip is not None else None  # (B, C', h', w'): a finer stage
        refined, branch = self.feature_refiner.refine(coarse, lateral)  # (B, C, g*f, g*f)
        image_map = self.feature_refiner.image_map(coarse, branch, config.image_grid_size)  # (B, C, m, m)
        image_tokens = image_map.flatten(2).transpose(1, 2)  # (B, m*m, C)
        image_embeds = self.connector(image_tokens)  # (B, m*m, D)
        label_logits = attribute_logits = None
        if self.image_label_head is not None:
            label_logits, attribute_logits = self.image_label_head.classify(refined)  # (B, K+1, g*f, g*f), ...
            marks = self.image_label_head.marks(label_logits, config.image_grid_size, self.get_input_embeddings(),
                                                image_embeds, attribute_logits)
            image_embeds = image_embeds + marks.to(image_embeds.dtype)
            attribute_logits = attribute_logits or None
        keep_pixels = self.region_shape_encoder is not None and self.region_shape_encoder.pixels
        return VisionFeatures(image_embeds=image_embeds, image_features=image_tokens,
                              region_maps=refined, coarse_maps=coarse,
                              pixel_values=pixel_values if keep_pixels else None,
                              image_label_logits=label_logits, image_attribute_logits=attribute_logits)

    def pool_regions(
        self,
        vision: VisionFeatures,
        region_masks: torch.Tensor | None,  # (R, S, S) soft masks in model-input pixels
        region_image_index: torch.Tensor,  # (R,)
        region_boxes: torch.Tensor | None = None,  # (R, 4) xyxy in model-input pixels
    ) -> torch.Tensor:  # (R, C)
        """One vision-width feature per region (before the connector)."""
        config = self.config
        region_image_index = region_image_index.to(vision.region_maps.device).long()
        if config.region_pooling == "roi_box":
            if region_boxes is None:
                raise ValueError("region_pooling='roi_box' needs region_boxes (the processor provides them)")
            pooled = roi_box_pool(
                vision.coarse_maps, region_boxes.to(vision.coarse_maps.device), region_image_index,
                image_size=config.image_size, bins=config.roi_output_size,
            )
        else:
            if region_masks is None:
                raise ValueError("mask pooling needs region_masks (the processor provides them)")
            pooled = mask_pool(vision.region_maps, region_masks.to(vision.region_maps.device), region_image_index)
        if self.region_shape_encoder is not None:
            if region_masks is None:
                raise ValueError("the region shape encoder needs region_masks (the processor provides them)")
            shape = self.region_shape_encoder(region_masks.to(pooled.device), vision.pixel_values, region_image_index)
            pooled = pooled + shape.to(pooled.dtype)
        return pooled

    def encode_regions(
        self,
        vision: VisionFeatures,
        region_masks: torch.Tensor | None,
        region_image_index: torch.Tensor,
        region_boxes: torch.Tensor | None = None,
        region_numbers: torch.Tensor | None = None,  # (R,) each region's number, 0-based
    ) -> torch.Tensor:  # (R, D)
        """One embedding per region in the language model's width, pooled from its image's encoding.

        With ``config.region_number_embedding``, a region's number (``<regionK>`` is number K-1)
        is its position among the regions of its image unless ``region_numbers`` says otherwise.
        """
        pooled = self.pool_regions(vision, region_masks, region_image_index, region_boxes)
        connector = self.region_connector if self.region_connector is not None else self.connector
        embeds = connector(pooled)
        if self.region_label_head is not None:
            # the training recipe reads the logits through a forward hook on the head (its label loss)
            marks = self.region_label_head.marks(self.region_label_head(pooled), self.get_input_embeddings(), embeds)
            embeds = embeds + marks.to(embeds.dtype)
        if self.region_number_embedding is not None or self.config.region_number_token_ids:
            index = region_image_index.to(embeds.device).long()
            numbers = (region_numbers_in_image(index) if region_numbers is None
                       else region_numbers.to(embeds.device).long())
            if self.region_number_embedding is not None:
                embeds = embeds + self.region_number_embedding(index, numbers).to(embeds.dtype)
            if self.config.region_number_token_ids:
                scale = self.config.region_number_mark_scale
                length = scale * embeds.detach().norm(dim=-1, keepdim=True) if scale else None
                marks = number_token_marks(numbers, self.config.region_number_token_ids, self.get_input_embeddings(),
                                           length=length)
                embeds = embeds + marks.to(embeds.dtype)
        return embeds

    # ----- placing features in the sequence --------------------------------------------
    def merge_embeddings(
        self,
        input_ids: torch.LongTensor,  # (N, L)
        inputs_embeds: torch.Tensor,  # (N, L, D)
        image_embeds: torch.Tensor | None,  # (B, m*m, D)
        region_embeds: torch.Tensor | None,  # (R, D)
        region_token_index: torch.Tensor | None,  # (P,) region of each placeholder, row-major order
    ) -> torch.Tensor:
        """Scatter image and region features onto their placeholder positions."""
        config = self.config
        image_slots = input_ids == config.image_token_id
        n_image_slots = int(image_slots.sum())
        if image_embeds is not None or n_image_slots:
            n_features = 0 if image_embeds is None else image_embeds.shape[0] * image_embeds.shape[1]
            if n_image_slots != n_features:
                raise ValueError(
                    f"the text has {n_image_slots} image placeholder tokens but the images give {n_features} "
                    f"features ({config.image_seq_length} per image); build inputs with the RegionGPT processor"
                )
            if n_features:
                features = image_embeds.reshape(-1, image_embeds.shape[-1]).to(inputs_embeds)
                inputs_embeds = inputs_embeds.masked_scatter(image_slots[..., None], features)

        region_slots = input_ids == config.region_token_id
        n_region_slots = int(region_slots.sum())
        n_index = 0 if region_token_index is None else int(region_token_index.numel())
        if n_region_slots != n_index:
            raise ValueError(
                f"the text has {n_region_slots} region placeholder tokens but region_token_index maps {n_index}; "
                "build inputs with the RegionGPT processor"
            )
        if n_region_slots:
            n_regions = 0 if region_embeds is None else region_embeds.shape[0]
            index = region_token_index.to(inputs_embeds.device).long()
            bad = index[(index < 0) | (index >= n_regions)]
            if bad.numel():
                raise RegionReferenceError(
                    f"a region placeholder refers to region index {int(bad[0])} but only {n_regions} region(s) "
                    f"were given (valid: 0..{n_regions - 1})"
                )
            features = region_embeds[index].to(inputs_embeds)  # (P, D), in placeholder order
            inputs_embeds = inputs_embeds.masked_scatter(region_slots[..., None], features)
        return inputs_embeds

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        region_masks: torch.Tensor | None = None,
        region_boxes: torch.Tensor | None = None,
        region_image_index: torch.Tensor | None = None,
        region_token_index: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        vision_features: VisionFeatures | None = None,
        token_index: torch.Tensor | None = None,
        **kwargs,
    ):
        """Encode images and regions (when given), place them, and run the language model.

        ``vision_features`` lets a caller reuse one image encoding for many questions.
        ``token_index`` (R,) runs the language model padding-free: on those flat (row-major)
        positions of the (N, L) input only, as one (1, R) row; ``position_ids`` (1, R) must come
        with it, and the attention must keep the rows apart (the training recipe's turn attention
        does). Returns the language model's output with ``region_embeds`` and ``image_embeds`` attached.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids or inputs_embeds")
        region_embeds = image_embeds = None
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
            if vision_features is None and pixel_values is not None:
                vision_features = self.encode_images(pixel_values)
            has_regions = region_token_index is not None and region_token_index.numel() > 0
            if has_regions:
                if vision_features is None:
                    raise ValueError("region placeholders need pixel_values (or vision_features) of their images")
                if region_image_index is None:
                    n = region_masks.shape[0] if region_masks is not None else region_boxes.shape[0]
                    region_image_index = torch.zeros(n, dtype=torch.long, device=inputs_embeds.device)
                region_embeds = self.encode_regions(vision_features, region_masks, region_image_index, region_boxes)
            image_embeds = vision_features.image_embeds if vision_features is not None else None
            inputs_embeds = self.merge_embeddings(
                input_ids, inputs_embeds, image_embeds, region_embeds, region_token_index
            )
        if token_index is not None:
            if position_ids is None or position_ids.shape != (1, token_index.numel()):
                raise ValueError("token_index needs position_ids of shape (1, R), one per kept token")
            inputs_embeds = inputs_embeds.reshape(-1, inputs_embeds.shape[-1]).index_select(0, token_index)[None]
        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        outputs["region_embeds"] = region_embeds
        outputs["image_embeds"] = image_embeds
        return outputs


class RegionGPTForConditionalGeneration(RegionGPTPreTrainedModel, GenerationMixin):
    """RegionGPT with a language-modelling head; generation never emits `<region>`."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: RegionGPTConfig):
        super().__init__(config)
        self.model = RegionGPTModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def encode_images(self, pixel_values: torch.Tensor) -> VisionFeatures:
        return self.model.encode_images(pixel_values)

    def encode_regions(self, *args, **kwargs) -> torch.Tensor:
        return self.model.encode_regions(*args, **kwargs)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        region_masks: torch.Tensor | None = None,
        region_boxes: torch.Tensor | None = None,
        region_image_index: torch.Tensor | None = None,
        region_token_index: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        vision_features: VisionFeatures | None = None,
        token_index: torch.Tensor | None = None,
        **kwargs,
    ) -> RegionGPTOutput:
        r"""
        region_masks: (R, S, S) soft region masks in model-input pixels (from the processor).
        region_boxes: (R, 4) xyxy region boxes in model-input pixels (for ``roi_box`` pooling).
        region_image_index: (R,) index of each region's image in ``pixel_values``.
        region_token_index: (P,) region index of each `<region>` placeholder, in row-major order.
        labels: (N, L) target ids, -100 where no loss is taken.
        logits_to_keep: the last ``n`` positions (int > 0), positions (1D index tensor), or an (N, L)
            boolean tensor: then ``logits`` is (K, V), the True positions in row-major order.
        token_index: (R,) run the language model on these flat positions of the (N, L) input only
            (padding-free training, see :meth:`RegionGPTModel.forward`); outputs are then (1, R, ...).
        """
        if "past_key_values" in kwargs:  # the pre-5.24 name
            cache = kwargs.pop("past_key_values")
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            region_masks=region_masks,
            region_boxes=region_boxes,
            region_image_index=region_image_index,
            region_token_index=region_token_index,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            vision_features=vision_features,
            token_index=token_index,
            **kwargs,
        )
        hidden_states = outputs[0]
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden_states = hidden_states[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor) and logits_to_keep.dtype == torch.bool:
            hidden_states = hidden_states[logits_to_keep]  # (K, D): training scores only answer positions
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden_states = hidden_states[:, logits_to_keep]
        logits = self.lm_head(hidden_states)
        region_id = self.config.region_token_id
        if 0 <= region_id < logits.shape[-1]:
            # The placeholder is input-only: never predict it.
            logits[..., region_id] = torch.finfo(logits.dtype).min
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=logits.shape[-1], **kwargs)
        return RegionGPTOutput(
            loss=loss,
            logits=logits,
            cache=getattr(outputs, "cache", None),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            region_embeds=outputs.get("region_embeds"),
            image_embeds=outputs.get("image_embeds"),
        )

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        is_first_iteration: bool | None = False,
        **kwargs,
    ):
        """As the base class; region inputs are consumed at prefill only, like pixel_values."""
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, cache=cache, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
            is_first_iteration=is_first_iteration, **kwargs,
        )
        if not is_first_iteration and kwargs.get("use_cache", True):
            for key in REGION_INPUTS:
                model_inputs.pop(key, None)
        return model_inputs


__all__ = ["RegionGPTForConditionalGeneration", "RegionGPTModel", "RegionGPTPreTrainedModel", "VisionFeatures"]
