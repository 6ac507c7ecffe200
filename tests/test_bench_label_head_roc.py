"""bench/label_head_roc.py: the image label head's largest per-cell probability as a yes/no classifier."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import load_bench_script


def test_auc_and_accuracy_count_pairs_and_thresholds():
    roc = load_bench_script("label_head_roc")
    present, absent = torch.tensor([0.9, 0.6, 0.3]), torch.tensor([0.1, 0.3, 0.7])
    # pairs (present > absent): 0.9 beats 3, 0.6 beats 2, 0.3 beats 1 and ties 1 -> (6 + 0.5) / 9
    assert roc.auc(present, absent) == pytest.approx(6.5 / 9)
    assert roc.auc(torch.tensor([0.8]), torch.tensor([0.2])) == 1.0
    assert roc.accuracy(present, absent, 0.5) == pytest.approx(4 / 6)  # 0.9, 0.6 yes; 0.1, 0.3 no
    assert roc.accuracy(present, absent, 0.95) == pytest.approx(3 / 6)  # says no to everything


def test_report_scores_every_pope_split_of_a_saved_model(tokenizer, tmp_path, capsys):
    from conftest import make_model, make_processor

    from regiongpt.data.synth.world import CATEGORIES
    from regiongpt.data.synth.writers import write_world

    world = tmp_path / "world"
    write_world(world, images=6, seed=3, width=64, height=64, val_fraction=0.5, progress=False)
    roc = load_bench_script("label_head_roc")
    model = make_model("tiny-clip-llama", tokenizer, image_label_names=list(CATEGORIES),
                       image_label_token_ids=[[5]] * len(CATEGORIES))
    model.save_pretrained(tmp_path / "labelled")
    make_processor(model, tokenizer).save_pretrained(tmp_path / "labelled")
    assert roc.main(["--model", str(tmp_path / "labelled"), "--world", str(world)]) == 0
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and not line.startswith("| split")]
    assert [r[0] for r in rows] == ["random", "popular", "adversarial", "all"]
    asked = [len((world / "pope" / f"synth_pope_{split}.jsonl").read_text().splitlines())
             for split in ("random", "popular", "adversarial")]
    # every question is scored or counted as naming no category (the adversarial split's colour questions)
    assert [int(r[1]) + int(r[2]) for r in rows] == [*asked, sum(asked)]
    assert int(rows[0][2]) == 0 and int(rows[0][1]) > 0  # the random split asks categories only
    for row in rows:
        assert 0.0 <= float(row[3]) <= 1.0 and 0.0 <= float(row[4]) <= 1.0
        threshold, best = (float(v) for v in row[5].split(": "))
        assert 0.0 <= threshold <= 1.0 and float(row[4]) <= best <= 1.0

    from regiongpt.data.synth.world import COLOUR_NAMES

    coloured = make_model("tiny-clip-llama", tokenizer, image_label_names=list(CATEGORIES),
                          image_label_token_ids=[[5]] * len(CATEGORIES),
                          image_attribute_names={"colour": list(COLOUR_NAMES)},
                          image_attribute_token_ids={"colour": [[6]] * len(COLOUR_NAMES)})
    coloured.save_pretrained(tmp_path / "coloured")
    make_processor(coloured, tokenizer).save_pretrained(tmp_path / "coloured")
    assert roc.main(["--model", str(tmp_path / "coloured"), "--world", str(world)]) == 0
    out = capsys.readouterr().out
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| split")]
    adversarial = [json.loads(line) for line in (world / "pope" / "synth_pope_adversarial.jsonl").open()]
    colour_questions = sum(len(roc.QUESTION.search(q["text"]).group(1).split()) == 2 for q in adversarial)
    assert int(rows[2][2]) == 0 and int(rows[2][1]) == asked[2]  # with a colour head, colour questions are scored
    assert colour_questions and f"lacks): {colour_questions}; said no at 0.5" in out  # the world asks some

    plain = make_model("tiny-clip-llama", tokenizer)
    plain.save_pretrained(tmp_path / "plain")
    make_processor(plain, tokenizer).save_pretrained(tmp_path / "plain")
    with pytest.raises(SystemExit, match="no image label head"):
        roc.main(["--model", str(tmp_path / "plain"), "--world", str(world)])
