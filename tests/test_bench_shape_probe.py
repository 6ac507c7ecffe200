"""bench/shape_probe.py: the vision path alone on a dense or image-level target, and frozen-feature probes."""

from __future__ import annotations

import re

import pytest
import torch

from conftest import load_bench_script

from regiongpt.data.synth.writers import write_world


def _rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| step") and not line.startswith("| frozen")]


def test_train_and_probe_report_accuracies(model_dir, tmp_path, capsys):
    world = tmp_path / "world"
    write_world(world, images=6, seed=3, width=64, height=64, val_fraction=0.5, progress=False)
    probe = load_bench_script("shape_probe")
    for target in ("segmentation", "presence"):
        assert probe.main(["train", "--world", str(world), "--target", target, "--steps", "2", "--batch", "2",
                           "--every", "1"]) == 0
        rows = _rows(capsys.readouterr().out)
        assert [r[0] for r in rows] == ["1", "2"]
        for row in rows:
            yes_no = float(row[3])
            assert 0.0 <= yes_no <= 1.0
            assert (row[2] == "nan") == (target == "presence")  # region accuracy needs the segmentation head
    assert probe.main(["probe", str(model_dir), "--world", str(world), "--train-images", "3"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert len(rows) == 2 and all(re.fullmatch(r"0\.\d{3}|1\.000", r[1]) for r in rows)


def test_pretrain_and_probe_report_the_models_image_label_head(tokenizer, tmp_path, capsys):
    from conftest import make_model, make_processor

    from regiongpt.data.synth.world import CATEGORIES

    world = tmp_path / "world"
    write_world(world, images=6, seed=3, width=64, height=64, val_fraction=0.5, progress=False)
    probe = load_bench_script("shape_probe")
    labels = f"model.image_labels=[{','.join(CATEGORIES)}]"
    assert probe.main(["pretrain", "--world", str(world), labels, "train.region_pretrain_steps=2",
                       "train.region_pretrain_batch_size=2"]) == 0
    row = _rows(capsys.readouterr().out)[-1]
    assert row[0] == "2 x 2" and 0.0 <= float(row[3]) <= 1.0
    best, threshold = re.fullmatch(r"(\S+) \((\S+)\)", row[4]).groups()
    assert 0.0 <= float(best) <= 1.0 and float(threshold) in probe.THRESHOLDS
    recalls = [float(v) for v in row[5].split(" / ")]  # present categories said, by their clearest instance's size
    assert len(recalls) == 3 and all(v != v or 0.0 <= v <= 1.0 for v in recalls)
    with pytest.raises(SystemExit, match="add model.image_labels"):
        probe.main(["pretrain", "--world", str(world), "train.region_pretrain_steps=1", "model.image_labels=[]"])

    model = make_model("tiny-clip-llama", tokenizer, image_label_names=list(CATEGORIES),
                       image_label_token_ids=[[5]] * len(CATEGORIES))
    model.save_pretrained(tmp_path / "labelled")
    make_processor(model, tokenizer).save_pretrained(tmp_path / "labelled")
    assert probe.main(["probe", str(tmp_path / "labelled"), "--world", str(world), "--train-images", "3"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert len(rows) == 3 and rows[2][0].startswith("the model's own image label head")


def test_region_label_probe_scores_the_models_region_label_head(tokenizer, tmp_path, capsys):
    from conftest import make_model, make_processor

    world = tmp_path / "world"
    write_world(world, images=6, seed=3, width=64, height=64, val_fraction=0.5, progress=False)
    probe = load_bench_script("region_label_probe")
    model = make_model("tiny-clip-llama", tokenizer, region_label_names={"size": ["small", "medium", "large"]},
                       region_label_token_ids={"size": [[5], [6], [7]]})
    head = model.model.region_label_head.heads["size"]
    with torch.no_grad():  # a head that says "large" for every region
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, 0.0, 30.0]))
    model.save_pretrained(tmp_path / "labelled")
    make_processor(model, tokenizer).save_pretrained(tmp_path / "labelled")
    assert probe.main([str(tmp_path / "labelled"), "--world", str(world), "--batch", "2"]) == 0
    out = capsys.readouterr().out
    from regiongpt.data.native import read_native_jsonl

    sizes = [r.attributes["size"] for s in read_native_jsonl(world / "native" / "val.jsonl") for r in s.regions]
    assert f"| size | {sizes.count('large') / len(sizes):.3f} |" in out
    ratio = float(re.search(r"mark length / region embedding length: (\d+\.\d+)", out).group(1))
    assert 0.7 < ratio < 1.3  # one sure field: about as long as the token (names' lengths differ a little)
    plain = make_model("tiny-clip-llama", tokenizer)
    plain.save_pretrained(tmp_path / "plain")
    make_processor(plain, tokenizer).save_pretrained(tmp_path / "plain")
    with pytest.raises(SystemExit, match="no region label head"):
        probe.main([str(tmp_path / "plain"), "--world", str(world)])
