#!/usr/bin/env bash
# The GPU check (docs/gpu.md), prepared here and run on a lent GPU machine: one GPU, torch with CUDA
# and transformers, no OpenRLHF, DeepSpeed, Ray or vLLM, no network. It installs the wheels it carries
# and runs benchmarks/gpu_rm_check.py: NCCL's rule for host tensors, then the RM stage under DeepSpeed
# with NCCL in bf16, BT and NormBT, step time and peak memory side by side.
#   bash scripts/gpu-check.sh --prepare   # here: what that machine lacks, for its Python -> .gpu-wheels/
#   bash scripts/gpu-check.sh [args]      # there (carry .gpu-wheels): install into /tmp/site, run the check
# The RM stage needs no Ray or vLLM (OpenRLHF imports them for PPO only), so the wheels stay small.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.gpu-wheels
PYVER=${PYVER:-3.12}            # the GPU machine's Python (/work/.library/device/KINDS.md)
LOCK=requirements-cpu.lock      # the versions the plugin is tested with
# What the GPU machine's image lacks, or holds at a version OpenRLHF 0.11.2 does not take
CARRY=(openrlhf transformers tokenizers datasets dill multiprocess hjson pydantic pydantic-core annotated-types
       typing-inspection optree torchdata)
pinned() { grep -m1 -i "^$1==" "$LOCK" || { echo "gpu-check: $1 is not in $LOCK" >&2; exit 1; }; }

if [[ "${1:-}" == "--prepare" ]]; then
  py=${PYTHON:-.venv/bin/python}
  [[ -f .whl/deepspeed-0.19.6-py3-none-any.whl ]] || bash scripts/install-cpu.sh   # builds the DeepSpeed wheel
  rm -rf "$WHEELS" && mkdir -p "$WHEELS"
  platforms=()
  for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
    platforms+=(--platform "$p")
  done
  for name in "${CARRY[@]}"; do
    "$py" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version "$PYVER" \
      --implementation cp "${platforms[@]}" -d "$WHEELS" "$(pinned "$name")"
  done
  "$py" -m pip wheel -q --disable-pip-version-check --no-deps -w "$WHEELS" "$(pinned pylatexenc)"  # an sdist
  cp .whl/deepspeed-0.19.6-py3-none-any.whl "$WHEELS/"
  echo "gpu-check: $(ls "$WHEELS" | wc -l) wheels, $(du -sh "$WHEELS" | cut -f1) in $WHEELS"
  exit 0
fi

[[ -d "$WHEELS" ]] || { echo "gpu-check: no $WHEELS here: run bash scripts/gpu-check.sh --prepare first" >&2; exit 1; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 DS_BUILD_OPS=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 benchmarks/gpu_rm_check.py --out "${OUT:-runs}/gpu-check" "$@"
