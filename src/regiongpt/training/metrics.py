"""What a run measures and where it writes it.

- :func:`shifted_targets` / :class:`AnswerAccuracy`: teacher-forced answer accuracy per task
  (fraction of answer tokens predicted right, and exact match of whole answers). The loss
  alone is misleading on region data: it is dominated by the predictable words of the
  answers, so a model stuck at the language prior can show a healthy loss (NOTES.md).
- :class:`StepLog`: JSON-lines files in the run folder (``metrics.jsonl``, ``samples.jsonl``),
  one ``write`` per line so a killed run leaves at most one partial last line, and
  truncation to a checkpoint's step on resume. TensorBoard events too when it is installed.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

IGNORE_INDEX = -100


def shifted_targets(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token (logits (N, L-1, V), targets (N, L-1)): position t predicts token t+1."""
    return logits[:, :-1], labels[:, 1:]


def compact_targets(labels: torch.Tensor, answer_index: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Only the positions that predict a learned token, as one short sequence.

    Returns ``keep`` (N, L) boolean, the positions whose logits are needed (the model's
    ``logits_to_keep``), and (1, K + 1) ``labels`` and ``answer_index`` laid out so that
    :func:`answer_loss_sum` and :class:`AnswerAccuracy` score the (K, V) logits of those positions,
    padded by :func:`compact_logits`, exactly as they score the full (N, L, V) logits.
    """
    learned = labels[:, 1:] != IGNORE_INDEX  # (N, L - 1): position t predicts token t + 1
    keep = torch.nn.functional.pad(learned, (0, 1))
    start = labels.new_full((1,), IGNORE_INDEX)
    compact_labels = torch.cat([start, labels[:, 1:][learned]])[None]
    compact_answers = torch.cat([answer_index.new_full((1,), -1), answer_index[:, 1:][learned]])[None]
    return keep, compact_labels, compact_answers


def compact_logits(logits: torch.Tensor) -> torch.Tensor:
    """(K, V) logits of :func:`compact_targets`' positions -> (1, K + 1, V) (a last, unscored position)."""
    return torch.cat([logits, logits.new_zeros(1, logits.shape[-1])])[None]


def answer_loss_sum(logits: torch.Tensor, labels: torch.Tensor, answer_index: torch.Tensor | None = None,
                    average_answers: bool = False, answer_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Summed next-token cross-entropy over learned tokens (fp32); divide by the token count.

    ``answer_index`` (N, L): the answer each position belongs to (-1 elsewhere). With
    ``average_answers`` each answer's tokens are averaged first, so the sum is over answers
    (divide by the answer count); ``answer_weights`` (A,) scale each answer's tokens.
    """
    pred, target = shifted_targets(logits, labels)
    losses = torch.nn.functional.cross_entropy(
        pred.reshape(-1, pred.shape[-1]).float(), target.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    )
    if not average_answers and answer_weights is None:
        return losses.sum()
    if answer_index is None:
        raise ValueError("answer averaging and answer weights need answer_index")
    answer = answer_index[:, 1:].reshape(-1)
    learned = (target.reshape(-1) != IGNORE_INDEX) & (answer >= 0)
    ids = answer[learned]
    kept = losses[learned]
    if average_answers:
        kept = kept / torch.bincount(ids).clamp(min=1)[ids].to(kept.dtype)
    if answer_weights is not None:
        kept = kept * answer_weights.to(kept.device, kept.dtype)[ids]
    return kept.sum()


class AnswerAccuracy:
    """Teacher-forced accuracy of answers, per task and overall.

    For every answer: the tokens it is scored on (its learned tokens: the answer text and the
    closing ``</s>``; region placeholders inside an answer are input-only and not scored),
    how many of them the model's argmax predicts right, and whether all of them are right.
    """

    def __init__(self) -> None:
        self.tokens: dict[str, int] = defaultdict(int)
        self.correct: dict[str, int] = defaultdict(int)
        self.answers: dict[str, int] = defaultdict(int)
        self.exact: dict[str, int] = defaultdict(int)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor, answer_index: torch.Tensor, answer_tasks: list[str]) -> None:
        pred, target = shifted_targets(logits, labels)
        answer = answer_index[:, 1:]
        scored = target != IGNORE_INDEX
        right = (pred.argmax(-1) == target) & scored
        n_answers = len(answer_tasks)
        if not n_answers:
            return
        ids = answer[scored]
        n_tok = torch.bincount(ids, minlength=n_answers)
        n_right = torch.bincount(answer[right], minlength=n_answers)
        for a, task in enumerate(answer_tasks):
            tokens, correct = int(n_tok[a]), int(n_right[a])
            if tokens == 0:  # an answer that is only placeholders has nothing to score
                continue
            for key in (task, "all"):
                self.tokens[key] += tokens
                self.correct[key] += correct
                self.answers[key] += 1
                self.exact[key] += int(correct == tokens)

    def compute(self, prefix: str = "") -> dict[str, float]:
        """``{prefix}{task}/token_acc``, ``{prefix}{task}/exact_match`` and ``{prefix}{task}/answers``."""
        out: dict[str, float] = {}
        for task in sorted(self.answers, key=lambda t: (t == "all", t)):
            out[f"{prefix}{task}/token_acc"] = self.correct[task] / self.tokens[task]
            out[f"{prefix}{task}/exact_match"] = self.exact[task] / self.answers[task]
            out[f"{prefix}{task}/answers"] = self.answers[task]
        return out


class StepLog:
    """An append-only JSON-lines file of per-step records (each with a ``step`` key)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, record: dict[str, Any]) -> None:
        """Append one line with a single ``write`` (a kill leaves at most a partial last line)."""
        data = (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def records(self) -> list[dict[str, Any]]:
        """Every complete record (a partial last line is ignored)."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                out.append(record)
        return out

    def truncate(self, step: int) -> None:
        """Keep only the records of steps ``<= step`` (resuming from that step's checkpoint)."""
        if not self.path.exists():
            return
        kept = [r for r in self.records() if int(r.get("step", 0)) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in kept), encoding="utf-8")
        os.replace(tmp, self.path)


class MetricsWriter:
    """``metrics.jsonl`` in the run folder, plus TensorBoard events when ``tensorboard`` is installed."""

    def __init__(self, run_dir: Path, tensorboard: bool = True):
        self.log = StepLog(Path(run_dir) / "metrics.jsonl")
        self.tensorboard = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                SummaryWriter = None
            if SummaryWriter is not None:
                self.tensorboard = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        self.log.append({"step": step, "split": split, **values})
        if self.tensorboard is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(f"{split}/{key}", value, step)

    def flush(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.flush()


__all__ = ["AnswerAccuracy", "MetricsWriter", "StepLog", "answer_loss_sum", "compact_logits", "compact_targets",
           "shifted_targets"]
