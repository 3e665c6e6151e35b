#!/usr/bin/env bash
# Set up a CPU environment (if needed) and run the main job on its tiny CPU default:
# a tiny SFT policy, BT and NormBT reward models, their evaluation, PPO with vLLM rollouts on
# each, and the report (recipes/compare.sh with recipes/configs/tiny-cpu.env).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$EPOCHREALTIME
bash scripts/install-cpu.sh
# the set-up's wall time joins the chain's stage table (a fresh machine pays both)
SETUP_SECONDS=$(awk "BEGIN {print $EPOCHREALTIME - $start}") PATH="$PWD/.venv/bin:$PATH" \
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} bash recipes/compare.sh "$@"
