"""Existence attention supervision (train.existence_pointer_weight): which rows and positions it
supervises, that the evidence reaches the batch, and that it trains through the recipe."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaModel

from regiongpt.training.existence_pointer import existence_pointers
from regiongpt.training.rec_pointer import AttentionInputCapture, TargetPointer, pointer_loss
from regiongpt.training.region_pretrain import region_cells

IMG = 98  # image placeholder id


def _masks() -> torch.Tensor:
    """Three regions on a 8x8 image with a 2x2 grid: region 1 in the top-left cell, region 2 in the
    bottom-right cell, region 3 over the whole top half."""
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[0, 0:3, 0:3] = True
    masks[1, 5:8, 5:8] = True
    masks[2, 0:4, :] = True
    return masks


def test_region_cells_are_row_major():
    assert region_cells(_masks(), 2).tolist() == [[True, False, False, False], [False, False, False, True],
                                                  [True, True, False, False]]


def test_existence_pointers_point_yes_at_the_evidence_cells_and_no_at_the_first_token():
    # row 0: <s> IMG x4 "is there" -> Yes . | "is there" -> No . | classify -> ans ; row 1: <s> IMG x4 q -> Yes
    ids = [[1, IMG, IMG, IMG, IMG, 5, 6, 40, 41, 5, 7, 50, 51, 8, 60],
           [1, IMG, IMG, IMG, IMG, 5, 6, 40, 41, 0, 0, 0, 0, 0, 0]]
    ans = [[-1, -1, -1, -1, -1, -1, -1, 0, 0, -1, -1, 1, 1, -1, 2],
           [-1, -1, -1, -1, -1, -1, -1, 3, 3, -1, -1, -1, -1, -1, -1]]
    tasks = ["existence", "existence", "classify", "existence"]
    # row 0 has regions 1 and 2 (mask rows 0, 1); row 1 has one region (mask row 2)
    evidence = [(2,), (), None, (1,)]
    pointers = existence_pointers(torch.tensor(ids), torch.tensor(ans), tasks, evidence, IMG, _masks(),
                                  torch.tensor([0, 0, 1]), grid=2)
    assert [(p.row, p.query, p.token) for p in pointers] == [(0, 6, 40), (0, 10, 50), (1, 6, 40)]
    yes, no, other_row = pointers
    assert yes.targets == (4,) and yes.others == (0, 1, 2, 3)  # region 2 is in the last cell
    assert no.targets == (0,) and no.others == (1, 2, 3, 4)
    assert other_row.targets == (1, 2)  # row 1's region 1 is the top half
    assert yes.choices == ((4,), (0, 1, 2, 3)) and yes.answer == 0
    # answers without evidence, or of other tasks, are not supervised
    assert existence_pointers(torch.tensor(ids), torch.tensor(ans), tasks, [None] * 4, IMG, _masks(),
                              torch.tensor([0, 0, 1]), grid=2) == []
    assert existence_pointers(torch.tensor(ids), torch.tensor(ans), ["chat"] * 4, evidence, IMG, _masks(),
                              torch.tensor([0, 0, 1]), grid=2) == []


def test_pointer_loss_teaches_a_head_to_look_at_the_cells_or_at_the_first_token():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    config._attn_implementation = "sdpa"
    model = LlamaModel(config)
    capture = AttentionInputCapture(model.layers[1].self_attn, "train.existence_pointer_weight")
    ids = torch.randint(0, 120, (2, 10))
    yes = TargetPointer(0, 9, (3, 4), (0, 1, 2, 5), 7)
    no = TargetPointer(1, 9, (0,), (1, 2, 3, 4, 5), 8)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        optimiser.zero_grad()
        model(input_ids=ids)
        result = pointer_loss(capture, [yes, no], 1, None)
        result.attention.backward()
        optimiser.step()
        losses.append(float(result.attention.detach()))
    assert losses[-1] < losses[0] / 4 and result.correct == 2
