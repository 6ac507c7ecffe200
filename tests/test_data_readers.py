"""Readers on fixtures in the exact real layouts: COCO (polygon, uncompressed and compressed RLE,
crowd), the refer layout's refs pickle, Visual Genome region descriptions, LLaVA conversations."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from regiongpt.data.native import validate_sample_json
from regiongpt.data.sources import ReadReport
from regiongpt.errors import InvalidInputError
from regiongpt.processing.instructions import NO_MATCH_ANSWER
from regiongpt.processing.rle import decode_rle, encode_rle
from regiongpt.training.data import load_samples, read_source, resolve_source

W, H = 40, 30


def _png(path: Path, size=(W, H)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), 128, dtype=np.uint8)).save(path)


def _read(spec: str, **options):
    report = ReadReport()
    samples = list(read_source(resolve_source(spec, **options), report))
    for s in samples:
        validate_sample_json(s.to_json(), s.id)  # every reader's output is valid native data
        assert not any("<region" in t["value"] for t in s.conversations[1::2])
    return samples, report


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    """annotations/instances_val2017.json + val2017/ (COCO's own layout)."""
    root = tmp_path_factory.mktemp("coco")
    for name in ("a.png", "b.png"):
        _png(root / "val2017" / name)
    square = np.zeros((H, W), dtype=bool)
    square[5:15, 20:30] = True
    uncompressed = encode_rle(square, compressed=False)
    compressed = encode_rle(square[::-1].copy())
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 8, 8], "area": 64, "iscrowd": 0,
         "segmentation": [[2, 2, 10, 2, 10, 10, 2, 10]], "caption": "a grey box"},          # polygon
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [20, 5, 10, 10], "area": 100, "iscrowd": 0,
         "segmentation": uncompressed},                                                     # uncompressed RLE
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 30], "area": 1200, "iscrowd": 1,
         "segmentation": encode_rle(np.ones((H, W), bool), compressed=False)},            # crowd: left out
        {"id": 4, "image_id": 2, "category_id": 2, "bbox": [20, 15, 10, 10], "area": 100, "iscrowd": 0,
         "segmentation": compressed, "attributes": {"detailed": "a long description"}},   # compressed RLE
        {"id": 5, "image_id": 2, "category_id": 1, "bbox": [30, 20, 20, 20], "area": 100, "iscrowd": 0,
         "segmentation": []},                                                               # box reaching outside
        {"id": 6, "image_id": 2, "category_id": 1, "bbox": "oops", "iscrowd": 0},           # malformed
        {"id": 7, "image_id": 2, "category_id": 1, "bbox": [1, 1, 3, 3], "iscrowd": 0,
         "segmentation": encode_rle(np.zeros((H, W), bool))},                              # empty mask
        {"id": 8, "image_id": 2, "category_id": 99, "bbox": [1, 1, 3, 3], "iscrowd": 0},    # unknown category
    ]
    data = {"images": [{"id": 1, "file_name": "a.png", "width": W, "height": H},
                       {"id": 2, "file_name": "b.png", "width": W, "height": H}],
            "annotations": anns,
            "categories": [{"id": 1, "name": "box", "supercategory": "x"}, {"id": 2, "name": "apple", "supercategory": "x"}]}
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    return root


