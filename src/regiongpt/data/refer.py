"""Reader for the refer layout of RefCOCO / RefCOCO+ / RefCOCOg (the ``refer`` API's files).

Layout::

    ROOT/<dataset>/refs(<splitBy>).p     pickle: list of {ref_id, ann_id, image_id, category_id,
                                         split, sentences[{sent_id, sent, tokens, raw}], ...}
    ROOT/<dataset>/instances.json        COCO instances (images, annotations, categories)
    IMAGES/<file_name>                   e.g. train2014/COCO_train2014_000000000009.jpg

The refs file is a pickle, and unpickling runs code named in the file. It is read with an
allow-list unpickler that resolves no global except ``set``/``frozenset``: the real files hold
only lists, dicts, strings and numbers, so a file that names any class or function (an
``os.system`` reduce, say) is refused with an error naming it, before anything runs.
The original files were written by Python 2; their byte strings are decoded as UTF-8
(falling back to Latin-1).
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from regiongpt.data.files import read_json
from regiongpt.errors import InvalidInputError

# Globals a refs pickle may name: containers that pickle by reduce under protocols 0-2.
ALLOWED_GLOBALS = frozenset({("builtins", "set"), ("builtins", "frozenset"),
                             ("__builtin__", "set"), ("__builtin__", "frozenset")})
REQUIRED_REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences")


class UnsafePickleError(InvalidInputError):
    """A pickle names a class or function outside the allow-list."""


class _AllowListUnpickler(pickle.Unpickler):
    """Resolves only the globals in :data:`ALLOWED_GLOBALS`; refuses everything else."""

    def __init__(self, file, source: str, **kwargs):
        super().__init__(file, **kwargs)
        self.source = source

    def find_class(self, module: str, name: str):  # noqa: D102 - see class docstring
        if (module, name) in ALLOWED_GLOBALS:
            return set if name == "set" else frozenset
        raise UnsafePickleError(
            f"{self.source}: refused to unpickle: it references {module}.{name}, but a refs file may hold only "
            "lists, dicts, strings and numbers; the file is not a refer-layout refs file or has been tampered with"
        )

    def persistent_load(self, pid):  # noqa: D102
        raise UnsafePickleError(f"{self.source}: refused to unpickle: it uses persistent ids, which refs files never do")


def safe_load_pickle(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` allowing only plain builtins (see module docstring)."""
    path = Path(path)
    data = path.read_bytes()
    last_error: Exception | None = None
    for encoding in ("utf-8", "latin1"):
        try:
            return _AllowListUnpickler(io.BytesIO(data), str(path), encoding=encoding).load()
        except UnicodeDecodeError as error:  # a Python 2 byte string that is not UTF-8
            last_error = error
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as error:
            raise InvalidInputError(f"{path} is not a readable pickle ({type(error).__name__}: {error})") from None
    raise InvalidInputError(f"{path}: cannot decode its strings ({last_error})")


@dataclass
class Sentence:
    sent_id: int
    sent: str
    tokens: list[str] = field(default_factory=list)


@dataclass
class Ref:
    """One referred object with its sentences, its annotation and its image."""

    ref_id: int
    ann_id: int
    image_id: int
    category_id: int | None
    split: str
    sentences: list[Sentence]
    ann: dict[str, Any]  # the COCO annotation (segmentation, bbox xywh, area, category_id)
    image: dict[str, Any]  # the COCO image entry (file_name, width, height)

    def region(self, mode: str = "mask") -> dict[str, Any]:
        """The referred region as the processor takes it: its mask, or its filled box (``mode='box'``)."""
        return annotation_region(self.ann, mode)


def annotation_region(ann: dict[str, Any], mode: str = "mask") -> dict[str, Any]:
    """A COCO annotation as a processor region: segmentation (``mask``) or xywh box (``box``)."""
    if mode not in ("mask", "box"):
        raise InvalidInputError(f"region mode must be 'mask' or 'box', got {mode!r}")
    if mode == "mask" and ann.get("segmentation"):
        return {"segmentation": ann["segmentation"]}
    return {"bbox": list(ann["bbox"]), "format": "xywh"}


@dataclass
class ReferDataset:
    """A refer-layout data set: refs (optionally one split's), annotations and images by id."""

    root: Path
    dataset: str
    split_by: str
    refs: list[Ref]
    anns: dict[int, dict[str, Any]]
    images: dict[int, dict[str, Any]]
    categories: dict[int, str]
    anns_by_image: dict[int, list[dict[str, Any]]]

    @property
    def refs_file(self) -> Path:
        return self.root / self.dataset / f"refs({self.split_by}).p"

    @property
    def instances_file(self) -> Path:
        return self.root / self.dataset / "instances.json"

    def image_path(self, image_id: int, images_dir: str | os.PathLike) -> Path:
        return Path(images_dir) / self.images[image_id]["file_name"]

    def splits(self) -> list[str]:
        return sorted({r.split for r in self.refs})


