#!/usr/bin/env bash
# Creates .venv with tapsc and its test extras. Idempotent; needs no network beyond a
# package index (torch and torchvision come from the machine's local wheel cache when present).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# Pin torch first: an open range would pull a multi-GB CUDA build from the index.
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
