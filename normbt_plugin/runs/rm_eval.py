"""``eval.json``: what ``normbt eval-rm --out`` writes (``rm_evaluation.eval_rm`` makes it) and
``normbt compare`` and ``normbt bon-study`` read: a reward model's accuracy on one pair set, with
every pair's scores so that reports can pair runs pair by pair.

The benchmark blocks (``rewardbench``, ``rewardbench2``, ``rmbench``...) are the benchmarks' formulas'
own results, as ``rm_evaluation.benchmark_scores`` returns and documents them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from normbt_plugin.runs import files
from normbt_plugin.stats import DistanceBin

EVAL = "eval.json"  # the recipes' name in an RM run folder


@dataclass(kw_only=True)
class PairScores:
    """Per pair of a two-way format (``pairs``, ``rewardbench``, ``rmbench``: three styles a pair)."""

    chosen: list[float] | list[list[float]]
    rejected: list[float] | list[list[float]]
    correct: list[float]  # 1 chosen above, 0.5 a tie, 0 below (rmbench: mean of the same-style three)
    distance: list[float]  # L2 between the two final-layer representations
    subset: list[str]  # [] without a subset column


@dataclass(kw_only=True)
class CandidateScores:
    """Per prompt of an N-way format (``rewardbench2``, ``candidates``): the correct answers first."""

    scores: list[list[float]]
    num_correct: list[int]
    correct: list[float]  # RewardBench 2's per-prompt result (1/k for a k-way tie at the top)
    pairwise: list[float]  # share of (chosen, rejected) pairs the chosen one wins
    distance: list[float]  # chosen to its closest rejected response
    subset: list[str]
    id: list[str]


@dataclass(kw_only=True)
class RmEval:
    format: str
    pairs: int  # pairs, or prompts for the N-way formats
    loader: str
    accuracy: float
    ties: int
    distance_bins: list[DistanceBin]
    per_pair: PairScores | CandidateScores
    model: str | None = None
    data: str | None = None
    per_subset: dict[str, float] = field(default_factory=dict)
    subset_sizes: dict[str, int] = field(default_factory=dict)
    # N-way formats
    pairwise_accuracy: float | None = None
    candidates: int | None = None
    # the benchmarks' own scores, where the format has them (ties: as the benchmark counts them;
    # ``*_ties_half``: with ties as 0.5, written only when there were ties)
    rewardbench: dict[str, Any] | None = None
    rewardbench_ties_half: dict[str, Any] | None = None
    rewardbench2: dict[str, Any] | None = None
    rewardbench2_ties: dict[str, Any] | None = None
    rmbench: dict[str, Any] | None = None
    rmbench_ties_half: dict[str, Any] | None = None
    rmbench_by_domain: dict[str, dict[str, Any]] | None = None

    @property
    def n_way(self) -> bool:
        return isinstance(self.per_pair, CandidateScores)

    @property
    def correct(self) -> np.ndarray:
        return np.asarray(self.per_pair.correct, dtype=np.float64)

    def write(self, path: str | Path) -> Path:
        return files.write(self, path)

    @classmethod
    def read(cls, path: str | Path) -> RmEval:
        return files.read(cls, path, f"normbt eval-rm --out {path}")
