"""Reward-vs-KL curves: the matched-KL comparison on synthetic curves with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from normbt_plugin.curves import Curve, common_grid, load_function, matched_kl, window_means
from normbt_plugin.pairs import EvalInputError


def curve(label, rm_seed, kl, true, ppo_seed=1):
    kl, true = np.asarray(kl, float), np.asarray(true, float)
    return Curve(label, rm_seed, ppo_seed, kl=kl, true=true, proxy=true * 10, exact=true / 2,
                 length=np.ones_like(kl), steps=np.arange(1, len(kl) + 1))  # fmt: skip


def test_matched_kl_finds_a_known_offset_between_curves_sampled_at_different_kls():
    # bt: true = 0.2 KL; normbt: 0.2 KL + offset (0.1 for RM seed 1, 0.3 for seed 2), sampled elsewhere
    curves = [
        curve("bt", 1, [0.0, 0.5, 1.0, 2.0, 4.0], 0.2 * np.array([0.0, 0.5, 1.0, 2.0, 4.0])),
        curve("bt", 2, [0.0, 1.5, 3.0, 4.5], 0.2 * np.array([0.0, 1.5, 3.0, 4.5])),
        curve("normbt", 1, [0.0, 0.7, 2.9, 3.5], 0.2 * np.array([0.0, 0.7, 2.9, 3.5]) + 0.1),
        curve("normbt", 2, [0.0, 0.3, 1.1, 3.8], 0.2 * np.array([0.0, 0.3, 1.1, 3.8]) + 0.3),
    ]
    grid = common_grid(curves, points=5)
    assert grid[0] == 0 and grid[-1] == pytest.approx(3.5)  # the smallest of the runs' largest KL
    result = matched_kl(curves, "bt", grid)
    assert result["labels"]["bt"]["mean"] == pytest.approx(list(0.2 * grid))
    vs = result["labels"]["normbt"]["vs_baseline"]
    assert vs["pairs"] == 2 and vs["mean"] == pytest.approx([0.2] * 5)  # (0.1 + 0.3) / 2
    assert all(lo <= 0.2 + 1e-9 and hi >= 0.2 - 1e-9 for lo, hi in vs["ci"])
    # peaks: at the largest KL of each run; the mean of the runs' peaks
    assert result["labels"]["normbt"]["peak_true"] == pytest.approx((0.2 * 3.5 + 0.1 + 0.2 * 3.8 + 0.3) / 2)
    assert result["labels"]["normbt"]["peak_kl"] == pytest.approx((3.5 + 3.8) / 2)


def test_peak_of_an_overoptimised_curve_and_unsorted_kl():
    # true reward rises then falls with KL (Gao et al.); the KL points arrive out of order
    c = curve("bt", 1, [2.0, 0.0, 1.0, 3.0], [0.4, 0.0, 0.6, 0.1])
    assert c.peak() == (0.6, 1.0)
    assert c.at(np.array([0.5, 1.5, 2.5])) == pytest.approx([0.3, 0.5, 0.25])


def test_window_means_and_bad_input():
    steps = np.array([1, 1, 2, 3, 3, 4, 5])
    means = window_means(steps, {"x": np.array([1.0, 3.0, 5.0, 7.0, 9.0, 11.0, 13.0])}, window=2)
    assert means["steps"].tolist() == [2, 4, 5] and means["x"].tolist() == pytest.approx([3.0, 9.0, 13.0])
    with pytest.raises(EvalInputError, match="baseline 'bt' is not among"):
        matched_kl([curve("normbt", 1, [0, 1], [0, 1])], "bt")
    with pytest.raises(EvalInputError, match="module:function"):
        load_function("normbt_plugin.tasks")
    with pytest.raises(EvalInputError, match="has no function"):
        load_function("normbt_plugin.tasks:nope")
    assert load_function("normbt_plugin.tasks:gold_reward")("sort: 2 1 ->", " 1 2") == 1.0
