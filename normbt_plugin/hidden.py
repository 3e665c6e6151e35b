"""Which hidden state a reward is read from (torch only)."""

from __future__ import annotations

import torch


def eos_hidden_states(
    last_hidden_state: torch.Tensor, attention_mask: torch.Tensor, packed: bool
) -> torch.Tensor:
    """Hidden state at the token the reward is read from, ``[N, H]`` for N sequences.

    Padded ``(N, L, H)``: OpenRLHF's ``eos = L - 1 - mask.fliplr().argmax(1)`` (the last token
    of the mask; the last position with left padding). Packed ``(1, nnz, H)``
    (``--ds.packing_samples``): sequences are concatenated in row order without padding, so
    sequence i ends at ``cumsum(lengths)[i] - 1``.
    """
    if packed:
        ends = attention_mask.long().sum(dim=1).cumsum(0) - 1
        return last_hidden_state[0, ends]
    eos = attention_mask.size(1) - 1 - attention_mask.long().fliplr().argmax(dim=1)
    return last_hidden_state[torch.arange(len(eos), device=eos.device), eos]


def active_dropout(model: torch.nn.Module) -> dict[str, float]:
    """Dropout rates > 0 in ``model``: ``nn.Dropout`` modules and the ``attention_dropout`` floats
    that Llama-style attention passes to its kernel, by module name."""
    rates = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.p > 0:
            rates[name] = module.p
        rate = getattr(module, "attention_dropout", None)
        if isinstance(rate, float) and rate > 0:
            rates[f"{name}.attention_dropout"] = rate
    return rates


def disable_dropout(model: torch.nn.Module) -> int:
    """Set every dropout rate of ``model`` to 0 (as TRL's reward trainer does by default); returns
    how many were > 0. In training mode dropout noise enters the representation distance NormBT
    divides by, and can swamp the distance of close pairs."""
    rates = active_dropout(model)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
    return len(rates)
