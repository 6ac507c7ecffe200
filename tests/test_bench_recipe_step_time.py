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
        assert result["seconds_per_step"] > 0 and result["padded_tokens_per_step"] > 0
