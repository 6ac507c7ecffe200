"""The RegionGPT processor: images -> pixels, regions -> masks in the same geometry, and
text with ``<image>`` / ``<regionK>`` references -> token ids with expanded placeholders.

The processor alone expands placeholders (as in transformers' LLaVA): ``<image>`` becomes
``image_seq_length`` image tokens, each ``<regionK>`` becomes one ``<region>`` token, and
``region_token_index`` records, for every ``<region>`` token in row-major order, the index of
the region (in the flat list of all regions of the batch) that it stands for. Regions may be
referenced in any order and any number of times.

This file travels beside saved checkpoints as remote code: it imports only numpy, PIL,
torch, transformers and sibling files of this folder (relative imports).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .geometry import geometry_for
from .regions import InvalidRegionError, prepare_regions
from .templates import SYSTEM_PROMPT, FormattedConversation, format_conversation
from .templates import chat_template as build_chat_template

REGION_REFERENCE = re.compile(r"<region(\d+)>")
IGNORE_INDEX = -100


class InvalidImageError(ValueError):
    """An image input is not an image (unreadable file, wrong array shape or type)."""


def load_image(image: Any) -> Image.Image:
    """An RGB PIL image from a PIL image, an (H, W, 3) uint8 array or a file path."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4)):
            return Image.fromarray(image.astype(np.uint8)).convert("RGB")
        raise InvalidImageError(f"an image array must be (H, W) or (H, W, 3|4), got shape {image.shape}")
    if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
        try:
            with Image.open(image) as opened:
                return opened.convert("RGB")
        except FileNotFoundError:
            raise FileNotFoundError(2, "image not found", str(image)) from None
        except (OSError, Image.UnidentifiedImageError) as error:
            raise InvalidImageError(f"{image} is not an image file PIL can read ({error})") from None
    raise InvalidImageError(f"unsupported image type {type(image).__name__}; give a PIL image, an array or a path")


