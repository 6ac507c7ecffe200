"""bench/train_throughput.py runs on the CPU (tiny model) and its FLOP count matches the
7B shape it is meant for (built on the meta device: no memory, no time)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import load_bench_script


@pytest.fixture(scope="module")
def bench():
    return load_bench_script("train_throughput")


TINY = ["--preset", "tiny-clip-llama", "--device", "cpu", "--weights", "fp32", "--batch-size", "2",
        "--seq-len", "96", "--regions", "3", "--steps", "2", "--warmup", "1"]


def test_cpu_run_reports_throughput_and_mfu_against_a_given_peak(bench, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = bench.main([*TINY, "--peak-tflops", "0.05", "--json", str(tmp_path / "r.json")])
        plain = bench.main([*TINY, "--step", "fwd-bwd", "--no-activation-checkpointing"])
    finally:
        torch.set_num_threads(threads)
    assert json.loads((tmp_path / "r.json").read_text()) == result
    assert result["tokens_per_s"] == pytest.approx(result["samples_per_s"] * 96)
    assert result["step_s"] > 0 and result["loss"] == result["loss"]  # finite, not NaN
    flops = bench.Shape(**result["shape"]).flops_per_sample() * 2  # batch of 2
    assert result["model_tflops_per_s"] == pytest.approx(flops / result["step_s"] / 1e12)
    assert result["mfu"] == pytest.approx(result["model_tflops_per_s"] / 0.05)
    assert plain["mfu"] is None and plain["peak_tflops"] is None  # a CPU has no default peak


def test_flops_of_the_7b_shape(bench):
    args = bench.parse_args(["--device", "meta"])
    model = bench.build_model(args, torch.device("meta"), torch.bfloat16)
    shape = bench.model_shape(model, 2048)
    assert shape.layers == 32 and shape.width == 4096 and shape.image_tokens == 576 and shape.vision_tokens == 577
    assert 6.5e9 < shape.llm_params < 6.8e9  # 32 decoder layers (202M each) + the 131M LM head
    assert 2.9e8 < shape.vision_params < 3.1e8  # CLIP ViT-L/14-336
    # ~8.8e13 FLOPs per 2k-token sample: 40% of 989 TFLOP/s is ~4.5 samples (~9.2k tokens) per second
    assert 8.5e13 < shape.flops_per_sample() < 9.1e13