def test_coco_polygons_rles_crowd_and_problems(coco):
    samples, report = _read(f"coco:{coco}/annotations/instances_val2017.json")
    assert [s.id for s in samples] == ["coco-1", "coco-2"]
    a, b = samples
    assert a.image_path() == coco / "val2017" / "a.png" and a.split == "val2017"  # COCO layout default
    assert [r.id for r in a.regions] == [1, 2]  # the crowd annotation is left out
    assert decode_rle(a.regions[0].mask).sum() == 64 and decode_rle(a.regions[1].mask).sum() == 100
    assert isinstance(a.regions[1].mask["counts"], str)  # stored compressed
    assert [r.id for r in b.regions] == [4, 5]
    assert b.regions[1].mask is None and b.regions[1].box == [30.0, 20.0, 40.0, 30.0]  # clipped box
    tasks = {t.get("task") for t in b.conversations[0::2]}
    assert tasks == {"classify", "detailed", "existence"}
    classify = next(t["value"] for t in a.conversations if t.get("task") == "classify")
    assert "the listed category names" in classify and "Categories: box, apple." in classify
    brief = [t for t in a.conversations if t.get("task") == "brief"]
    assert len(brief) == 1
    kinds = {(p.kind, p.index, p.skipped) for p in report.problems}
    assert kinds == {("box-outside", "annotations[4]", False), ("malformed", "annotations[5]", True),
                     ("empty-mask", "annotations[6]", True), ("malformed", "annotations[7]", True)}
    assert all(p.file.endswith("instances_val2017.json") for p in report.problems)
    with pytest.raises(InvalidInputError, match=r"instances_val2017.json\[annotations\[5\]\]: bbox must be 4 numbers"):
        list(read_source(resolve_source(f"coco:{coco}/annotations/instances_val2017.json", strict=True)))


def test_coco_tasks_seeded_and_checked(coco):
    spec = f"coco:{coco}/annotations/instances_val2017.json"
    first, _ = _read(spec, tasks="label,relation", seed=3)
    again, _ = _read(spec, tasks="label,relation", seed=3)
    assert [s.conversations for s in first] == [s.conversations for s in again]
    answers = [t["value"] for t in first[0].conversations[1::2]]
    assert "It is a box." in answers and "It is an apple." in answers
    assert any(re.fullmatch(r"Region \[\d\] is (left|right) of( and (above|below))? Region \[\d\]\.", v) for v in answers)
    with pytest.raises(InvalidInputError, match="cannot build task"):
        _read(spec, tasks="rec")


@pytest.fixture(scope="module")
def refer(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("refer")
    folder = root / "refcocog"
    folder.mkdir()
    _png(root / "train2014" / "COCO_train2014_000000000001.jpg")
    _png(root / "train2014" / "COCO_train2014_000000000002.jpg")
    _png(root / "train2014" / "COCO_train2014_000000000003.jpg")

    def ref(ref_id, ann_id, image_id, split, sents, category=1):
        sentences = [{"tokens": s.split(), "raw": s, "sent_id": ref_id * 10 + i, "sent": s} for i, s in enumerate(sents)]
        return {"image_id": image_id, "split": split, "sentences": sentences, "file_name": "x.jpg",
                "category_id": category, "ann_id": ann_id, "sent_ids": [s["sent_id"] for s in sentences], "ref_id": ref_id}

    refs = [ref(0, 10, 1, "train", ["the man on the left", "a man"]), ref(1, 11, 1, "train", ["brown dog"], 2),
            ref(2, 20, 2, "val", ["a blue car"], 3), ref(3, 99, 2, "val", ["ghost"]), {"broken": True},
            ref(5, 30, 3, "train", ["a red car"], 3)]
    (folder / "refs(umd).p").write_bytes(pickle.dumps(refs, protocol=2))
    poly = [[1.0, 1.0, 9.0, 1.0, 9.0, 9.0, 1.0, 9.0]]
    instances = {
        "images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": W, "height": H},
                   {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "width": W, "height": H},
                   {"id": 3, "file_name": "COCO_train2014_000000000003.jpg", "width": W, "height": H}],
        "annotations": [{"id": i, "image_id": i // 10, "category_id": c, "segmentation": poly,
                         "bbox": [1, 1, 8, 8], "area": 64.0, "iscrowd": 0} for i, c in ((10, 1), (11, 2), (12, 1), (20, 3), (30, 3))],
        "categories": [{"id": 1, "name": "man"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "car"}],
    }
    (folder / "instances.json").write_text(json.dumps(instances))
    return root


