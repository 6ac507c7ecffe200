"""Independent turns (data.independent_tasks): each is computed exactly as the same question asked alone."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from regiongpt.training.data import PackedImage, PackedSequence, QAPair, RegionCollator, SequenceLength, answer_runs
from regiongpt.training.independent_turns import (TURN_ATTENTION, attention_mask_for, format_sequence, pairs_to_turns,
                                                  segment_mask, split_pairs, turn_layout)
from regiongpt.training.rec_pointer import AttentionInputCapture
from regiongpt.training.turn_attention import use_turn_attention, without_padding

from conftest import make_model, make_processor, randomise_refiner

REGIONS = [{"box": [2, 2, 30, 30]}, {"box": [30, 10, 60, 44]}]
PAIRS = [
    QAPair("What is <region1>?", "a red star", "brief"),
    QAPair("Which of <region1>, <region2> is the blue ring?", "Region [2]", "rec"),
    QAPair("Describe <region2>.", "a blue ring left of the red star", "brief"),
    QAPair("Is there a star?", "yes", "existence"),
    QAPair("Is there a ring?", "no", "existence"),
]
INDEPENDENT = frozenset({"rec", "existence"})


@pytest.fixture(params=["sdpa", "eager", TURN_ATTENTION])
def model_and_processor(request, tokenizer):
    model = make_model("tiny-clip-llama", tokenizer)
    if request.param == TURN_ATTENTION:
        use_turn_attention(model.model.language_model)
    else:
        model.model.language_model.config._attn_implementation = request.param
    assert model.config.text_config._attn_implementation == request.param
    randomise_refiner(model)
    return model, make_processor(model, tokenizer)


def _item(processor, pairs, independent) -> PackedImage:
    formatted = format_sequence(processor, pairs, independent)
    ordinary, alone = split_pairs(pairs, independent)  # the order the answers are laid out in
    return PackedImage("s", Image.new("RGB", (64, 48), (90, 40, 200)), REGIONS,
                       [PackedSequence("s#0", formatted.text, formatted.target_spans,
                                       tuple(p.task for p in ordinary + alone))])


def _answer_logits(model, batch) -> list[torch.Tensor]:
    """Per answer: the logits that predict its tokens (position t predicts token t + 1)."""
    inputs = {k: v for k, v in batch.inputs.items() if k != "labels"}
    if inputs["attention_mask"].dim() == 4:
        implementation = model.config.text_config._attn_implementation
        inputs["attention_mask"] = attention_mask_for(inputs["attention_mask"], implementation, torch.float32)
    with torch.no_grad():
        logits = model(**inputs).logits
    out = []
    for a in range(len(batch.answer_tasks)):
        rows, cols = (batch.answer_index == a).nonzero(as_tuple=True)
        out.append(logits[rows, cols - 1])
    return out


def test_a_sequence_of_independent_turns_only(model_and_processor):
    """A packed sequence may hold independent turns alone (a long conversation split up)."""
    model, processor = model_and_processor
    alone = [p for p in PAIRS if p.task in INDEPENDENT]
    packed = RegionCollator(processor, INDEPENDENT)([_item(processor, alone, INDEPENDENT)])
    assert (packed.inputs["input_ids"] == processor.image_token_id).sum() == model.config.image_seq_length
    for got, pair in zip(_answer_logits(model, packed), alone):
        single = RegionCollator(processor)([_item(processor, [pair], frozenset())])
        torch.testing.assert_close(got, _answer_logits(model, single)[0], atol=1e-4, rtol=1e-4)


def test_each_independent_turn_equals_the_question_asked_alone(model_and_processor):
    model, processor = model_and_processor
    packed = RegionCollator(processor, INDEPENDENT)([_item(processor, PAIRS, INDEPENDENT)])
    assert packed.inputs["attention_mask"].shape[1:] == (1, *packed.inputs["input_ids"].shape[1:] * 2)
    assert packed.tokens == packed.inputs["input_ids"].numel()
    # The layout: the ordinary conversation first, then each independent turn.
    assert packed.answer_tasks == ["brief", "brief", "rec", "existence", "existence"]
    packed_logits = _answer_logits(model, packed)
    ordinary = [p for p in PAIRS if p.task not in INDEPENDENT]
    alone = [p for p in PAIRS if p.task in INDEPENDENT]
    # The ordinary turns: exactly the conversation of those turns alone.
    reference = RegionCollator(processor)([_item(processor, ordinary, frozenset())])
    for got, want in zip(packed_logits[:2], _answer_logits(model, reference)):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # Each independent turn: exactly the single-turn question about the image.
    for a, pair in enumerate(alone, start=2):
        single = RegionCollator(processor)([_item(processor, [pair], frozenset())])
        torch.testing.assert_close(packed_logits[a], _answer_logits(model, single)[0], atol=1e-4, rtol=1e-4)


def test_the_plain_layout_lets_later_turns_see_earlier_ones(model_and_processor):
    """Without independent tasks the mask is the usual padding mask and the REC answer depends on
    the turns before it (the shortcut the option removes)."""
    model, processor = model_and_processor
    plain = RegionCollator(processor)([_item(processor, PAIRS, frozenset())])
    assert plain.inputs["attention_mask"].dim() == 2 and "position_ids" not in plain.inputs
    single = RegionCollator(processor)([_item(processor, PAIRS[1:2], frozenset())])
    assert not torch.allclose(_answer_logits(model, plain)[1], _answer_logits(model, single)[0], atol=1e-3)


def test_layout_text_and_length(tokenizer):
    model = make_model("tiny-clip-llama", tokenizer)
    processor = make_processor(model, tokenizer)
    formatted = format_sequence(processor, PAIRS, INDEPENDENT)
    assert formatted.text.count("<image>") == 1
    # each independent question follows the answer before it as it follows <image> when asked alone
    alone_text = processor.format_conversation(pairs_to_turns(PAIRS[1:2])).text
    assert alone_text.split("<image>", 1)[1] in formatted.text
    assert [formatted.text[a:b] for a, b in formatted.target_spans] == [
        p.answer + "</s>" for p in [PAIRS[0], PAIRS[2], PAIRS[1], PAIRS[3], PAIRS[4]]]
    # the packer's length is the collated length
    batch = RegionCollator(processor, INDEPENDENT)([_item(processor, PAIRS, INDEPENDENT)])
    assert SequenceLength(processor, INDEPENDENT)(PAIRS) == batch.tokens


def test_a_text_only_sequence_keeps_the_first_token_as_prefix(tokenizer):
    model = make_model("tiny-clip-llama", tokenizer)
    processor = make_processor(model, tokenizer)
    pairs = [QAPair("Is there a star?", "yes", "existence"), QAPair("Is there a ring?", "no", "existence")]
    formatted = format_sequence(processor, pairs, INDEPENDENT)
    text = formatted.text.replace("<image>", "")
    shift = len("<image>")
    spans = tuple((a - shift, b - shift) for a, b in formatted.target_spans)
    encoded = processor(text=[text], target_spans=[spans])
    index, _ = answer_runs(encoded["labels"], [("existence", "existence")])
    mask, positions = segment_mask(encoded["input_ids"], encoded["attention_mask"], index, [True, True],
                                   processor.image_token_id)
    first_answer = (index[0] == 0).nonzero().flatten()
    second = int((index[0] == 1).nonzero()[0])
    assert mask[0, 0, second, 0] and not mask[0, 0, second, first_answer].any()
    assert positions[0, 0] == 0 and positions[0, second] < second - len(first_answer)


def _two_images(processor):
    """Two rows of different lengths: a full conversation, and independent turns only."""
    return RegionCollator(processor, INDEPENDENT)([
        _item(processor, PAIRS, INDEPENDENT),
        _item(processor, [p for p in reversed(PAIRS) if p.task in INDEPENDENT], INDEPENDENT)])


def test_turn_attention_equals_the_masked_sdpa_with_its_gradients(tokenizer):
    """The fast path of independent turns gives SDPA-with-the-mask's outputs on every real token and
    the same gradients, on a batch whose rows differ in length and layout."""
    model = make_model("tiny-clip-llama", tokenizer)
    randomise_refiner(model)
    processor = make_processor(model, tokenizer)
    batch = _two_images(processor)
    assert batch.inputs["turn_layout"].query_index.shape[0] == 6  # three independent turns a row
    real = (batch.answer_index >= 0).flip(1).cumsum(1).flip(1) > 0  # up to each row's last answer
    assert not real.all() and real.sum() == batch.tokens  # the second row is padded
    results = []
    for implementation in ("sdpa", TURN_ATTENTION):
        if implementation == TURN_ATTENTION:
            use_turn_attention(model.model.language_model)
        model.zero_grad()
        inputs = {k: v for k, v in batch.inputs.items() if k != "labels"}
        logits = model(**inputs).logits
        (logits[real] ** 2).mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((logits[real].detach(), grads))
    (want, want_grads), (got, got_grads) = results
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert want_grads.keys() == got_grads.keys() and len(want_grads) > 10
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_turn_layout_needs_ordinary_turns_before_independent_ones(tokenizer):
    model = make_model("tiny-clip-llama", tokenizer)
    processor = make_processor(model, tokenizer)
    batch = RegionCollator(processor, INDEPENDENT)([_item(processor, PAIRS, INDEPENDENT)])
    ids, index = batch.inputs["input_ids"], batch.answer_index
    tasks = batch.answer_tasks  # brief, brief, rec, existence, existence
    assert turn_layout(ids, index, [t in INDEPENDENT for t in tasks], processor.image_token_id) is not None
    # an ordinary turn after an independent one: only the dense mask describes it
    assert turn_layout(ids, index, [False, True, False, True, True], processor.image_token_id) is None
    assert turn_layout(ids, index, [False] * 5, processor.image_token_id) is None  # nothing independent


def test_padding_free_turn_attention_equals_the_padded_batch_with_its_gradients(tokenizer):
    """train.padding_free: the language model on the real tokens only, as one row, gives the padded
    run's logits, gradients and captured attention inputs (what the pointer losses recompute from)."""
    model = make_model("tiny-clip-llama", tokenizer)
    randomise_refiner(model)
    use_turn_attention(model.model.language_model)
    processor = make_processor(model, tokenizer)
    batch = _two_images(processor)
    real = batch.padding_mask
    assert not real.all() and int(real.sum()) == batch.tokens
    capture = AttentionInputCapture(model.model.language_model.layers[1].self_attn)
    rows, queries = [0, 1, 1], [int(real[0].sum()) - 2, int(real[1].sum()) - 1, 40]
    visible = torch.stack([batch.inputs["attention_mask"][r, 0, q] for r, q in zip(rows, queries)])
    results = []
    for free in (False, True):
        model.zero_grad()
        inputs = {k: v for k, v in batch.inputs.items() if k != "labels"}
        inputs["logits_to_keep"] = real
        if free:
            inputs = without_padding(inputs, real)
            assert inputs["token_index"].shape == (batch.tokens,) and inputs["position_ids"].shape == (1, batch.tokens)
        logits = model(**inputs).logits  # (R, V)
        assert capture.hidden.shape[:2] == real.shape  # the capture sees the padded batch either way
        attention, written = capture.rows_attention(rows, queries, 2, visible)
        (logits ** 2).mean().backward(retain_graph=True)
        (written ** 2).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((logits.detach(), capture.hidden[real].detach(), attention.detach(), grads))
    (want, want_hidden, want_attention, want_grads), (got, got_hidden, got_attention, got_grads) = results
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got_hidden, want_hidden, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got_attention, want_attention, atol=1e-5, rtol=1e-4)
    assert want_grads.keys() == got_grads.keys() and len(want_grads) > 10
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)
    with pytest.raises(ValueError, match="already padding-free"):
        without_padding(dict(inputs), real)
    with pytest.raises(ValueError, match="lies in the padding"):
        batch.inputs["turn_layout"].without_padding(torch.zeros_like(real))
    with pytest.raises(ValueError, match=r"token_index needs position_ids of shape \(1, R\)"):
        model(**{**inputs, "position_ids": None})


