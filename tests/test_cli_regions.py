"""`regiongpt describe / ground / chat` end to end, and their one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from regiongpt.cli.main import main


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(path)
    mask = np.zeros((48, 80), dtype=np.uint8)
    mask[20:40, 50:70] = 255
    Image.fromarray(mask).save(path.parent / "mask.png")
    return path


def test_describe_text_json_and_picture(model_dir, scene, tmp_path, capsys):
    args = ["describe", str(scene), "--box", "2,2,30,20", "--mask", str(scene.parent / "mask.png"),
            "--model", str(model_dir), "--max-new-tokens", "4"]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["1", "2"]
    picture = tmp_path / "vis.png"
    assert main(args + ["--json", "--save-vis", str(picture), "--task", "classify", "--categories", "star,ring",
                        "--scores"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [a["region"] for a in payload["answers"]] == [1, 2]
    assert set(payload["answers"][0]["category_scores"]) == {"star", "ring"}
    drawn = np.asarray(Image.open(picture))
    assert drawn.shape[1] >= 512 and drawn.shape[0] > 48 * (drawn.shape[1] // 80)  # scaled, with caption lines


def test_ground_and_chat(model_dir, scene, capsys):
    assert main(["ground", str(scene), "the red star", "--box", "2,2,30,20", "--box", "40,10,78,46",
                 "--model", str(model_dir), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["phrase"] == "the red star" and "answer" in payload
    assert main(["chat", str(scene), "What is <region1>?", "--box", "2,2,30,20", "--model", str(model_dir),
                 "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.endswith("\n")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--box", "100,100,120,130"], "wholly outside"),
        (["--box", "10,10,10,30"], "no area"),
        (["--box", "1,2,3"], "needs 4 numbers"),
        (["--mask", "MISSING.png"], "does not exist"),
        (["--mask", "EMPTY.png"], "empty"),
        (["--mask", "SMALL.png"], "10x10"),
        ([], "give at least one region"),
    ],
)
def test_bad_regions_give_one_line_errors(model_dir, scene, tmp_path, capsys, extra, message):
    Image.fromarray(np.zeros((48, 80), dtype=np.uint8)).save(tmp_path / "EMPTY.png")
    Image.fromarray(np.ones((10, 10), dtype=np.uint8)).save(tmp_path / "SMALL.png")
    extra = [str(tmp_path / e) if e.endswith(".png") else e for e in extra]
    code = main(["describe", str(scene), *extra, "--model", str(model_dir)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_other_bad_inputs(model_dir, scene, tmp_path, capsys):
    assert main(["chat", str(scene), "What is <region3>?", "--box", "2,2,30,20", "--box", "40,10,78,46",
                 "--model", str(model_dir)]) == 2
    assert "<region3> but 2 region(s)" in capsys.readouterr().err
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    assert main(["describe", str(not_image), "--box", "1,1,5,5", "--model", str(model_dir)]) == 2
    assert "not an image" in capsys.readouterr().err
    assert main(["describe", str(tmp_path / "nope.png"), "--box", "1,1,5,5", "--model", str(model_dir)]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["describe", str(scene), "--box", "1,1,5,5", "--model", str(tmp_path / "no-model")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_partly_outside_box_is_clipped_with_a_warning(model_dir, scene, capsys):
    assert main(["describe", str(scene), "--box", "60,30,120,90", "--model", str(model_dir),
                 "--max-new-tokens", "2"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "clip" in err.lower()


def test_batch_describe_over_coco_resumes_and_skips_bad_images(model_dir, tmp_path, capsys):
    from regiongpt.data.synth import write_world

    world = tmp_path / "world"
    write_world(world, images=5, seed=0, width=80, height=64)
    output = tmp_path / "out.jsonl"
    args = ["describe", str(world / "instances.json"), "--output", str(output), "--model", str(model_dir),
            "--max-new-tokens", "2", "--batch-images", "2"]
    assert main(args) == 0
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    coco = json.loads((world / "instances.json").read_text())
    assert [line["key"] for line in lines] == [str(i["id"]) for i in coco["images"]]
    assert all(len(line["answers"]) == len(line["annotation_ids"]) for line in lines)
    # interrupted mid-write: the torn line is dropped and only the missing images are redone
    text = output.read_text().splitlines()
    output.write_text("\n".join(text[:2]) + "\n" + text[2][:10])
    capsys.readouterr()
    assert main(args) == 0
    assert "2 already there" in capsys.readouterr().out
    assert [json.loads(line)["key"] for line in output.read_text().splitlines()] == [line["key"] for line in lines]
    # a broken image is reported on its own line and the job goes on
    (world / "images" / "000003.png").write_text("not a png")
    output.unlink()
    assert main(args) == 1
    broken = [json.loads(line) for line in output.read_text().splitlines() if "error" in json.loads(line)]
    assert len(broken) == 1 and "not an image" in broken[0]["error"]


def test_batch_describe_folder_and_native(model_dir, tmp_path, scene, capsys):
    from regiongpt.data.synth import write_world

    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.open(scene).save(folder / name)
    assert main(["describe", str(folder), "--output", str(tmp_path / "f.jsonl"), "--model", str(model_dir)]) == 2
    assert "needs regions" in capsys.readouterr().err
    assert main(["describe", str(folder), "--box", "0.1,0.1,0.5,0.5", "--normalized", "--output",
                 str(tmp_path / "f.jsonl"), "--model", str(model_dir), "--max-new-tokens", "2"]) == 0
    assert [json.loads(x)["key"] for x in (tmp_path / "f.jsonl").read_text().splitlines()] == ["a.png", "b.png"]
    world = tmp_path / "world"
    write_world(world, images=3, seed=1, width=80, height=64, val_fraction=0.0)
    assert main(["describe", str(world / "native" / "train.jsonl"), "--output", str(tmp_path / "n.jsonl"),
                 "--model", str(model_dir), "--max-new-tokens", "2"]) == 0
    assert len((tmp_path / "n.jsonl").read_text().splitlines()) == 3


def test_example_command_on_a_new_scene(model_dir, tmp_path, capsys):
    out = tmp_path / "example"
    assert main(["example", "--out", str(out), "--model", str(model_dir), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert len(payload["regions"]) >= 3 and payload["ground"]["phrase"]
    assert (out / "scene.png").exists() and (out / "answers.png").exists()
    assert all(row["true_category"] for row in payload["regions"])
