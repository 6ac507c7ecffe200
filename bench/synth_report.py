"""Tables of `regiongpt eval synth` results, shared by bench/demo_model.py and bench/ablation.py."""

from __future__ import annotations

from typing import Any

TAGS = ("all", "small", "occluded", "crowded", "distractor", "untagged")
TASKS = (("cls", "classification (exact)"), ("brief", "brief caption exact match"), ("rec", "REC with candidates"))
POPE_SETTINGS = ("random", "popular", "adversarial")


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def bucket_table(metrics: dict[str, Any]) -> list[str]:
    """One row per task, one column per difficulty bucket, plus the yes/no line."""
    lines = ["| task | " + " | ".join(TAGS) + " |", "|---" * (len(TAGS) + 1) + "|"]
    for key, name in TASKS:
        by_tag = metrics.get(key, {}).get("by_tag", {})
        lines.append(f"| {name} | " + " | ".join(_cell(by_tag.get(t, {}).get("accuracy")) for t in TAGS) + " |")
    lines += ["", existence_line(metrics)]
    return lines


def existence_line(metrics: dict[str, Any]) -> str:
    """Yes/no existence accuracy per POPE setting, with the yes-ratio."""
    existence = metrics.get("existence", {})
    parts = [f"{s} {_cell(existence.get(s, {}).get('accuracy'))}" for s in POPE_SETTINGS]
    ratio = existence.get("random", {}).get("yes_ratio")
    return f"Yes/no existence (POPE rule): accuracy {', '.join(parts)} (yes-ratio {_cell(ratio)})."


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