def test_refcoco_brief_rec_and_negatives(refer):
    samples, report = _read(f"refcoco:{refer}:refcocog:umd", split="train", rec_negatives=0.9, seed=1)
    assert [s.id for s in samples] == ["refcocog-1", "refcocog-3"] and samples[0].split == "train"
    sample = samples[0]
    assert sample.image_path() == refer / "train2014" / "COCO_train2014_000000000001.jpg"  # default images
    assert [r.id for r in sample.regions] == [10, 11, 12]  # every instance is a REC candidate
    pairs = list(zip(sample.conversations[0::2], sample.conversations[1::2]))
    rec = [(q["value"], a["value"]) for q, a in pairs if q["task"] == "rec"]
    brief = [a["value"] for q, a in pairs if q["task"] == "brief"]
    assert rec and all("<region1>, <region2>, <region3>" in q for q, _ in rec)
    assert all(a in ("Region [1]", "Region [2]", NO_MATCH_ANSWER) for _, a in rec)
    assert any(a == NO_MATCH_ANSWER and "'a red car'" in q for q, a in rec)  # a phrase of an absent category
    for q, a in rec:  # the REC phrase is never some region's brief answer in the same conversation
        assert not any(f"'{b}'" in q for b in brief)
    assert [p.index for p in report.problems] == [4]  # the malformed ref, with its index
    val, report = _read(f"refcoco:{refer}", split="val")  # data set and split-by detected
    assert [s.id for s in val] == ["refcocog-2"] and [p.index for p in report.problems] == [3, 4]
    with pytest.raises(InvalidInputError, match="its splits are: train, val"):
        _read(f"refcoco:{refer}:refcocog:umd", split="testB")


def test_visual_genome_regions(tmp_path):
    _png(tmp_path / "images" / "VG_100K" / "1.jpg")
    _png(tmp_path / "images" / "VG_100K_2" / "2.jpg")
    data = [
        {"id": 1, "regions": [
            {"region_id": 11, "image_id": 1, "phrase": "a white cloud", "x": 2, "y": 3, "width": 10, "height": 5},
            {"region_id": 12, "image_id": 1, "phrase": "cloud in the sky", "x": 2, "y": 3, "width": 10, "height": 5},
            {"region_id": 13, "image_id": 1, "phrase": "grass", "x": 30, "y": 20, "width": 20, "height": 20},
            {"region_id": 14, "image_id": 1, "phrase": "", "x": 1, "y": 1, "width": 2, "height": 2}]},
        {"id": 2, "regions": [{"region_id": 21, "image_id": 2, "phrase": "a dog", "x": 0, "y": 0, "width": 5, "height": 5}]},
        {"id": 3, "regions": [{"region_id": 31, "image_id": 3, "phrase": "lost", "x": 0, "y": 0, "width": 5, "height": 5}]},
    ]
    (tmp_path / "region_descriptions.json").write_text(json.dumps(data))
    samples, report = _read(f"vg:{tmp_path}/region_descriptions.json", images=str(tmp_path / "images"))
    assert [s.id for s in samples] == ["vg-1", "vg-2"]
    first = samples[0]
    assert first.image_path() == tmp_path / "images" / "VG_100K" / "1.jpg"
    assert [r.box for r in first.regions] == [[2.0, 3.0, 12.0, 8.0], [30.0, 20.0, 40.0, 30.0]]  # merged, clipped
    answers = {a["value"] for a in first.conversations[1::2]}
    assert answers & {"a white cloud", "cloud in the sky"} and "grass" in answers
    assert {(p.kind, p.index) for p in report.problems} == {("box-outside", 0), ("malformed", 0), ("missing-image", 2)}
    (tmp_path / "densecap_splits.json").write_text(json.dumps({"train": [1], "val": [], "test": [2]}))
    test, _ = _read(f"vg:{tmp_path}/region_descriptions.json", images=str(tmp_path / "images"), split="test")
    assert [s.id for s in test] == ["vg-2"]


