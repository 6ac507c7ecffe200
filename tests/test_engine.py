"""The inference engine answers exactly as one transformers generate per question."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_model, make_processor, randomise_refiner
from regiongpt.inference.engine import Engine, Request, SamplingParams, VisualInputs

BOXES = [[2, 2, 30, 20], [40, 10, 78, 46], [10, 25, 35, 47], [0, 0, 80, 48]]
QUESTIONS = ["What is <region{k}>?", "Describe <region{k}> in detail please.", "Is <region{k}> left of <region1>?"]


def _images():
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)),
            Image.fromarray(rng.integers(0, 255, (60, 40, 3), dtype=np.uint8))]


def _batch(processor, prompts, images, boxes_per_image, sampling):
    """Requests for (image index, prompt) pairs plus the shared visual inputs."""
    visual = processor(images=images, text=["<image>"] * len(images), regions=boxes_per_image)
    offsets = np.cumsum([0] + [len(b) for b in boxes_per_image])
    requests = []
    for image, prompt in prompts:
        enc = processor(images=images[image], text=prompt, regions=boxes_per_image[image])
        regions = (enc["region_token_index"] + int(offsets[image])).tolist()
        requests.append(Request(enc["input_ids"][0].tolist(), image=image, regions=regions, sampling=sampling))
    return requests, VisualInputs(visual["pixel_values"], visual["region_masks"], visual["region_boxes"],
                                  visual["region_image_index"])


def _reference(model, processor, image, prompt, boxes, steps):
    enc = processor(images=image, text=prompt, regions=boxes)
    out = model.generate(**enc, max_new_tokens=steps, do_sample=False, output_scores=True,
                         return_dict_in_generate=True, eos_token_id=None)
    tokens = out.sequences[0, enc["input_ids"].shape[1]:].tolist()
    margins = [float(s[0].topk(2).values.diff().abs()) for s in out.scores]
    return tokens, margins


def _prompts():
    prompts = []
    for image in (0, 1):
        for q in QUESTIONS:
            for k in (1, 2, 3):
                prompts.append((image, f"USER: <image>\n{q.format(k=k)} ASSISTANT:"))
    return prompts


@pytest.mark.parametrize("preset", ["tiny-clip-llama", "tiny-siglip-qwen2", "tiny-convnext-mistral"])
def test_greedy_equals_one_generate_per_question_where_margin_is_clear(tokenizer, preset):
    model = make_model(preset, tokenizer)
    randomise_refiner(model, scale=2.0)
    processor = make_processor(model, tokenizer)
    images = _images()
    boxes = [BOXES, [[1, 1, 20, 30], [10, 20, 39, 59], [0, 0, 5, 5]]]
    steps = 10
    prompts = _prompts()
    requests, visual = _batch(processor, prompts, images, boxes, SamplingParams(max_new_tokens=steps))
    engine = Engine(model)
    assert engine.uses_shared_prefix
    results = engine.generate(requests, visual)
    compared = 0
    for (image, prompt), result in zip(prompts, results):
        tokens, margins = _reference(model, processor, images[image], prompt, boxes[image], steps)
        for step, (got, want, margin) in enumerate(zip(result.token_ids, tokens, margins)):
            if margin <= 1e-3:
                break  # a near-tie: later tokens may legitimately differ
            assert got == want, f"{prompt!r} step {step}: {result.token_ids} vs {tokens}"
            compared += 1
    assert compared > len(prompts) * steps // 2  # the comparison is not vacuous
    # different regions really give different answers somewhere
    assert len({tuple(r.token_ids) for r in results}) > 1


def test_chunking_and_fallback_give_the_same_answers(tokenizer):
    model = make_model("tiny-clip-llama", tokenizer)
    randomise_refiner(model, scale=2.0)
    processor = make_processor(model, tokenizer)
    images = _images()
    boxes = [BOXES, [[1, 1, 20, 30], [10, 20, 39, 59]]]
    prompts = [(i, p) for i, p in _prompts() if i == 0 or "<region3>" not in p]
    requests, visual = _batch(processor, prompts, images, boxes, SamplingParams(max_new_tokens=6))
    full = [r.token_ids for r in Engine(model).generate(requests, visual)]
    chunked = [r.token_ids for r in Engine(model, max_rows=2).generate(requests, visual)]
    assert chunked == full
    fallback_engine = Engine(model)
    fallback_engine.decoder = None  # the path for language models without the Llama structure
    fallback = [r.token_ids for r in fallback_engine.generate(requests[:4], visual)]
    assert fallback == full[:4]


def test_scores_stops_and_sampling(tokenizer):
    model = make_model("tiny-clip-llama", tokenizer)
    randomise_refiner(model, scale=2.0)
    processor = make_processor(model, tokenizer)
    images = _images()
    prompts = [(0, "USER: <image>\nWhat is <region1>? ASSISTANT:"), (0, "USER: <image>\nWhat is <region2>? ASSISTANT:")]
    requests, visual = _batch(processor, prompts, images, [BOXES, []], SamplingParams(max_new_tokens=5))
    engine = Engine(model)
    greedy = engine.generate(requests, visual)
    assert all(r.finish_reason == "length" and len(r.token_ids) == 5 for r in greedy)
    assert all(r.score < 0 for r in greedy)
    # a stop token ends a request at that token
    first = greedy[0].token_ids[2]
    stopped = engine.generate([Request(requests[0].input_ids, 0, requests[0].regions,
                                       SamplingParams(max_new_tokens=5, stop_token_ids=(first,)))], visual)
    assert stopped[0].token_ids[-1] == first and stopped[0].finish_reason == "stop"
    # a caller's stop check
    early = engine.generate(requests, visual, should_stop=lambda i, ids: len(ids) == 2)
    assert [len(r.token_ids) for r in early] == [2, 2]
    # sampling: reproducible by seed, top_p -> 0 is greedy
    hot = [Request(r.input_ids, 0, r.regions, SamplingParams(max_new_tokens=5, temperature=1.5)) for r in requests]
    a = [r.token_ids for r in engine.generate(hot, visual, seed=7)]
    b = [r.token_ids for r in engine.generate(hot, visual, seed=7)]
    assert a == b
    narrow = [Request(r.input_ids, 0, r.regions, SamplingParams(max_new_tokens=5, temperature=1.0, top_p=1e-6))
              for r in requests]
    assert [r.token_ids for r in engine.generate(narrow, visual, seed=3)] == [r.token_ids for r in greedy]
    # streaming interleaves requests
    events = list(engine.stream(requests, visual))
    assert {e.request for e in events[:2]} == {0, 1}


def test_256_regions_in_one_image(tokenizer):
    model = make_model("tiny-clip-llama", tokenizer)
    processor = make_processor(model, tokenizer)
    image = _images()[0]
    rng = np.random.default_rng(0)
    boxes = []
    for _ in range(256):
        x, y = rng.integers(0, 70), rng.integers(0, 40)
        boxes.append([int(x), int(y), int(x) + 10, int(y) + 8])
    visual = processor(images=image, text="<image>", regions=boxes)
    base = processor(images=image, text="USER: <image>\nWhat is <region1>? ASSISTANT:", regions=boxes)
    ids = base["input_ids"][0].tolist()
    requests = [Request(ids, 0, [k], SamplingParams(max_new_tokens=3)) for k in range(256)]
    results = Engine(model, max_rows=64).generate(
        requests, VisualInputs(visual["pixel_values"], visual["region_masks"], visual["region_boxes"],
                               visual["region_image_index"]))
    assert len(results) == 256 and all(len(r.token_ids) == 3 for r in results)


def test_bad_requests_are_reported(tokenizer):
    model = make_model("tiny-clip-llama", tokenizer)
    engine = Engine(model)
    with pytest.raises(ValueError, match="image 3 but 0 image"):
        engine.generate([Request([1, 2, 3], image=3)])
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)
    with pytest.raises(ValueError, match="region tokens"):
        engine.generate([Request([1, model.config.region_token_id], regions=[])])


def test_candidate_scores_equal_teacher_forced_log_likelihood(tokenizer):
    model = make_model("tiny-clip-llama", tokenizer)
    randomise_refiner(model, scale=2.0)
    processor = make_processor(model, tokenizer)
    images = _images()
    prompts = [(0, "USER: <image>\nWhat is <region1>? ASSISTANT:"), (0, "USER: <image>\nWhat is <region2>? ASSISTANT:")]
    requests, visual = _batch(processor, prompts, images, [BOXES, []], SamplingParams())
    candidates = [tokenizer(" star ring", add_special_tokens=False)["input_ids"],
                  tokenizer(" red", add_special_tokens=False)["input_ids"]]
    options = [candidates, candidates[::-1]]
    engine = Engine(model)
    scores = engine.score(requests, options, visual)
    for (image, prompt), opts, got in zip(prompts, options, scores):
        for option, value in zip(opts, got):
            enc = processor(images=images[image], text=prompt, regions=BOXES)
            full = torch.cat([enc["input_ids"], torch.tensor([option])], dim=1)
            inputs = dict(enc, input_ids=full, attention_mask=torch.ones_like(full))
            with torch.no_grad():
                logprobs = torch.log_softmax(model(**inputs).logits[0].float(), -1)
            n = len(option)
            want = logprobs[-n - 1 : -1].gather(1, torch.tensor(option)[:, None]).sum()
            assert abs(value - float(want)) < 1e-4
    plain = Engine(model)
    plain.decoder = None
    torch.testing.assert_close(torch.tensor(plain.score(requests, options, visual)), torch.tensor(scores),
                               rtol=1e-4, atol=1e-4)
