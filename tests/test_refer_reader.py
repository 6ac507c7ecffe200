"""The refer-layout reader: the real file layout, split filtering, safe unpickling."""

from __future__ import annotations

import json
import os
import pickle

import pytest

from regiongpt.data.refer import UnsafePickleError, load_refer, refs_by_image, safe_load_pickle
from regiongpt.errors import InvalidInputError


def _ref(ref_id, ann_id, image_id, split, sentences, sent_base):
    sents = [{"tokens": s.split(), "raw": s, "sent_id": sent_base + i, "sent": s} for i, s in enumerate(sentences)]
    return {"image_id": image_id, "split": split, "sentences": sents, "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
            "category_id": 1, "ann_id": ann_id, "sent_ids": [s["sent_id"] for s in sents], "ref_id": ref_id}


@pytest.fixture
def refer_root(tmp_path):
    """ROOT/refcocog/refs(umd).p (pickle protocol 2, as the originals) + instances.json."""
    folder = tmp_path / "refer" / "refcocog"
    folder.mkdir(parents=True)
    refs = [
        _ref(0, 10, 1, "train", ["the man on the left"], 100),
        _ref(1, 11, 1, "val", ["a dog lying on the grass", "brown dog"], 200),
        _ref(2, 20, 2, "test", ["a red car parked"], 300),
        _ref(3, 12, 1, "val", ["the woman in white"], 400),
    ]
    (folder / "refs(umd).p").write_bytes(pickle.dumps(refs, protocol=2))
    poly = [[1.0, 1.0, 9.0, 1.0, 9.0, 9.0, 1.0, 9.0]]
    instances = {
        "images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": 32, "height": 24},
                   {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "width": 32, "height": 24}],
        "annotations": [{"id": i, "image_id": 1 if i < 20 else 2, "category_id": 1, "segmentation": poly,
                         "bbox": [1, 1, 8, 8], "area": 64.0, "iscrowd": 0} for i in (10, 11, 12, 20)],
        "categories": [{"id": 1, "name": "thing", "supercategory": "x"}],
    }
    (folder / "instances.json").write_text(json.dumps(instances))
    return tmp_path / "refer"


def test_reads_the_real_layout_with_split_filtering(refer_root, tmp_path):
    data = load_refer(refer_root, "refcocog", "umd", splits=["val"])
    assert [r.ref_id for r in data.refs] == [1, 3]
    ref = data.refs[0]
    assert [s.sent for s in ref.sentences] == ["a dog lying on the grass", "brown dog"]
    assert [s.sent_id for s in ref.sentences] == [200, 201] and ref.sentences[1].tokens == ["brown", "dog"]
    assert ref.ann["id"] == 11 and ref.image["file_name"] == "COCO_train2014_000000000001.jpg"
    assert ref.region() == {"segmentation": ref.ann["segmentation"]}
    assert ref.region("box") == {"bbox": [1, 1, 8, 8], "format": "xywh"}
    assert data.image_path(1, tmp_path / "train2014") == tmp_path / "train2014" / "COCO_train2014_000000000001.jpg"
    assert [a["id"] for a in data.anns_by_image[1]] == [10, 11, 12]
    assert list(refs_by_image(data.refs)) == [1]
    # the dataset folder itself is accepted too; no split filter keeps everything in file order
    everything = load_refer(refer_root / "refcocog")
    assert [r.split for r in everything.refs] == ["train", "val", "test", "val"]


def test_missing_split_and_files_give_clear_errors(refer_root):
    with pytest.raises(InvalidInputError, match="no refs in split.*testB.*its splits are: test, train, val"):
        load_refer(refer_root, splits=["testB"])
    with pytest.raises(InvalidInputError, match=r"refs\(google\)\.p does not exist \(found: refs\(umd\)\.p\)"):
        load_refer(refer_root, split_by="google")
    with pytest.raises(InvalidInputError, match="no refcoco/ folder"):
        load_refer(refer_root, dataset="refcoco")


def test_ref_pointing_at_a_missing_annotation(refer_root):
    path = refer_root / "refcocog" / "refs(umd).p"
    refs = safe_load_pickle(path)
    refs[0]["ann_id"] = 999
    path.write_bytes(pickle.dumps(refs, protocol=2))
    with pytest.raises(InvalidInputError, match="ref_id 0.*annotation 999"):
        load_refer(refer_root)


class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_malicious_pickle_is_refused_before_anything_runs(refer_root, tmp_path):
    marker = tmp_path / "pwned"
    path = refer_root / "refcocog" / "refs(umd).p"
    path.write_bytes(pickle.dumps([{"ref_id": 0, "payload": _Exploit(marker)}], protocol=2))
    with pytest.raises(UnsafePickleError, match=r"references (posix|nt|os)\.system"):
        load_refer(refer_root)
    assert not marker.exists()
    with pytest.raises(InvalidInputError):  # also an InvalidInputError: the CLI shows one line
        safe_load_pickle(path)
    for protocol in (0, 5):
        path.write_bytes(pickle.dumps(_Exploit(marker), protocol=protocol))
        with pytest.raises(UnsafePickleError):
            safe_load_pickle(path)
    assert not marker.exists()


def test_objects_are_refused_plain_builtins_are_not(tmp_path):
    from collections import OrderedDict

    path = tmp_path / "x.p"
    path.write_bytes(pickle.dumps(OrderedDict(a=1), protocol=2))
    with pytest.raises(UnsafePickleError, match="collections.OrderedDict"):
        safe_load_pickle(path)
    plain = [{"a": [1, 2.5, "x", None, True, (1, 2)], "s": {1, 2}, "f": frozenset({3})}]
    path.write_bytes(pickle.dumps(plain, protocol=2))
    assert safe_load_pickle(path) == plain
    path.write_bytes(b"not a pickle")
    with pytest.raises(InvalidInputError, match="not a readable pickle"):
        safe_load_pickle(path)


def test_python2_byte_strings_are_decoded(tmp_path):
    path = tmp_path / "py2.p"
    # [{"sent": "café!"}] as Python 2 writes it: SHORT_BINSTRING opcodes holding UTF-8 bytes
    path.write_bytes(b"\x80\x02](}U\x04sentU\x06caf\xc3\xa9!se.")
    assert safe_load_pickle(path) == [{"sent": "café!"}]
    path.write_bytes(b"\x80\x02](}U\x04sentU\x02\xe9tse.")  # not UTF-8: Latin-1 fallback
    assert safe_load_pickle(path) == [{"sent": "ét"}]
