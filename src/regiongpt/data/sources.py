"""Data sources: ``READER:PATH`` specs, their options, and the problems readers find.

A source names a reader and a file (or folder) plus options::

    native:world/native/train.jsonl            RegionGPT JSON lines
    coco:annotations/instances_train2017.json  COCO instances (images folder: option ``images``)
    refcoco:ROOT:refcocog:umd                  refer layout: ROOT/refcocog/refs(umd).p + instances.json
    vg:region_descriptions.json                Visual Genome region descriptions
    llava:llava_v1_5_mix665k.json              LLaVA conversation JSON

Options that do not fit in the text (the images folder, the split, the tasks to build, the
mixture weight, ...) are fields of :class:`Source`; the training config's mapping form of a
source and the ``data inspect`` options set them. See ``docs/data.md``.

Readers never stop at the first bad annotation: they report a :class:`Problem` (file, index,
what was wrong) to a :class:`ReadReport` and skip the entry, unless the report is strict,
in which case the first problem that drops data raises :class:`InvalidInputError`.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from regiongpt.errors import InvalidInputError

# Readers and what their path names.
READER_NAMES = ("native", "coco", "refcoco", "vg", "llava")
REFER_DATASETS = ("refcoco", "refcoco+", "refcocog", "refclef")
DEFAULT_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd", "refclef": "unc"}


@dataclass(frozen=True)
class Source:
    """One data source with its options (what a reader needs)."""

    reader: str
    path: Path
    dataset: str | None = None  # refcoco: the data set folder under ROOT (refcoco, refcoco+, refcocog)
    split_by: str | None = None  # refcoco: refs(<split_by>).p
    images: Path | None = None  # the images folder (None: the reader's default)
    split: tuple[str, ...] | None = None  # keep only these splits (None: all)
    tasks: tuple[str, ...] | None = None  # tasks to build (None: the reader's defaults)
    weight: float = 1.0
    seed: int = 0
    strict: bool = False
    max_samples: int | None = None
    max_regions: int | None = None
    rec_negatives: float = 0.1
    spec: str = ""

    @property
    def name(self) -> str:
        """How messages name the source."""
        return self.spec or f"{self.reader}:{self.path}"


def split_reader(text: str) -> tuple[str, str]:
    """``READER:REST`` -> (reader, rest); a bare path (or a Windows drive letter) means ``native``."""
    reader, sep, rest = text.partition(":")
    if not sep or len(reader) == 1:
        return "native", text
    return reader, rest


def check_reader(reader: str, spec: str, known: Iterable[str] = READER_NAMES) -> None:
    known = list(known)
    if reader not in known:
        close = difflib.get_close_matches(reader, known, n=1)
        hint = f" did you mean '{close[0]}'?" if close else ""
        raise InvalidInputError(f"data source {spec!r}: unknown reader {reader!r};{hint} "
                                f"available: {', '.join(known)} (write READER:PATH, see docs/data.md)")


def split_refer_path(rest: str) -> tuple[str, str | None, str | None]:
    """``ROOT[:DATASET[:SPLITBY]]`` -> (ROOT, DATASET, SPLITBY); the last parts hold no '/'."""
    parts = rest.split(":")
    tail: list[str] = []
    while len(parts) > 1 and len(tail) < 2 and "/" not in parts[-1] and "\\" not in parts[-1]:
        tail.insert(0, parts.pop())
    root = ":".join(parts)
    dataset = tail[0] if tail else None
    split_by = tail[1] if len(tail) > 1 else None
    return root, dataset or None, split_by or None


def resolve_spec_paths(spec: str, resolve) -> str:
    """``spec`` with its path part passed through ``resolve`` (config files: relative to the file)."""
    reader, rest = split_reader(spec)
    if reader == "native" and rest == spec:
        return resolve(spec)
    if reader == "refcoco":
        root, dataset, split_by = split_refer_path(rest)
        return ":".join([reader, resolve(root), *(p for p in (dataset, split_by) if p)])
    return f"{reader}:{resolve(rest)}"


def _as_tuple(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
        return tuple(items) or None
    return tuple(str(v) for v in value)


def make_source(spec: Any, check_exists: bool = True, known_readers: Iterable[str] = READER_NAMES,
                **options: Any) -> Source:
    """A :class:`Source` from a ``READER:PATH`` string, a mapping (the config's form: ``source``
    plus options) or an object with those attributes; ``options`` override.

    ``check_exists=False`` checks the syntax only (configs with placeholder paths).
    """
    if isinstance(spec, Source):
        fields: dict[str, Any] = {}
        text = spec.spec
        base = spec
    else:
        if isinstance(spec, str):
            fields, text = {}, spec
        elif isinstance(spec, Mapping):
            fields, text = dict(spec), spec.get("source")
        else:  # a config dataclass
            fields, text = dict(vars(spec)), getattr(spec, "source", None)
        if not isinstance(text, str) or not text:
            raise InvalidInputError(f"data source {spec!r} needs 'source: READER:PATH', e.g. coco:instances.json")
        reader, rest = split_reader(text)
        check_reader(reader, text, known_readers)
        dataset = split_by = None
        if reader == "refcoco":
            rest, dataset, split_by = split_refer_path(rest)
        if not rest:
            raise InvalidInputError(f"data source {text!r} has no path; write {reader}:PATH")
        base = Source(reader, Path(rest).expanduser(), dataset, split_by, spec=text)
    fields.pop("source", None)
    fields.update({k: v for k, v in options.items() if v is not None})
    changes: dict[str, Any] = {}
    for key, value in fields.items():
        if value is None:
            continue
        if key == "images":
            changes["images"] = Path(value).expanduser()
        elif key in ("split", "tasks"):
            changes[key] = _as_tuple(value)
        elif key in ("weight", "rec_negatives"):
            changes[key] = float(value)
        elif key in ("seed", "max_samples", "max_regions"):
            changes[key] = int(value)
        elif key == "strict":
            changes[key] = bool(value)
        elif key in ("dataset", "split_by"):
            changes[key] = str(value)
        else:
            raise InvalidInputError(f"data source {text!r}: unknown option {key!r}")
    source = replace(base, **changes)
    if source.weight <= 0:
        raise InvalidInputError(f"data source {source.name}: weight must be > 0, got {source.weight}")
    if not 0 <= source.rec_negatives < 1:
        raise InvalidInputError(f"data source {source.name}: rec_negatives must be in [0, 1), got {source.rec_negatives}")
    for key in ("max_samples", "max_regions"):
        value = getattr(source, key)
        if value is not None and value < 1:
            raise InvalidInputError(f"data source {source.name}: {key} must be >= 1, got {value}")
    if check_exists:
        if not source.path.exists():
            raise FileNotFoundError(2, f"data source {source.name} not found", str(source.path))
        if source.images is not None and not source.images.is_dir():
            raise InvalidInputError(f"data source {source.name}: images folder {source.images} does not exist; "
                                    "give the folder that holds the image files (--images DIR / images: DIR)")
    return source


# ----- problems ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """Something wrong in a source: ``file`` and ``index`` (entry, line or ref) say where."""

    kind: str  # missing-image, unreadable-image, image-size, box-outside, empty-mask, malformed, ...
    file: str
    index: int | str | None
    message: str
    skipped: bool = True  # the entry was dropped (else: fixed, e.g. a box clipped to the image)

    def text(self) -> str:
        where = self.file if self.index is None else f"{self.file}[{self.index}]"
        return f"{where}: {self.message}" + ("" if self.skipped else " (fixed)")

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "file": self.file, "index": self.index, "message": self.message,
                "skipped": self.skipped}


@dataclass
class ReadReport:
    """Problems found while reading; strict: the first one that drops data raises.

    ``notes`` counts entries left out on purpose (e.g. LLaVA's text-only conversations): not faults.
    """

    strict: bool = False
    problems: list[Problem] = field(default_factory=list)
    notes: Counter = field(default_factory=Counter)

    def note(self, what: str) -> None:
        self.notes[what] += 1

    def add(self, kind: str, file: str | Path, index: int | str | None, message: str, skipped: bool = True) -> None:
        problem = Problem(kind, str(file), index, message, skipped)
        if self.strict and skipped:
            raise InvalidInputError(f"{problem.text()} (strict mode: fix the entry or drop data.strict / --strict "
                                    "to skip it with a warning)")
        self.problems.append(problem)

    def counts(self) -> Counter:
        return Counter(p.kind for p in self.problems)

    def summary(self, limit: int = 5) -> str:
        """One line: counts per kind and the first ``limit`` problems."""
        if not self.problems:
            return "no problems"
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.counts().items()))
        first = "; ".join(p.text() for p in self.problems[:limit])
        more = f"; ... and {len(self.problems) - limit} more" if len(self.problems) > limit else ""
        return f"{len(self.problems)} problem(s) ({kinds}): {first}{more}"


def set_origin(sample: Any, file: str | Path, index: int | str) -> Any:
    """Remember where a sample came from (annotation file and entry index) for problem reports.

    Kept as a plain attribute, so it is neither serialised nor compared.
    """
    sample.origin = (str(file), index)
    return sample


def origin(sample: Any) -> tuple[str, int | str | None]:
    """``(file, index)`` of a sample read by a reader (``(sample id, None)`` otherwise)."""
    return getattr(sample, "origin", (str(getattr(sample, "id", "?")), None))


__all__ = ["origin", "set_origin", "DEFAULT_SPLIT_BY", "Problem", "READER_NAMES", "REFER_DATASETS", "ReadReport", "Source", "check_reader",
           "make_source", "resolve_spec_paths", "split_reader", "split_refer_path"]
