"""Distributed training (issue 8) on this CPU: 2 gloo processes under torchrun follow the
one-process loss curve with the same global batch (DDP and FSDP2), consume the same samples,
and a checkpoint written by 2 ranks (DCP, sharded) is resumed by 1 process on the same curve."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from regiongpt.data.synth import write_world
from regiongpt.training import distributed
from regiongpt.training.data import StepBatchSampler, TaskSchedule

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
STEPS = 4
TOLERANCE = 1e-4  # fp32


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    write_world(out, images=12, seed=0, width=64, height=64, val_fraction=0.2, progress=False)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(world: Path, run_dir: Path, nproc: int, accum: int, *extra: str) -> subprocess.CompletedProcess:
    """``regiongpt train configs/tiny.yaml`` on ``nproc`` processes (torchrun when > 1), per-rank batch 1."""
    overrides = [f"data.train=native:{world}/native/train.jsonl", f"data.val=native:{world}/native/val.jsonl",
                 f"train.output_dir={run_dir}", f"train.max_steps={STEPS}", "checkpoint.every_steps=2",
                 "checkpoint.keep_last=2", "eval.every_steps=0", "data.max_length=160", "data.batch_size=1",
                 f"optim.grad_accum={accum}", "data.tasks=[classify, brief, existence]",
                 "data.task_schedule=[{until_step: 2, tasks: [classify]}]", "train.progress=false", *extra]
    launcher = [sys.executable, "-m", "regiongpt.cli.main"]
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                    "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "regiongpt.cli.main"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*launcher, "train", str(TINY), *overrides], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


def consumed(run_dir: Path) -> list[tuple[int, list[str]]]:
    return [(r["step"], r["sequences"]) for r in map(json.loads, (run_dir / "samples.jsonl").read_text().splitlines())]


def assert_same_curve(run: Path, reference: Path) -> None:
    got, want = losses(run), losses(reference)
    assert got.keys() <= want.keys() and got
    for step, loss in got.items():
        assert abs(loss - want[step]) <= TOLERANCE, (step, loss, want[step])


def assert_close_weights(a: Path, b: Path, tolerance: float = 1e-4) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert (wa[key] - wb[key]).abs().max() <= tolerance, key


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory) -> Path:
    """One process, per-step batch 1 x 2 accumulation steps: the curve the others must follow."""
    run = tmp_path_factory.mktemp("reference")
    train(world, run, 1, 2)
    return run


# ----- the sample stream shard (no processes) ---------------------------------------------------------
def test_ranks_read_disjoint_shards_of_the_one_stream():
    def sampler(rank: int, world: int, accum: int, start: int = 0) -> StepBatchSampler:
        return StepBatchSampler(10, 2, accum, seed=3, shuffle=True, schedule=TaskSchedule(), start=start, stop=12,
                                rank=rank, world_size=world)

    one = list(sampler(0, 1, 4))
    shards = [list(sampler(r, 2, 4)) for r in range(2)]
    assert [len(s) for s in shards] == [6, 6] == [len(sampler(r, 2, 4)) for r in range(2)]
    assert distributed.interleave_micro(shards) == one  # the same global order
    # resuming mid-stream (a step boundary) with another world size reads the rest of the same stream
    assert distributed.interleave_micro([list(sampler(r, 4, 4, start=4)) for r in range(4)]) == one[4:]


def test_length_grouped_order_is_a_seeded_permutation_sorted_within_windows():
    lengths = np.random.default_rng(0).integers(1, 1000, size=300)
    make = lambda: StepBatchSampler(300, 2, 1, seed=1, shuffle=True, schedule=TaskSchedule(), start=0, stop=150,
                                    lengths=lengths)
    order = make().order(0)
    assert sorted(order.tolist()) == list(range(300)) and (order == make().order(0)).all()
    window = StepBatchSampler.LENGTH_WINDOW * 2
    assert all((np.diff(lengths[order[i:i + window]]) <= 0).all() for i in range(0, 300, window))
    assert not (order == make().order(1)).all()


def test_streamed_samples_are_the_loaded_ones_and_a_bad_line_is_skipped(world, tmp_path):
    from regiongpt.training.data import RegionConversationDataset, SkippedSample, load_samples, stream_samples

    path = world / "native" / "train.jsonl"
    loaded, streamed = load_samples([f"native:{path}"]), stream_samples([f"native:{path}"])
    assert len(streamed) == len(loaded) and pickle_roundtrip(streamed)[3] == loaded[3]
    assert [s.id for s in streamed] == [s.id for s in loaded]
    assert [s.conversations for s in streamed] == [s.conversations for s in loaded]
    broken = tmp_path / "broken.jsonl"
    lines = path.read_text().splitlines()
    broken.write_text("\n".join([lines[0], "{not json", lines[1]]) + "\n")
    samples = stream_samples([{"source": f"native:{broken}", "images": str(loaded[0].base_dir)}])
    dataset = RegionConversationDataset(samples, processor=None, max_length=160)  # line 2 fails before packing
    assert isinstance(dataset[1], SkippedSample) and len(samples) == 3 and samples[2].id == loaded[1].id
    with pytest.raises(Exception, match="streaming"):
        stream_samples([{"source": f"native:{path}", "weight": 2.0}])


def pickle_roundtrip(obj):
    import pickle

    return pickle.loads(pickle.dumps(obj))


def test_log_writers_are_silent_off_rank_zero():
    silent = distributed.Discard()
    assert silent.log.truncate(3) is None and silent.write(1, "train", {}) is None


# ----- 2 gloo processes ------------------------------------------------------------------------------
def test_ddp_on_streamed_data_follows_the_single_process_curve(world, reference, tmp_path):
    run = tmp_path / "ddp"
    done = train(world, run, 2, 1, "train.distributed=ddp", "data.streaming=true")
    assert_same_curve(run, reference)
    assert consumed(run) == consumed(reference)  # the same samples in the same steps
    assert json.loads(done.stdout.strip().splitlines()[-1])["step"] == STEPS
    assert_close_weights(run / "ckpt-000004", reference / "ckpt-000004")


def test_fsdp_follows_the_curve_and_one_process_resumes_its_sharded_checkpoint(world, reference, tmp_path):
    run = tmp_path / "fsdp"
    train(world, run, 2, 1, "train.distributed=fsdp")
    assert_same_curve(run, reference)
    assert consumed(run) == consumed(reference)
    checkpoint = run / "ckpt-000002"
    assert (checkpoint / distributed.DCP_FOLDER / ".metadata").is_file()  # sharded model + optimiser
    assert not list(run.glob("*.tmp"))
    assert not list(checkpoint.glob("_fsdp*.py"))  # saved as the model's own class, not FSDP's
    # rank 0's HF folder holds the full weights: loadable without any of this machinery
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(run / "ckpt-000004")
    assert type(model).__name__ == "RegionGPTForConditionalGeneration"
    assert_close_weights(run / "ckpt-000004", reference / "ckpt-000004")

    # 2 ranks wrote step 2; 1 process (same global batch: 2 accumulation steps) continues the curve
    resumed = tmp_path / "resumed"
    train(world, resumed, 1, 2, f"train.resume={checkpoint}")
    assert sorted(losses(resumed)) == [3, 4]
    assert_same_curve(resumed, reference)
    assert consumed(resumed) == consumed(reference)[2:]
    assert_close_weights(resumed / "ckpt-000004", reference / "ckpt-000004")


@pytest.mark.slow
def test_single_process_checkpoint_resumes_on_fsdp_ranks_with_bf16_and_checkpointing(world, reference, tmp_path):
    """The other direction (1 -> 2 ranks: an index-keyed optimiser state sharded by name), and
    the GPU settings (bf16 mixed precision, activation checkpointing) on the CPU."""
    resumed = tmp_path / "resumed"
    train(world, resumed, 2, 1, "train.distributed=fsdp", f"train.resume={reference / 'ckpt-000002'}")
    assert_same_curve(resumed, reference)
    mixed = tmp_path / "bf16"
    train(world, mixed, 2, 1, "train.distributed=fsdp", "train.dtype=bf16", "train.activation_checkpointing=true")
    got, want = losses(mixed), losses(reference)
    assert all(abs(got[s] - want[s]) < 0.05 for s in want)  # bf16: close, not exact


@pytest.mark.slow
def test_activation_checkpointing_and_length_grouping_on_ddp(world, reference, tmp_path):
    run = tmp_path / "ddp-ac"
    train(world, run, 2, 1, "train.distributed=ddp", "train.activation_checkpointing=true")
    assert_same_curve(run, reference)  # recomputation changes nothing in fp32
    grouped = tmp_path / "grouped"
    train(world, grouped, 2, 1, "train.distributed=ddp", "data.group_by_length=true")
    alone = tmp_path / "grouped-one"
    train(world, alone, 1, 2, "data.group_by_length=true")
    assert consumed(grouped) == consumed(alone)
    assert_same_curve(grouped, alone)


def test_activation_checkpointing_keeps_parameter_names(tokenizer):
    from conftest import make_model

    model = make_model("tiny-clip-llama", tokenizer)
    names = [n for n, _ in model.named_parameters()]
    keys = list(model.state_dict())
    distributed.apply_activation_checkpointing(model)
    assert list(model.state_dict()) == keys  # the wrapper's prefix is not saved
    assert [n.replace("_checkpoint_wrapped_module.", "") for n, _ in model.named_parameters()] == names


@pytest.mark.slow
def test_a_rank_with_an_empty_micro_batch_keeps_step_with_the_others(world, tmp_path):
    """A micro-batch whose only sample is skipped (missing image) is empty on one rank; that rank
    computes a weight-0 stand-in so the collectives stay matched, and the curve is unchanged."""
    lines = (world / "native" / "train.jsonl").read_text().splitlines()
    order = StepBatchSampler(len(lines), 1, 2, seed=0, shuffle=True, schedule=TaskSchedule(), start=0, stop=8).order(0)
    broken = json.loads(lines[int(order[3])])  # stream position 3: rank 1's micro-batch of step 2
    broken["image"] = "missing.png"
    lines[int(order[3])] = json.dumps(broken)
    data = world / "native" / "broken.jsonl"  # beside train.jsonl: the same image folder
    data.write_text("\n".join(lines) + "\n")
    alone, ranks = tmp_path / "alone", tmp_path / "ranks"
    train(world, alone, 1, 2, f"data.train=native:{data}")
    train(world, ranks, 2, 1, f"data.train=native:{data}", "train.distributed=fsdp")
    assert_same_curve(ranks, alone)
    records = [json.loads(line) for line in (ranks / "samples.jsonl").read_text().splitlines()]
    assert records[1]["skipped"] == [broken["id"]] and consumed(ranks) == consumed(alone)
