"""Patches for OpenRLHF 0.11.2, one module each (see each module's docstring for why).

Each patch module has ``needed()`` (whether it applies on this machine) and ``apply()`` (safe to
call twice: what it replaced carries the ``MARK`` attribute). ``surface`` is not a patch: it holds
what the adapter's version-neutral functions need from this OpenRLHF version.
"""

from __future__ import annotations

from typing import Any

# The one registry of patch names: each patch and the stages it belongs to, in application order
# (the flash-attn stand-in must exist before any openrlhf.models import; the later ones import
# OpenRLHF's trainers and, for PPO, Ray and vLLM). "rm" is every DeepSpeed stage (RM, SFT).
PATCHES: dict[str, tuple[str, ...]] = {
    "flash_attn_standin": ("rm", "ppo"),
    "cpu_gloo": ("rm", "ppo"),
    "cpu_fp32": ("rm", "ppo"),
    "checkpoint_guard": ("rm", "ppo"),
    "dataset_keys": ("rm",),
    "cli_options": ("rm",),
    "registered_loss": ("rm",),
    "cpu_ppo": ("ppo",),
    "vllm_cpu": ("ppo",),
    "free_port": ("ppo",),
    "value_head_norm": ("rm", "ppo"),
    "lora_value_head": ("rm", "ppo"),
    "reward_norm": ("ppo",),
    "rollout_log": ("ppo",),
}

MARK = "__normbt_patched__"  # the patches an object carries (functools.wraps copies it on)


def is_patched(obj: Any, patch: str) -> bool:
    return patch in getattr(obj, MARK, ())


def mark_patched(obj: Any, patch: str) -> Any:
    setattr(obj, MARK, frozenset({*getattr(obj, MARK, ()), patch}))
    return obj
