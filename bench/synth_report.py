"""Tables of `regiongpt eval synth` results, shared by bench/demo_model.py and bench/ablation.py."""

from __future__ import annotations

from typing import Any

TAGS = ("all", "small", "occluded", "crowded", "distractor", "untagged")
TASKS = (("cls", "classification (exact)"), ("brief", "brief caption exact match"), ("rec", "REC with candidates"),
         ("existence_present", "yes/no, object present (answered yes)"))
SIZES = ("small", "medium", "large")
POPE_SETTINGS = ("random", "popular", "adversarial")


def _cell(value: float | None) -> str:
    return "–" if value is None or value != value else f"{value:.3f}"  # value != value: NaN, an empty bucket


def bucket_table(metrics: dict[str, Any]) -> list[str]:
    """One row per task, one column per size and per difficulty tag; the yes/no and REC-phrase lines.

    The size columns are the region's size class (the "small" tag is the small size class). A
    yes/no question about a present category counts where that category's largest visible
    instance in the image does.
    """
    columns = ("all", *SIZES, *(t for t in TAGS if t not in ("all", "small")))
    lines = ["| task | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for key, name in TASKS:
        task = metrics.get(key, {})
        by_tag, by_size = task.get("by_tag", {}), task.get("by_size", {})
        cells = [_cell((by_size if c in SIZES else by_tag).get(c, {}).get("accuracy")) for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", existence_line(metrics)]
    lines += rec_phrase_table(metrics)
    return lines


def existence_line(metrics: dict[str, Any]) -> str:
    """Yes/no existence accuracy per POPE setting, with the yes-ratio and the absent objects' share."""
    existence = metrics.get("existence", {})
    parts = [f"{s} {_cell(existence.get(s, {}).get('accuracy'))}" for s in POPE_SETTINGS]
    ratio = existence.get("random", {}).get("yes_ratio")
    line = f"Yes/no existence (POPE rule): accuracy {', '.join(parts)} (yes-ratio {_cell(ratio)})."
    absent = metrics.get("existence_absent", {})
    if absent:
        line += " Absent categories answered no: " + ", ".join(
            f"{s} {_cell(absent.get(s, {}).get('accuracy'))}" for s in POPE_SETTINGS) + "."
    return line


def rec_phrase_table(metrics: dict[str, Any]) -> list[str]:
    """REC accuracy by what the phrase names, over every referred region and over distractors."""
    rec = metrics.get("rec", {})
    every, shared = rec.get("by_phrase", {}), rec.get("by_phrase_distractor", {})
    if not every:
        return []
    lines = ["", "REC by what the phrase names (distractor: another region has the same category):", "",
             "| phrase names | all | count | distractor | count |", "|---|---|---|---|---|"]
    for form, m in every.items():
        d = shared.get(form, {})
        lines.append(f"| {form} | {_cell(m['accuracy'])} | {m['count']} | {_cell(d.get('accuracy'))} "
                     f"| {d.get('count', 0)} |")
    return lines


def headline(metrics: dict[str, Any]) -> dict[str, float | None]:
    """The four numbers the built-in model's targets name (overall accuracy per task)."""
    existence = metrics.get("existence", {})
    accs = [existence[s]["accuracy"] for s in POPE_SETTINGS if s in existence]
    return {
        "classification": metrics.get("cls", {}).get("accuracy"),
        "brief": metrics.get("brief", {}).get("accuracy"),
        "rec": metrics.get("rec", {}).get("accuracy"),
        "existence": sum(accs) / len(accs) if accs else None,
    }
