"""Let OpenRLHF 0.11.2 import without flash-attn (machines without CUDA).

Why: ``openrlhf/models/ring_attn_utils.py`` imports ``flash_attn.bert_padding`` and
``flash_attn.utils.distributed`` at module level, so ``openrlhf.models`` (and with it the RM
trainer) cannot be imported where flash-attn cannot be built. Those helpers are pure torch
(unpadding for ``--ds.packing_samples``); this module provides the same functions, written from
their documented behaviour, under the same names. Transformers still sees flash-attn as not
installed (the stand-in has no version), so ``flash_attention_2`` is never chosen by accident.
Without flash-attn, ``flash_attention_*`` requests (``train_rm`` forces flash_attention_2 with
``--ds.packing_samples``) load the model with PyTorch's sdpa instead: given packed position ids
and no attention mask, transformers builds the block-diagonal mask itself, so packed and padded
batches give the same hidden states (tested).
Upstreamable as: a lazy import of flash_attn inside the packing code path.
Applied only when the real flash_attn is not importable; in a GPU job with a warning at the start
(a slower run nobody chose), and ``normbt doctor`` names the fix.
"""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import importlib.util
import sys
import types
import warnings

import torch
from einops import rearrange

from normbt_plugin import collectives
from normbt_plugin.common.device_mode import cpu_job
from normbt_plugin.patches.openrlhf_0_11_2 import mark_patched


def needed() -> bool:
    if "flash_attn" in sys.modules:  # the real one, or the stand-in already in place
        return False
    return importlib.util.find_spec("flash_attn") is None


def index_first_axis(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Rows ``indices`` of ``x`` flattened to ``(N, ...)``."""
    return x[indices]


def unpad_input(hidden_states: torch.Tensor, attention_mask: torch.Tensor, unused_mask=None):
    """(B, S, ...) -> (nnz, ...), indices, cu_seqlens, max_seqlen, seqused (flash-attn >= 2.7)."""
    all_masks = (attention_mask + unused_mask) if unused_mask is not None else attention_mask
    seqlens_in_batch = all_masks.sum(dim=-1, dtype=torch.int32)
    used_seqlens_in_batch = attention_mask.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(all_masks.flatten(), as_tuple=False).flatten()
    max_seqlen_in_batch = int(seqlens_in_batch.max().item())
    cu_seqlens = torch.nn.functional.pad(torch.cumsum(seqlens_in_batch, dim=0, dtype=torch.int32), (1, 0))
    flat = rearrange(hidden_states, "b s ... -> (b s) ...")
    return (
        index_first_axis(flat, indices),
        indices,
        cu_seqlens,
        max_seqlen_in_batch,
        (used_seqlens_in_batch),
    )


def pad_input(hidden_states: torch.Tensor, indices: torch.Tensor, batch: int, seqlen: int):
    """Inverse of ``unpad_input``: (nnz, ...) -> (B, S, ...) with zeros at padding."""
    output = torch.zeros(
        (batch * seqlen, *hidden_states.shape[1:]),
        device=hidden_states.device,
        dtype=hidden_states.dtype,
    )
    output[indices] = hidden_states
    return rearrange(output, "(b s) ... -> b s ...", b=batch)


def all_gather(input_: torch.Tensor, process_group) -> tuple[torch.Tensor, None]:
    """Concatenate ``input_`` from every rank of ``process_group`` along dim 0."""
    return collectives.all_gather_into_tensor(input_, process_group), None


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=True)
    mark_patched(module, "flash_attn_standin")
    for key, value in attrs.items():
        setattr(module, key, value)
    return module


def _sdpa_without_flash_attn(get_model):
    # functools.wraps: Ray pickles actor classes by value, and the functions they reference by
    # reference only if module + qualname lead back to them (they do, once installed there)
    @functools.wraps(get_model)
    def get_llm_for_sequence_regression(*args, attn_implementation="flash_attention_2", **kwargs):
        if attn_implementation.startswith("flash_attention"):
            print(f"normbt-plugin: flash-attn is not installed; {attn_implementation} -> sdpa")
            attn_implementation = "sdpa"
        return get_model(*args, attn_implementation=attn_implementation, **kwargs)

    return get_llm_for_sequence_regression


GPU_WARNING = (
    "normbt-plugin: this is a GPU job but flash-attn is not importable: models asking for "
    "flash_attention_2 load with PyTorch's sdpa instead (slower, more memory on long sequences). "
    "Install it: bash scripts/install-gpu.sh (see `normbt doctor`), or pass --ds.attn_implementation sdpa "
    "to choose sdpa on purpose."
)


def apply() -> None:
    if not cpu_job():  # on a GPU node the stand-in is a fallback nobody chose: said at the start
        warnings.warn(GPU_WARNING, RuntimeWarning, stacklevel=2)
    bert_padding = _module(
        "flash_attn.bert_padding",
        index_first_axis=index_first_axis,
        pad_input=pad_input,
        unpad_input=unpad_input,
        rearrange=rearrange,
    )
    distributed = _module("flash_attn.utils.distributed", all_gather=all_gather)
    utils = _module("flash_attn.utils", distributed=distributed)
    root = _module("flash_attn", bert_padding=bert_padding, utils=utils)
    sys.modules.update(
        {
            "flash_attn": root,
            "flash_attn.bert_padding": bert_padding,
            "flash_attn.utils": utils,
            "flash_attn.utils.distributed": distributed,
        }
    )
    models = importlib.import_module("openrlhf.models")
    model_module = importlib.import_module("openrlhf.models.model")
    wrapped = _sdpa_without_flash_attn(model_module.get_llm_for_sequence_regression)
    models.get_llm_for_sequence_regression = wrapped
    model_module.get_llm_for_sequence_regression = wrapped