def resolve_refer_root(path: str | os.PathLike, dataset: str) -> Path:
    """``ROOT`` given either ``ROOT`` or ``ROOT/<dataset>``."""
    path = Path(path)
    if (path / dataset).is_dir():
        return path
    if path.name == dataset and path.is_dir():
        return path.parent
    raise InvalidInputError(f"{path} holds no {dataset}/ folder; give the refer root that contains "
                            f"{dataset}/refs(<splitBy>).p and {dataset}/instances.json")


def load_refer_files(folder: Path, dataset: str, split_by: str) -> tuple[list, dict]:
    """The raw refs list and the instances JSON of ``folder`` (= ``ROOT/<dataset>``), checked."""
    refs_file = folder / f"refs({split_by}).p"
    instances_file = folder / "instances.json"
    for needed in (refs_file, instances_file):
        if not needed.is_file():
            found = sorted(p.name for p in folder.glob("refs(*).p"))
            hint = f" (found: {', '.join(found)})" if found else ""
            raise InvalidInputError(f"{needed} does not exist{hint}; the refer layout needs "
                                    f"{dataset}/refs(<splitBy>).p and {dataset}/instances.json")
    raw = safe_load_pickle(refs_file)
    if not isinstance(raw, list):
        raise InvalidInputError(f"{refs_file} must hold a list of refs, got {type(raw).__name__}")
    instances = read_json(instances_file)
    if not isinstance(instances, dict) or not {"images", "annotations"} <= set(instances):
        raise InvalidInputError(f"{instances_file} is not COCO instances JSON (needs 'images' and 'annotations')")
    return raw, instances


def load_refer(root: str | os.PathLike, dataset: str = "refcocog", split_by: str = "umd",
               splits: Iterable[str] | None = None) -> ReferDataset:
    """Read ``ROOT/<dataset>/refs(<split_by>).p`` and ``instances.json``; keep refs of ``splits``.

    Refs keep the file's order. Every ref must point at an annotation and an image of the
    instances file (else :class:`InvalidInputError` naming the ref).
    """
    root = resolve_refer_root(root, dataset)
    folder = root / dataset
    raw, instances = load_refer_files(folder, dataset, split_by)
    refs_file, instances_file = folder / f"refs({split_by}).p", folder / "instances.json"
    anns = {a["id"]: a for a in instances["annotations"]}
    images = {i["id"]: i for i in instances["images"]}
    categories = {c["id"]: c["name"] for c in instances.get("categories", [])}
    anns_by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in instances["annotations"]:
        anns_by_image.setdefault(ann["image_id"], []).append(ann)
    wanted = set(splits) if splits is not None else None
    refs: list[Ref] = []
    for index, item in enumerate(raw):
        where = f"{refs_file}: refs[{index}]"
        if not isinstance(item, dict) or any(k not in item for k in REQUIRED_REF_KEYS):
            raise InvalidInputError(f"{where} must be a dict with {', '.join(REQUIRED_REF_KEYS)}")
        if wanted is not None and item["split"] not in wanted:
            continue
        ann = anns.get(item["ann_id"])
        image = images.get(item["image_id"])
        if ann is None or image is None:
            missing = "annotation" if ann is None else "image"
            raise InvalidInputError(f"{where} (ref_id {item['ref_id']}) names {missing} "
                                    f"{item['ann_id'] if ann is None else item['image_id']}, which {instances_file} lacks")
        sentences = [Sentence(int(s["sent_id"]), str(s.get("sent", s.get("raw", ""))), list(s.get("tokens", [])))
                     for s in item["sentences"]]
        refs.append(Ref(int(item["ref_id"]), int(item["ann_id"]), int(item["image_id"]), item.get("category_id"),
                        str(item["split"]), sentences, ann, image))
    if wanted is not None and not refs:
        present = sorted({str(r.get("split")) for r in raw if isinstance(r, dict)})
        raise InvalidInputError(f"{refs_file} has no refs in split(s) {', '.join(sorted(wanted))}; "
                                f"its splits are: {', '.join(present) or 'none'}")
    return ReferDataset(root, dataset, split_by, refs, anns, images, categories, anns_by_image)


def refs_by_image(refs: Sequence[Ref]) -> dict[int, list[Ref]]:
    """Refs grouped by image id, images in order of first appearance."""
    out: dict[int, list[Ref]] = {}
    for ref in refs:
        out.setdefault(ref.image_id, []).append(ref)
    return out
