#!/usr/bin/env bash
# Create .venv (if missing) and install robustbench-align with its extras, keeping torch on the
# CPU build: torch is pinned first through constraints.txt, and torchattacks is installed with
# --no-deps because its metadata would otherwise replace torch with a CUDA build.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q -c constraints.txt "torch==2.13.0"
pip install -q --no-deps "torchattacks==3.5.1"
pip install -q -c constraints.txt -e ".[all]"
