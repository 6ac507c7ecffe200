"""REC attention supervision (train.rec_pointer_weight): which rows it supervises, that the recomputed
head attention is the model's own, and that it trains through the recipe."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaModel

from regiongpt.errors import InvalidInputError
from regiongpt.training.rec_pointer import (
    AttentionInputCapture, RecPointer, attribute_pointer_loss, digit_tokens, pointer_loss, rec_pointers,
    shares_category, visible_positions, visible_rows)

R = 99  # region placeholder id
DIGITS = {11: "1", 12: "2", 13: "3"}


def test_digit_tokens_read_the_vocabulary():
    vocab = {"\u01202": 5, "7": 6, "12": 7, "a1": 8, "\u0120": 9, "Region": 10}
    assert digit_tokens(vocab) == {5: "2", 6: "7", 7: "12"}
    with pytest.raises(InvalidInputError, match="has no digit tokens|none"):
        digit_tokens({"a": 1})


def test_rec_pointers_find_the_answer_number_and_the_region_it_names():
    # row 0: "<image> classify <r0> -> ans | which of <r0> <r1> <r2> ? -> Region [ 2 ] | which of <r0> <r1> <r2> -> No"
    ids = [1, 2, R, 3, 40, 41, 4, R, R, R, 5, 6, 50, 51, 12, 52, 4, R, R, R, 5, 60, 61]
    ans = [-1, -1, -1, -1, 0, 0, -1, -1, -1, -1, -1, -1, 1, 1, 1, 1, -1, -1, -1, -1, -1, 2, 2]
    tasks = ["classify", "rec", "rec"]
    # region rows: the classify placeholder is region 1 of the image; the REC lists regions 0, 1, 2
    region_token_index = torch.tensor([1, 0, 1, 2, 0, 1, 2])
    pointers = rec_pointers(torch.tensor([ids]), torch.tensor([ans]), tasks, R, region_token_index, DIGITS)
    assert len(pointers) == 1  # the no-match answer has no number
    p = pointers[0]
    assert p.row == 0 and p.query == 13  # the token before the digit writes it
    assert p.candidates == (7, 8, 9) and p.answer == 1
    assert p.targets == (2, 8)  # region 1's placeholders so far: the classify turn's and the candidate's
    assert p.token == 12


def test_rec_pointers_skip_checked_chains_numbers_past_the_candidates_and_other_tasks():
    ids = [R, R, 5, 11, 7, 12, 7, 12, R, R, 5, 13, 8, R, 5, 12]
    ans = [-1, -1, -1, 0, 0, 0, 0, 0, -1, -1, -1, 1, 1, -1, -1, 2]
    region_token_index = torch.arange(5)
    pointers = rec_pointers(torch.tensor([ids]), torch.tensor([ans]), ["rec", "rec", "relation"], R,
                            region_token_index, DIGITS)
    assert pointers == []  # a chain names three numbers; "3" of two candidates; a relation answer
    assert rec_pointers(torch.tensor([ids]), torch.tensor([ans]), ["rec"] * 3, R, None, DIGITS) == []


def tiny_llama(attn: str) -> LlamaModel:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    config._attn_implementation = attn
    return LlamaModel(config).eval()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_recomputed_head_attention_is_the_models_own(attn):
    model = tiny_llama(attn)
    reference = tiny_llama("eager")
    capture = AttentionInputCapture(model.layers[1].self_attn)
    ids = torch.randint(0, 120, (2, 12))
    with torch.no_grad():
        model(input_ids=ids)
        expected = reference(input_ids=ids, output_attentions=True).attentions[1]  # (N, H, L, L)
    for row, query, head in [(0, 11, 0), (1, 5, 3), (1, 0, 2)]:
        got = capture.head_log_attention(row, query, head).exp()
        torch.testing.assert_close(got, expected[row, head, query, : query + 1], atol=1e-5, rtol=1e-4)
    capture.remove()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_attention_of_many_queries_at_once_is_the_models_own(attn):
    """rows_attention projects keys once per batch row; each query's row must still be its own:
    rows with their own positions (per-row rotary), a padding mask, queries in any order."""
    model = tiny_llama(attn)
    reference = tiny_llama("eager")
    capture = AttentionInputCapture(model.layers[1].self_attn)
    ids = torch.randint(0, 120, (3, 12))
    positions = torch.stack([torch.arange(12), torch.arange(12) + 3, torch.arange(12) * 2])
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[2, 1] = 0
    with torch.no_grad():
        model(input_ids=ids, position_ids=positions, attention_mask=mask)
        expected = reference(input_ids=ids, position_ids=positions, attention_mask=mask,
                             output_attentions=True).attentions[1]  # (N, H, L, L)
        rows, queries = [2, 0, 1, 2, 0], [11, 11, 5, 7, 0]
        log_attention, written = capture.rows_attention(rows, queries, 3, visible_rows(mask, rows, queries))
    assert log_attention.shape == (5, 12) and written.shape == (5, 32)
    for i, (row, query) in enumerate(zip(rows, queries)):
        torch.testing.assert_close(log_attention[i, : query + 1].exp(), expected[row, 3, query, : query + 1],
                                   atol=1e-5, rtol=1e-4)
        assert torch.isinf(log_attention[i, query + 1 :]).all()  # causal
        with torch.no_grad():
            _, alone = capture.head_attention(row, query, 3, visible_positions(mask, row, query))
        torch.testing.assert_close(written[i], alone, atol=1e-6, rtol=1e-5)
    capture.remove()


def test_pointer_loss_of_a_batch_is_the_mean_of_its_rows():
    model = tiny_llama("sdpa")
    capture = AttentionInputCapture(model.layers[0].self_attn)
    head_out = torch.nn.Linear(32, 120)
    ids = torch.randint(0, 120, (2, 10))
    model(input_ids=ids)
    pointers = [RecPointer(0, 9, (3,), (2, 3, 4), 1, 5), RecPointer(1, 6, (2, 5), (2, 4), 0, 7),
                RecPointer(0, 4, (1,), (1, 2), 0, 9)]
    readout = lambda x: head_out(model.norm(x))  # noqa: E731
    together = pointer_loss(capture, pointers, 2, None, readout=readout)
    alone = [pointer_loss(capture, [p], 2, None, readout=readout) for p in pointers]
    torch.testing.assert_close(together.attention, sum(a.attention for a in alone) / 3)
    torch.testing.assert_close(together.readout, sum(a.readout for a in alone) / 3)
    assert together.correct == sum(a.correct for a in alone)


def test_two_heads_share_a_pointer_through_their_mean_attention():
    model = tiny_llama("sdpa")
    capture = AttentionInputCapture(model.layers[0].self_attn)
    head_out = torch.nn.Linear(32, 120)
    model(input_ids=torch.randint(0, 120, (1, 10)))
    pointer = RecPointer(0, 9, (3,), (2, 3, 4), 1, 5)
    readout = lambda x: head_out(model.norm(x))  # noqa: E731
    shared = pointer_loss(capture, [pointer], (1, 3), None, readout=readout)
    with torch.no_grad():
        (a1, w1), (a3, w3) = (capture.head_attention(0, 9, h) for h in (1, 3))
    mass = 0.5 * (a1.exp()[3] + a3.exp()[3])
    torch.testing.assert_close(shared.attention, -torch.log(mass))
    expected = torch.nn.functional.cross_entropy(readout(w1 + w3)[None], torch.tensor([5]))
    torch.testing.assert_close(shared.readout, expected)
    mean = 0.5 * (a1.exp() + a3.exp())
    assert shared.correct == int(int(torch.argmax(mean[[2, 3, 4]])) == 1)
    shared.attention.backward()
    q = model.layers[0].self_attn.q_proj.weight.grad.view(4, 8, -1)  # (heads, head_dim, D) for the 32-wide tiny model
    assert q[1].abs().sum() > 0 and q[3].abs().sum() > 0 and q[0].abs().sum() == 0 and q[2].abs().sum() == 0


def test_an_attribute_head_learns_only_where_a_category_is_shared():
    model = tiny_llama("sdpa")
    capture = AttentionInputCapture(model.layers[0].self_attn)
    head_out = torch.nn.Linear(32, 120)
    model(input_ids=torch.randint(0, 120, (1, 10)))
    shared_row, unique_row = RecPointer(0, 9, (3,), (2, 3, 4), 1, 5), RecPointer(0, 7, (2,), (2, 4), 0, 6)
    readout = lambda x: head_out(model.norm(x))  # noqa: E731
    loss = attribute_pointer_loss(capture, [shared_row, unique_row], 0, 2, [True, False], None, readout)
    with torch.no_grad():
        (a0, w0), (a2, w2) = (capture.head_attention(0, 9, h) for h in (0, 2))
        (b0, v0), (_, v2) = (capture.head_attention(0, 7, h) for h in (0, 2))
    expected = (-a0[3] - a2[3] - b0[2]) / 2  # the attribute head only on the shared row
    torch.testing.assert_close(loss.attention, expected)
    read = torch.nn.functional.cross_entropy(readout(torch.stack([w0 + w2, v0 + v2])), torch.tensor([5, 6]))
    torch.testing.assert_close(loss.readout, read)
    mean = 0.5 * (a0.exp() + a2.exp())
    assert loss.correct >= int(int(torch.argmax(mean[[2, 3, 4]])) == 1)
    weighted = attribute_pointer_loss(capture, [shared_row, unique_row], 0, 2, [True, False], None, readout,
                                      attribute_weight=3.0)
    torch.testing.assert_close(weighted.attention, (-a0[3] - 3.0 * a2[3] - b0[2]) / 2)
    # on a row without a shared category the attribute head gets no attention gradient
    alone = attribute_pointer_loss(capture, [unique_row], 0, 2, [False], None, readout)
    alone.attention.backward()
    q = model.layers[0].self_attn.q_proj.weight.grad.view(4, 8, -1)
    assert q[0].abs().sum() > 0 and q[2].abs().sum() == 0


def test_shares_category_compares_the_candidates_regions():
    pointer = RecPointer(0, 9, (3,), (2, 3, 4), 1, 5)
    region_of = {2: 0, 3: 1, 4: 2}
    assert shares_category(pointer, region_of, ["star", "ring", "ring"])
    assert not shares_category(pointer, region_of, ["star", "ring", "heart"])
    assert not shares_category(pointer, region_of, ["star", None, None])


def test_a_spread_pointer_asks_for_an_even_share_on_every_target():
    model = tiny_llama("sdpa")
    capture = AttentionInputCapture(model.layers[0].self_attn)
    model(input_ids=torch.randint(0, 120, (1, 10)))
    pointer = RecPointer(0, 9, (3, 5), (3, 5), 0, 5)
    with torch.no_grad():
        attention, _ = capture.head_attention(0, 9, 2)
        total = pointer_loss(capture, [pointer], 2, None).attention
        even = pointer_loss(capture, [pointer], 2, None, spread=True).attention
    torch.testing.assert_close(total, -torch.logsumexp(attention[[3, 5]], 0))
    torch.testing.assert_close(even, -attention[[3, 5]].mean())
    # all the mass on one target satisfies the total, not the spread loss
    one = torch.full((10,), -30.0)
    one[3] = 0.0
    one = one.log_softmax(0)
    assert -torch.logsumexp(one[[3, 5]], 0) < 1e-6 < -one[[3, 5]].mean()


def test_pointer_loss_falls_when_the_head_attends_to_the_target():
    model = tiny_llama("sdpa")
    capture = AttentionInputCapture(model.layers[0].self_attn)
    ids = torch.randint(0, 120, (1, 10))
    model(input_ids=ids)
    pointer = RecPointer(0, 9, (3,), (2, 3, 4), 1, int(ids[0, 3]))
    loss = pointer_loss(capture, [pointer], 1, None).attention
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        optimiser.zero_grad()
        model(input_ids=ids)
        result = pointer_loss(capture, [pointer], 1, None)
        loss_now, correct = result.attention, result.correct
        assert result.readout == 0  # no readout given
        loss_now.backward()
        optimiser.step()
    assert loss_now < loss / 2 and correct == 1
    # a masked-out target position gets no attention at all
    mask = torch.ones(1, 10, dtype=torch.bool)
    mask[0, 3] = False
    with torch.no_grad():
        model(input_ids=ids)
        assert visible_positions(mask, 0, 9).tolist()[3] is False
        masked = pointer_loss(capture, [pointer], 1, mask).attention
    assert torch.isinf(masked)


def test_what_the_head_writes_is_its_share_of_the_attention_output():
    model = tiny_llama("sdpa")
    attention = model.layers[0].self_attn
    head_dim = attention.head_dim
    with torch.no_grad():  # silence every head but head 2 in the output projection
        keep = attention.o_proj.weight[:, 2 * head_dim : 3 * head_dim].clone()
        attention.o_proj.weight.zero_()
        attention.o_proj.weight[:, 2 * head_dim : 3 * head_dim] = keep
    outputs = {}

    def keep_output(module, args, out):
        outputs["out"] = out[0]

    attention.register_forward_hook(keep_output)
    capture = AttentionInputCapture(attention)
    ids = torch.randint(0, 120, (1, 9))
    with torch.no_grad():
        model(input_ids=ids)
        _, written = capture.head_attention(0, 6, 2)
    torch.testing.assert_close(written, outputs["out"][0, 6], atol=1e-5, rtol=1e-4)


def test_the_readout_trains_the_head_to_write_the_number():
    model = tiny_llama("sdpa")
    capture = AttentionInputCapture(model.layers[1].self_attn)
    head_out = torch.nn.Linear(32, 120)
    ids = torch.randint(0, 120, (1, 10))
    pointer = RecPointer(0, 9, (4,), (4, 5), 0, 17)
    optimiser = torch.optim.Adam([*model.parameters(), *head_out.parameters()], lr=1e-2)
    first = None
    for _ in range(40):
        optimiser.zero_grad()
        model(input_ids=ids)
        result = pointer_loss(capture, [pointer], 0, None, readout=lambda x: head_out(model.norm(x)))
        first = float(result.readout.detach()) if first is None else first
        (result.attention + result.readout).backward()
        optimiser.step()
    assert float(result.readout.detach()) < first / 4
