"""The OpenRLHF adapter: the only package of normbt_plugin that imports OpenRLHF.

Two halves. The patches: changes OpenRLHF needs, per pinned version, applied at run time in each
process. Nothing here edits the installed OpenRLHF: ``apply_openrlhf_patches()`` replaces module
attributes in the running process (Liger-Kernel style), and the launchers call it first in every
rank. Each patch is one module of ``openrlhf_<version>/`` with a docstring saying why it exists.
The surface: the version-neutral functions below (parsers, reward-model loading, the reward text,
GPU placement, the weight-sync group), which the launchers and studies call instead of importing
OpenRLHF or a versioned folder; each forwards to that folder's ``surface`` module.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import ModuleType
from typing import Any

DISABLE_ENV = "NORMBT_PLUGIN_DISABLE"
# the supported versions are the versioned patch folders present: openrlhf_0_11_2/ -> "0.11.2"
SUPPORTED_OPENRLHF = {
    folder.name.removeprefix("openrlhf_").replace("_", "."): f"{__name__}.{folder.name}"
    for folder in sorted(Path(__file__).parent.glob("openrlhf_*"))
    if (folder / "__init__.py").is_file()
}

_active: list[str] = []


class UnsupportedOpenRLHFError(RuntimeError):
    pass


def openrlhf_version() -> str | None:
    try:
        return version("openrlhf")
    except PackageNotFoundError:
        return None


def patch_package(found: str | None = None) -> ModuleType:
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


def patch_module(name: str) -> ModuleType:
    """Patch ``name``'s module for the installed OpenRLHF (for tests and benchmarks of one patch)."""
    if name not in patch_package().PATCHES:
        raise KeyError(f"unknown patch {name!r}; patches: {', '.join(patch_package().PATCHES)}")
    return importlib.import_module(f"{patch_package().__name__}.{name}")


def stage_patches(stage: str) -> list[str]:
    """The patches of ``stage`` ('rm': every DeepSpeed stage; 'ppo': a Ray PPO job), in order."""
    return [name for name, stages in patch_package().PATCHES.items() if stage in stages]


def apply_openrlhf_patches(*, ppo: bool = False, **switches: bool | None) -> list[str]:
    """Apply the patches for the installed OpenRLHF; returns the names of the active ones.

    ``ppo=False`` is the reward-model stage (registered losses, their flags, dataset checks);
    ``ppo=True`` a Ray PPO job (CPU execution of PPO and vLLM, the reward-normalisation fix).
    Each keyword, a patch's name, switches it: True forces it, False leaves it off, None (or not
    given) applies it where it belongs to the stage and is needed (``flash_attn_standin`` without
    flash-attn, the CPU ones without CUDA). ``NORMBT_PLUGIN_DISABLE=a,b`` switches patches off in
    every process of a job. Calling it again is harmless.
    """
    package = patch_package()
    registry: dict[str, tuple[str, ...]] = package.PATCHES
    names = ", ".join(registry)
    for name in switches:
        if name not in registry:
            raise TypeError(f"apply_openrlhf_patches: unknown patch {name!r}; patches: {names}")
    for name in filter(None, os.environ.get(DISABLE_ENV, "").split(",")):
        if name not in registry:
            raise ValueError(f"{DISABLE_ENV}: unknown patch {name!r}; switchable: {names}")
        if switches.get(name) is None:
            switches[name] = False

    stage = "ppo" if ppo else "rm"
    for name, stages in registry.items():  # in order: later ones import openrlhf
        module = importlib.import_module(f"{package.__name__}.{name}")
        switch = switches.get(name)
        if name in _active or switch is False:
            continue
        if switch is None and (stage not in stages or not module.needed()):
            continue
        module.apply()
        _active.append(name)
    return list(_active)


# ------------------------------------------------------------------ the version-neutral surface


def _surface() -> ModuleType:
    return importlib.import_module(f"{patch_package().__name__}.surface")


def rm_parser() -> contextlib.AbstractContextManager[None]:
    """While active, train_rm's parser takes the registered losses' flags and checks them."""
    return _surface().rm_parser()


def sft_parser() -> contextlib.AbstractContextManager[None]:
    """While active, train_sft's parser takes fp32 on CPU (and defaults to it there)."""
    return _surface().sft_parser()


def ppo_parser(
    after: Callable[[argparse.ArgumentParser, argparse.Namespace], None],
) -> contextlib.AbstractContextManager[None]:
    """While active, train_ppo_ray's parser takes fp32 on CPU and runs ``after`` on its result."""
    return _surface().ppo_parser(after)


def capture_parser(module: str) -> argparse.ArgumentParser:
    """The argument parser an OpenRLHF CLI module builds (with the plugin's flags), not run."""
    return _surface().capture_parser(module)


def load_reward_model(path: str, *, param_dtype: str, value_head_prefix: str = "score") -> Any:
    """An OpenRLHF reward-model checkpoint through OpenRLHF's loader, patched (fp32 allowed)."""
    apply_openrlhf_patches(cpu_fp32=True)  # fp32 known to OpenRLHF's loader on GPUs too
    return _surface().load_reward_model(path, param_dtype=param_dtype, value_head_prefix=value_head_prefix)


def normed_head(model: Any) -> Any:
    """The ``--plugin.value_head_layernorm`` head of an OpenRLHF reward model, or None."""
    return _surface().normed_head(model)


def policy_prompt(tokenizer: Any, prompt: Any, **template: Any) -> str:
    """The text OpenRLHF's PPO gives the policy for ``prompt`` (text, or chat messages: every turn);
    ``template``: ``input_template=`` or ``apply_chat_template=True``. eval-policy, label-pairs and
    standardize sample with it, so the policy sees what PPO shows it."""
    return _surface().policy_prompt(tokenizer, prompt, **template)


def reward_text(tokenizer: Any, prompt: Any, response: Any, **template: Any) -> str:
    """The text OpenRLHF's reward-model stage scores for ``prompt`` + ``response`` (EOS included);
    ``template``: ``input_template=`` (a '{}' format for the prompt) or ``apply_chat_template=True``."""
    return _surface().reward_text(tokenizer, prompt, response, **template)


def gpus_required(args: argparse.Namespace) -> int:
    """GPUs a train_ppo_ray layout asks for, as OpenRLHF places its actors and engines."""
    return _surface().gpus_required(args)


def stateless_gloo_group(master_address: str, master_port: int, rank: int, world_size: int) -> Any:
    """The PPO weight-sync group over gloo, as the cpu_ppo patch builds it."""
    return _surface().stateless_gloo_group(master_address, master_port, rank, world_size)
