"""Evaluation plumbing end to end: the CLI on a synthetic world with a tiny random model,
resume after interruption, known answers through a fake model, and scores recomputed
directly with pycocotools / pycocoevalcap from the saved predictions."""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil

import pytest
import torch
from conftest import make_model, make_processor, randomise_refiner

from regiongpt.cli.main import main
from regiongpt.data.synth import write_world
from regiongpt.errors import InvalidInputError
from regiongpt.evaluation.coco_classification import CocoClassification
from regiongpt.evaluation.pope import Pope, find_pope_files, score_pope
from regiongpt.evaluation.rec import candidate_order
from regiongpt.evaluation.runner import generate_answers, read_predictions, run_evaluation
from regiongpt.inference.api import Question, rec_max_new_tokens
from regiongpt.evaluation.synth_suite import SynthSuite
from regiongpt.inference.api import RegionAnswer, RegionGPT
from regiongpt.processing.instructions import build_instruction



@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    write_world(out, images=4, seed=3, val_fraction=0.5, progress=False)
    return out


@pytest.fixture(scope="module")
def synth_run(world, model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("synth-run")
    code = main(["eval", "synth", "--model", str(model_dir), "--data", str(world), "--out", str(out), "--limit", "1",
                 "--no-semantic", "--quiet"])
    assert code == 0
    return out


def test_synth_cli_writes_the_report(synth_run, world):
    results = json.loads((synth_run / "results.json").read_text())
    jobs = SynthSuite(world, semantic=False).jobs(1)
    ids = [q.id for q in jobs[0].queries]
    records = read_predictions(synth_run / "predictions.jsonl")
    assert [r["query_id"] for r in records] == ids  # one line per query, in order
    assert {i.split("/")[0] for i in ids} == {"cls", "brief", "rec", "exist"}
    assert set(results["metrics"]) == {"cls", "brief", "rec", "existence", "existence_present", "existence_absent"}
    assert results["metrics"]["cls"]["count"] == sum(i.startswith("cls/") for i in ids)
    assert set(results["metrics"]["existence"]) >= {"random", "popular", "adversarial"}
    assert results["timing"]["queries_run"] == len(ids) and results["timing"]["queries_per_s"] > 0
    assert len(results["model"]["sha256"]) == 64 and len(results["data"]) == 5
    assert "difficulty tag" in results["protocol"] and results["versions"]["torch"]
    report = (synth_run / "report.md").read_text()
    assert "| all | classification accuracy |" in report and "## Protocol" in report
    for plot in results["plots"]:
        assert (synth_run / plot).read_bytes()[:4] == b"\x89PNG"
    # REC answers are checked against the candidates they were asked about
    rec = next(r for r in records if r["query_id"].startswith("rec/"))
    assert rec["ann_id"] in rec["candidates"] and rec["correct"] == (rec["chosen_ann_id"] == rec["ann_id"])


def test_resume_skips_done_queries_and_drops_a_torn_line(synth_run, world, model_dir, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(synth_run, out)
    path = out / "predictions.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-3]) + lines[-3][:17])  # killed while writing: 3 answers lost, one torn
    model = RegionGPT.load(model_dir)
    result = run_evaluation(SynthSuite(world, semantic=False), model, out, limit=1, model_path=model_dir,
                            progress=False)
    assert result.queries_run == 3 and result.queries_total == len(lines)
    assert path.read_text() == "".join(lines)  # same greedy answers, no duplicates, no torn line
    before = json.loads((synth_run / "results.json").read_text())["metrics"]
    assert result.results["metrics"] == before
    # records saved by an older version, before the REC phrase forms were recorded, are scored with them
    path.write_text("".join(json.dumps({k: v for k, v in json.loads(line).items() if k != "phrase_form"}) + "\n"
                            for line in lines))
    rescored = run_evaluation(SynthSuite(world, semantic=False), model, out, limit=1, model_path=model_dir,
                              progress=False)
    assert rescored.queries_run == 0 and rescored.results["metrics"] == before
    assert "phrase_form" not in path.read_text()  # the saved answers are left as they were
    # a run with different settings must not be mixed into this folder
    with pytest.raises(InvalidInputError, match="different settings"):
        run_evaluation(SynthSuite(world, split="all", semantic=False), model, out, limit=1, model_path=model_dir,
                       progress=False)


def test_coco_map_recomputed_with_pycocotools(world, model_dir, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out = tmp_path / "cls"
    assert main(["eval", "coco-cls", "--model", str(model_dir), "--data", str(world / "instances.json"),
                 "--out", str(out), "--limit", "1", "--no-semantic", "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    records = read_predictions(out / "predictions.jsonl")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(world / "instances.json"))
        names = {c["name"]: c["id"] for c in gt.loadCats(gt.getCatIds())}
        images = sorted({r["image_id"] for r in records})
        detections = []
        for r in records:
            assert len(set(r["category_scores"].values())) > 1  # real likelihoods, not a constant
            total = sum(math.exp(v) for v in r["category_scores"].values())
            ann = gt.anns[r["ann_id"]]
            detections += [{"image_id": ann["image_id"], "category_id": names[n], "bbox": ann["bbox"],
                            "score": math.exp(v) / total} for n, v in r["category_scores"].items()]
        evaluator = COCOeval(gt, gt.loadRes(detections), "bbox")
        evaluator.params.imgIds = images
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert results["metrics"]["mAP"] == pytest.approx(evaluator.stats[0], abs=1e-9)
    assert len(records) == sum(len(gt.getAnnIds(imgIds=[i], iscrowd=False)) for i in images)


class FakeModel:
    """describe_many with known answers: ``answer(task, region) -> (text, category_scores)``."""

    def __init__(self, answer):
        self.answer = answer
        self.calls = []

    def describe_many(self, items, task="brief", categories=None, return_scores=False, max_new_tokens=None,
                      vocabulary=None):
        self.calls.append([len(regions) for _, regions in items])
        out = []
        for _, regions in items:
            answers = []
            for i, region in enumerate(regions):
                text, scores = self.answer(task, region)
                answers.append(RegionAnswer(i, text, None, scores if return_scores else None))
            out.append(answers)
        return out


def test_known_answers_give_known_accuracy(world, tmp_path):
    instances = json.loads((world / "instances.json").read_text())
    names = {c["id"]: c["name"] for c in instances["categories"]}
    truth = {a["segmentation"]["counts"]: (a["id"], names[a["category_id"]]) for a in instances["annotations"]}

    def answer(task, region):
        ann_id, name = truth[region["segmentation"]["counts"]]
        text = f"It is a {name}." if ann_id % 3 == 0 else (name.upper() if ann_id % 3 == 1 else "bicycle")
        return text, {n: (-1.0 if n == name else -2.0) for n in names.values()}

    fake = FakeModel(answer)
    benchmark = CocoClassification(world / "instances.json", semantic=False)
    result = run_evaluation(benchmark, fake, tmp_path / "out", batch_images=3, progress=False)
    ids = [a["id"] for a in instances["annotations"]]
    assert result.scores.metrics["accuracy"] == pytest.approx(sum(i % 3 != 2 for i in ids) / len(ids))
    assert result.scores.metrics["mAP"] == pytest.approx(1.0)  # the true category always scores highest
    assert fake.calls[0] == [len([a for a in instances["annotations"] if a["image_id"] == i]) for i in (1, 2, 3)]


def test_rec_candidate_orders_are_seeded_and_valid():
    assert candidate_order("all", 5, 2, "1/1", 0, 3) == [0, 1, 2, 3, 4]
    shuffled = candidate_order("shuffled", 8, 2, "1/1", 0, 3)
    assert sorted(shuffled) == list(range(8)) and shuffled == candidate_order("shuffled", 8, 2, "1/1", 0, 3)
    assert shuffled != candidate_order("shuffled", 8, 2, "1/1", 1, 3)
    capped = candidate_order("capped", 8, 6, "1/1", 0, 3)
    assert 6 in capped and len(capped) == 3 and capped == sorted(capped)
    assert candidate_order("capped", 2, 1, "1/1", 0, 5) == [0, 1]


def test_region_map_prompts_equal_ground_on_reordered_regions(tiny, image):
    model, processor = tiny
    api = RegionGPT(model, processor)
    boxes = [[2, 2, 30, 20], [40, 10, 78, 46], [10, 25, 35, 45]]
    order = [2, 0]
    phrase = "the red star"
    expected = api.ground(image, [boxes[i] for i in order], phrase).text
    prompts = [Question(0, build_instruction("rec", regions=range(2), phrase=phrase), order, rec_max_new_tokens(2)),
               Question(0, build_instruction("rec", regions=range(3), phrase=phrase), None, rec_max_new_tokens(3))]
    got = generate_answers(api, [(image, boxes)], prompts)
    assert got[0] == expected and got[1] == api.ground(image, boxes, phrase).text


def test_region_map_numbers_regions_in_the_questions_order(tokenizer, image):
    """A model that codes region numbers sees <region1> of a reordered question as number 0."""
    model = make_model("tiny-clip-llama", tokenizer, region_number_embedding=True)
    randomise_refiner(model)
    with torch.no_grad():  # the number code starts at zero: give it weights so numbers matter
        model.model.region_number_embedding.proj.weight.normal_(0, 1.0)
    api = RegionGPT(model, make_processor(model, tokenizer))
    boxes = [[2, 2, 30, 20], [40, 10, 78, 46], [10, 25, 35, 45]]
    text = build_instruction("rec", regions=range(2), phrase="the red star")

    def placed(items, questions):  # the region embedding at each placeholder of each question
        requests, visual = api._requests(items, questions)
        _, region_embeds = api.engine._encode_visual(visual)
        return [region_embeds[list(r.regions)] for r in requests]

    (direct,) = placed([(image, [boxes[2], boxes[0]])], [Question(0, text, None, 6)])
    mapped, again, identity = placed([(image, boxes)], [Question(0, text, [2, 0], 6), Question(0, text, [2, 0], 6),
                                                        Question(0, text, [0, 1], 6)])
    torch.testing.assert_close(mapped, direct)
    torch.testing.assert_close(again, direct)
    (swapped,) = placed([(image, [boxes[0], boxes[2]])], [Question(0, text, None, 6)])
    torch.testing.assert_close(identity[0], swapped[0])  # region 0 stays number 0
    # several reordered questions of different lengths in one batch
    three = build_instruction("rec", regions=range(3), phrase="the red star")
    first, second = placed([(image, boxes)], [Question(0, three, [1, 2, 0], 6), Question(0, text, [2, 0], 6)])
    (alone,) = placed([(image, [boxes[1], boxes[2], boxes[0]])], [Question(0, three, None, 6)])
    torch.testing.assert_close(first, alone)
    torch.testing.assert_close(second, direct)
    assert not torch.allclose(swapped.flip(0), direct)  # the same regions numbered the other way
    answers = api.ask_many([(image, boxes)], [Question(0, text, [2, 0], 6)])
    assert answers[0].text == api.ask_many([(image, [boxes[2], boxes[0]])], [Question(0, text, None, 6)])[0].text
    with pytest.raises(InvalidInputError, match="region_map names region 3"):
        api.ask_many([(image, boxes)], [Question(0, text, [3, 0], 6)])


def test_pope_files_jobs_and_scores(world, tmp_path):
    files = find_pope_files([world / "pope"])
    assert list(files) == ["random", "popular", "adversarial"]
    pope = Pope([world / "pope"], world / "images", suffix="Answer yes or no.")
    jobs = pope.jobs(limit=1)
    assert len(jobs) == 1 and {q.record["split"] for q in jobs[0].queries} == set(files)
    assert all(q.payload.endswith("? Answer yes or no.") for q in jobs[0].queries)
    records = [{"split": "random", "label": l, "answer": a} for l, a in [("yes", "yes"), ("no", "yes"), ("no", "no")]]
    scores = score_pope(records, ["random"])
    assert scores.metrics["random"]["accuracy"] == pytest.approx(2 / 3)
    assert scores.metrics["random"]["yes_ratio"] == pytest.approx(2 / 3)
    with pytest.raises(InvalidInputError, match="lacks"):
        bad = tmp_path / "x_random.jsonl"
        bad.write_text('{"question_id": 1, "image": "a.png"}\n')
        Pope([bad], world / "images")


def test_cli_errors_are_one_line(world, model_dir, tmp_path, capsys, monkeypatch):
    assert main(["eval", "rec", "--data", str(world), "--out", str(tmp_path / "o")]) == 2
    assert "needs --images" in capsys.readouterr().err
    assert main(["eval", "rec", "--data", str(world), "--images", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--model", str(model_dir)]) == 2
    assert "image(s) not found" in capsys.readouterr().err
    assert main(["eval", "synth", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a synthetic world" in capsys.readouterr().err
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert main(["eval", "refcocog-caption", "--data", str(world), "--images", str(world / "images"),
                 "--out", str(tmp_path / "o"), "--model", str(model_dir)]) == 2
    assert "need Java" in capsys.readouterr().err
