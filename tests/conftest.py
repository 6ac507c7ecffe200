"""Shared fixtures: an in-process tokenizer and tiny models built from presets (no downloads)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

import regiongpt  # noqa: F401  (registers the Auto classes)
from regiongpt.model import RegionGPTForConditionalGeneration, build_config
from regiongpt.processing.image_processors import square_image_processor
from regiongpt.processing.processing_regiongpt import RegionGPTProcessor
from regiongpt.processing.tokenizer import train_tokenizer

CORPUS = [
    "A chat between a curious human and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    "USER: ASSISTANT: What is in the region? Describe it. a red star left of the blue ring.",
    "Region [1] Region [2] No corresponding options found. yes no",
] * 20


def load_bench_script(name: str) -> ModuleType:
    """``bench/NAME.py`` as a module (the bench folder is scripts, not a package)."""
    path = Path(__file__).resolve().parent.parent / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=400)


def make_model(preset: str, tokenizer, seed: int = 0, **overrides) -> RegionGPTForConditionalGeneration:
    torch.manual_seed(seed)
    config = build_config(
        preset,
        text_overrides={"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id},
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        region_token_id=tokenizer.convert_tokens_to_ids("<region>"),
        **overrides,
    )
    model = RegionGPTForConditionalGeneration(config).eval()
    return model


def make_processor(model, tokenizer) -> RegionGPTProcessor:
    return RegionGPTProcessor(
        image_processor=square_image_processor(model.config.image_size),
        tokenizer=tokenizer,
        image_seq_length=model.config.image_seq_length,
    )


def randomise_refiner(model, scale: float = 0.5) -> None:
    """Give the zero-initialised refinement branch weights, so regions differ from step 0."""
    with torch.no_grad():
        for p in model.model.feature_refiner.parameters():
            p.copy_(torch.randn_like(p) * scale)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tokenizer):
    """A tiny random model and its processor saved to a folder (what --model takes)."""
    path = tmp_path_factory.mktemp("model")
    model = make_model("tiny-clip-llama", tokenizer)
    randomise_refiner(model)
    model.save_pretrained(path)
    make_processor(model, tokenizer).save_pretrained(path)
    return path


@pytest.fixture
def tiny(tokenizer):
    model = make_model("tiny-clip-llama", tokenizer)
    randomise_refiner(model)
    return model, make_processor(model, tokenizer)


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8))
