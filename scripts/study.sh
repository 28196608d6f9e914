#!/usr/bin/env bash
# The Fashion-MNIST study: trains specs/study/fashion_*.taps on the CPU, certifies a subset
# with CROWN and writes docs/results.md. Re-running resumes (finished methods are skipped).
#   bash scripts/study.sh [--crown-samples N] [--only natural,taps]
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/study.py "$@"
