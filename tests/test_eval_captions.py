"""Region captioning (RefCOCOg refer layout, Visual Genome) with known answers, and the
reported METEOR / CIDEr / BLEU-4 / ROUGE-L recomputed by calling pycocoevalcap directly on
the saved predictions and the references found by their ids."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from regiongpt.data.refer import load_refer
from regiongpt.data.synth import write_world
from regiongpt.evaluation.region_caption import RefCOCOgCaption, VisualGenomeCaption, read_image_ids
from regiongpt.evaluation.runner import read_predictions, run_evaluation
from regiongpt.inference.api import RegionAnswer

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="METEOR and the PTB tokenizer need Java")


class CaptionFake:
    """Answers each region with ``lookup(region)`` (a known caption)."""

    def __init__(self, lookup):
        self.lookup = lookup
        self.calls = []

    def describe_many(self, items, task="brief", categories=None, return_scores=False, max_new_tokens=None):
        assert task == "brief"
        self.calls.append([len(regions) for _, regions in items])
        return [[RegionAnswer(i, self.lookup(r)) for i, r in enumerate(regions)] for _, regions in items]


@pytest.fixture
def vg(tmp_path):
    """Three VG images (one outside the split), duplicate boxes, an empty and a clipped box."""
    images = tmp_path / "vg" / "VG_100K"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for image_id in (7, 8, 9):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(images / f"{image_id}.jpg")

    def region(rid, image_id, phrase, x, y, w, h):
        return {"region_id": rid, "image_id": image_id, "phrase": phrase, "x": x, "y": y, "width": w, "height": h}

    data = [
        {"id": 7, "regions": [region(1, 7, "a red ball", 1, 2, 20, 10), region(2, 7, "red ball on the left", 1, 2, 20, 10),
                              region(3, 7, "nothing", 30, 5, 0, 10), region(4, 7, "the green tree", 50, 30, 40, 40)]},
        {"id": 8, "regions": [region(5, 8, "white clouds in blue sky", 0, 0, 64, 20)]},
        {"id": 9, "regions": [region(6, 9, "not in the split", 0, 0, 10, 10)]},
    ]
    (tmp_path / "vg" / "region_descriptions.json").write_text(json.dumps(data))
    (tmp_path / "vg" / "test.txt").write_text("7\n8\n")
    return tmp_path / "vg"


def test_vg_queries_merge_same_box_regions_and_skip_empty_ones(vg):
    bench = VisualGenomeCaption(vg / "region_descriptions.json", vg, vg / "test.txt")
    jobs = bench.jobs()
    assert [job.image.name for job in jobs] == ["7.jpg", "8.jpg"]
    assert [q.record["region_ids"] for q in jobs[0].queries] == [[1, 2], [4]]
    assert bench.references["1"] == ["a red ball", "red ball on the left"]
    assert jobs[0].queries[1].payload == {"box": [50.0, 30.0, 64.0, 48.0]}  # clipped to the 64x48 image
    assert bench.skipped_empty == 1
    (vg / "ids.json").write_text("[8]")
    assert read_image_ids(vg / "ids.json") == [8]


def _recompute(records, references):
    """pycocoevalcap as COCOEvalCap runs it: PTBTokenizer on each side, then the scorers."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({r["query_id"]: [{"caption": c} for c in references(r)] for r in records})
    res = tokenizer.tokenize({r["query_id"]: [{"caption": r["prediction"]}] for r in records})
    return {"BLEU-4": Bleu(4).compute_score(gts, res, verbose=0)[0][3], "METEOR": Meteor().compute_score(gts, res)[0],
            "ROUGE-L": Rouge().compute_score(gts, res)[0], "CIDEr": Cider().compute_score(gts, res)[0]}


@needs_java
@pytest.mark.slow
def test_caption_scores_recomputed_with_pycocoevalcap(vg, tmp_path):
    # Visual Genome: the known answer is one of the region's phrases, or a fixed wrong one
    vg_data = json.loads((vg / "region_descriptions.json").read_text())
    phrases = {(r["x"], r["y"]): r["phrase"] for e in vg_data for r in e["regions"]}
    fake = CaptionFake(lambda r: phrases.get(tuple(r["box"][:2]), "a small thing"))
    vg_run = run_evaluation(VisualGenomeCaption(vg / "region_descriptions.json", vg, vg / "test.txt"), fake,
                            tmp_path / "vg", progress=False)
    assert fake.calls == [[2, 1]]  # all regions of both images in one call
    by_region = {r["region_id"]: r["phrase"] for e in vg_data for r in e["regions"]}
    records = read_predictions(tmp_path / "vg" / "predictions.jsonl")
    expected = _recompute(records, lambda r: [by_region[i] for i in r["region_ids"]])
    assert vg_run.results["metrics"]["METEOR"] == pytest.approx(expected["METEOR"], abs=1e-12)
    for name in ("CIDEr", "BLEU-4", "ROUGE-L"):
        assert vg_run.results["metrics"][name] == pytest.approx(expected[name], abs=1e-12)

    # RefCOCOg on a synthetic world's refer layout: answer the first sentence for even ref ids
    world = tmp_path / "world"
    write_world(world, images=3, seed=5, val_fraction=0.67, progress=False)
    refer = load_refer(world, splits=["val"])
    first = {json.dumps(r.ann["segmentation"], sort_keys=True): (r.ref_id, r.sentences[0].sent) for r in refer.refs}

    def answer(region):
        ref_id, sentence = first[json.dumps(region["segmentation"], sort_keys=True)]
        return sentence if ref_id % 2 == 0 else "a purple striped thing"

    run = run_evaluation(RefCOCOgCaption(world, world / "images", "val"), CaptionFake(answer), tmp_path / "ref",
                         progress=False)
    sentences = {r.ref_id: [s.sent for s in r.sentences] for r in load_refer(world).refs}
    records = read_predictions(tmp_path / "ref" / "predictions.jsonl")
    assert [r["ref_id"] for r in records] == [r.ref_id for r in refer.refs]
    expected = _recompute(records, lambda r: sentences[r["ref_id"]])
    for name, value in expected.items():
        assert run.results["metrics"][name] == pytest.approx(value, abs=1e-12)
    table = {row["metric"]: row["shown"] for row in run.results["table"]}
    assert table["CIDEr"] == f"{100 * expected['CIDEr']:.2f}"
    assert (tmp_path / "ref" / "cider_distribution.png").exists()
