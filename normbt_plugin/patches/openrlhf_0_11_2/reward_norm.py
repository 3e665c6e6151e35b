"""Load the reward model's normalisation statistics (``config.mean``/``config.std``) for real.

Why: OpenRLHF's RM stage stores the eval reward mean/std in the saved config, and PPO's
``--reward.normalize_enable`` divides by them. The model class copies them into non-persistent
``mean``/``std`` buffers in ``__init__``; with transformers 5.15 ``from_pretrained`` builds the
model on the meta device and materialises non-persistent buffers afterwards without those
values, so outside ZeRO-3 PPO normalises with garbage (facts doc, "Known upstream bug";
upstream fix proposed in OpenRLHF PR #1343). After loading, the buffers are set from the config.
Applied in PPO jobs; harmless where the values were already right.
"""

from __future__ import annotations

import functools
import importlib

import torch

from normbt_plugin.patches.openrlhf_0_11_2 import is_patched, mark_patched

_MODULES = (  # every module that holds the function under its own name
    "openrlhf.models",
    "openrlhf.models.model",
    "openrlhf.trainer.ray.launcher",
    "openrlhf.trainer.ray.ppo_critic",
)


def needed() -> bool:
    return True


def set_normalisation(model: torch.nn.Module) -> bool:
    """Copy ``config.mean/std`` (or 0/1) into the ``mean``/``std`` buffers; False if none."""
    for module in model.modules():  # the reward/critic model itself, also under a PEFT wrapper
        config = getattr(module, "config", None)
        if config is not None and "mean" in module._buffers and "std" in module._buffers:
            with torch.no_grad():  # no statistics saved: the identity, as __init__ meant
                module.mean.fill_(float(getattr(config, "mean", 0.0)))
                module.std.fill_(float(getattr(config, "std", 1.0)))
            return True
    return False


def apply() -> None:
    model_module = importlib.import_module("openrlhf.models.model")
    original = model_module.get_llm_for_sequence_regression
    if is_patched(original, "reward_norm"):
        return

    @functools.wraps(original)
    def get_llm_for_sequence_regression(*args, **kwargs):
        model = original(*args, **kwargs)
        set_normalisation(model)
        return model

    mark_patched(get_llm_for_sequence_regression, "reward_norm")
    for name in _MODULES:
        module = importlib.import_module(name)
        if hasattr(module, "get_llm_for_sequence_regression"):
            module.get_llm_for_sequence_regression = get_llm_for_sequence_regression