class RegionGPTProcessor(ProcessorMixin):
    r"""
    Args:
        image_processor: any transformers image processor (CLIP / LLaVA style); its pad, resize
            and crop settings define the geometry regions are mapped through.
        tokenizer: a fast tokenizer that holds `<image>` and `<region>` as special tokens.
        image_seq_length: image tokens per image (the model config's value).
        image_token / region_token: the placeholder strings.
        system_prompt: the system prompt of the conversation template (LLaVA-1.5's by default;
            a checkpoint keeps the one it was trained with).
        categories: the category names a checkpoint was trained to classify into, if any
            (the default list for classification prompts).
        category_vocabulary: how classification prompts name the category set
            ("COCO-80" in the paper; "the listed" when the list is written out).
        task_suffix: whether questions carry the task-guided scope suffix ("Answer with a short
            phrase.", RegionGPT §3.2); a checkpoint trained without them is asked without them.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template: str | None = None,
        image_seq_length: int = 576,
        image_token: str = "<image>",
        region_token: str = "<region>",
        system_prompt: str | None = SYSTEM_PROMPT,
        categories: list[str] | None = None,
        category_vocabulary: str = "COCO-80",
        task_suffix: bool = True,
    ):
        self.image_seq_length = image_seq_length
        self.image_token = image_token
        self.region_token = region_token
        self.system_prompt = system_prompt
        self.categories = list(categories) if categories else None
        self.category_vocabulary = category_vocabulary
        self.task_suffix = task_suffix
        super().__init__(image_processor, tokenizer, chat_template=chat_template or build_chat_template(system_prompt))

    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.image_token)

    @property
    def region_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.region_token)

    # ----- conversations ----------------------------------------------------------------
    def format_conversation(self, turns: Sequence[dict], add_generation_prompt: bool = False) -> FormattedConversation:
        """The Vicuna v1 text of a conversation (with this checkpoint's system prompt) and the spans the model learns."""
        return format_conversation(turns, system_prompt=self.system_prompt, add_generation_prompt=add_generation_prompt)

    def encode_prompt(self, text: str, num_regions: int) -> tuple[list[int], list[int]]:
        """Token ids of one prompt with placeholders expanded, and the 0-based region of each
        ``<region>`` token — without touching any image (the engine encodes images once)."""
        expanded, refs, _ = self._expand(text, num_regions, 0)
        ids = self.tokenizer(expanded, add_special_tokens=True)["input_ids"]
        self._check_region_tokens(torch.tensor([ids]), [refs])
        return list(ids), refs

    # ----- the main call ------------------------------------------------------------------
    def __call__(
        self,
        images: Any = None,
        text: str | Sequence[str] | None = None,
        regions: Sequence[Any] | None = None,
        target_spans: Sequence[Sequence[tuple[int, int]]] | None = None,
        return_tensors: str = "pt",
        padding_side: str | None = None,
        max_length: int | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Process a batch of samples (one text each, at most one image each).

        images: one image per sample (None for a text-only sample), or a single image.
        regions: per sample, a list of regions (boxes, masks, polygons, RLE; see regions.py).
        target_spans: per sample, character spans of ``text`` to learn; gives ``labels``.
        Returns input_ids, attention_mask, pixel_values, region_masks (R, S, S),
        region_boxes (R, 4), region_image_index (R,), region_token_index (P,) [, labels].
        """
        if text is None:
            raise ValueError("text is required: write <image> where the image goes and <regionK> for region K")
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        n = len(texts)
        # For one text (a str), images/regions/target_spans are that sample's; for a list of
        # texts, each is a list with one entry per text.
        image_list = self._per_sample([images] if single else images, n, "images")
        region_lists = self._per_sample([regions] if single else regions, n, "regions")
        span_lists = self._per_sample([target_spans] if single else target_spans, n, "target_spans")

        # Check each sample's image placeholder; the images and their regions go through
        # prepare_images in one call (regions of image 0 first, then image 1, ...).
        images_with_regions, region_offsets, total = [], [], 0
        for i, (image, sample_regions) in enumerate(zip(image_list, region_lists)):
            n_image_refs = texts[i].count(self.image_token)
            if image is None:
                if n_image_refs:
                    raise ValueError(f"sample {i}: the text has {self.image_token} but no image was given")
                if sample_regions:
                    raise InvalidRegionError(f"sample {i}: regions were given without an image")
                region_offsets.append((total, 0))
                continue
            if n_image_refs != 1:
                raise ValueError(
                    f"sample {i}: the text must contain {self.image_token} exactly once (found {n_image_refs})"
                )
            sample_regions = list(sample_regions or [])
            images_with_regions.append((image, sample_regions))
            region_offsets.append((total, len(sample_regions)))
            total += len(sample_regions)

        expanded, spans, token_regions = [], [], []
        for i, sample_text in enumerate(texts):
            first, count = region_offsets[i]
            new_text, refs, remap = self._expand(sample_text, count, i)
            expanded.append(new_text)
            token_regions.append([first + k for k in refs])
            if span_lists[i] is not None:
                spans.append([(remap(a), remap(b)) for a, b in span_lists[i]])

        data: dict[str, Any] = self._tokenize(expanded, spans if target_spans is not None else None, padding_side)
        if max_length is not None and data["input_ids"].shape[1] > max_length:
            raise ValueError(
                f"the longest sample has {data['input_ids'].shape[1]} tokens, more than max_length={max_length}; "
                "shorten the conversation or raise max_length (placeholders are never truncated)"
            )
        self._check_region_tokens(data["input_ids"], token_regions)
        data["region_token_index"] = torch.tensor([k for refs in token_regions for k in refs], dtype=torch.long)
        if images_with_regions:
            data.update(self.prepare_images([image for image, _ in images_with_regions],
                                            [regions for _, regions in images_with_regions]))
        else:
            data.update(region_masks=torch.zeros((0, 0, 0)), region_boxes=torch.zeros((0, 4)),
                        region_image_index=torch.zeros(0, dtype=torch.long))
        return BatchFeature(data=data)

    def prepare_images(self, images: Sequence[Any], regions: Sequence[Sequence[Any]] | None = None) -> BatchFeature:
        """Pixels and region masks for several images, with no text: ``pixel_values`` (N, 3, S, S),
        ``region_masks`` (R, S, S), ``region_boxes`` (R, 4), ``region_image_index`` (R,) — regions of
        image 0 first, then image 1, ... (what the inference engine takes)."""
        pil_images = [load_image(image) for image in images]
        region_lists = list(regions) if regions is not None else [[] for _ in pil_images]
        if len(region_lists) != len(pil_images):
            raise ValueError(f"got {len(region_lists)} region lists for {len(pil_images)} images")
        masks, boxes, index = [], [], []
        for i, (pil, sample_regions) in enumerate(zip(pil_images, region_lists)):
            geometry = geometry_for(self.image_processor, (pil.height, pil.width))
            prepared = prepare_regions(list(sample_regions or []), (pil.height, pil.width), geometry)
            masks.extend(prepared["masks"])
            boxes.extend(prepared["boxes"])
            index.extend([i] * len(prepared["masks"]))
        pixel_values = self.image_processor(pil_images, return_tensors="pt")["pixel_values"]
        size = tuple(pixel_values.shape[-2:])
        if masks and tuple(masks[0].shape) != size:
            raise RuntimeError(f"region masks are {tuple(masks[0].shape)} but pixels are {size}: "
                               "the geometry does not match the image processor")
        return BatchFeature(data={
            "pixel_values": pixel_values,
            "region_masks": torch.from_numpy(np.stack(masks)).float() if masks else torch.zeros((0, *size)),
            "region_boxes": torch.from_numpy(np.stack(boxes)).float() if boxes else torch.zeros((0, 4)),
            "region_image_index": torch.tensor(index, dtype=torch.long),
        })

    # ----- pieces -------------------------------------------------------------------------
    @staticmethod
    def _per_sample(value: Any, n: int, name: str) -> list:
        if value is None:
            return [None] * n
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"with a list of texts, give {name} as a list with one entry per text")
        value = list(value)
        if len(value) != n:
            raise ValueError(f"got {len(value)} {name} for {n} text(s); give one per text")
        return value

    def _expand(self, text: str, n_regions: int, sample: int):
        """Expand placeholders; return (text, region refs 0-based in order, old->new offset map)."""
        pieces, refs, shifts = [], [], []
        pos = 0
        pattern = re.compile(re.escape(self.image_token) + r"|" + REGION_REFERENCE.pattern)
        for match in pattern.finditer(text):
            pieces.append(text[pos : match.start()])
            if match.group(0) == self.image_token:
                replacement = self.image_token * self.image_seq_length
            else:
                k = int(match.group(1))
                if not 1 <= k <= n_regions:
                    raise InvalidRegionError(
                        f"sample {sample}: the text refers to <region{k}> but {n_regions} region(s) were given "
                        f"(valid: <region1>..<region{n_regions}>)"
                        if n_regions
                        else f"sample {sample}: the text refers to <region{k}> but no regions were given"
                    )
                refs.append(k - 1)
                replacement = self.region_token
            pieces.append(replacement)
            shifts.append((match.end(), len(replacement) - (match.end() - match.start())))
            pos = match.end()
        pieces.append(text[pos:])

        def remap(offset: int) -> int:
            return offset + sum(delta for end, delta in shifts if end <= offset)

        return "".join(pieces), refs, remap

    def _tokenize(self, texts: list[str], spans: list | None, padding_side: str | None) -> dict[str, torch.Tensor]:
        tokenizer = self.tokenizer
        if not getattr(tokenizer, "is_fast", False) and spans is not None:
            raise ValueError("labels need a fast tokenizer (offset mapping)")
        encoded = tokenizer(texts, add_special_tokens=True, return_offsets_mapping=spans is not None)
        ids = encoded["input_ids"]
        labels = None
        if spans is not None:
            labels = []
            for row_ids, offsets, row_spans in zip(ids, encoded["offset_mapping"], spans):
                # a token is learned when it has characters and overlaps an answer span
                chars = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)  # (T, 2) start, end
                answer = np.asarray(row_spans, dtype=np.int64).reshape(-1, 2)  # (S, 2)
                a, b = chars[:, :1], chars[:, 1:]
                learned = (b[:, 0] > a[:, 0]) & ((b > answer[None, :, 0]) & (a < answer[None, :, 1])).any(1)
                labels.append(np.where(learned, np.asarray(row_ids, dtype=np.int64), IGNORE_INDEX).tolist())
        length = max(len(r) for r in ids)
        side = padding_side or tokenizer.padding_side
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(ids), length), pad_id, dtype=torch.long)
        attention = torch.zeros((len(ids), length), dtype=torch.long)
        label_tensor = torch.full((len(ids), length), IGNORE_INDEX, dtype=torch.long)
        for i, row in enumerate(ids):
            sl = slice(length - len(row), length) if side == "left" else slice(0, len(row))
            input_ids[i, sl] = torch.tensor(row, dtype=torch.long)
            attention[i, sl] = 1
            if labels is not None:
                label_tensor[i, sl] = torch.tensor(labels[i], dtype=torch.long)
        out = {"input_ids": input_ids, "attention_mask": attention}
        if labels is not None:
            out["labels"] = label_tensor
        return out

    def _check_region_tokens(self, input_ids: torch.Tensor, token_regions: list[list[int]]) -> None:
        counts = (input_ids == self.region_token_id).sum(1).tolist()
        for i, (count, refs) in enumerate(zip(counts, token_regions)):
            if count != len(refs):
                raise ValueError(
                    f"sample {i}: {len(refs)} region references became {count} {self.region_token} tokens; "
                    f"the tokenizer must hold {self.region_token} as one special token "
                    "(do not write it directly; write <regionK>)"
                )


__all__ = ["RegionGPTProcessor"]
