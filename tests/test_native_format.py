"""The native JSON-lines format: round trip, validation with file:line, path resolution."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from regiongpt.data.native import (
    NativeRegion,
    NativeSample,
    read_native_jsonl,
    region_references,
    validate_native_jsonl,
    validate_sample_json,
    write_native_jsonl,
)
from regiongpt.errors import InvalidInputError
from regiongpt.processing.rle import encode_rle


def _mask(h: int = 20, w: int = 30) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[4:9, 10:17] = True
    return mask


def _sample(**changes) -> dict:
    obj = {
        "id": "s-1",
        "image": "../images/000001.png",
        "width": 30,
        "height": 20,
        "source": "test",
        "split": "train",
        "regions": [
            {"id": 1, "box": [10.0, 4.0, 17.0, 9.0], "mask": encode_rle(_mask()), "category": "star", "attributes": {"colour": "red"}},
            {"id": 2, "box": [0.0, 0.0, 5.0, 5.0], "mask": None, "category": None, "attributes": {}},
        ],
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is <region1>?", "task": "classify"},
            {"from": "gpt", "value": "star"},
            {"from": "human", "value": "Where is <region2> relative to <region1>?", "task": "relation"},
            {"from": "gpt", "value": "Region [2] is left of Region [1]."},
        ],
    }
    obj.update(changes)
    return obj


def _write_lines(path: Path, objs: list) -> Path:
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs))
    return path


def test_round_trip(tmp_path):
    sample = NativeSample.from_json(_sample())
    path = tmp_path / "native" / "train.jsonl"
    assert write_native_jsonl(path, [sample, sample]) == 2
    back = list(read_native_jsonl(path))
    assert back == [sample, sample]
    assert back[0].to_json() == _sample()
    assert back[0].image_path() == (tmp_path / "images" / "000001.png").resolve()
    assert validate_native_jsonl(path) == 2
    assert not [p for p in path.parent.iterdir() if p.name != "train.jsonl"]


def test_answers_carry_evidence_through_a_round_trip(tmp_path):
    turns = [{"from": "human", "value": "<image>\nIs there a star in the image?", "task": "existence"},
             {"from": "gpt", "value": "Yes.", "evidence": [1]},
             {"from": "human", "value": "Is there a ring in the image?", "task": "existence"},
             {"from": "gpt", "value": "No.", "evidence": []}]
    path = _write_lines(tmp_path / "ok.jsonl", [_sample(conversations=turns)])
    (sample,) = read_native_jsonl(path)
    assert [t.get("evidence") for t in sample.conversations] == [None, [1], None, []]
    write_native_jsonl(tmp_path / "again.jsonl", [sample])
    assert json.loads((tmp_path / "again.jsonl").read_text())["conversations"] == turns


def test_absolute_image_path_and_box_from_mask(tmp_path):
    region = {"id": 5, "mask": encode_rle(_mask())}
    turns = [{"from": "human", "value": "<image>\nWhat is <region1>?"}, {"from": "gpt", "value": "star"}]
    obj = _sample(image=str(tmp_path / "x.png"), regions=[region], conversations=turns)
    sample = NativeSample.from_json(obj, base_dir=Path("/elsewhere"))
    assert sample.image_path() == tmp_path / "x.png"
    assert sample.regions[0].box == [10.0, 4.0, 17.0, 9.0]
    assert isinstance(sample.regions[0], NativeRegion)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"extra": 1}, "unknown key"),
        ({"width": 0}, "width and height"),
        ({"regions": [{"id": 1, "box": [0, 0, 31, 5]}]}, "outside"),
        ({"regions": [{"id": 1, "box": [5, 5, 5, 6]}]}, "empty or outside"),
        ({"regions": [{"id": 1}]}, "neither 'box' nor 'mask'"),
        ({"regions": [{"id": 1, "box": [0, 0, 2, 2], "colour": "red"}]}, "unknown key"),
        ({"regions": [{"id": 1, "mask": encode_rle(np.ones((5, 5), bool))}]}, "does not match"),
        ({"regions": [{"id": 1, "box": [0, 0, 2, 2]}]}, "<region2>"),
        ({"conversations": [{"from": "human", "value": "What is <region1>?"}, {"from": "gpt", "value": "x"}]}, "<image>"),
        (
            {"conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "<image> x"}]},
            "only in the first human turn",
        ),
        ({"conversations": [{"from": "gpt", "value": "<image>"}]}, "alternate"),
        ({"conversations": [{"from": "human", "value": "<image>\nHi", "task": "dance"}]}, "task"),
        ({"conversations": [{"from": "human", "value": "<image>\nHi", "lang": "en"}]}, "unknown key"),
        ({"conversations": [{"from": "human", "value": "<image>\nIs there a star?", "evidence": [1]},
                            {"from": "gpt", "value": "Yes."}]}, "only answers (gpt turns) carry evidence"),
        ({"conversations": [{"from": "human", "value": "<image>\nIs there a star?"},
                            {"from": "gpt", "value": "Yes.", "evidence": "1"}]}, "must be a list of region numbers"),
        ({"conversations": [{"from": "human", "value": "<image>\nIs there a star?"},
                            {"from": "gpt", "value": "Yes.", "evidence": [3]}]}, "names region 3 but the sample has 2"),
        ({"conversations": [{"from": "human", "value": "<image>\nIs there a star?"},
                            {"from": "gpt", "value": "Yes.", "evidence": [1, 1]}]}, "names a region twice"),
    ],
)
def test_validation_names_file_and_line(tmp_path, change, message):
    path = _write_lines(tmp_path / "bad.jsonl", [_sample(), _sample(**change)])
    with pytest.raises(InvalidInputError) as info:
        list(read_native_jsonl(path))
    assert f"{path}:2:" in str(info.value)
    assert message in str(info.value)


def test_bad_json_line_and_blank_lines(tmp_path):
    path = _write_lines(tmp_path / "bad.jsonl", [_sample(), "", "{not json"])
    with pytest.raises(InvalidInputError, match=r"bad\.jsonl:3: not valid JSON"):
        list(read_native_jsonl(path))
    ok = _write_lines(tmp_path / "ok.jsonl", [_sample(), "", _sample()])
    assert validate_native_jsonl(ok) == 2


def test_write_refuses_invalid_samples_and_leaves_nothing(tmp_path):
    bad = NativeSample.from_json(_sample())
    bad.regions[0].box = [0.0, 0.0, 100.0, 5.0]
    path = tmp_path / "out.jsonl"
    with pytest.raises(InvalidInputError, match="sample 1"):
        write_native_jsonl(path, [bad])
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InvalidInputError):
        bad.validate()


def test_region_references_and_direct_validation():
    assert region_references("<region2> is left of <region10>.") == [2, 10]
    validate_sample_json(_sample())
    with pytest.raises(InvalidInputError, match="<sample>"):
        validate_sample_json([1, 2])


def test_answers_may_not_contain_region_placeholders():
    bad = _sample()
    bad["conversations"][3]["value"] = "<region2> is left of <region1>."
    with pytest.raises(InvalidInputError, match="cannot generate region placeholders"):
        NativeSample.from_json(bad)
