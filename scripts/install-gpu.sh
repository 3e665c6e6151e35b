#!/usr/bin/env bash
# Install the plugin on a Linux x86_64 GPU node, in the order that works: CUDA torch first,
# flash-attn built against it (or a prebuilt wheel), then OpenRLHF, vLLM and every other
# distribution at the exact version in requirements-gpu.lock, then the plugin; `normbt doctor` last.
#   bash scripts/install-gpu.sh                 # into the active Python environment (PYTHON=... for another)
#   FLASH_ATTN_WHEEL=path/or/url.whl bash scripts/install-gpu.sh   # a prebuilt flash-attn 2.8.3 wheel
#   bash scripts/install-gpu.sh --lock          # regenerate requirements-gpu.lock (any machine, no CUDA)
# Why this order: OpenRLHF 0.11.2 requires flash-attn==2.8.3, an sdist whose setup.py imports torch;
# `pip install openrlhf[vllm]` would build it in an isolated environment without torch and fail.
# What the node needs (docs/gpu.md): an NVIDIA driver for CUDA 13.0 (580 or newer; torch 2.13.0 and
# vLLM 0.29.0 from PyPI are CUDA 13.0 builds), and, to build flash-attn, the CUDA 13 toolkit (nvcc),
# a C++20-capable GCC the toolkit supports, and ninja (MAX_JOBS limits the build's memory).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOCK=requirements-gpu.lock
CPU_LOCK=requirements-cpu.lock
FLASH_ATTN=flash-attn==2.8.3
MIN_DRIVER=580          # CUDA 13.0's minimum Linux driver branch
# The packages both environments must hold at one version (checked by tests/test_environment.py):
# the GPU lock is resolved with the CPU lock's pins of these as constraints.
SHARED=(openrlhf deepspeed ray transformers accelerate peft datasets tokenizers safetensors huggingface-hub
        numpy scipy pydantic einops matplotlib tqdm)
say() { echo "install-gpu: $*"; }
die() { echo "install-gpu: $*" >&2; exit 1; }
pinned() { grep -m1 -i "^$1==" "$LOCK" || die "$1 is not in $LOCK"; }

if [[ "${1:-}" == "--lock" ]]; then
  uv=${UV:-$(command -v uv || echo .venv/bin/uv)}
  shared=$(mktemp)
  for name in "${SHARED[@]}"; do grep -m1 -i "^$name==" "$CPU_LOCK" || die "$name is not in $CPU_LOCK"; done > "$shared"
  {
    echo "# Every distribution of a Linux x86_64 GPU node, exact versions (generated: do not edit)."
    echo "# Regenerate: bash scripts/install-gpu.sh --lock   (uv, PyPI metadata only: no CUDA needed)"
    echo "# Python 3.11, x86_64-manylinux_2_28; pyproject.toml's [gpu] extra."
    echo "# shared with $CPU_LOCK: ${SHARED[*]}"
    "$uv" pip compile -q --config-file scripts/gpu-resolve.toml --python-platform x86_64-manylinux_2_28 \
      --python-version 3.11 --extra gpu --no-header --no-annotate -c "$shared" pyproject.toml
  } > "$LOCK.part"
  rm -f "$shared"
  mv "$LOCK.part" "$LOCK"
  say "wrote $LOCK ($(grep -c '==' "$LOCK") distributions)"
  exit 0
fi

# ---- what the node must have before anything is installed
[[ "$(uname -sm)" == "Linux x86_64" ]] || die "the lock is for Linux x86_64; this is $(uname -sm)"
command -v nvidia-smi > /dev/null || die "no nvidia-smi: install the NVIDIA driver ($MIN_DRIVER or newer) first"
driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1)
(( ${driver%%.*} >= MIN_DRIVER )) || die "driver $driver is older than $MIN_DRIVER, which CUDA 13.0 (torch 2.13.0) needs"
say "driver $driver, $("$PY" --version)"

# ---- 1. CUDA torch, as locked (PyPI's Linux wheel is the CUDA 13.0 build)
"$PY" -m pip install -q --disable-pip-version-check "$(pinned torch)" $(grep -E '^nvidia-' "$LOCK")
cuda=$("$PY" -c 'import torch; print(torch.version.cuda or "")')
[[ -n "$cuda" ]] || die "torch $("$PY" -c 'import torch; print(torch.__version__)') is a CPU build"

# ---- 2. flash-attn against that torch: a given wheel, or built here (no build isolation)
if "$PY" -c 'import flash_attn' 2> /dev/null; then
  say "flash-attn already importable"
elif [[ -n "${FLASH_ATTN_WHEEL:-}" ]]; then
  "$PY" -m pip install -q --no-deps "$FLASH_ATTN_WHEEL"
else
  command -v nvcc > /dev/null || die "no nvcc: install the CUDA ${cuda%%.*} toolkit to build flash-attn, \
or pass FLASH_ATTN_WHEEL= a prebuilt $FLASH_ATTN wheel for torch $(pinned torch) + CUDA $cuda"
  nvcc_version=$(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')
  [[ "${nvcc_version%%.*}" == "${cuda%%.*}" ]] || die "nvcc $nvcc_version does not match torch's CUDA $cuda"
  "$PY" -m pip install -q "$(pinned ninja)" "$(pinned packaging)" "$(pinned psutil)" "$(pinned einops)"
  say "building $FLASH_ATTN against torch's CUDA $cuda (MAX_JOBS=${MAX_JOBS:-4}; tens of minutes)"
  MAX_JOBS=${MAX_JOBS:-4} "$PY" -m pip install --no-build-isolation --no-deps "$FLASH_ATTN"
fi

# ---- 3. everything else at its locked version (nothing resolved), then the plugin
"$PY" -m pip install -q --no-deps -r <(grep -v -E "^(torch|flash-attn)==" "$LOCK")
"$PY" -m pip install -q --no-deps -e .
"$PY" -m normbt_plugin.common.environment --check "$LOCK" --allow-extra
normbt doctor
