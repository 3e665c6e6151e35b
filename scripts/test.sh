#!/usr/bin/env bash
# Set up a CPU environment (if needed) and run the whole test suite: lint, then pytest through
# the real OpenRLHF, DeepSpeed and launcher on tiny models. docs/tests.md gives its time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-cpu.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -p no:cacheprovider --timeout 1800 --durations 40 "$@"  # per test, fixtures included: the tiny chain took up to 15 min on a fresh venv
