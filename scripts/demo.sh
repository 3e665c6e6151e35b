#!/usr/bin/env bash
# Set up a CPU environment (if needed) and run the main job on its tiny CPU default:
# a tiny SFT policy, BT and NormBT reward models, their evaluation, PPO with vLLM rollouts on
# each, and the report (recipes/compare.sh with recipes/configs/tiny-cpu.env).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-cpu.sh
PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} bash recipes/compare.sh "$@"
