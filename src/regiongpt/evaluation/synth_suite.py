"""The synthetic-world suite: the built-in model's benchmark, overall and per difficulty tag.

Protocol (on a folder written by ``regiongpt synth``; by default its validation images):
- Classification: one query per region (visible mask), the classification instruction
  with the world's category list, greedy; exact match of the normalised answer (also the
  semantic-similarity variant unless disabled).
- Brief caption: one query per region, the brief instruction; exact match of the
  normalised answer with the region's ground-truth brief caption
  ("size colour texture category").
- REC: one query per referring expression of ``refcocog/refs(umd).p`` (every split of the
  chosen images); candidates = all regions of the image in file order; answer parsed from
  "Region [k]"; accuracy = the referred region was chosen.
- Existence: the world's POPE files (``pope/synth_pope_{random,popular,adversarial}.jsonl``,
  questions about the validation images) asked with the task suffix "Answer yes or no.",
  POPE's yes/no rule; accuracy, precision, recall, F1, yes-ratio per setting.
- Region tasks are broken down by the region's difficulty tags (``small``, ``occluded``,
  ``crowded``, ``distractor``; a region can carry several; ``untagged`` = none) and by its
  size (small/medium/large from the visible area). REC is also broken down by what its phrase
  names besides the category (``category+colour``, ...), over all referred regions and over
  those that share their category (``distractor``).
- Yes/no questions whose answer is yes are broken down the same way, by the asked category's
  largest visible instance in the image (``existence_present``: the share answered yes, each
  distinct question once); those whose answer is no by POPE setting (``existence_absent``).
- All queries about an image are answered with its image encoded once per task family,
  several images per batch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from regiongpt.data.coco import category_names, iter_coco_images
from regiongpt.data.refer import load_refer, refs_by_image
from regiongpt.data.synth.world import DIFFICULTY_TAGS, SIZES
from regiongpt.errors import InvalidInputError
from regiongpt.evaluation.metrics import SemanticMatcher, accuracy, exact_match, normalize_answer
from regiongpt.evaluation.pope import POPE_MAX_NEW_TOKENS, find_pope_files, read_pope_file, score_pope, yes_no_fields
from regiongpt.evaluation.rec import rec_fields, rec_prompts, rec_queries
from regiongpt.evaluation.runner import Benchmark, ImageJob, Query, Scores, generate_answers
from regiongpt.inference.api import Question
from regiongpt.processing.instructions import SUFFIXES

SPLITS = ("val", "train", "all")
GROUPS = ("all", *DIFFICULTY_TAGS, "untagged")
PHRASE_FIELDS = ("colour", "size", "texture")  # in the order a phrase form is named: "category+colour+size"


def _groups(tags: Sequence[str]) -> list[str]:
    return ["all", *tags] if tags else ["all", "untagged"]


def phrase_form(sentence: str, attributes: dict[str, Any]) -> str:
    """Which of the referred object's own labels a referring phrase names: "category+colour", ...

    Read from the phrase's words, so it needs no record of how the phrase was made.
    """
    words = set(sentence.lower().replace("'", " ").split())
    named = [f for f in PHRASE_FIELDS if isinstance(attributes.get(f), str) and attributes[f].lower() in words]
    return "+".join(["category", *named])


def asked_category(question: str, names: Sequence[str]) -> str | None:
    """The category a yes/no question asks about: the longest category name it contains as a word."""
    words = f" {' '.join(question.lower().replace('?', ' ').split())} "
    found = [n for n in names if f" {n.lower()} " in words]
    return max(found, key=len) if found else None


def _by_phrase(records: Sequence[dict[str, Any]], flags: Sequence[bool], keep) -> dict[str, dict[str, Any]]:
    """REC accuracy per phrase form (see :func:`phrase_form`) over the records ``keep`` accepts."""
    forms: dict[str, list[bool]] = {}
    for r, ok in zip(records, flags):
        if keep(r) and r.get("phrase_form"):
            forms.setdefault(r["phrase_form"], []).append(ok)
    return {form: {"count": len(v), "accuracy": accuracy(v)} for form, v in sorted(forms.items())}


class SynthSuite(Benchmark):
    task = "synth"

    def __init__(self, world: str | os.PathLike, split: str = "val", semantic: bool = True,
                 pope_settings: Sequence[str] | None = None):
        self.world = Path(world)
        self.instances = self.world / "instances.json"
        if not self.instances.is_file():
            raise InvalidInputError(f"{self.world} is not a synthetic world folder (no instances.json); "
                                    "write one with `regiongpt synth OUT`")
        if split not in SPLITS:
            raise InvalidInputError(f"--split for synth must be one of {', '.join(SPLITS)}, got {split!r}")
        self.split, self.semantic = split, semantic
        self.categories = category_names(self.instances)
        self.names = list(self.categories.values())
        self.refer = load_refer(self.world, "refcocog", "umd")
        pope_dir = self.world / "pope"
        self.pope_files = find_pope_files([pope_dir]) if pope_dir.is_dir() else {}
        if pope_settings is not None:
            self.pope_files = {k: v for k, v in self.pope_files.items() if k in pope_settings}
        self.pope_rows = {s: read_pope_file(p) for s, p in self.pope_files.items()}

    def settings(self) -> dict[str, Any]:
        return {"split": self.split, "pope_settings": list(self.pope_files)}

    def data_files(self) -> list[Path]:
        return [self.instances, self.refer.refs_file, *self.pope_files.values()]

    def jobs(self, limit: int | None = None) -> list[ImageJob]:
        refs = refs_by_image(self.refer.refs)
        questions: dict[str, list[tuple[str, dict]]] = {}
        for setting, rows in self.pope_rows.items():
            for row in rows:
                questions.setdefault(row["image"], []).append((setting, row))
        jobs = []
        for image in iter_coco_images(self.instances):
            info = self.refer.images.get(image.id, {})
            if self.split != "all" and info.get("split", "val") != self.split:
                continue
            anns = image.annotations
            if not anns:
                continue
            regions = [{"segmentation": a["segmentation"]} for a in anns]
            queries: list[Query] = []
            for k, ann in enumerate(anns):
                attrs = ann.get("attributes", {})
                base = {"image_id": image.id, "ann_id": ann["id"], "tags": list(attrs.get("tags", [])),
                        "size": attrs.get("size")}
                queries.append(Query(f"cls/{ann['id']}", {"kind": "cls", **base,
                                                          "category": self.categories[ann["category_id"]]}, k))
                queries.append(Query(f"brief/{ann['id']}", {"kind": "brief", **base, "brief": attrs.get("brief", "")}, k))
            attributes = {a["id"]: a.get("attributes", {}) for a in anns}
            for q in rec_queries(image.id, refs.get(image.id, []), anns, ("all",), 0, len(anns)):
                attrs = attributes[q.record["ann_id"]]
                q.id = f"rec/{q.id.split('/', 1)[1]}"
                q.record.update({"kind": "rec", "tags": list(attrs.get("tags", [])), "size": attrs.get("size"),
                                 "phrase_form": phrase_form(q.payload[0], attrs)})
                queries.append(q)
            for setting, row in questions.get(image.path.name, []):
                record = {"kind": "exist", "split": setting, "question_id": row["question_id"], "image_id": image.id,
                          "label": str(row["label"]).strip().lower(),
                          "category": asked_category(row["text"], self.names)}
                shown = [a for a in anns if self.categories[a["category_id"]] == record["category"]]
                if record["label"] == "yes" and shown:  # the easiest instance decides how hard the question is
                    clearest = max(shown, key=lambda a: float(a.get("area", 0.0))).get("attributes", {})
                    record.update({"tags": list(clearest.get("tags", [])), "size": clearest.get("size")})
                queries.append(Query(f"exist/{setting}/{row['question_id']}", record, row["text"].strip()))
            jobs.append(ImageJob(image.path, queries, regions))
            if limit is not None and len(jobs) >= limit:
                break
        return jobs

    def predict(self, model, jobs: Sequence[ImageJob]) -> list[list[dict[str, Any]]]:
        out: list[list[dict[str, Any] | None]] = [[None] * len(job.queries) for job in jobs]
        for kind, task in (("cls", "classify"), ("brief", "brief")):
            picked = [(j, [i for i, q in enumerate(job.queries) if q.record["kind"] == kind]) for j, job in enumerate(jobs)]
            picked = [(j, idx) for j, idx in picked if idx]
            if not picked:
                continue
            items = [(str(jobs[j].image), [jobs[j].context[jobs[j].queries[i].payload] for i in idx]) for j, idx in picked]
            answers = model.describe_many(items, task=task, categories=self.names if kind == "cls" else None)
            for (j, idx), image_answers in zip(picked, answers):
                for i, answer in zip(idx, image_answers):
                    out[j][i] = {"prediction": answer.text}
        prompts, slots = [], []
        for j, job in enumerate(jobs):
            rec_job = ImageJob(job.image, [q for q in job.queries if q.record["kind"] == "rec"])
            prompts += rec_prompts(model, rec_job, j)
            slots += [i for i, q in enumerate(job.queries) if q.record["kind"] == "rec"]
            for i, q in enumerate(job.queries):
                if q.record["kind"] == "exist":
                    question = f"{q.payload} {SUFFIXES['existence']}" if getattr(model.processor, "task_suffix", True) \
                        else q.payload
                    prompts.append(Question(j, question, [], POPE_MAX_NEW_TOKENS))
                    slots.append(i)
        answers = generate_answers(model, [(str(job.image), job.context) for job in jobs], prompts)
        for prompt, i, answer in zip(prompts, slots, answers):
            query = jobs[prompt.item].queries[i]
            if query.record["kind"] == "rec":
                out[prompt.item][i] = rec_fields(answer, query.record["candidates"], query.record["ann_id"])
            else:
                out[prompt.item][i] = yes_no_fields(answer)
        return out  # type: ignore[return-value]

    def score(self, records: Sequence[dict[str, Any]]) -> Scores:
        by_kind: dict[str, list[dict[str, Any]]] = {}
        for r in records:
            by_kind.setdefault(r["kind"], []).append(r)
        cls, brief, rec = by_kind.get("cls", []), by_kind.get("brief", []), by_kind.get("rec", [])
        exist = by_kind.get("exist", [])
        present = list({(r["image_id"], r.get("category")): r for r in exist
                        if r["label"] == "yes" and r.get("category")}.values())  # POPE repeats them per setting
        flags = {"cls": [exact_match(r["prediction"], r["category"]) for r in cls],
                 "brief": [exact_match(r["prediction"], r["brief"]) for r in brief],
                 "rec": [bool(r["correct"]) for r in rec],
                 "existence_present": [r["answer"] == "yes" for r in present]}
        if not present:
            del flags["existence_present"]
        if self.semantic and cls:
            closest = SemanticMatcher().closest([r["prediction"] for r in cls], self.names)
            flags["cls_semantic"] = [c == r["category"] for c, r in zip(closest, cls)]
        sources = {"cls": cls, "brief": brief, "rec": rec, "cls_semantic": cls, "existence_present": present}
        labels = {"cls": "classification accuracy", "cls_semantic": "classification accuracy (semantic)",
                  "brief": "brief caption exact match", "rec": "REC accuracy",
                  "existence_present": "yes/no, object present: answered yes"}
        metrics: dict[str, Any] = {}
        rows: list[tuple[str, str, Any]] = []
        for name, values in flags.items():
            per_group: dict[str, list[bool]] = {g: [] for g in GROUPS}
            per_size: dict[str, list[bool]] = {s: [] for s in SIZES}
            for r, ok in zip(sources[name], values):
                for g in _groups(r.get("tags") or []):
                    per_group[g].append(ok)
                if r.get("size") in per_size:
                    per_size[r["size"]].append(ok)
            metrics[name] = {"count": len(values), "by_tag": {g: {"count": len(v), "accuracy": accuracy(v)}
                                                              for g, v in per_group.items()},
                             "by_size": {s: {"count": len(v), "accuracy": accuracy(v)} for s, v in per_size.items()},
                             "accuracy": accuracy(values)}
            rows += [(g, labels[name], accuracy(v)) for g, v in per_group.items() if v]
        counts = {g: 0 for g in GROUPS}
        for r in cls:
            for g in _groups(r.get("tags") or []):
                counts[g] += 1
        rows = [(g, "regions", n) for g, n in counts.items()] + rows
        if rec:
            metrics["rec"]["by_phrase"] = _by_phrase(rec, flags["rec"], lambda r: True)
            metrics["rec"]["by_phrase_distractor"] = _by_phrase(rec, flags["rec"],
                                                                lambda r: "distractor" in (r.get("tags") or []))
            rows += [(f"REC, phrase names {form}", "REC accuracy", m["accuracy"])
                     for form, m in metrics["rec"]["by_phrase"].items()]
        if exist:
            pope = score_pope(exist, list(self.pope_files), group="existence ")
            metrics["existence"] = pope.metrics
            rows += [row for row in pope.rows if row[1] in ("questions", "accuracy", "f1", "yes_ratio")]
            absent = {s: [r["answer"] == "no" for r in exist if r["split"] == s and r["label"] == "no"]
                      for s in self.pope_files}
            metrics["existence_absent"] = {s: {"count": len(v), "accuracy": accuracy(v)} for s, v in absent.items()}
        plots: dict[str, Any] = {}
        if cls:
            plots["accuracy_by_size"] = {
                "kind": "buckets", "title": "synth classification accuracy by region size",
                "buckets": {s: [sum(v), len(v)] for s, v in
                            ((s, [ok for r, ok in zip(cls, flags["cls"]) if r.get("size") == s]) for s in SIZES)}}
            lookup = {normalize_answer(n): n for n in self.names}
            plots["confusion_matrix"] = {"kind": "confusion", "title": "synth classification confusion",
                                         "labels": self.names,
                                         "pairs": [[r["category"], lookup.get(normalize_answer(r["prediction"]), "other")]
                                                   for r in cls]}
            tag_buckets = {g: [0, 0] for g in GROUPS}
            for r, ok in zip(cls, flags["cls"]):
                for g in _groups(r.get("tags") or []):
                    tag_buckets[g][0] += int(ok)
                    tag_buckets[g][1] += 1
            plots["accuracy_by_tag"] = {"kind": "buckets", "title": "synth classification accuracy by difficulty tag",
                                        "buckets": tag_buckets}
        return Scores(metrics, rows, plots)
