"""Reward-vs-KL curves: the matched-KL comparison on synthetic curves with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from normbt_plugin.policy_studies.curves import Curve, common_grid, load_function, matched_kl, window_means
from normbt_plugin.rm_evaluation.pairs import EvalInputError
from normbt_plugin.runs.ppo import RunRecord


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
    assert grid[0] == 0 and grid[-1] == pytest.approx(3.8)  # as far as some run of every label went
    result = matched_kl(curves, "bt", grid)
    assert result["labels"]["bt"]["mean"] == pytest.approx(list(0.2 * grid))
    vs = result["labels"]["normbt"]["vs_baseline"]
    # normbt seed 1 stopped at KL 3.5: at 3.8 only seed 2 counts (no clamping to its last point)
    assert vs["pairs"] == 2 and vs["n"] == [2, 2, 2, 2, 1]
    assert vs["mean"] == pytest.approx([0.2, 0.2, 0.2, 0.2, 0.3])
    assert result["labels"]["normbt"]["n"] == [2, 2, 2, 2, 1]
    assert all(lo <= 0.2 + 1e-9 and hi >= 0.2 - 1e-9 for lo, hi in vs["ci"][:4])
    # peaks: at the largest KL of each run; the mean of the runs' peaks
    assert result["labels"]["normbt"]["peak_true"] == pytest.approx((0.2 * 3.5 + 0.1 + 0.2 * 3.8 + 0.3) / 2)
    assert result["labels"]["normbt"]["peak_kl"] == pytest.approx((3.5 + 3.8) / 2)


def test_the_unit_is_the_rm_seed():
    # two PPO seeds on one RM seed are one unit: their mean, not two paired observations
    curves = [
        curve("bt", 1, [0.0, 1.0], [0.0, 0.0], ppo_seed=1),
        curve("bt", 1, [0.0, 1.0], [0.0, 0.0], ppo_seed=2),
        curve("normbt", 1, [0.0, 1.0], [0.0, 0.2], ppo_seed=1),
        curve("normbt", 1, [0.0, 1.0], [0.0, 0.4], ppo_seed=2),
    ]
    result = matched_kl(curves, "bt", np.array([0.0, 1.0]))
    vs = result["labels"]["normbt"]["vs_baseline"]
    assert vs["pairs"] == 1 and vs["mean"] == pytest.approx([0.0, 0.3]) and np.isnan(vs["p"][1])
    assert result["labels"]["normbt"]["runs"] == 2 and result["labels"]["normbt"]["rm_seeds"] == 1


def test_gao_rl_fit_recovers_its_parameters_and_the_run_record_round_trips(tmp_path):
    kl = np.linspace(0.0, 9.0, 12)
    d = np.sqrt(np.maximum(kl, 1e-12))
    true = 0.3 + d * (0.5 - 0.2 * np.log(d))
    true[0] = 0.3
    assert curve("bt", 1, kl, true).rl_fit() == pytest.approx((0.5, 0.2), abs=1e-6)
    RunRecord("normbt", 3, 1).write(tmp_path)
    assert RunRecord.read(tmp_path) == RunRecord("normbt", 3, 1)
    assert RunRecord.read(tmp_path / "elsewhere") == RunRecord("elsewhere")  # no record: the folder's name


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
        load_function("normbt_plugin.common.tasks")
    with pytest.raises(EvalInputError, match="has no function"):
        load_function("normbt_plugin.common.tasks:nope")
    assert load_function("normbt_plugin.common.tasks:gold_reward")("sort: 2 1 ->", " 1 2") == 1.0
