"""`regiongpt data inspect` end to end, and the task builders' prompts."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from PIL import Image

from regiongpt.cli.main import main
from regiongpt.data.native import NativeRegion
from regiongpt.data.synth import write_world
from regiongpt.data.tasks import COCO_80, AnnotatedImage, AnnotatedRegion, TaskOptions, build_turns


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    write_world(out, images=5, seed=3, width=64, height=64, val_fraction=0.4, progress=False)
    (out / "images" / "000002.png").unlink()  # a missing image
    (out / "images" / "000003.png").write_bytes(b"not a png")  # a corrupt one
    return out


def test_inspect_counts_problems_and_renders(world, tmp_path, capsys):
    out = tmp_path / "render"
    assert main(["data", "inspect", f"coco:{world}/instances.json", "--render", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "split  images  regions  brief  classify  existence" in text
    assert text.count("\ntrain ") == 1 and "\nval " in text and "\ntotal " in text
    assert "problems: 2 (1 missing-image, 1 unreadable-image)" in text
    assert f"{world}/instances.json[images[1]]: sample coco-2: image" in text and "does not exist" in text
    assert f"{world}/instances.json[images[2]]" in text
    pictures = sorted(out.glob("*.png"))
    assert [p.name for p in pictures] == ["000_coco-1.png", "001_coco-4.png"]  # unusable samples are not drawn
    with Image.open(pictures[0]) as picture:
        assert picture.width >= 512 and picture.height > picture.width  # the image, then the conversation

    assert main(["data", "inspect", f"refcoco:{world}:refcocog:umd", "--split", "val,test", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["counts"]) == {"val", "test", "total"}
    assert set(result["counts"]["total"]["tasks"]) == {"brief", "rec"} and result["problems"] == []

    assert main(["data", "inspect", f"coco:{world}/instances.json", "--strict"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("regiongpt data: error:") and "images[1]" in err and "strict" in err
    assert main(["data", "inspect", f"coco:{world}/instances.json", "--render", "1"]) == 2
    assert "--out" in capsys.readouterr().err


def _image(categories=("cat", "dog")):
    regions = [AnnotatedRegion(NativeRegion(1, [0, 0, 10, 10], category=categories[0]), captions=["a black cat"],
                               referring=["a black cat", "the cat on the left"]),
               AnnotatedRegion(NativeRegion(2, [50, 40, 60, 50], category=categories[1]), detailed="A dog, lying.")]
    return AnnotatedImage("x", "x.png", 64, 64, regions)


def test_task_prompts_are_paraphrased_and_scoped():
    options = TaskOptions(categories=COCO_80, rec_negatives=0.0)
    questions = set()
    for seed in range(6):
        qa = build_turns(_image(), options, random.Random(seed))
        by_task = {}
        evidence = {}
        for task, question, answer, *rest in qa:
            by_task.setdefault(task, []).append((question, answer))
            if rest:
                evidence[answer] = rest[0]
        classify = by_task["classify"][0][0]
        assert "Answer the question using COCO-80 category names." in classify
        questions.add(classify.split("?")[0])
        assert by_task["label"][0][1] == "It is a cat."
        assert by_task["rec"] == [(by_task["rec"][0][0], "Region [1]")]
        assert "<region1>, <region2>" in by_task["rec"][0][0] and "Region [x]" in by_task["rec"][0][0]
        assert by_task["rec"][0][0].count("'the cat on the left'") == 1 or by_task["brief"][0][1] != "a black cat"
        assert by_task["detailed"] == [(by_task["detailed"][0][0], "A dog, lying.")]
        assert [a for _, a in by_task["relation"]] in (["Region [1] is left of and above Region [2]."],
                                                      ["Region [2] is right of and below Region [1]."],
                                                      ["Region [1] is left of and above Region [2].",
                                                       "Region [2] is right of and below Region [1]."],
                                                      ["Region [2] is right of and below Region [1].",
                                                       "Region [1] is left of and above Region [2]."])
        assert sorted(a for _, a in by_task["existence"]) == ["No.", "Yes."]
        # the regions of the asked category back "Yes."; nothing backs "No."
        asked = by_task["existence"][[a for _, a in by_task["existence"]].index("Yes.")][0]
        assert evidence == {"Yes.": [1] if "cat" in asked else [2], "No.": []}
    assert len(questions) > 2  # paraphrases drawn with the rng
    assert build_turns(_image(), options, random.Random(1)) == build_turns(_image(), options, random.Random(1))
    listed = build_turns(_image(), TaskOptions(tasks=("classify",), categories=("cat", "dog")), random.Random(0))
    assert "the listed category names. Categories: cat, dog." in listed[0][1]
