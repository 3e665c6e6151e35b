#!/usr/bin/env bash
# Set up a CPU environment (if needed) and run the main job on its tiny CPU default:
# BT vs NormBT reward models on a tiny model, their metrics side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-cpu.sh
PATH="$PWD/.venv/bin:$PATH" bash recipes/compare.sh "$@"
