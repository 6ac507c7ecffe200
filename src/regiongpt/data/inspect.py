"""``regiongpt data inspect``: validate a data source, count it, list its problems, render samples.

:func:`inspect_source` reads a source with its reader (every malformed entry reported with its
file and index), then checks what the readers leave to training time: that every image exists
and opens with the size the annotations say (``check_images='decode'`` decodes them fully) and
that no mask is empty. :func:`render_sample` draws a sample's regions (numbered, coloured) with
the conversation text underneath.
"""

from __future__ import annotations

import re
import textwrap
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, UnidentifiedImageError

from regiongpt.data.native import NativeSample
from regiongpt.data.sources import ReadReport, Source, origin
from regiongpt.errors import InvalidInputError
from regiongpt.processing.rle import decode_rle, rle_area

CHECK_IMAGES = ("none", "exists", "header", "decode")
MAX_TEXT_LINES = 60


@dataclass
class InspectResult:
    """What ``data inspect`` found."""

    source: Source
    samples: list[NativeSample]
    report: ReadReport
    rendered: list[Path] = field(default_factory=list)

    def counts(self) -> dict[str, dict[str, Any]]:
        """Per split (and ``total``): images, regions and question-answer pairs per task."""
        table: dict[str, dict[str, Any]] = {}
        for sample in self.samples:
            for split in (sample.split or "-", "total"):
                row = table.setdefault(split, {"images": 0, "regions": 0, "tasks": Counter()})
                row["images"] += 1
                row["regions"] += len(sample.regions)
                row["tasks"].update((t.get("task") or "chat") for t in sample.conversations[0::2])
        if "total" in table:
            table["total"] = table.pop("total")  # last
        return {split: {**row, "tasks": dict(sorted(row["tasks"].items()))} for split, row in table.items()}

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source.name, "reader": self.source.reader, "counts": self.counts(),
                "problems": [p.to_json() for p in self.report.problems],
                "problem_counts": dict(self.report.counts()), "left_out": dict(self.report.notes),
                "rendered": [str(p) for p in self.rendered]}


def check_sample(sample: NativeSample, report: ReadReport, check_images: str = "header") -> bool:
    """Check the image (as ``check_images`` says) and the masks; report problems; False if unusable."""
    file, index = origin(sample)
    ok = True
    for k, region in enumerate(sample.regions):
        if region.mask is not None and rle_area(region.mask) == 0:
            report.add("empty-mask", file, index, f"sample {sample.id}: regions[{k}] has an empty mask")
            ok = False
    if check_images == "none":
        return ok
    path = sample.image_path()
    if not path.is_file():
        report.add("missing-image", file, index, f"sample {sample.id}: image {path} does not exist")
        return False
    if check_images == "exists":
        return ok
    try:
        with Image.open(path) as image:
            size = image.size
            if check_images == "decode":
                image.load()
    except (OSError, UnidentifiedImageError, ValueError) as error:
        report.add("unreadable-image", file, index, f"sample {sample.id}: image {path} cannot be read ({error})")
        return False
    if size != (sample.width, sample.height):
        report.add("image-size", file, index, f"sample {sample.id}: image {path} is {size[0]}x{size[1]} but the "
                   f"annotations say {sample.width}x{sample.height}")
        return False
    return ok


def render_sample(sample: NativeSample, image: Image.Image | None = None, width_chars: int | None = None) -> Image.Image:
    """The image with its regions (numbered; the category as caption) and the conversation below."""
    if image is None:
        from regiongpt.training.data import load_rgb

        image = load_rgb(sample.image_path())
    masks = [decode_rle(r.mask) if r.mask is not None else None for r in sample.regions]
    boxes = [r.box for r in sample.regions]
    captions = [r.category or "" for r in sample.regions]
    from regiongpt.visualize import draw_regions

    picture = draw_regions(image, masks, boxes, captions)
    chars = width_chars or max(40, picture.width // 6 - 2)
    lines: list[tuple[str, str]] = [("title", f"{sample.id} ({sample.source or 'native'}, split {sample.split or '-'})")]
    for t, turn in enumerate(sample.conversations):
        role = "USER" if turn["from"] == "human" else "ASSISTANT"
        task = f" [{turn['task']}]" if turn.get("task") else ""
        text = re.sub(r"\s+", " ", turn["value"]).strip()
        for line in textwrap.wrap(f"{role}{task}: {text}", chars) or [f"{role}:"]:
            lines.append((turn["from"], line))
    if len(lines) > MAX_TEXT_LINES:
        lines = lines[: MAX_TEXT_LINES - 1] + [("title", f"... ({len(sample.conversations)} turns in all)")]
    line_height = 12
    canvas = Image.new("RGB", (picture.width, picture.height + 8 + line_height * len(lines)), (255, 255, 255))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    colours = {"title": (0, 0, 0), "human": (20, 60, 160), "gpt": (20, 110, 20)}
    for row, (kind, line) in enumerate(lines):
        draw.text((4, picture.height + 4 + row * line_height), line, fill=colours[kind])
    return canvas


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:80]


def inspect_source(source: Source, check_images: str = "header", render: int = 0, out: str | Path | None = None,
                   strict: bool = False) -> InspectResult:
    """Read and check ``source``; render the first ``render`` usable samples to ``out`` as PNG."""
    from regiongpt.training.data import read_source

    if check_images not in CHECK_IMAGES:
        raise InvalidInputError(f"check_images must be one of {', '.join(CHECK_IMAGES)}, got {check_images!r}")
    if render and out is None:
        raise InvalidInputError("rendering samples needs an output folder: add --out DIR")
    report = ReadReport(strict=strict)
    samples = list(read_source(source, report))
    usable = [check_sample(s, report, check_images) for s in samples]
    result = InspectResult(source, samples, report)
    if render:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for sample, ok in zip(samples, usable):
            if len(result.rendered) >= render:
                break
            if not ok or not sample.image_path().is_file():
                continue
            try:
                picture = render_sample(sample)
            except (OSError, UnidentifiedImageError, ValueError):
                continue
            path = out / f"{len(result.rendered):03d}_{_safe_name(sample.id)}.png"
            picture.save(path)
            result.rendered.append(path)
    return result


def format_result(result: InspectResult, max_problems: int = 20) -> str:
    """The human-readable report: counts per split and task, then the problems with file and index."""
    counts = result.counts()
    tasks = sorted({t for row in counts.values() for t in row["tasks"]})
    header = ["split", "images", "regions", *tasks]
    rows = [[split, str(row["images"]), str(row["regions"]), *(str(row["tasks"].get(t, 0)) for t in tasks)]
            for split, row in counts.items()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    source = result.source
    lines = [f"source: {source.name} (reader {source.reader})"]
    if not result.samples:
        lines.append("no samples")
    else:
        lines += ["question-answer pairs per task:", fmt(header), *(fmt(r) for r in rows)]
    for what, n in sorted(result.report.notes.items()):
        lines.append(f"left out: {n} {what} entr{'y' if n == 1 else 'ies'}")
    problems = result.report.problems
    if problems:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(result.report.counts().items()))
        lines.append(f"problems: {len(problems)} ({kinds})")
        lines += [f"  {p.text()}" for p in problems[:max_problems]]
        if len(problems) > max_problems:
            lines.append(f"  ... and {len(problems) - max_problems} more (--json lists all)")
    else:
        lines.append("problems: none")
    if result.rendered:
        lines.append(f"rendered {len(result.rendered)} sample(s) to {result.rendered[0].parent}")
    return "\n".join(lines)


__all__ = ["CHECK_IMAGES", "InspectResult", "check_sample", "format_result", "inspect_source", "render_sample"]
