"""The pair statistics every layer shares: representation distance, NormBT weight, quantile bins.

Core: torch and numpy only. Training (``losses``, the trainer's eval), evaluation, comparison and
diagnosis all call these, so a distance or a bin means the same thing in every report.
Distance-bin diagnostics always bin the L2 distance (the paper's axis), whatever distance a NormBT
run trained with: BT and NormBT runs are then binned on one scale and can be compared pair by pair.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

DISTANCES = ("l2", "unit_l2", "cosine")
T = TypeVar("T", Tensor, np.ndarray, float)


def pair_distance(chosen_hidden: Tensor, reject_hidden: Tensor, kind: str = "l2") -> Tensor:
    """Detached per-pair representation distance in float32, ``[B]``: 'l2', 'unit_l2' (L2 between
    the unit-normalised states, sqrt(2 (1 - cos)): linear in the angle) or 'cosine' (1 - cos:
    quadratic in the angle, so close pairs' weights grow with the square of their closeness)."""
    if kind not in DISTANCES:
        raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, got {kind!r}")
    hc, hr = torch.as_tensor(chosen_hidden).detach().float(), torch.as_tensor(reject_hidden).detach().float()
    if kind == "l2":
        return torch.linalg.vector_norm(hc - hr, dim=-1)
    if kind == "unit_l2":
        return torch.linalg.vector_norm(F.normalize(hc, dim=-1) - F.normalize(hr, dim=-1), dim=-1)
    return 1.0 - F.cosine_similarity(hc, hr, dim=-1, eps=1e-12)


def normbt_weight(distance: T, mu: T | float, eps: float) -> T:
    """NormBT's per-pair weight mu / (dist + eps mu): the BT gradient's distance factor divided out."""
    return mu / (distance + eps * mu)


def quantile_bins(values: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal-count bins of ``values``: the ``n_bins + 1`` edges and each value's bin (0 = smallest)."""
    values = np.asarray(values, dtype=float)
    edges = np.quantile(values, np.linspace(0, 1, n_bins + 1))
    index = np.clip(np.searchsorted(edges[1:-1], values, side="right"), 0, n_bins - 1)
    return edges, index


@dataclass(frozen=True)
class DistanceBin:
    """Accuracy of the pairs whose representation distance lies in ``[lo, hi]``."""

    lo: float
    hi: float
    n: int
    acc: float  # NaN for an empty bin


def distance_bins(distance: np.ndarray, correct: np.ndarray, n_bins: int) -> list[DistanceBin]:
    """Accuracy per quantile bin of the representation distance (closest first)."""
    if n_bins <= 0 or len(distance) == 0:
        return []
    n_bins = min(n_bins, len(distance))
    edges, index = quantile_bins(distance, n_bins)
    correct = np.asarray(correct, dtype=float)
    return [
        DistanceBin(
            lo=float(edges[i]),
            hi=float(edges[i + 1]),
            n=int((index == i).sum()),
            acc=float(correct[index == i].mean()) if (index == i).any() else math.nan,
        )
        for i in range(n_bins)
    ]
