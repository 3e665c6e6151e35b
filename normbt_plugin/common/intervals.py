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
    if len(diff) < 2:  # one pair (e.g. a subset of one): a difference, no interval or test
        return {
            "diff": float(diff.mean()),
            "low": float("nan"),
            "high": float("nan"),
            "p_permutation": float("nan"),
        }
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


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` (one per unit of replication, e.g. seed)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return (float("nan"), float("nan"))
    if values.std() == 0:
        return (float(values.mean()), float(values.mean()))
    low, high = stats.t.interval(level, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    return float(low), float(high)


def nested_bootstrap(
    values: np.ndarray, levels: tuple[float, ...] = (0.95, 0.90), n_resamples: int = 4000, seed: int = 0
) -> dict[float, tuple[float, float]]:
    """Percentile intervals of the grand mean of ``values`` [units, items], resampling units (seeds)
    and then items (prompts) within each drawn unit, so both sources of variation count."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    units, items = values.shape
    u = rng.integers(0, units, size=(n_resamples, units))
    i = rng.integers(0, items, size=(n_resamples, units, items))
    means = values[u[..., None], i].mean(axis=(1, 2))
    return {
        level: (float(np.quantile(means, (1 - level) / 2)), float(np.quantile(means, (1 + level) / 2)))
        for level in levels
    }


def seeds_needed(sd: float, effect: float, alpha: float = 0.05, power: float = 0.8, sided: int = 2) -> int:
    """Units (seeds) for a paired test to detect ``effect`` with ``power`` (normal approximation)."""
    if effect <= 0 or not np.isfinite(sd):
        return -1  # no effect to detect (or no spread measured)
    z = stats.norm.ppf(1 - alpha / sided) + stats.norm.ppf(power)
    return int(np.ceil((z * sd / effect) ** 2))


def finite_mean_ci(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval (BCa) of the mean of the finite ``values`` (one per unit, e.g. RM
    seed; NaN: a unit that has no value there); the mean twice when they do not vary."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) < 2 or values.std() == 0:
        return (float(values.mean()), float(values.mean())) if len(values) else (float("nan"), float("nan"))
    res = stats.bootstrap((values,), np.mean, confidence_level=0.95, n_resamples=4000, random_state=seed)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def finite_t_p(values: np.ndarray) -> float:
    """One-sample t-test p-value of mean 0 over the finite ``values`` (NaN with fewer than 2)."""
    values = values[np.isfinite(values)]
    if len(values) < 2 or values.std() == 0:
        return float("nan")
    return float(stats.ttest_1samp(values, 0.0).pvalue)
