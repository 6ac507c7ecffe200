#!/usr/bin/env bash
# Sets up a virtual environment in .venv with everything regiongpt needs (and its test tools).
# torch is installed first, as the CPU build of 2.13.0 (the version this project is tested
# with): a plain `torch==2.13.0` from PyPI is the multi-GB CUDA build. This project's machines
# keep the CPU wheel in /opt/wheels (PIP_FIND_LINKS normally points there; a stripped
# environment may lack the variable); elsewhere, PyTorch's CPU index has it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PIP_FIND_LINKS:-}" ] && [ -d /opt/wheels ]; then
  export PIP_FIND_LINKS=/opt/wheels
fi
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
if ! .venv/bin/pip install -q "torch==2.13.0+cpu"; then
  echo "setup: the CPU build of torch 2.13.0 was not found; point PIP_FIND_LINKS at a folder holding" \
       "torch-2.13.0+cpu, or run: .venv/bin/pip install torch==2.13.0+cpu --index-url" \
       "https://download.pytorch.org/whl/cpu, then this script again" >&2
  exit 1
fi
.venv/bin/pip install -q -e ".[dev]"
