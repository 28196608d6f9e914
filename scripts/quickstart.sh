#!/usr/bin/env bash
# Sets up tapsc and runs the quickstart spec: TAPS on scikit-learn's 8x8 digits (no download).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/tapsc run specs/quickstart.taps "$@"
