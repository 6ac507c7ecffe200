"""Training data: source readers, conversation packing, a step-indexed sampler and the collator.

The unit of data is one *image sample* (a :class:`~regiongpt.data.native.NativeSample`: one
image, all of its regions, one multi-turn conversation). Its question-answer pairs are
filtered by task, shuffled (per epoch) and packed into as few sequences as fit
``max_length`` (whole turn pairs; each sequence carries the image), so every region of an
image is learned from one encoding of that image per sequence.

Data order is a pure function of the seed and the position in the sample stream (epoch
``e`` is a seeded permutation), so the data position of a run is one integer and resuming
replays exactly the batches an uninterrupted run would have seen.

Readers: a source is written ``READER:PATH`` (or, in a config, a mapping with ``source`` and
options such as ``images``, ``split``, ``tasks``, ``weight``); :data:`READERS` maps reader
names (``native``, ``coco``, ``refcoco``, ``vg``, ``llava``) to functions that yield native
samples. ``docs/data.md`` documents every source.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler

from regiongpt.data.native import NativeSample
from regiongpt.data.readers import read_coco, read_llava, read_native, read_refcoco, read_vg
from regiongpt.data.sources import ReadReport, Source, make_source, origin, set_origin
from regiongpt.errors import InvalidInputError
from regiongpt.processing.instructions import strip_task_suffix

from .independent_turns import (causal_layout, format_sequence, pairs_to_turns, segment_mask, split_pairs,
                                turn_layout)
from .region_aux import region_label_record

IGNORE_INDEX = -100
DEFAULT_TASK = "chat"  # the task of a turn that carries none
_IMAGE_IN_TEXT = re.compile(r"\s*<image>\s*")
_REGION_REFERENCE = re.compile(r"<region\d+>")


# ----- sources -----------------------------------------------------------------------------------
def read_native_source(source: Source, report: ReadReport) -> Iterator[NativeSample]:
    """The ``native`` reader: RegionGPT's JSON-lines format (validated line by line)."""
    return read_native(source, report)


# Reader name -> function(source, report) yielding NativeSamples: the one interface every format
# implements (regiongpt.data.readers). A new format adds an entry here.
READERS: MappingProxyType[str, Callable[[Source, ReadReport], Iterable[NativeSample]]] = MappingProxyType({
    "native": read_native_source,
    "coco": read_coco,
    "refcoco": read_refcoco,
    "vg": read_vg,
    "llava": read_llava,
})


def resolve_source(spec: Any, check_exists: bool = True, **options: Any) -> Source:
    """A :class:`~regiongpt.data.sources.Source` from ``READER:PATH``, a config entry (``source`` +
    options) or a Source; ``options`` (``images``, ``split``, ...) override."""
    return make_source(spec, check_exists=check_exists, known_readers=READERS, **options)


def parse_source(spec: str) -> tuple[str, Path]:
    """``READER:PATH`` -> (reader name, resolved path); a bare ``*.jsonl`` path means ``native``."""
    source = resolve_source(spec)
    return source.reader, source.path


def read_source(source: Source, report: ReadReport | None = None) -> Iterator[NativeSample]:
    """The samples of one source, in file order (at most ``source.max_samples``), before weighting."""
    report = report if report is not None else ReadReport(strict=source.strict)
    samples = iter(READERS[source.reader](source, report))
    return islice(samples, source.max_samples) if source.max_samples is not None else samples


def weighted(samples: list[NativeSample], weight: float, seed: int, name: str) -> list[NativeSample]:
    """A source's share of the mixture: ``weight`` x its samples per epoch.

    The integer part repeats every sample (copies get ids ``ID~2``, ``ID~3``, ...); the fraction
    takes a seeded subset (file order kept).
    """
    if weight == 1.0 or not samples:
        return samples
    whole, fraction = int(weight), weight - int(weight)
    out = list(samples)
    for copy in range(2, whole + 1):
        out += [set_origin(dataclasses.replace(s, id=f"{s.id}~{copy}"), *origin(s)) for s in samples]
    if whole == 0:
        out = []
    extra = round(fraction * len(samples))
    if extra:
        chosen = sorted(random.Random(f"weight:{seed}:{name}").sample(range(len(samples)), extra))
        suffix = f"~{whole + 1}" if whole else ""
        out += [set_origin(dataclasses.replace(samples[i], id=f"{samples[i].id}{suffix}"), *origin(samples[i]))
                for i in chosen]
    return out


