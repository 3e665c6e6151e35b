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
