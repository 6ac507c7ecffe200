"""Multi-turn chat keeps the conversation's KV: same answers as one-shot, fewer tokens prefilled."""

from __future__ import annotations

import torch

from conftest import make_model, make_processor, randomise_refiner
from regiongpt.inference.api import RegionGPT

BOXES = [[2, 2, 30, 20], [40, 10, 78, 46]]


def test_session_turns_equal_one_shot_chat_and_reuse_kv(tokenizer, image):
    model = make_model("tiny-clip-llama", tokenizer)
    randomise_refiner(model, scale=2.0)
    with torch.no_grad():  # an end token the model picks often, so replies end and turns stack up
        model.lm_head.weight[tokenizer.eos_token_id] *= 3
    api = RegionGPT(model, make_processor(model, tokenizer))
    session = api.chat_session(image, BOXES)
    questions = ["What is <region1>?", "And how does <region2> relate to it?", "Describe <region1> again."]
    history = []
    for turn, question in enumerate(questions):
        before = session.state.prefilled_tokens
        reply = session.send(question, max_new_tokens=6)
        content = question if turn else f"<image>\n{question}"
        history.append({"role": "user", "content": content})
        expected = api.chat(image, BOXES, history, max_new_tokens=6)
        assert reply == expected, f"turn {turn}"
        history.append({"role": "assistant", "content": reply})
        prompt_ids, _ = api.processor.encode_prompt(api._prompt(history[:-1]), len(BOXES))
        if turn:  # only the new turn's tokens were run, not the whole conversation
            assert session.state.prefilled_tokens - before < len(prompt_ids) // 2
    assert session.messages == history
    streamed = "".join(api.chat_session(image, BOXES).send(questions[0], max_new_tokens=6, stream=True)).strip()
    assert streamed == api.chat(image, BOXES, history[:1], max_new_tokens=6)