def test_a_batch_without_independent_turns_runs_padding_free_too(tokenizer):
    """With independent tasks configured, a batch that has none of them (the demo recipe's first,
    classification-only phase) gets a causal layout: padding-free, it gives plain SDPA's logits."""
    model = make_model("tiny-clip-llama", tokenizer)
    randomise_refiner(model)
    processor = make_processor(model, tokenizer)
    ordinary = [p for p in PAIRS if p.task not in INDEPENDENT]
    batch = RegionCollator(processor, INDEPENDENT)([_item(processor, ordinary, INDEPENDENT),
                                                    _item(processor, ordinary[:1], INDEPENDENT)])
    assert batch.inputs["attention_mask"].dim() == 2 and "position_ids" not in batch.inputs
    assert batch.inputs["turn_layout"].query_index.numel() == 0 and not batch.padding_mask.all()
    real = batch.padding_mask
    inputs = {k: v for k, v in batch.inputs.items() if k not in ("labels", "turn_layout")}
    with torch.no_grad():
        want = model(**inputs, logits_to_keep=real).logits  # SDPA with the padding mask
        use_turn_attention(model.model.language_model)
        padded = model(**{**inputs, "turn_layout": batch.inputs["turn_layout"]}, logits_to_keep=real).logits
        free = model(**without_padding({**inputs, "turn_layout": batch.inputs["turn_layout"], "logits_to_keep": real},
                                       real)).logits
    torch.testing.assert_close(padded, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(free, want, atol=1e-5, rtol=1e-4)
