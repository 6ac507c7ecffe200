#!/usr/bin/env bash
# Sets up a virtual environment in .venv with everything regiongpt needs (and its test tools).
# torch is installed first and pinned: a plain `torch` requirement would resolve to a
# multi-GB CUDA build; 2.13.0 is the CPU build this project is tested with.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[dev]"
