"""The shipped built-in model: loads by default, and the API and CLI answer with it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from regiongpt import RegionGPT
from regiongpt.cli.main import main
from regiongpt.data.synth.generate import generate_scene
from regiongpt.processing.rle import encode_rle


@pytest.fixture(scope="module")
def builtin():
    return RegionGPT.load()


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    rng = np.random.default_rng(77)
    scene = generate_scene(rng)
    while len(scene.objects) < 3:
        scene = generate_scene(rng)
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    Image.fromarray(scene.image).save(path)
    return scene, path


def test_api_describe_ground_chat(builtin, scene):
    objects, path = scene
    regions = [{"segmentation": encode_rle(o.mask)} for o in objects.objects]
    briefs = builtin.describe(str(path), regions, task="brief")
    classes = builtin.describe(str(path), regions, task="classify", return_scores=True)
    assert len(briefs) == len(classes) == len(regions)
    assert all(a.text for a in briefs)
    assert set(classes[0].category_scores) == set(builtin.processor.categories)
    result = builtin.ground(str(path), regions, objects.objects[0].brief)
    assert result.region is None or 0 <= result.region < len(regions)
    reply = builtin.chat(str(path), regions, [{"role": "user", "content": "What is <region1>?"}], max_new_tokens=12)
    assert isinstance(reply, str)


def test_cli_on_the_builtin_model(scene, tmp_path, capsys):
    objects, path = scene
    box = ",".join(str(int(v)) for v in objects.objects[0].box)
    picture = tmp_path / "vis.png"
    assert main(["describe", str(path), "--box", box, "--json", "--save-vis", str(picture)]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["answers"][0]["region"] == 1 and picture.exists()
    assert main(["example", "--out", str(tmp_path / "ex"), "--seed", "3"]) == 0
    assert (tmp_path / "ex" / "answers.png").exists()
    assert main(["describe", str(path), "--box", "1000,1000,1100,1100"]) == 2
    assert "wholly outside" in capsys.readouterr().err