def test_llava_conversations(tmp_path):
    _png(tmp_path / "coco" / "train2017" / "1.jpg", size=(50, 20))
    data = [
        {"id": "a", "image": "coco/train2017/1.jpg", "conversations": [
            {"from": "human", "value": "What is this?\n<image>"}, {"from": "gpt", "value": "A grey picture."},
            {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes."}]},
        {"id": "b", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        {"id": "c", "image": "coco/train2017/missing.jpg", "conversations": [
            {"from": "human", "value": "<image>\nx"}, {"from": "gpt", "value": "y"}]},
        {"id": "d", "image": "coco/train2017/1.jpg", "conversations": [
            {"from": "gpt", "value": "leading"}, {"from": "user", "value": "<image>\nQ"},
            {"from": "assistant", "value": "A"}, {"from": "human", "value": "dangling"}]},
        {"id": "e", "image": "coco/train2017/1.jpg", "conversations": [{"from": "robot", "value": "?"}]},
    ]
    (tmp_path / "llava.json").write_text(json.dumps(data))
    samples, report = _read(f"llava:{tmp_path}/llava.json")
    assert [s.id for s in samples] == ["llava-a", "llava-d"]
    a, d = samples
    assert (a.width, a.height) == (50, 20) and a.regions == []
    assert a.conversations[0]["value"] == "<image>\nWhat is this?"  # moved to the start, as LLaVA does
    assert [t["value"] for t in d.conversations] == ["<image>\nQ", "A"]
    assert report.notes == {"text-only": 1}
    assert {(p.kind, p.index) for p in report.problems} == {("missing-image", 2), ("malformed", 4)}


def test_mixture_weights_and_native_task_filter(tmp_path_factory):
    from regiongpt.data.synth import write_world

    world = tmp_path_factory.mktemp("world")
    write_world(world, images=4, seed=0, width=64, height=64, val_fraction=0.25, progress=False)
    coco = f"coco:{world}/instances.json"
    base = load_samples([coco])
    mixed = load_samples([{"source": coco, "weight": 2.0}, {"source": f"native:{world}/native/train.jsonl",
                                                             "tasks": ["rec"], "weight": 0.5}])
    native = [s for s in mixed if s.source == "synth"]
    assert [s.id for s in mixed[: 2 * len(base)]] == [s.id for s in base] + [f"{s.id}~2" for s in base]
    assert len(native) == 2 and all(t["task"] == "rec" for s in native for t in s.conversations[0::2])
    assert all(s.conversations[0]["value"].startswith("<image>\n") for s in native)
    assert load_samples([{"source": coco, "weight": 2.0}], max_samples=3) == mixed[:3]
    # the task filter keeps each kept answer's evidence; COCO's existence answers name their regions
    kept = load_samples([{"source": f"native:{world}/native/train.jsonl", "tasks": ["existence"]}])
    assert kept and all("evidence" in t for s in kept for t in s.conversations[1::2])
    for sample in base:
        turns = sample.conversations
        for question, answer in zip(turns[0::2], turns[1::2]):
            if question["task"] == "existence":
                named = [k for k, r in enumerate(sample.regions, start=1) if f" {r.category} " in question["value"]]
                assert answer["evidence"] == (named if answer["value"] == "Yes." else [])
    with pytest.warns(UserWarning, match=r"data: 1 problem\(s\) \(1 malformed\): .*bad.jsonl\[2\]: missing key"):
        bad = tmp_path_factory.mktemp("bad") / "bad.jsonl"
        lines = (world / "native" / "train.jsonl").read_text().splitlines()
        bad.write_text(lines[0].replace("../images", str(world / "images")) + "\n{\"id\": 1}\n")
        assert len(load_samples([f"native:{bad}"])) == 1
    with pytest.raises(InvalidInputError, match=r"bad.jsonl\[2\]: missing key"):
        load_samples([f"native:{bad}"], strict=True)
