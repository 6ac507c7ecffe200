"""Hugging Face integration: Auto classes, safetensors round trip, remote-code loading."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from conftest import make_model, make_processor, randomise_refiner
from regiongpt import RegionGPTConfig, RegionGPTForConditionalGeneration, RegionGPTProcessor

BOXES = [[2, 2, 30, 20], [40, 10, 78, 46]]
TEXT = "<image>\nWhat is <region2> next to <region1>?"


def _save(tmp_path, tokenizer):
    model = make_model("tiny-clip-llama", tokenizer)
    randomise_refiner(model)
    processor = make_processor(model, tokenizer)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    return model, processor


def test_save_load_round_trip_with_auto_classes(tmp_path, tokenizer, image):
    model, processor = _save(tmp_path, tokenizer)
    assert (tmp_path / "model.safetensors").exists()
    assert isinstance(AutoConfig.from_pretrained(tmp_path), RegionGPTConfig)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    loaded_processor = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, RegionGPTForConditionalGeneration)
    assert isinstance(loaded_processor, RegionGPTProcessor)
    assert loaded_processor.image_seq_length == processor.image_seq_length
    a = processor(images=image, text=TEXT, regions=BOXES)
    b = loaded_processor(images=image, text=TEXT, regions=BOXES)
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    with torch.no_grad():
        torch.testing.assert_close(model(**a).logits, loaded(**b).logits)
    # the chat template renders the Vicuna v1 layout
    rendered = loaded_processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is <region1>?"}]}],
        add_generation_prompt=True, tokenize=False,
    )
    assert rendered.endswith("USER: <image>\nWhat is <region1>? ASSISTANT:")
    # the checkpoint carries its own code and an auto_map
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_regiongpt.RegionGPTForConditionalGeneration"
    for name in ["modeling_regiongpt.py", "configuration_regiongpt.py", "processing_regiongpt.py", "regions.py", "rle.py"]:
        assert (tmp_path / name).exists(), name


def test_checkpoint_loads_without_regiongpt_via_remote_code(tmp_path, tokenizer, image):
    model, processor = _save(tmp_path, tokenizer)
    image_path = tmp_path / "image.png"
    image.save(image_path)
    inputs = processor(images=image, text=TEXT, regions=BOXES)
    with torch.no_grad():
        expected = model(**inputs).logits[0, -1].tolist()
    script = textwrap.dedent(f"""
        import json, sys
        sys.modules["regiongpt"] = None  # make the package unimportable
        try:
            import regiongpt
            raise SystemExit("regiongpt is importable")
        except ImportError:
            pass
        import torch
        from PIL import Image
        from transformers import AutoModelForImageTextToText, AutoProcessor
        path = {str(tmp_path)!r}
        model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
        inputs = processor(images=Image.open({str(image_path)!r}), text={TEXT!r}, regions={BOXES!r})
        with torch.no_grad():
            logits = model(**inputs).logits[0, -1]
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        print(json.dumps({{"cls": type(model).__module__, "logits": logits.tolist(), "n": out.shape[1]}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                                               "HF_HOME": str(tmp_path / "hf_home")})
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert "regiongpt" not in payload["cls"].split(".")[0]  # came from the checkpoint's own code
    torch.testing.assert_close(torch.tensor(payload["logits"]), torch.tensor(expected), rtol=1e-5, atol=1e-5)
    assert payload["n"] == inputs["input_ids"].shape[1] + 3
