"""The REC turns of native samples, encoded with their right answer (teacher-forced), for the
attention probes (rec_pointer_probe.py, phrase_attention_probe.py, rec_colour_probe.py).

Each REC turn is its own sequence: the question alone after the image, as the evaluation asks
it, followed by the world's answer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class RecTurn:
    """One teacher-forced REC turn of ``samples[item]``."""

    item: int
    sample: Any  # NativeSample
    question: str  # without the image placeholder
    prompt: str  # the chat prompt up to the answer
    text: str  # prompt + answer
    regions: list[dict[str, Any]]
    inputs: dict[str, torch.Tensor]  # the processor's output, without labels
    answer_index: torch.Tensor  # (1, L): 0 on the answer's tokens, -1 elsewhere
    answer_tasks: list[str]


def encode_turn(api, sample, regions: list[dict[str, Any]], prompt: str, text: str
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor, list[str]]:
    """(inputs without labels, answer index, answer tasks) of ``text`` whose answer follows ``prompt``."""
    from regiongpt.training.data import answer_runs

    inputs = api.processor(images=str(sample.image_path()), text=text, regions=regions,
                           target_spans=[(len(prompt), len(text))])
    answer_index, tasks = answer_runs(inputs.pop("labels"), [["rec"]])
    return inputs, answer_index, tasks


def rec_turns(api, samples: Sequence[Any]) -> Iterator[RecTurn]:
    """Every REC turn of ``samples``, in order."""
    for item, sample in enumerate(samples):
        regions = [{"segmentation": r.mask} if r.mask else {"box": r.box} for r in sample.regions]
        turns = sample.conversations
        for human, answer in zip(turns[0::2], turns[1::2]):
            if human.get("task") != "rec":
                continue
            question = human["value"].replace("<image>\n", "")
            prompt = api._prompt([{"role": "user", "content": f"<image>\n{question}"}])
            text = prompt + answer["value"]
            inputs, answer_index, tasks = encode_turn(api, sample, regions, prompt, text)
            yield RecTurn(item, sample, question, prompt, text, regions, inputs, answer_index, tasks)
