"""New weights into a running vLLM engine: what PPO's weight sync and eval-policy's one engine for
several policies both need (vLLM only; no OpenRLHF).

On CPU, vLLM packs each linear weight into a private copy after loading and drops ``layer.weight``
(``dispatch_cpu_unquantized_gemm(remove_weight=True)``): loading new weights then either fails or
changes nothing generation reads. ``keep_cpu_weights`` keeps the weights (patched before the engine
loads its model), and ``repack_weights`` redoes the packing after new ones are loaded.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

_KEEP = "_normbt_keeps_weight"


def keep_cpu_weights() -> None:
    """vLLM's CPU GEMM dispatch keeps ``layer.weight`` (idempotent)."""
    utils = importlib.import_module("vllm.model_executor.layers.utils")
    dispatch = utils.dispatch_cpu_unquantized_gemm
    if getattr(dispatch, _KEEP, False):
        return

    def dispatch_keep_weight(layer, remove_weight: bool) -> None:
        dispatch(layer, remove_weight=False)  # keep layer.weight: new weights load into it

    setattr(dispatch_keep_weight, _KEEP, True)
    utils.dispatch_cpu_unquantized_gemm = dispatch_keep_weight


def repack_weights(model: torch.nn.Module) -> int:
    """Re-run vLLM's post-load processing (CPU GEMM packing) on every module that has one."""
    count = 0
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        if method is not None and hasattr(method, "process_weights_after_loading"):
            method.process_weights_after_loading(module)
            count += 1
    return count


def load_checkpoint(model: torch.nn.Module, folder: str) -> int:
    """Every tensor of ``folder``'s safetensors files into the engine's model, then re-packed;
    returns how many tensors were read. Run inside the worker (``LLM.apply_model``)."""
    from safetensors.torch import load_file

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors weights to load")
    count = 0
    for file in files:
        weights = load_file(file)
        count += len(weights)
        model.load_weights(weights=weights.items())
    repack_weights(model)
    return count
