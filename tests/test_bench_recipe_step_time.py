"""bench/recipe_step_time.py: seconds per recipe step with turn attention or the dense-mask SDPA."""

from __future__ import annotations

import json

from conftest import load_bench_script

from regiongpt.data.synth.writers import write_world


def test_times_steps_with_either_attention(tmp_path, capsys):
    world = tmp_path / "world"
    write_world(world, images=6, seed=3, width=64, height=64, val_fraction=0.5, progress=False)
    bench = load_bench_script("recipe_step_time")
    for attention in ("turns", "sdpa"):
        assert bench.main([str(world), "--attention", attention, "--steps", "1", "data.batch_size=2",
                           "data.num_workers=0"]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["attention"] == attention and result["steps"] == 1
        assert result["padding_free"] == (attention == "turns")  # only turn attention keeps the rows apart
        assert result["seconds_per_step"] > 0 and 0 < result["real_tokens_per_step"] <= result["padded_tokens_per_step"]
    assert bench.main([str(world), "--fill-cache", "0.1", "--steps", "1", "data.batch_size=2",
                       "data.num_workers=0", "train.padding_free=false"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    cache, result = json.loads(lines[-2]), json.loads(lines[-1])
    assert cache["cache_filled_mib"] > 0 and cache["resident_after_clear"].endswith("kB")
    assert result["padding_free"] is False and result["steps"] == 1


def test_times_the_region_pretraining_step(tmp_path, capsys):
    world = tmp_path / "world"
    write_world(world, images=6, seed=3, width=64, height=64, val_fraction=0.5, progress=False)
    bench = load_bench_script("recipe_step_time")
    assert bench.main([str(world), "--pretrain", "--steps", "2", "--profile", "train.region_pretrain_batch_size=2",
                       "data.num_workers=0"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(next(line for line in lines if line.startswith("{")))
    assert result == {"phase": "region_pretrain", "steps": 2, "seconds_per_step": result["seconds_per_step"]}
    assert result["seconds_per_step"] > 0
    assert any("convolution" in line for line in lines)  # the profiler's table of the tower's work
