"""What a GPU node needs for the plugin's GPU path, each with its fix (``normbt doctor`` prints these).

The versions come from ``requirements-gpu.lock`` (``scripts/install-gpu.sh``): torch 2.13.0 and
vLLM 0.29.0 from PyPI are CUDA 13.0 builds, which need an NVIDIA driver of the 580 branch or newer;
flash-attn 2.8.3 (an OpenRLHF requirement) is built against the installed torch by the CUDA
toolkit of the same major version, unless a prebuilt wheel is given.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

GPU_LOCK = Path(__file__).resolve().parents[2] / "requirements-gpu.lock"
MIN_DRIVER = 580  # CUDA 13.0's minimum Linux driver branch
INSTALL = "bash scripts/install-gpu.sh"


@dataclass(frozen=True)
class NodeFacts:
    """What was found on this node."""

    torch_cuda: str | None  # torch.version.cuda: None for a CPU build
    gpus: int  # devices this process sees
    driver: str | None  # nvidia-smi's driver version; None without a driver
    nvcc: str | None  # the CUDA toolkit's release, None without one
    flash_attn: bool  # the real flash_attn importable


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    text: str


def locked_cuda(lock: Path = GPU_LOCK) -> str:
    """The CUDA release the GPU lock's torch is built for (its ``nvidia-cuda-runtime`` pin)."""
    found = re.search(r"^nvidia-cuda-runtime(?:-cu\d+)?==(\d+\.\d+)", lock.read_text(), re.M)
    if found is None:
        raise ValueError(f"{lock} pins no nvidia-cuda-runtime: regenerate it ({INSTALL} --lock)")
    return found.group(1)


def _major(version: str | None) -> int | None:
    return int(version.split(".")[0]) if version else None


def checks(facts: NodeFacts, cuda: str) -> list[Check]:
    """Each requirement of a GPU job on this node, met or not, with what to do."""
    torch_ok = _major(facts.torch_cuda) == _major(cuda)
    built = f"CUDA {facts.torch_cuda}" if facts.torch_cuda else "a CPU build"
    driver_ok = (_major(facts.driver) or 0) >= MIN_DRIVER
    driver = facts.driver or "none found (no nvidia-smi)"
    out = [
        Check("torch CUDA build", torch_ok,
              built if torch_ok else f"{built}: the lock's torch is built for CUDA {cuda}; fix: {INSTALL}"),
        Check("NVIDIA driver", driver_ok,
              driver if driver_ok else f"{driver}: CUDA {cuda} needs the {MIN_DRIVER} branch or newer"),
        Check("GPUs visible", facts.gpus > 0,
              str(facts.gpus) if facts.gpus else "none (CUDA_VISIBLE_DEVICES set? the driver loaded?)"),
    ]  # fmt: skip
    if facts.flash_attn:
        return [*out, Check("flash-attn", True, "importable")]
    toolkit = (
        f"nvcc {facts.nvcc} here" if facts.nvcc else f"no nvcc here: install the CUDA {_major(cuda)} toolkit"
    )
    missing = (
        "models asking for flash_attention_2 run with sdpa (slower, more memory on long "
        f"sequences); fix: {INSTALL} (builds it; {toolkit}) or FLASH_ATTN_WHEEL=<a prebuilt 2.8.3 wheel "
        f"for torch + CUDA {cuda}> {INSTALL}"
    )
    return [*out, Check("flash-attn", False, missing)]


def _run(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def gather() -> NodeFacts:
    """This node's facts (the driver and toolkit by their own commands)."""
    import torch

    driver = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    nvcc = _run(["nvcc", "--version"])
    release = re.search(r"release (\d+\.\d+)", nvcc or "")
    flash = importlib.util.find_spec("flash_attn") is not None
    if flash:
        try:
            flash = getattr(importlib.import_module("flash_attn"), "__version__", None) is not None
        except Exception:  # a build for another torch: not usable
            flash = False
    return NodeFacts(
        torch_cuda=torch.version.cuda,
        gpus=torch.cuda.device_count() if torch.cuda.is_available() else 0,
        driver=driver.splitlines()[0].strip() if driver else None,
        nvcc=release.group(1) if release else None,
        flash_attn=flash,
    )
