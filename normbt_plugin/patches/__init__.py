"""Changes OpenRLHF needs, per pinned version, applied at run time in each process.

Nothing here edits the installed OpenRLHF: ``apply_openrlhf_patches()`` replaces module
attributes in the running process (Liger-Kernel style), and the launchers call it first in every
rank. Each patch is one module of ``openrlhf_<version>/`` with a docstring saying why it exists.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import PackageNotFoundError, version

DISABLE_ENV = "NORMBT_PLUGIN_DISABLE"
SUPPORTED_OPENRLHF = {"0.11.2": "normbt_plugin.patches.openrlhf_0_11_2"}

_active: list[str] = []


class UnsupportedOpenRLHFError(RuntimeError):
    pass


def openrlhf_version() -> str | None:
    try:
        return version("openrlhf")
    except PackageNotFoundError:
        return None


def patch_package(found: str | None = None):
    """The patch package for the installed OpenRLHF, or a clear error naming the supported ones."""
    found = openrlhf_version() if found is None else found
    supported = ", ".join(SUPPORTED_OPENRLHF)
    if found is None:
        raise UnsupportedOpenRLHFError(
            f"OpenRLHF is not installed. normbt-plugin supports OpenRLHF {supported}: "
            "pip install 'normbt-plugin[gpu]' on GPU nodes, or bash scripts/install-cpu.sh."
        )
    if found not in SUPPORTED_OPENRLHF:
        raise UnsupportedOpenRLHFError(
            f"OpenRLHF {found} is installed, but normbt-plugin supports OpenRLHF {supported} only "
            f"(its patches are written against that release): pip install openrlhf=={supported}"
        )
    return importlib.import_module(SUPPORTED_OPENRLHF[found])


def apply_openrlhf_patches(
    *,
    ppo: bool = False,
    flash_attn_standin: bool | None = None,
    cpu_gloo: bool | None = None,
    cpu_fp32: bool | None = None,
    dataset_keys: bool | None = None,
    registered_loss: bool | None = None,
    cpu_ppo: bool | None = None,
    vllm_cpu: bool | None = None,
    value_head_norm: bool | None = None,
    reward_norm: bool | None = None,
    rollout_log: bool | None = None,
) -> list[str]:
    """Apply the patches for the installed OpenRLHF; returns the names of the active ones.

    ``ppo=False`` is the reward-model stage (registered losses, their flags, dataset checks);
    ``ppo=True`` a Ray PPO job (CPU execution of PPO and vLLM, the reward-normalisation fix).
    Each keyword switches one patch: True forces it, False leaves it off, None applies it where
    it belongs to the stage and is needed (``flash_attn_standin`` without flash-attn, the CPU
    ones without CUDA). Calling it again is harmless.
    """
    package = patch_package()
    stage = package.PPO if ppo else package.RM
    switches = {
        "flash_attn_standin": flash_attn_standin,
        "cpu_gloo": cpu_gloo,
        "cpu_fp32": cpu_fp32,
        "dataset_keys": dataset_keys,
        "registered_loss": registered_loss,
        "cpu_ppo": cpu_ppo,
        "vllm_cpu": vllm_cpu,
        "value_head_norm": value_head_norm,
        "reward_norm": reward_norm,
        "rollout_log": rollout_log,
    }
    for name in filter(None, os.environ.get(DISABLE_ENV, "").split(",")):
        if name not in switches:
            raise ValueError(f"{DISABLE_ENV}: unknown patch {name!r}; switchable: {', '.join(switches)}")
        if switches[name] is None:
            switches[name] = False

    for name in package.ORDER:  # later ones import openrlhf, which needs the early ones in place
        module = importlib.import_module(f"{package.__name__}.{name}")
        switch = switches.get(name)
        if name in _active or switch is False:
            continue
        if switch is None and (name not in stage or not module.needed()):
            continue
        module.apply()
        _active.append(name)
    return list(_active)


def active_patches() -> list[str]:
    return list(_active)
