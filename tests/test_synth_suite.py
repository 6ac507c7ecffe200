"""The synthetic-world suite's breakdowns: REC by what the phrase names, yes/no by the asked
object's difficulty, scored from hand-written records and read from a written world."""

from __future__ import annotations

import json
import re

import pytest
from conftest import load_bench_script

from regiongpt.data.synth import write_world
from regiongpt.evaluation.synth_suite import SynthSuite, asked_category, phrase_form


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    write_world(out, images=6, seed=5, val_fraction=0.5, progress=False)
    return out


def test_phrase_form_names_the_fields_the_phrase_uses():
    attrs = {"colour": "red", "size": "small", "texture": "dotted"}
    assert phrase_form("the square", attrs) == "category"
    assert phrase_form("the red square", attrs) == "category+colour"
    assert phrase_form("the small dotted square", attrs) == "category+size+texture"
    assert phrase_form("The Small RED square", attrs) == "category+colour+size"
    assert phrase_form("the blue square", attrs) == "category"  # another object's colour is not this one's


def test_asked_category_prefers_the_whole_name():
    names = ["circle", "semicircle", "star"]
    assert asked_category("Is there a semicircle in the image?", names) == "semicircle"
    assert asked_category("Is there a circle in the image?", names) == "circle"
    assert asked_category("Is there a dog in the image?", names) is None


def _exist(split, qid, image, category, label, answer, tags=(), size=None):
    record = {"kind": "exist", "split": split, "question_id": qid, "image_id": image, "category": category,
              "label": label, "answer": answer}
    return record | ({"tags": list(tags), "size": size} if label == "yes" else {})


def test_scores_break_down_yes_no_and_rec(world):
    suite = SynthSuite(world, semantic=False)
    records = []
    for split in ("random", "popular", "adversarial"):  # POPE asks the same present categories in every setting
        records += [_exist(split, 1, 7, "star", "yes", "yes", ["small"], "small"),
                    _exist(split, 2, 7, "ring", "yes", "no", ["occluded"], "large"),
                    _exist(split, 3, 8, "star", "yes", "yes", [], "medium"),
                    _exist(split, 4, 7, "heart", "no", "no" if split != "adversarial" else "yes")]
    rec = [{"kind": "rec", "correct": ok, "tags": tags, "size": "medium", "phrase_form": form}
           for ok, tags, form in [(True, [], "category"), (True, ["distractor"], "category+colour"),
                                  (False, ["distractor"], "category+colour"), (False, ["distractor"], "category")]]
    cls = [{"kind": "cls", "prediction": "star", "category": "star", "tags": [], "size": "small"}]
    metrics = suite.score(records + rec + cls).metrics
    present = metrics["existence_present"]
    assert present["count"] == 3 and present["accuracy"] == pytest.approx(2 / 3)
    assert present["by_size"]["small"] == {"count": 1, "accuracy": 1.0}
    assert present["by_size"]["large"] == {"count": 1, "accuracy": 0.0}
    assert present["by_tag"]["occluded"]["accuracy"] == 0.0 and present["by_tag"]["untagged"]["count"] == 1
    absent = metrics["existence_absent"]
    assert absent["random"]["accuracy"] == 1.0 and absent["adversarial"]["accuracy"] == 0.0
    assert metrics["rec"]["by_phrase"] == {"category": {"count": 2, "accuracy": 0.5},
                                           "category+colour": {"count": 2, "accuracy": 0.5}}
    assert metrics["rec"]["by_phrase_distractor"]["category"] == {"count": 1, "accuracy": 0.0}
    # the built-in model's report (bench/demo_model.py) shows them
    table = "\n".join(load_bench_script("synth_report").bucket_table(metrics))
    assert "| yes/no, object present (answered yes) | 0.667 | 1.000 | 1.000 | 0.000 | 0.000 |" in table
    assert "Absent categories answered no: random 1.000, popular 1.000, adversarial 0.000." in table
    assert "| category+colour | 0.500 | 2 | 0.500 | 2 |" in table


def test_jobs_record_the_phrase_form_and_the_asked_object(world):
    suite = SynthSuite(world, semantic=False)
    instances = json.loads((world / "instances.json").read_text())
    anns = {a["id"]: a for a in instances["annotations"]}
    names = {c["id"]: c["name"] for c in instances["categories"]}
    queries = [q for job in suite.jobs() for q in job.queries]
    rec = [q for q in queries if q.record["kind"] == "rec"]
    assert rec and {q.record["phrase_form"] for q in rec} > {"category"}
    for q in rec:
        attrs = anns[q.record["ann_id"]]["attributes"]
        words = q.payload[0].split()
        for field in ("colour", "size", "texture"):
            assert (field in q.record["phrase_form"]) == (attrs[field] in words)
    exist = [q for q in queries if q.record["kind"] == "exist"]
    assert {q.record["label"] for q in exist} == {"yes", "no"}
    for q in exist:
        category = q.record["category"]
        assert re.search(rf"\b{category}\b", q.payload)
        if q.record["label"] == "yes":  # the largest instance of the asked category in the image
            shown = [a for a in anns.values() if a["image_id"] == q.record["image_id"]
                     and names[a["category_id"]] == category]
            clearest = max(shown, key=lambda a: a["area"])["attributes"]
            assert q.record["size"] == clearest["size"] and q.record["tags"] == clearest["tags"]
        else:
            assert "size" not in q.record
