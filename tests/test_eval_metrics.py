"""Metrics on fixed inputs: normalisation, POPE, COCOeval mAP, semantic similarity, and
captioning golden values computed once with pycocoevalcap directly (PTBTokenizer + scorers)."""

from __future__ import annotations

import math
import shutil

import pytest

from regiongpt.errors import InvalidInputError
from regiongpt.evaluation import metrics
from regiongpt.evaluation.coco_classification import classification_map, normalised_scores
from regiongpt.evaluation.metrics import caption_metrics, exact_match, normalize_answer, pope_metrics, ptb_tokenize
from regiongpt.evaluation.pope import yes_no_fields

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="METEOR and the PTB tokenizer need Java")


@pytest.mark.parametrize("text, expected", [
    ("It is a frisbee.", "frisbee"),
    ("it's an Apple", "apple"),
    ("The TV", "tv"),
    ("  Traffic light!\nmore text", "traffic light"),
    ("This is the hot-dog.", "hot dog"),
    ("", ""),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match():
    assert exact_match("It is a teddy bear.", "teddy bear")
    assert not exact_match("bear", "teddy bear")


def test_pope_metrics_and_yes_no_rule():
    m = pope_metrics([True, True, False, False, True], [True, False, False, True, True])
    assert m == pytest.approx({"accuracy": 0.6, "precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "yes_ratio": 0.6,
                               "count": 5})
    assert yes_no_fields("No, there is not.")["answer"] == "no"
    assert yes_no_fields("Yes. It is not red.")["answer"] == "yes"  # only the first sentence counts
    assert yes_no_fields("There is no dog in the image.")["answer"] == "no"


def _record(ann, image, category, box, probs):
    return {"ann_id": ann, "image_id": image, "category_id": category, "bbox": box, "area": box[2] * box[3],
            "category_scores": {name: math.log(p) for name, p in probs.items()}}


def test_classification_map_matches_a_hand_computed_value():
    categories = {1: "a", 2: "b"}
    records = [_record(1, 1, 1, [0, 0, 10, 10], {"a": 0.9, "b": 0.1}),
               _record(2, 1, 2, [20, 20, 10, 10], {"a": 0.8, "b": 0.2}),
               _record(3, 2, 1, [0, 0, 10, 10], {"a": 0.7, "b": 0.3})]
    # a: TP .9, FP .8, TP .7 -> 101-point AP (51 + 50 * 2/3) / 101; b: its one GT ranked 2nd -> 0.5
    expected = ((51 + 50 * 2 / 3) / 101 + 0.5) / 2
    assert classification_map(records, categories)["mAP"] == pytest.approx(expected, abs=1e-6)
    perfect = [_record(1, 1, 1, [0, 0, 10, 10], {"a": 0.6, "b": 0.4}), _record(2, 1, 2, [20, 20, 10, 10], {"a": 0.3, "b": 0.7})]
    assert classification_map(perfect, categories)["mAP"] == pytest.approx(1.0)
    assert normalised_scores({"a": math.log(2.0), "b": math.log(6.0)}) == pytest.approx({"a": 0.25, "b": 0.75})


def test_semantic_matcher_maps_answers_to_the_closest_category():
    matcher = metrics.SemanticMatcher()
    assert matcher.closest(["sofa", "It is a puppy.", "automobile"], ["couch", "dog", "car"]) == ["couch", "dog", "car"]


REFS = {"1": ["A red star on the left.", "the small red star"], "2": ["a blue ring", "Blue ring, right side!"],
        "3": ["green square", "a green checkered square"], "4": ["a big yellow heart"]}
PREDS = {"1": "small red star", "2": "the blue circle", "3": "It is a green square.", "4": "yellow heart"}
# pycocoevalcap 1.2 called directly (PTBTokenizer().tokenize on each side, then each scorer), Java 17
GOLDEN = {"BLEU-4": 6.752150708337028e-05, "METEOR": 0.3864715337474568, "ROUGE-L": 0.6458058690982074,
          "CIDEr": 2.6064980584337367}
GOLDEN_CIDER = {"1": 3.864322950289625, "2": 0.8661772032853443, "3": 2.399185514974033, "4": 3.2963065651859456}
GOLDEN_METEOR = {"1": 0.47362391538017806, "2": 0.32754491110102324, "3": 0.4443438716486749, "4": 0.3048955289504205}


@needs_java
def test_caption_metrics_golden_values():
    scores = caption_metrics(REFS, PREDS)
    assert scores.corpus == pytest.approx(GOLDEN, rel=1e-9)
    assert scores.per_query["CIDEr"] == pytest.approx(GOLDEN_CIDER, rel=1e-9)
    assert scores.per_query["METEOR"] == pytest.approx(GOLDEN_METEOR, rel=1e-9)


@needs_java
def test_ptb_tokenize_matches_pycocoevalcap_and_leaves_its_folder_alone():
    folder = metrics._pycocoevalcap_dir() / "tokenizer"
    before = sorted(p.name for p in folder.iterdir())
    tokens = ptb_tokenize({**REFS, "blank": ["", "  "], "x": ["Two lines\nin one -- caption..."]})
    assert sorted(p.name for p in folder.iterdir()) == before
    assert tokens["1"] == ["a red star on the left", "the small red star"]
    assert tokens["2"] == ["a blue ring", "blue ring right side"]
    assert tokens["blank"] == ["", ""]
    assert tokens["x"] == ["two lines in one caption"]


def test_missing_java_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    with pytest.raises(InvalidInputError, match="need Java.*java.*PATH"):
        caption_metrics({"1": ["a"]}, {"1": "a"})
