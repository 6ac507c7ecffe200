"""Training config: YAML + key=value overrides, typed checks, helpful errors, generated docs."""

from __future__ import annotations

from pathlib import Path

import pytest

from regiongpt.cli.main import main
from regiongpt.errors import InvalidInputError
from regiongpt.training.config import LoraSettings, TaskPhase, config_reference_markdown, load_config

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


def test_tiny_config_loads_with_paths_relative_to_the_file():
    config = load_config(TINY)
    assert config.model.preset == "tiny-clip-llama"
    assert config.data.train == [f"native:{REPO / 'demo_world' / 'native' / 'train.jsonl'}"]
    assert config.train.output_dir == str(REPO / "runs" / "tiny")
    assert config.data.task_schedule == [TaskPhase(until_step=4, tasks=["classify"])]
    assert config.train.trainable == ["feature_refiner", "connector", "language_model"]


def test_overrides_are_typed_dotted_yaml_values(tmp_path):
    config = load_config(TINY, [
        "optim.lr=2e-5",  # YAML 1.1 reads this as a string; the float field converts it
        "train.max_steps=3",
        "train.trainable=[feature_refiner, connector]",
        "model.text_overrides.hidden_size=64",
        "train.lora.r=4",  # lora was null: starts from the defaults
        "data.tasks=[classify]",
        f"data.val={tmp_path}/val.jsonl",  # a single source becomes a list; override paths stay as given
        "eval.max_samples=null",
    ])
    assert config.optim.lr == pytest.approx(2e-5)
    assert config.train.max_steps == 3
    assert config.train.trainable == ["feature_refiner", "connector"]
    assert config.model.text_overrides == {"hidden_size": 64}
    assert config.train.lora == LoraSettings(r=4)
    assert config.data.tasks == ["classify"]
    assert config.data.val == [f"{tmp_path}/val.jsonl"]
    assert config.eval.max_samples is None


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.max_step=3", "unknown config key 'train.max_step'; did you mean 'train.max_steps'?"),
        ("optim.learning_rate=1", "valid keys here: lr, weight_decay"),
        ("trian.seed=1", "did you mean 'train'?"),
        ("optim.lr=fast", "'optim.lr' must be float"),
        ("train.max_steps=2.5", "'train.max_steps' must be int"),
        ("train.dtype=fp16", "'train.dtype' must be 'fp32' or 'bf16'"),
        ("train.trainable=[conector]", "unknown group 'conector'; did you mean 'connector'?"),
        ("train.lora.alhpa=4", "did you mean 'train.lora.alpha'?"),
        ("optim.lr.x=1", "has no sub-key 'x'"),
        ("train.max_steps", "must look like key=value"),
        ("train.lora.r=4", "remove 'language_model' from 'train.trainable'"),
        ("train.epochs=2", "set exactly one of 'train.max_steps' and 'train.epochs'"),
        ("train.region_pretrain_workers=-1", "'train.region_pretrain_workers' must be >= 0"),
        ("train.rec_pointer_attribute_weight=0", "'train.rec_pointer_attribute_weight' must be > 0"),
        ("train.rec_pointer_attribute_weight=2", "set 'train.rec_pointer_attribute_head' too"),
        ("train.segmentation_peak_targets=true", "'train.segmentation_peak_targets' changes the per-cell"),
        ("train.segmentation_object_cells=4", "'train.segmentation_object_cells' weighs the per-cell"),
        ("train.segmentation_object_cells=-1", "'train.segmentation_object_cells' must be >= 0"),
    ],
)
def test_bad_overrides_name_the_key(override, expected):
    with pytest.raises(InvalidInputError) as error:
        load_config(TINY, [override])
    assert expected in str(error.value)


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  max_steps: 2\n  seeed: 3\ndata:\n  train: native:x.jsonl\n")
    with pytest.raises(InvalidInputError, match=r"'train.seeed'; did you mean 'train.seed'\?"):
        load_config(path)


def test_cli_reports_config_errors_as_one_line(capsys):
    assert main(["train", str(TINY), "optim.betas=[0.9]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("regiongpt train: error:") and "optim.betas" in err and "\n" not in err


def test_cli_print_config(capsys):
    assert main(["train", "--print-config", str(TINY), "train.seed=7"]) == 0
    assert "seed: 7" in capsys.readouterr().out


def test_readme_documents_every_key_and_is_generated_from_the_dataclasses():
    readme = (REPO / "configs" / "README.md").read_text()
    assert readme == config_reference_markdown(), (
        "configs/README.md is out of date: regenerate it with "
        "python -c 'from regiongpt.training.config import config_reference_markdown as m; print(m(), end=\"\")' "
        "> configs/README.md")
    for key in ("`train.trainable`", "`train.lora`", "`data.task_schedule`", "`optim.grad_accum`",
                "`checkpoint.keep_last`", "`eval.every_steps`", "`train.resume`", "`data.strict`"):
        assert key in readme
