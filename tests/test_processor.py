"""Processor: conversation template, label masking, placeholders, instructions."""

from __future__ import annotations

import pytest
import torch

from regiongpt.processing.instructions import (
    NO_MATCH_ANSWER, QUESTION_TEMPLATES, TASKS, build_instruction, parse_rec_answer, parse_yes_no, rec_answer,
    rec_checked_answer,
)
from regiongpt.processing.templates import SYSTEM_PROMPT, format_conversation

TURNS = [
    {"from": "human", "value": "<image>\nWhat is <region1>?"},
    {"from": "gpt", "value": "a red star"},
    {"from": "human", "value": "And <region2> compared with <region1>?"},
    {"from": "gpt", "value": "It is left of it."},
]


def test_vicuna_v1_layout():
    formatted = format_conversation(TURNS)
    assert formatted.text == (
        f"{SYSTEM_PROMPT} USER: <image>\nWhat is <region1>? ASSISTANT: a red star</s>"
        "USER: And <region2> compared with <region1>? ASSISTANT: It is left of it.</s>"
    )
    assert [formatted.text[a:b] for a, b in formatted.target_spans] == ["a red star</s>", "It is left of it.</s>"]
    prompt = format_conversation(TURNS[:1], add_generation_prompt=True).text
    assert prompt.endswith("USER: <image>\nWhat is <region1>? ASSISTANT:")


def test_chat_template_matches_format_conversation(tiny):
    _, processor = tiny
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is <region1>?"}]},
                {"role": "assistant", "content": "a red star"},
                {"role": "user", "content": "And <region2> compared with <region1>?"}]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == format_conversation(messages, add_generation_prompt=True).text


def test_labels_cover_only_assistant_replies(tiny, image):
    model, processor = tiny
    formatted = processor.format_conversation(TURNS)
    inputs = processor(images=image, text=formatted.text, regions=[[1, 1, 20, 20], [30, 5, 70, 40]],
                       target_spans=formatted.target_spans)
    ids, labels = inputs["input_ids"][0], inputs["labels"][0]
    learned = processor.tokenizer.decode(ids[labels != -100])
    # (byte-level BPE puts the space before a reply inside the reply's first token)
    assert learned.replace(" ", "") == "aredstar</s>Itisleftofit.</s>"
    # placeholders and prompts are never learned
    assert not ((labels != -100) & ((ids == model.config.image_token_id) | (ids == model.config.region_token_id))).any()
    assert inputs["region_token_index"].tolist() == [0, 1, 0]


def test_batch_labels_with_right_padding(tiny, image):
    _, processor = tiny
    a = processor.format_conversation(TURNS)
    b = processor.format_conversation(TURNS[:2])
    inputs = processor(images=[image, image], text=[a.text, b.text], regions=[[[1, 1, 20, 20], [30, 5, 70, 40]],
                       [[1, 1, 20, 20]]], target_spans=[a.target_spans, b.target_spans], padding_side="right")
    assert inputs["attention_mask"][1, -1] == 0 and inputs["labels"][1, -1] == -100
    assert processor.tokenizer.decode(inputs["input_ids"][1][inputs["labels"][1] != -100]).strip() == "a red star</s>"
    assert inputs["region_image_index"].tolist() == [0, 0, 1]
    assert inputs["region_token_index"].tolist() == [0, 1, 0, 2]


def test_text_only_and_image_count_errors(tiny, image):
    _, processor = tiny
    out = processor(text="USER: hello ASSISTANT:")
    assert "pixel_values" not in out and out["region_masks"].shape[0] == 0
    with pytest.raises(ValueError, match="exactly once"):
        processor(images=image, text="no image placeholder here")
    with pytest.raises(ValueError, match="no image was given"):
        processor(text="<image>\nhi")
    with pytest.raises(ValueError, match="one per text"):
        processor(images=[image], text=["<image>a", "<image>b"])