def load_samples(specs: Sequence[Any], max_samples: int | None = None, strict: bool | None = None,
                 report: ReadReport | None = None) -> list[NativeSample]:
    """All samples of the given sources (the mixture, weights applied), in order (at most ``max_samples``).

    ``specs`` are ``READER:PATH`` strings or config entries with options. Malformed entries are
    skipped with one warning naming the first few (file and index); with ``strict`` (default:
    each source's own ``strict``) the first one raises :class:`InvalidInputError`.
    """
    samples: list[NativeSample] = []
    own_report = report is None
    report = report if report is not None else ReadReport()
    for spec in specs:
        source = resolve_source(spec)
        if strict is not None:
            source = dataclasses.replace(source, strict=strict)
        report.strict = source.strict
        read = read_source(source, report)
        if source.weight == 1.0 and max_samples is not None:
            read = islice(read, max(0, max_samples - len(samples)))
        samples += weighted(list(read), source.weight, source.seed, source.name)
        if max_samples is not None and len(samples) >= max_samples:
            samples = samples[:max_samples]
            break
    if own_report and report.problems:
        warnings.warn(f"data: {report.summary()}; run `regiongpt data inspect SOURCE` for the full list", stacklevel=2)
    return samples


# ----- streaming ---------------------------------------------------------------------------------
def line_offsets(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Byte offsets (start, end) of the non-empty lines of a JSON-lines file, without parsing them."""
    starts, ends = [], []
    position = 0
    with open(path, "rb") as handle:
        for line in handle:
            if line.strip():
                starts.append(position)
                ends.append(position + len(line))
            position += len(line)
    return np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)


class StreamedNativeSamples(Sequence[NativeSample]):
    """Native JSON-lines samples read on demand by byte offset (``data.streaming``).

    Opening scans the files once for line offsets (8 + 8 bytes a sample, no JSON parsing);
    ``self[i]`` seeks to line ``i`` and parses only it. A process (a rank, a DataLoader
    worker) thus holds just the index and reads only the samples its shard asks for, so a
    data set larger than memory trains. A malformed line raises
    :class:`InvalidInputError` when it is read (the dataset skips it, or fails when strict).
    """

    def __init__(self, sources: Sequence[Source], max_samples: int | None = None):
        self.paths = [s.path for s in sources]
        self.base_dirs = [(s.images or s.path.parent).resolve() for s in sources]
        files, starts, ends = [], [], []
        for f, source in enumerate(sources):
            begin, end = line_offsets(source.path)
            if source.max_samples is not None:
                begin, end = begin[:source.max_samples], end[:source.max_samples]
            files.append(np.full(len(begin), f, dtype=np.int32))
            starts.append(begin)
            ends.append(end)
        self.file = np.concatenate(files) if files else np.zeros(0, dtype=np.int32)
        self.start = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
        self.end = np.concatenate(ends) if ends else np.zeros(0, dtype=np.int64)
        if max_samples is not None:
            self.file, self.start, self.end = self.file[:max_samples], self.start[:max_samples], self.end[:max_samples]
        self._handles: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.start)

    def __getitem__(self, index: int) -> NativeSample:  # type: ignore[override]
        if not 0 <= index < len(self):
            raise IndexError(index)
        f = int(self.file[index])
        handle = self._handles.get(f)
        if handle is None:
            handle = self._handles[f] = open(self.paths[f], "rb")
        handle.seek(int(self.start[index]))
        line = handle.read(int(self.end[index] - self.start[index]))
        where = f"{self.paths[f]} (line at byte {int(self.start[index])})"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as error:
            raise InvalidInputError(f"{where}: not valid JSON ({error.msg})") from None
        return set_origin(NativeSample.from_json(obj, where, self.base_dirs[f]), self.paths[f], int(self.start[index]))

    def line_lengths(self) -> np.ndarray:
        """Bytes of each sample's line: the length proxy of length-grouped batching."""
        return self.end - self.start

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers open their own files
        return {**self.__dict__, "_handles": {}}


def stream_samples(specs: Sequence[Any], max_samples: int | None = None) -> StreamedNativeSamples:
    """The training sources as a :class:`StreamedNativeSamples` (``data.streaming``).

    Only ``native`` sources without per-source filtering or weighting stream: those options
    need every sample parsed before training.
    """
    sources = []
    for spec in specs:
        source = resolve_source(spec)
        unsupported = [name for name, off in (("split", source.split is None), ("tasks", source.tasks is None),
                                              ("weight", source.weight == 1.0),
                                              ("max_regions", source.max_regions is None)) if not off]
        if source.reader != "native" or unsupported:
            raise InvalidInputError(
                f"data.streaming reads native JSON lines lazily; {source.spec or source.path} is a "
                f"{source.reader!r} source{' with ' + ', '.join(unsupported) if unsupported else ''}. Write it as "
                "native JSON lines first (regiongpt.data.native.write_native_jsonl) or set data.streaming=false")
        sources.append(source)
    return StreamedNativeSamples(sources, max_samples)


# ----- conversations -----------------------------------------------------------------------------
@dataclass(frozen=True)
class QAPair:
    """One human question and the assistant's answer, with the question's task and the answer's
    evidence (the numbers K of the regions it rests on; None when the data does not say)."""

    question: str
    answer: str
    task: str
    evidence: tuple[int, ...] | None = None


def conversation_pairs(sample: NativeSample, task_suffix: bool = True) -> list[QAPair]:
    """The sample's turns as question-answer pairs, with ``<image>`` removed from the text.

    The packer puts ``<image>`` back at the start of each packed sequence's first question.
    ``task_suffix=False`` strips each question's task-guided scope suffix.
    """
    turns = sample.conversations
    if len(turns) % 2:
        raise InvalidInputError(f"sample {sample.id}: the conversation ends with a human turn; "
                                "every question needs an answer to train on")
    pairs = []
    for t in range(0, len(turns), 2):
        question = _IMAGE_IN_TEXT.sub(" ", turns[t]["value"]).strip()
        task = turns[t].get("task") or DEFAULT_TASK
        if not task_suffix:
            question = strip_task_suffix(question, task)
        evidence = turns[t + 1].get("evidence")
        pairs.append(QAPair(question, turns[t + 1]["value"], task, None if evidence is None else tuple(evidence)))
    return pairs


class SequenceLength:
    """Tokens of a packed sequence after placeholder expansion, without building it.

    ``<image>`` expands to ``image_seq_length`` tokens and each ``<regionK>`` to one
    ``<region>`` token; both are special tokens, so counting them unexpanded is exact.
    Turns of ``independent`` tasks are laid out as :func:`format_sequence` does.
    """

    def __init__(self, processor: Any, independent: frozenset[str] = frozenset()):
        self.processor = processor
        self.independent = independent

    def __call__(self, pairs: Sequence[QAPair]) -> int:
        text = format_sequence(self.processor, pairs, self.independent).text
        text = _REGION_REFERENCE.sub(self.processor.region_token, text)
        n = len(self.processor.tokenizer(text, add_special_tokens=True)["input_ids"])
        return n + (self.processor.image_seq_length - 1) * text.count(self.processor.image_token)


def pack_pairs(pairs: Sequence[QAPair], length: Callable[[Sequence[QAPair]], int], max_length: int) -> tuple[list[list[QAPair]], int]:
    """Greedily pack pairs, in order, into sequences of at most ``max_length`` tokens.

    Returns the packed groups and the number of pairs dropped because one alone is too long.
    When all pairs fit in one sequence (the usual case) that is the packing, found with one
    length measurement instead of one per pair (a sequence's length grows with its pairs).
    """
    if pairs and length(pairs) <= max_length:
        return [list(pairs)], 0
    groups: list[list[QAPair]] = []
    current: list[QAPair] = []
    dropped = 0
    for pair in pairs:
        if current and length([*current, pair]) <= max_length:
            current.append(pair)
            continue
        if current:
            groups.append(current)
        current = [pair] if length([pair]) <= max_length else []
        dropped += 0 if current else 1
    if current:
        groups.append(current)
    return groups, dropped


# ----- the dataset -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SampleKey:
    """What to load: sample ``index`` as seen in ``epoch`` (turn order), restricted to ``tasks``."""

    index: int
    epoch: int = 0
    tasks: tuple[str, ...] | None = None


@dataclass
class PackedSequence:
    """One training sequence: Vicuna-v1 text, the character spans to learn, each answer's task and
    evidence."""

    id: str
    text: str
    target_spans: tuple[tuple[int, int], ...]
    tasks: tuple[str, ...]
    evidence: tuple[tuple[int, ...] | None, ...] = ()


@dataclass
class PackedImage:
    """One image with its regions and the packed sequences about it."""

    sample_id: str
    image: Image.Image
    regions: list[dict[str, Any]]
    sequences: list[PackedSequence]
    dropped_pairs: int = 0
    region_labels: list[dict[str, str]] = field(default_factory=list)  # per region: category and attributes


@dataclass
class SkippedSample:
    """A sample that could not be used (unreadable image, nothing left to train on)."""

    sample_id: str
    reason: str


def native_regions(sample: NativeSample) -> list[dict[str, Any]]:
    """Processor region specs: the mask when there is one (exact), else the box."""
    return [{"segmentation": r.mask} if r.mask is not None else {"box": list(r.box)} for r in sample.regions]


def load_rgb(path: Path) -> Image.Image:
    """The image at ``path`` as RGB, fully decoded (so corrupt files fail here)."""
    with Image.open(path) as image:
        return image.convert("RGB")


class RegionConversationDataset(Dataset):
    """Image samples -> :class:`PackedImage` (or :class:`SkippedSample`), indexed by :class:`SampleKey`."""

    def __init__(self, samples: Sequence[NativeSample], processor: Any, max_length: int, seed: int = 0,
                 shuffle_turns: bool = False, strict: bool = False, independent_tasks: Iterable[str] = ()):
        self.streamed = isinstance(samples, StreamedNativeSamples)
        self.samples = samples if self.streamed else list(samples)
        self.processor = processor
        self.max_length = max_length
        self.seed = seed
        self.shuffle_turns = shuffle_turns
        self.strict = strict
        self.independent = frozenset(independent_tasks)  # turns that see only the image (independent_turns.py)
        self.length = SequenceLength(processor, self.independent)
        # Streamed samples are parsed when used; otherwise all conversations are split up front.
        self.task_suffix = getattr(processor, "task_suffix", True)
        self._pairs = None if self.streamed else [conversation_pairs(s, self.task_suffix) for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def text_lengths(self) -> list[int]:
        """Characters of each sample's conversation: the cheap length that length-grouped
        batching sorts by (the image's tokens are the same for every sample)."""
        if self._pairs is None:
            return self.samples.line_lengths().tolist()
        return [sum(len(p.question) + len(p.answer) for p in pairs) for pairs in self._pairs]

    def tasks_present(self) -> set[str]:
        """Every task some turn of the data carries (streamed data: of its first 1,000 samples)."""
        pairs = self._pairs if self._pairs is not None else (
            conversation_pairs(self.samples[i], self.task_suffix) for i in range(min(1000, len(self.samples))))
        return {p.task for sample_pairs in pairs for p in sample_pairs}

    def pairs_for(self, key: SampleKey, sample: NativeSample | None = None) -> list[QAPair]:
        """The sample's pairs for ``key``: filtered to its tasks, shuffled per epoch when enabled."""
        if self._pairs is not None:
            all_pairs = self._pairs[key.index]
        else:
            all_pairs = conversation_pairs(sample if sample is not None else self.samples[key.index], self.task_suffix)
        pairs = [p for p in all_pairs if key.tasks is None or p.task in key.tasks]
        if self.shuffle_turns:
            random.Random(f"turns:{self.seed}:{key.epoch}:{key.index}").shuffle(pairs)
        if self.independent:  # the ordinary conversation first, as each packed sequence lays it out
            ordinary, alone = split_pairs(pairs, self.independent)
            pairs = ordinary + alone
        return pairs

    def __getitem__(self, key: SampleKey | int) -> PackedImage | SkippedSample:
        if isinstance(key, int):
            key = SampleKey(key)
        try:
            sample = self.samples[key.index]
            pairs = self.pairs_for(key, sample)
        except InvalidInputError as error:  # a malformed streamed line
            if self.strict:
                raise
            return SkippedSample(f"#{key.index}", str(error))
        if not pairs:
            return SkippedSample(sample.id, "no turns of the selected tasks")
        groups, dropped = pack_pairs(pairs, self.length, self.max_length)
        if not groups:
            return SkippedSample(sample.id, "every turn pair is longer than data.max_length")
        try:
            image = load_rgb(sample.image_path())
            if image.size != (sample.width, sample.height):
                raise ValueError(f"is {image.width}x{image.height} but the sample says {sample.width}x{sample.height}")
        except (OSError, UnidentifiedImageError, ValueError) as error:
            reason = f"image {sample.image_path()}: {error}"
            if self.strict:
                raise InvalidInputError(f"sample {sample.id}: {reason} (data.strict is true)") from None
            return SkippedSample(sample.id, reason)
        sequences = []
        for g, group in enumerate(groups):
            formatted = format_sequence(self.processor, group, self.independent)
            sequences.append(PackedSequence(f"{sample.id}#{g}", formatted.text, formatted.target_spans,
                                            tuple(p.task for p in group), tuple(p.evidence for p in group)))
        return PackedImage(sample.id, image, native_regions(sample), sequences, dropped,
                           [region_label_record(r) for r in sample.regions])


# ----- order -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskSchedule:
    """Which tasks train at a step: the first phase with ``step < until_step``, else ``default``."""

    phases: tuple[tuple[int, tuple[str, ...]], ...] = ()
    default: tuple[str, ...] | None = None

    def tasks_at(self, step: int) -> tuple[str, ...] | None:
        for until, tasks in self.phases:
            if step < until:
                return tasks
        return self.default


class StepBatchSampler(Sampler[list[SampleKey]]):
    """Micro-batches of :class:`SampleKey` for micro-batch indices ``start..stop-1``.

    Micro-batch ``m`` takes stream positions ``m*B .. m*B+B-1``; position ``p`` is sample
    ``perm_e[p mod N]`` of epoch ``e = p // N`` (``perm_e`` a seeded permutation, or the
    identity without shuffling). Optimiser step = ``m // grad_accum``.

    With ``world_size`` W > 1 (distributed training) ``grad_accum`` counts the micro-batches
    of a step over all ranks, and rank ``r`` yields only the micro-batches ``m % W == r``:
    each rank reads its own shard of the one global stream.

    With ``lengths`` (length-grouped batching) each epoch's permutation is cut into windows
    of ``LENGTH_WINDOW`` micro-batches and each window is sorted by length, longest first, so
    a micro-batch holds samples of similar length (less padding); the order is still a pure
    function of the seed and the epoch.
    """

    LENGTH_WINDOW = 64  # micro-batches per length-sorted window

    def __init__(self, n_samples: int, batch_size: int, grad_accum: int, seed: int, shuffle: bool,
                 schedule: TaskSchedule, start: int, stop: int, rank: int = 0, world_size: int = 1,
                 lengths: Sequence[int] | None = None):
        if n_samples < 1:
            raise InvalidInputError("the training data has no samples")
        self.n, self.batch_size, self.grad_accum = n_samples, batch_size, grad_accum
        self.seed, self.shuffle, self.schedule = seed, shuffle, schedule
        self.start, self.stop = start, stop
        self.rank, self.world_size = rank, world_size
        self.lengths = np.asarray(lengths) if lengths is not None else None
        self._orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(range(self._first(), self.stop, self.world_size))

    def _first(self) -> int:
        """This rank's first micro-batch at or after ``start``."""
        return self.start + (self.rank - self.start) % self.world_size

    def order(self, epoch: int) -> np.ndarray:
        """The sample order of ``epoch`` (cached: the latest two epochs)."""
        if epoch not in self._orders:
            if len(self._orders) > 1:
                self._orders.pop(min(self._orders))
            order = (np.random.default_rng([self.seed, epoch]).permutation(self.n)
                     if self.shuffle else np.arange(self.n))
            if self.lengths is not None:
                window = self.LENGTH_WINDOW * self.batch_size
                order = np.concatenate([chunk[np.argsort(-self.lengths[chunk], kind="stable")]
                                        for chunk in np.split(order, range(window, self.n, window))])
            self._orders[epoch] = order
        return self._orders[epoch]

    def keys(self, micro: int) -> list[SampleKey]:
        tasks = self.schedule.tasks_at(micro // self.grad_accum)
        keys = []
        for position in range(micro * self.batch_size, (micro + 1) * self.batch_size):
            epoch = position // self.n
            keys.append(SampleKey(int(self.order(epoch)[position % self.n]), epoch, tasks))
        return keys

    def __iter__(self) -> Iterator[list[SampleKey]]:
        for micro in range(self._first(), self.stop, self.world_size):
            yield self.keys(micro)


class EvalBatchSampler(Sampler[list[SampleKey]]):
    """The held-out samples in order, in batches, restricted to ``tasks``."""

    def __init__(self, n_samples: int, batch_size: int, tasks: tuple[str, ...] | None):
        self.n, self.batch_size, self.tasks = n_samples, batch_size, tasks

    def __len__(self) -> int:
        return (self.n + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list[SampleKey]]:
        for start in range(0, self.n, self.batch_size):
            yield [SampleKey(i, 0, self.tasks) for i in range(start, min(start + self.batch_size, self.n))]


# ----- batches -----------------------------------------------------------------------------------
@dataclass
class Batch:
    """Model inputs plus what the recipe needs to score and log them.

    ``answer_index`` (N, L) gives, for each token position, the index of the answer (in
    ``answer_tasks``) whose target it is, -1 elsewhere; it is computed before placeholders
    are masked, so one answer is one contiguous run even when it mentions a region.
    ``answer_evidence`` gives each answer's evidence regions (numbers K of its row's regions).
    """

    inputs: dict[str, Any]  # tensors, and a TurnLayout under "turn_layout"
    answer_index: torch.Tensor
    answer_tasks: list[str]
    sequence_ids: list[str]
    n_images: int
    skipped: list[SkippedSample] = field(default_factory=list)
    dropped_pairs: int = 0
    region_labels: list[dict[str, str]] = field(default_factory=list)  # per row of region_masks
    tokens: int = 0  # real (not padding) tokens
    answer_evidence: list[tuple[int, ...] | None] = field(default_factory=list)  # per answer, as answer_tasks
    padding_mask: torch.Tensor | None = None  # (N, L) True on real tokens (the inputs may hold a 4D mask instead)

    @property
    def empty(self) -> bool:
        return not self.sequence_ids

    def to(self, device: torch.device | str) -> "Batch":
        self.inputs = {k: v.to(device) for k, v in self.inputs.items()}
        self.answer_index = self.answer_index.to(device)
        if self.padding_mask is not None:
            self.padding_mask = self.padding_mask.to(device)
        return self


def answer_runs(labels: torch.Tensor, tasks: Sequence[Sequence[str]]) -> tuple[torch.Tensor, list[str]]:
    """Number the contiguous runs of learned tokens (one per answer) across the batch."""
    index = torch.full_like(labels, -1)
    flat_tasks: list[str] = []
    for row, row_tasks in enumerate(tasks):
        learned = (labels[row] != IGNORE_INDEX).tolist()
        runs = []
        for pos, on in enumerate(learned):
            if on and (pos == 0 or not learned[pos - 1]):
                runs.append([pos, pos + 1])
            elif on:
                runs[-1][1] = pos + 1
        if len(runs) != len(row_tasks):
            raise RuntimeError(f"sequence {row}: {len(row_tasks)} answers gave {len(runs)} runs of learned tokens")
        for (a, b), task in zip(runs, row_tasks):
            index[row, a:b] = len(flat_tasks)
            flat_tasks.append(task)
    return index, flat_tasks


class RegionCollator:
    """Packed images -> one right-padded :class:`Batch` (labels -100 on prompts, placeholders, padding).

    With ``independent_tasks`` the batch's ``attention_mask`` is the (N, 1, L, L) boolean mask
    of :func:`~regiongpt.training.independent_turns.segment_mask` and ``position_ids`` come
    with it, and ``turn_layout`` the same layout for turn attention (ignored by SDPA and eager);
    otherwise the usual (N, L) padding mask (with ``independent_tasks``, a batch that has no such
    turn still gets a ``turn_layout``: each row one causal conversation, so it can run padding-free).
    """

    def __init__(self, processor: Any, independent_tasks: Iterable[str] = ()):
        self.processor = processor
        self.independent = frozenset(independent_tasks)

    def __call__(self, items: Sequence[PackedImage | SkippedSample]) -> Batch:
        skipped = [item for item in items if isinstance(item, SkippedSample)]
        packed = [item for item in items if isinstance(item, PackedImage)]
        images, texts, regions, spans, tasks, ids, region_labels, evidence = [], [], [], [], [], [], [], []
        for item in packed:
            for seq in item.sequences:
                images.append(item.image)
                regions.append(item.regions)
                region_labels.extend(item.region_labels)
                texts.append(seq.text)
                spans.append(list(seq.target_spans))
                tasks.append(seq.tasks)
                evidence.extend(seq.evidence or (None,) * len(seq.tasks))
                ids.append(seq.id)
        dropped = sum(item.dropped_pairs for item in packed)
        if not texts:
            return Batch({}, torch.zeros(0, 0, dtype=torch.long), [], [], 0, skipped, dropped)
        encoded = self.processor(images=images, text=texts, regions=regions, target_spans=spans,
                                 padding_side="right")
        inputs = dict(encoded)
        labels = inputs["labels"]
        answer_index, answer_tasks = answer_runs(labels, tasks)
        placeholders = (labels == self.processor.image_token_id) | (labels == self.processor.region_token_id)
        inputs["labels"] = labels.masked_fill(placeholders, IGNORE_INDEX)
        padding_mask = inputs["attention_mask"].bool()
        tokens = int(padding_mask.sum())
        if self.independent and any(task in self.independent for task in answer_tasks):
            independent = [task in self.independent for task in answer_tasks]
            inputs["attention_mask"], inputs["position_ids"] = segment_mask(
                inputs["input_ids"], inputs["attention_mask"], answer_index, independent,
                self.processor.image_token_id)
            layout = turn_layout(inputs["input_ids"], answer_index, independent, self.processor.image_token_id)
            if layout is not None:  # what turn attention (training/turn_attention.py) computes from
                inputs["turn_layout"] = layout
        elif self.independent:  # no independent turn here: a layout all the same, so it too can run padding-free
            inputs["turn_layout"] = causal_layout(padding_mask)
        return Batch(inputs, answer_index, answer_tasks, ids, len(packed), skipped, dropped, region_labels, tokens,
                     evidence, padding_mask)


__all__ = [
    "Batch", "EvalBatchSampler", "PackedImage", "PackedSequence", "QAPair", "READERS", "RegionCollator",
    "RegionConversationDataset", "SampleKey", "SequenceLength", "SkippedSample", "StepBatchSampler", "TaskSchedule",
    "StreamedNativeSamples", "answer_runs", "conversation_pairs", "line_offsets", "load_samples", "pack_pairs",
    "pairs_to_turns", "parse_source", "read_source", "resolve_source", "stream_samples", "weighted",
]
