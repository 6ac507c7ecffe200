"""Description attention supervision (train.describe_pointer_weight): which rows it supervises, and that it
trains through the recipe."""

from __future__ import annotations

import torch

from regiongpt.training.describe_pointer import describe_pointers

R = 99  # region placeholder id


def test_describe_pointers_supervise_each_answer_token_of_one_region_questions():
    # "<image> what is <r1>? -> 40 41 </s> | relation <r0> <r1>? -> 50 </s> | brief <r0>? -> 60 61 62 </s> | rec"
    ids = [1, 2, R, 3, 40, 41, 9, 4, R, R, 5, 50, 9, 6, R, 7, 60, 61, 62, 9, 8, R, 70, 9]
    ans = [-1, -1, -1, -1, 0, 0, 0, -1, -1, -1, -1, 1, 1, -1, -1, -1, 2, 2, 2, 2, -1, -1, 3, 3]
    tasks = ["classify", "relation", "brief", "rec"]
    region_token_index = torch.tensor([1, 0, 1, 0, 2])  # the placeholders' regions, in order
    pointers = describe_pointers(torch.tensor([ids]), torch.tensor([ans]), tasks, R, region_token_index)
    # classify: positions 3 and 4 write 40 and 41 (not the end token); brief: 15, 16, 17 write 60, 61, 62
    assert [(p.query, p.token) for p in pointers] == [(3, 40), (4, 41), (15, 60), (16, 61), (17, 62)]
    first = pointers[0]
    assert first.targets == (2,) and first.choices == ((2,),) and first.answer == 0
    brief = pointers[2]
    # region 0's placeholders so far (the relation's and the brief question's), grouped apart from region 1's
    assert brief.targets == (8, 14) and brief.choices == ((2, 9), (8, 14)) and brief.answer == 1
    assert describe_pointers(torch.tensor([ids]), torch.tensor([ans]), tasks, R, None) == []
    only_rec = describe_pointers(torch.tensor([ids]), torch.tensor([ans]), tasks, R, region_token_index, tasks=["rec"])
    assert [(p.query, p.token, p.targets) for p in only_rec] == [(21, 70, (21,))]  # the tasks it supervises are chosen
