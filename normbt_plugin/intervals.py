"""Intervals and paired tests over per-pair (or per-prompt) results, seeds averaged: the statistics
the reports (``compare``, ``curves``) print, kept apart from their tables and plots."""

from __future__ import annotations

import numpy as np
from scipy import stats


def bootstrap_ci(samples: list[np.ndarray], seed: int = 0, n_resamples: int = 2000) -> tuple[float, float]:
    """95% interval of the mean over ``samples`` (one per-pair array per seed, same pairs),
    resampling pairs jointly."""

    def statistic(*xs, axis=-1):
        return np.mean([x.mean(axis=axis) for x in xs], axis=0)

    res = stats.bootstrap(
        tuple(samples),
        statistic,
        paired=True,
        vectorized=True,
        n_resamples=n_resamples,
        confidence_level=0.95,
        method="percentile",
        random_state=seed,
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_difference(a: list[np.ndarray], b: list[np.ndarray], seed: int = 0) -> dict[str, float]:
    """Mean of a minus b (per-pair means over seeds), its bootstrap interval and a paired
    permutation test p-value over pairs."""
    x, y = np.mean(a, axis=0), np.mean(b, axis=0)
    diff = x - y
    low, high = bootstrap_ci([diff], seed=seed)
    test = stats.permutation_test(
        (x, y),
        lambda u, v, axis=-1: np.mean(u, axis=axis) - np.mean(v, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=2000,
        random_state=seed,
    )
    return {"diff": float(diff.mean()), "low": low, "high": high, "p_permutation": float(test.pvalue)}


def ci_text(values: dict[str, float], digits: int = 4) -> str:
    return f"{values['mean']:.{digits}f} [{values['low']:.{digits}f}, {values['high']:.{digits}f}]"


def interval(samples: list[np.ndarray]) -> dict[str, float]:
    """Mean over seeds of per-item arrays, with its bootstrap 95% interval (none for one item)."""
    mean = float(np.mean([x.mean() for x in samples]))
    low, high = bootstrap_ci(samples) if len(samples[0]) > 1 else (mean, mean)
    return {"mean": mean, "low": low, "high": high}
