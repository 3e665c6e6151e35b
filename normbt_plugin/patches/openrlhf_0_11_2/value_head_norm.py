"""A LayerNorm before the value head (``--plugin.value_head_layernorm``): the comparator reviewers
asked for (does normalising the representation the head reads do what NormBT does?).

Why a patch: OpenRLHF's reward and critic models read ``nn.Linear(hidden, 1)`` straight off the
last hidden state. ``get_llm_for_sequence_regression`` is wrapped so that, when the run asks for
it or the loaded config says ``value_head_layernorm: true``, the head becomes
``linear(layer_norm(h))``. The LayerNorm has no parameters, so the checkpoint keeps the plain
``<prefix>.weight`` layout; the flag is saved in the config and every later load through
OpenRLHF (eval-rm, PPO's reward model and critic) rebuilds the same head. Transformers'
``AutoModelForSequenceClassification`` cannot, so ``normbt eval-rm`` refuses its HF loader there.
"""

from __future__ import annotations

import functools
import importlib

import torch
import torch.nn.functional as F
from torch import nn

from normbt_plugin.patches.openrlhf_0_11_2 import is_patched, mark_patched

CONFIG_KEY = "value_head_layernorm"
_requested = False  # --plugin.value_head_layernorm of this process's train_rm run
_MODULES = (  # every module that holds the function under its own name
    "openrlhf.models",
    "openrlhf.models.model",
    "openrlhf.trainer.ray.launcher",
    "openrlhf.trainer.ray.ppo_critic",
)


class NormedValueHead(nn.Module):
    """``linear(layer_norm(h))`` with a parameter-free LayerNorm, holding the original head's
    parameters under their own names (``weight``, ``bias``)."""

    def __init__(self, linear: nn.Linear, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias
        self.eps = eps

    def normalize(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(hidden, hidden.shape[-1:], eps=self.eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(self.normalize(hidden), self.weight, self.bias)


def normed_head(model: nn.Module) -> NormedValueHead | None:
    """The ``NormedValueHead`` of ``model`` (OpenRLHF's, possibly inside a DeepSpeed engine), if
    it has one: then the value head reads ``head.normalize(hidden)``, not ``hidden``."""
    return next((m for m in model.modules() if isinstance(m, NormedValueHead)), None)


def add_layernorm(model: nn.Module) -> bool:
    """Swap the value head for a ``NormedValueHead`` where the config asks for one."""
    for module in model.modules():
        config = getattr(module, "config", None)
        prefix = getattr(module, "value_head_prefix", None)
        if config is None or prefix is None:
            continue
        if not getattr(config, CONFIG_KEY, False):
            return False
        head = getattr(module, prefix)
        if not isinstance(head, NormedValueHead):
            setattr(module, prefix, NormedValueHead(head))
        return True
    return False


def request_layernorm(on: bool) -> None:
    """Models built from now on get the LayerNorm head (train_rm's parser calls this)."""
    global _requested
    _requested = on


def needed() -> bool:
    return True


def apply() -> None:
    model_module = importlib.import_module("openrlhf.models.model")
    original = model_module.get_llm_for_sequence_regression
    if is_patched(original, "value_head_norm"):
        return

    @functools.wraps(original)
    def get_llm_for_sequence_regression(*args, **kwargs):
        model = original(*args, **kwargs)
        if _requested:
            for module in model.modules():
                if getattr(module, "value_head_prefix", None) is not None:
                    setattr(module.config, CONFIG_KEY, True)  # saved with the model
                    break
        add_layernorm(model)
        return model

    mark_patched(get_llm_for_sequence_regression, "value_head_norm")
    for name in _MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # e.g. the Ray modules in an RM-only environment
            continue
        if hasattr(module, "get_llm_for_sequence_regression"):
            module.get_llm_for_sequence_regression = get_llm_for_sequence_regression
