"""LLaVA-1.5 -> RegionGPT conversion keeps region-free answers exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from conftest import CORPUS
from regiongpt.cli.main import main
from regiongpt.model.conversion import convert_llava
from regiongpt.processing.tokenizer import SPECIAL_TOKENS, train_tokenizer

PROMPT = "USER: <image>\nWhat is in the region? ASSISTANT:"


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    """A tiny LLaVA that transformers builds and saves (tokenizer without <region>)."""
    path = tmp_path_factory.mktemp("llava")
    tokenizer = train_tokenizer(CORPUS, vocab_size=300, special_tokens=SPECIAL_TOKENS[:5])
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, image_size=64, patch_size=8),
        text_config=LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, vocab_size=len(tokenizer) + 3,  # padded, like 32064
                                pad_token_id=tokenizer.pad_token_id),
        image_token_index=image_token_id,
        image_seq_length=64,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}),
        tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture
def photo():
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 255, (50, 90, 3), dtype=np.uint8))


def test_converted_llava_keeps_logits_and_greedy_answers(llava_dir, tmp_path, photo):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    dst = convert_llava(llava_dir, tmp_path / "regiongpt")
    llava = LlavaForConditionalGeneration.from_pretrained(llava_dir).eval()
    llava_processor = AutoProcessor.from_pretrained(llava_dir)
    model = AutoModelForImageTextToText.from_pretrained(dst).eval()
    processor = AutoProcessor.from_pretrained(dst)

    reference = llava_processor(images=photo, text=PROMPT, return_tensors="pt")
    inputs = processor(images=photo, text=PROMPT)
    torch.testing.assert_close(inputs["input_ids"], reference["input_ids"])  # same tokens, same image expansion
    torch.testing.assert_close(inputs["pixel_values"], reference["pixel_values"])  # same image settings
    # LLaVA's vocabulary is its tokenizer's tokens; the embedding has padding rows beyond
    # them (32064 vs 32002 for llava-1.5-7b-hf), and <region> takes the first padding row.
    vocab = len(llava_processor.tokenizer)
    assert processor.region_token_id == vocab
    with torch.no_grad():
        expected = llava(**reference).logits
        got = model(**inputs).logits
    torch.testing.assert_close(got[..., :vocab], expected[..., :vocab], rtol=0, atol=1e-5)

    want = llava.generate(**reference, max_new_tokens=12, do_sample=False)
    have = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert have.tolist() == want.tolist()


def test_region_token_is_added_and_never_generated(llava_dir, tmp_path, photo):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    dst = convert_llava(llava_dir, tmp_path / "regiongpt")
    model = AutoModelForImageTextToText.from_pretrained(dst).eval()
    processor = AutoProcessor.from_pretrained(dst)
    region_id = processor.region_token_id
    assert region_id == model.config.region_token_id
    with torch.no_grad():  # make <region> the most likely token: it must still never be produced
        model.lm_head.weight[region_id] = model.lm_head.weight.abs().max() * 50
    inputs = processor(images=photo, text="USER: <image>\nWhat is <region1>? ASSISTANT:", regions=[[5, 5, 40, 30]])
    out = model.generate(**inputs, max_new_tokens=10, do_sample=False)
    assert region_id not in out[0, inputs["input_ids"].shape[1]:].tolist()
    sampled = model.generate(**inputs, max_new_tokens=10, do_sample=True, temperature=5.0)
    assert region_id not in sampled[0, inputs["input_ids"].shape[1]:].tolist()


def test_convert_cli(llava_dir, tmp_path, capsys):
    assert main(["convert", "llava", str(llava_dir), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").exists()
    # a second run into the same folder refuses without --overwrite, with a one-line error
    assert main(["convert", "llava", str(llava_dir), str(tmp_path / "out")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["convert", "llava", str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