def test_instructions_cover_every_task_with_paraphrases():
    import random

    for task in TASKS:
        assert len(QUESTION_TEMPLATES[task]) >= 10
    q = build_instruction("classify", region=0, categories=["star", "ring"])
    assert q.startswith("What category name best describes the region represented by <region1>?")
    assert q.endswith("Categories: star, ring.")
    rec = build_instruction("rec", regions=[0, 1, 2], phrase="the red star")
    assert "<region1>, <region2>, <region3>" in rec and rec.endswith("Answer the question using the template Region [x].")
    assert build_instruction("relation", region=0, region2=1) == (
        "What can be inferred about <region1> and <region2> relationship?")
    assert "<region1>" in build_instruction("brief", region=0, rng=random.Random(1))
    assert build_instruction("brief", region=0, use_suffix=False) == "Provide a short description for <region1>."
    with pytest.raises(ValueError, match="needs phrase"):
        build_instruction("rec", regions=[0])
    assert rec_answer(1) == "Region [2]" and rec_answer(None) == NO_MATCH_ANSWER
    assert parse_rec_answer("Region [3]") == 2 and parse_rec_answer(NO_MATCH_ANSWER) is None
    assert parse_yes_no("No, there is none.") is False and parse_yes_no("Yes. It is not red.") is True


def test_checked_rec_answers_check_each_candidate_and_parse_to_the_choice():
    briefs = ["small red bar", "large blue ring", "medium green dotted star"]
    checked = rec_checked_answer(briefs, 1)
    assert checked == "Region [1]: small red bar, no. Region [2]: large blue ring, yes. So it is Region [2]."
    assert parse_rec_answer(checked) == 1
    assert parse_rec_answer(rec_checked_answer(briefs, 0)) == 0
    none = rec_checked_answer(briefs, None)
    assert none.count(", no.") == 3 and none.endswith(NO_MATCH_ANSWER) and parse_rec_answer(none) is None
    # a checked answer cut off by the token budget still names the region it last looked at
    assert parse_rec_answer("Region [1]: small red bar, no. Region [3]: medium") == 2
    assert parse_rec_answer("no region here") is None and parse_rec_answer("Region [0]") is None
    with pytest.raises(ValueError, match="not one of the 3 candidates"):
        rec_checked_answer(briefs, 3)


def test_strip_task_suffix_gives_the_question_without_suffix():
    import random

    from regiongpt.processing.instructions import strip_task_suffix

    for task in TASKS:
        for seed in range(12):
            fields = dict(region=0, region2=1, regions=range(3), phrase="the red heart", rng=random.Random(seed))
            listed = ["star", "ring"] if task == "classify" and seed % 2 else None
            full = build_instruction(task, vocabulary="synthetic-world", categories=listed, **fields)
            fields["rng"] = random.Random(seed)
            bare = build_instruction(task, use_suffix=False, **fields)
            assert strip_task_suffix(full, task) == bare
            assert strip_task_suffix(bare, task) == bare  # nothing to strip
    assert strip_task_suffix("Is it red? Answer yes or no.", "chat") == "Is it red? Answer yes or no."


def test_box_mapped_into_model_pixels_matches_image(tiny):
    """A white box on a black image lands where the region mask says, through pad + resize."""
    import numpy as np
    from PIL import Image

    _, processor = tiny
    array = np.zeros((40, 100, 3), dtype=np.uint8)
    array[10:30, 20:60] = 255
    inputs = processor(images=Image.fromarray(array), text="<image>\n<region1>", regions=[[20, 10, 60, 30]])
    pixels = inputs["pixel_values"][0].mean(0)  # normalised: white > 0 > black
    bright = pixels > pixels.min() + (pixels.max() - pixels.min()) / 2
    mask = inputs["region_masks"][0] > 0.5
    iou = (bright & mask).sum() / (bright | mask).sum()
    assert iou > 0.9, float(iou)
    assert torch.all(inputs["region_boxes"][0] >= 0)
