"""Training data: packing whole turn pairs, label masking, task selection, order, bad images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from regiongpt.data.native import read_native_jsonl
from regiongpt.data.synth import write_world
from regiongpt.errors import InvalidInputError
from regiongpt.processing.image_processors import square_image_processor
from regiongpt.processing.processing_regiongpt import RegionGPTProcessor
from regiongpt.processing.tokenizer import train_tokenizer
from regiongpt.training.builders import tokenizer_corpus
from regiongpt.training.data import (
    PackedImage,
    QAPair,
    PackedSequence,
    RegionCollator,
    RegionConversationDataset,
    SampleKey,
    SkippedSample,
    StepBatchSampler,
    TaskSchedule,
    conversation_pairs,
    pack_pairs,
    parse_source,
)
from regiongpt.training.metrics import AnswerAccuracy

IMAGE_TOKENS = 16


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    write_world(out, images=8, seed=1, width=64, height=64, val_fraction=0.25, progress=False)
    return out


@pytest.fixture(scope="module")
def samples(world):
    return list(read_native_jsonl(world / "native" / "train.jsonl"))


@pytest.fixture(scope="module")
def processor(samples):
    tokenizer = train_tokenizer(tokenizer_corpus(samples, 100), vocab_size=640)
    return RegionGPTProcessor(square_image_processor(32), tokenizer, image_seq_length=IMAGE_TOKENS)


def _decode(processor, ids) -> str:
    return processor.tokenizer.decode(ids, skip_special_tokens=False)


def test_packed_multi_turn_sequences_are_masked_right(samples, processor):
    max_length = 200
    dataset = RegionConversationDataset(samples, processor, max_length, seed=0, shuffle_turns=True)
    key = SampleKey(0, epoch=3)
    item = dataset[key]
    pairs = dataset.pairs_for(key)
    assert isinstance(item, PackedImage) and len(item.sequences) > 1, "the conversation should need several sequences"
    assert sum(len(s.tasks) for s in item.sequences) == len(pairs)  # whole pairs, none lost
    batch = RegionCollator(processor)([item])
    ids, labels, mask = batch.inputs["input_ids"], batch.inputs["labels"], batch.inputs["attention_mask"]
    assert ids.shape[0] == len(item.sequences) == batch.inputs["pixel_values"].shape[0]
    assert int(mask.sum(1).max()) <= max_length
    assert (labels[mask == 0] == -100).all()  # padding (right side)
    assert (mask[:, 0] == 1).all() and (mask.diff(dim=1) <= 0).all()
    for placeholder in (processor.image_token_id, processor.region_token_id):
        assert not (labels == placeholder).any()
    assert ((ids == processor.image_token_id).sum(1) == IMAGE_TOKENS).all()  # the image in every sequence
    # every learned token belongs to an answer; each answer decodes to its text + </s>
    assert ((labels != -100) <= (batch.answer_index >= 0)).all()
    answers = [p.answer for p in pairs]
    assert len(batch.answer_tasks) == len(answers) and batch.answer_tasks == [p.task for p in pairs]
    for a, answer in enumerate(answers):
        where = batch.answer_index == a
        assert _decode(processor, labels[where].tolist()).strip() == answer + "</s>"
    # prompts are not learned: the system prompt and questions have no labels
    first = ids[0][labels[0] == -100][mask[0][labels[0] == -100] == 1]
    assert "USER:" in _decode(processor, first.tolist())
    # regions: one per <regionK> reference, pointing at the right image's regions
    refs = sum(s.text.count("<region") for s in item.sequences)
    assert batch.inputs["region_token_index"].numel() == refs
    assert batch.inputs["region_masks"].shape[0] == len(item.sequences) * len(item.regions)


def test_placeholder_inside_an_answer_is_input_only(samples, processor):
    """An answer that mentions a region keeps one answer run, but the placeholder is not a target."""
    text = processor.format_conversation([
        {"from": "human", "value": "<image>\nWhich is left?"}, {"from": "gpt", "value": "<region1> is left"},
        {"from": "human", "value": "Is there a star?"}, {"from": "gpt", "value": "Yes."}])
    item = PackedImage("x", Image.new("RGB", (64, 64)), [{"box": [0, 0, 20, 20]}],
                       [PackedSequence("x#0", text.text, text.target_spans, ("relation", "existence"))])
    batch = RegionCollator(processor)([item])
    labels, index = batch.inputs["labels"][0], batch.answer_index[0]
    region_pos = (batch.inputs["input_ids"][0] == processor.region_token_id).nonzero().flatten()
    assert len(region_pos) == 1 and labels[region_pos[0]] == -100 and index[region_pos[0]] == 0
    assert _decode(processor, labels[index == 0][labels[index == 0] != -100].tolist()).strip() == "is left</s>"
    assert batch.answer_tasks == ["relation", "existence"]


def test_task_filter_shuffle_and_schedule(samples, processor):
    dataset = RegionConversationDataset(samples, processor, 2048, seed=0, shuffle_turns=True)
    only = dataset.pairs_for(SampleKey(1, 0, ("classify",)))
    assert only and {p.task for p in only} == {"classify"}
    all_pairs = conversation_pairs(samples[1])
    epoch0, epoch1 = dataset.pairs_for(SampleKey(1, 0)), dataset.pairs_for(SampleKey(1, 1))
    assert sorted(map(repr, epoch0)) == sorted(map(repr, all_pairs)) and epoch0 != epoch1
    assert epoch0 == dataset.pairs_for(SampleKey(1, 0))  # deterministic
    assert "<image>" not in "".join(p.question for p in all_pairs)
    schedule = TaskSchedule(((10, ("classify",)), (20, ("classify", "brief"))), None)
    assert schedule.tasks_at(0) == ("classify",) and schedule.tasks_at(10) == ("classify", "brief")
    assert schedule.tasks_at(20) is None


def test_processor_without_task_suffix_trains_on_bare_questions(samples, processor, tmp_path):
    from regiongpt.processing.instructions import SUFFIXES

    with_suffix = RegionConversationDataset(samples, processor, 2048).pairs_for(SampleKey(1, 0))
    assert any(p.question.endswith(SUFFIXES["brief"]) for p in with_suffix if p.task == "brief")
    processor.save_pretrained(tmp_path)
    bare_processor = RegionGPTProcessor.from_pretrained(tmp_path)
    bare_processor.task_suffix = False
    bare_processor.save_pretrained(tmp_path)
    bare_processor = RegionGPTProcessor.from_pretrained(tmp_path)  # the choice travels with the checkpoint
    assert bare_processor.task_suffix is False
    bare = RegionConversationDataset(samples, bare_processor, 2048).pairs_for(SampleKey(1, 0))
    assert [p.answer for p in bare] == [p.answer for p in with_suffix]
    for full, stripped in zip(with_suffix, bare):
        suffix = SUFFIXES[full.task].split("{")[0]
        assert (suffix in full.question) and (not suffix or suffix not in stripped.question)
        assert full.question.startswith(stripped.question)


def test_sample_order_is_a_function_of_seed_and_position():
    schedule = TaskSchedule(((2, ("classify",)),))
    full = list(StepBatchSampler(5, 2, 2, seed=3, shuffle=True, schedule=schedule, start=0, stop=10))
    resumed = list(StepBatchSampler(5, 2, 2, seed=3, shuffle=True, schedule=schedule, start=4, stop=10))
    assert full[4:] == resumed
    flat = [k for batch in full for k in batch]
    for epoch in range(4):  # every epoch is a permutation of all samples
        assert sorted(k.index for k in flat if k.epoch == epoch) == list(range(5))
    assert [k.tasks for k in full[3]] == [("classify",)] * 2 and full[4][0].tasks is None  # step = micro // accum
    other = list(StepBatchSampler(5, 2, 2, seed=4, shuffle=True, schedule=schedule, start=0, stop=10))
    assert other != full


def test_missing_or_corrupt_images_are_skipped_or_fatal(samples, processor, tmp_path):
    broken = [samples[0], samples[1]]
    broken[0] = type(samples[0])(**{**samples[0].__dict__, "image": str(tmp_path / "missing.png")})
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    broken[1] = type(samples[1])(**{**samples[1].__dict__, "image": str(tmp_path / "corrupt.png")})
    dataset = RegionConversationDataset(broken, processor, 2048)
    items = [dataset[SampleKey(0)], dataset[SampleKey(1)]]
    assert all(isinstance(i, SkippedSample) for i in items)
    batch = RegionCollator(processor)(items)
    assert batch.empty and [s.sample_id for s in batch.skipped] == [samples[0].id, samples[1].id]
    strict = RegionConversationDataset(broken, processor, 2048, strict=True)
    with pytest.raises(InvalidInputError, match="data.strict"):
        strict[SampleKey(1)]


def test_source_specs(world):
    assert parse_source(f"native:{world}/native/train.jsonl")[0] == "native"
    assert parse_source(f"{world}/native/train.jsonl")[0] == "native"
    with pytest.raises(InvalidInputError, match="did you mean 'native'"):
        parse_source(f"natve:{world}/native/train.jsonl")


def test_answer_accuracy_per_task():
    # two sequences; answers: [classify: tokens at 2,3], [brief: 5,6], [classify: 2]
    labels = torch.full((2, 8), -100)
    labels[0, 2:4] = torch.tensor([5, 6])
    labels[0, 5:7] = torch.tensor([7, 8])
    labels[1, 2] = 9
    index = torch.full((2, 8), -1)
    index[0, 2:4], index[0, 5:7], index[1, 2] = 0, 1, 2
    logits = torch.zeros(2, 8, 12)
    # position t predicts label t+1: all right except the brief answer's second token
    for row, pos, token in [(0, 1, 5), (0, 2, 6), (0, 4, 7), (0, 5, 3), (1, 1, 9)]:
        logits[row, pos, token] = 1.0
    accuracy = AnswerAccuracy()
    accuracy.update(logits, labels, index, ["classify", "brief", "classify"])
    result = accuracy.compute("val/")
    assert result["val/classify/token_acc"] == 1.0 and result["val/classify/exact_match"] == 1.0
    assert result["val/brief/token_acc"] == 0.5 and result["val/brief/exact_match"] == 0.0
    assert result["val/all/token_acc"] == 4 / 5 and result["val/all/exact_match"] == 2 / 3
    assert result["val/classify/answers"] == 2


def test_independent_turns_pack_split_and_collate(samples, processor):
    """With data.independent_tasks, long conversations still split into sequences of at most
    max_length tokens, each laying out its ordinary turns first, with the turn mask."""
    independent = ("rec", "existence")
    dataset = RegionConversationDataset(samples, processor, 200, seed=0, shuffle_turns=True,
                                        independent_tasks=independent)
    key = SampleKey(0, epoch=3)
    item = dataset[key]
    pairs = dataset.pairs_for(key)
    assert isinstance(item, PackedImage) and len(item.sequences) > 1
    assert {p.task for p in pairs} & set(independent), "the sample should have independent turns"
    kinds = [p.task in independent for p in pairs]
    assert kinds == sorted(kinds), "ordinary turns come first"
    for seq in item.sequences:
        flags = [t in independent for t in seq.tasks]
        assert flags == sorted(flags)
    batch = RegionCollator(processor, independent)([item])
    mask = batch.inputs["attention_mask"]
    assert mask.dim() == 4 and mask.shape[0] == len(item.sequences)
    assert batch.answer_tasks == [t for s in item.sequences for t in s.tasks]
    assert int(batch.inputs["input_ids"].ne(processor.tokenizer.pad_token_id).sum(1).max()) <= 200
    checked = 0
    for a, task in enumerate(batch.answer_tasks):
        row, cols = (batch.answer_index == a).nonzero(as_tuple=True)
        row, first = int(row[0]), int(cols[0])
        earlier = (batch.answer_index[row] >= 0) & (batch.answer_index[row] < a)
        seen = mask[row, 0, first][earlier]
        # an independent answer sees no earlier answer; an ordinary one sees the ordinary ones before it
        assert not seen.any() if task in independent else seen.all()
        checked += task in independent
    assert checked


def test_packing_measures_once_when_everything_fits_and_splits_greedily_otherwise():
    pairs = [QAPair(f"q{i}", "a" * n, "brief", None) for i, n in enumerate([3, 4, 2, 5])]
    calls = []

    def length(group):  # one token per answer character, two per pair for the question
        calls.append(len(group))
        return sum(len(p.answer) + 2 for p in group)

    assert pack_pairs(pairs, length, 22) == ([pairs], 0)
    assert calls == [4]  # the whole conversation, measured once
    groups, dropped = pack_pairs(pairs, length, 11)
    assert [[p.question for p in g] for g in groups] == [["q0", "q1"], ["q2", "q3"]] and dropped == 0
    groups, dropped = pack_pairs(pairs, length, 6)  # q3 alone is 7 tokens
    assert [[p.question for p in g] for g in groups] == [["q0"], ["q1"], ["q2"]] and dropped == 1
