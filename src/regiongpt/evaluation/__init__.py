"""Evaluation harness: the paper's benchmarks with their exact protocols (docs/evaluation.md).

Modules: ``metrics`` (normalised exact match, semantic similarity, POPE, captioning via
pycocoevalcap), ``runner`` (batched, resumable loop), ``report`` (results.json, report.md,
plots), and one per benchmark: ``coco_classification``, ``region_caption`` (RefCOCOg, Visual
Genome), ``rec``, ``pope``, ``synth_suite``. Nothing heavy is imported here.
"""
