"""Scoring only the answer positions (compact_targets) equals scoring the full logits."""

from __future__ import annotations

import torch

from regiongpt.training.metrics import AnswerAccuracy, answer_loss_sum, compact_logits, compact_targets


def test_compact_scoring_equals_full_scoring():
    torch.manual_seed(0)
    labels = torch.full((3, 12), -100)
    answer_index = torch.full((3, 12), -1)
    runs = [(0, 3, 6), (0, 8, 11), (1, 2, 4), (2, 5, 12)]  # (row, start, end): one answer each
    for a, (row, start, end) in enumerate(runs):
        labels[row, start:end] = torch.randint(0, 7, (end - start,))
        answer_index[row, start:end] = a
    logits = torch.randn(3, 12, 7, requires_grad=True)
    tasks = ["brief", "rec", "rec", "brief"]
    logits.detach()[labels.roll(-1, 1) >= 0] *= 0  # a few tokens predicted right, others not
    keep, compact_labels, compact_answers = compact_targets(labels, answer_index)
    assert int(keep.sum()) == compact_labels.shape[1] - 1 == int((labels >= 0).sum())
    weights = torch.tensor([1.0, 2.0, 0.5, 1.0])
    for average in (False, True):
        full = answer_loss_sum(logits, labels, answer_index, average, weights)
        (grad_full,) = torch.autograd.grad(full, logits)
        compact = answer_loss_sum(compact_logits(logits[keep]), compact_labels, compact_answers, average, weights)
        (grad_compact,) = torch.autograd.grad(compact, logits)
        torch.testing.assert_close(compact, full)
        torch.testing.assert_close(grad_compact, grad_full)
    want, got = AnswerAccuracy(), AnswerAccuracy()
    want.update(logits.detach(), labels, answer_index, tasks)
    got.update(compact_logits(logits.detach()[keep]), compact_labels, compact_answers, tasks)
    assert got.compute() == want.compute() and want.compute()["all/answers"] == 4
