"""The on-policy study's analysis (``normbt bon-study``) and the statistics it rests on, on synthetic
best-of-N data with known answers; label-pairs' pairing rule."""

from __future__ import annotations

import random

import numpy as np
import pytest
from conftest import assert_plot

from normbt_plugin.common.intervals import nested_bootstrap, seeds_needed
from normbt_plugin.options import BonStudyOptions
from normbt_plugin.policy_studies.bon_study import (
    Proxy,
    bon_study,
    decide,
    gao_fit,
    paired_effect,
    what_it_would_take,
    within_prompt_spread,
)
from normbt_plugin.policy_studies.eval_policy import best_of_n, bon_kl
from normbt_plugin.policy_studies.label_pairs import (
    LabelledPair,
    pairs_of,
    read_pairs,
    subsample,
    write_pairs,
)
from normbt_plugin.rm_evaluation.pairs import EvalInputError
from normbt_plugin.runs.policy_eval import BestOfN, Curve, PolicyEval

NS = [1, 2, 4, 8, 16]


def policy_eval(tmp_path, proxies: dict[str, np.ndarray], gold: np.ndarray):
    """An eval-policy result as ``evaluate_policies`` writes its best-of-N part (no policies)."""
    curves = {"oracle (gold)": best_of_n(gold, gold, NS)}
    curves.update({name: best_of_n(s, gold, NS) for name, s in proxies.items()})
    result = PolicyEval(reference="initial", gold="fn:gold", gold_fn="gold", prompts=gold.shape[0], samples=1,
                        max_new=8, temperature=1.0, seed=0, tie_tol=0.0, policies={})  # fmt: skip
    result.best_of_n = BestOfN(
        n=NS, kl=[bon_kl(n) for n in NS], prompts=gold.shape[0], samples=gold.shape[1],
        curves={k: Curve(v.mean(axis=0).tolist(), v.tolist()) for k, v in curves.items()},
        gold_scores=gold.tolist(), proxy_scores={k: v.tolist() for k, v in proxies.items()},
    )  # fmt: skip
    return result.write(tmp_path)


def test_a_better_ranker_helps_an_identical_one_makes_no_difference_and_the_2x2_sees_it(tmp_path):
    rng = np.random.default_rng(0)
    gold = rng.random((200, 16))
    proxies = {}
    for seed in range(1, 7):
        proxies[f"onpolicy-bt-seed{seed}"] = gold + rng.normal(0, 1.0, gold.shape)  # a noisy ranker
        proxies[f"onpolicy-normbt-seed{seed}"] = gold + rng.normal(0, 0.05, gold.shape)  # a good one
        same = gold + rng.normal(0, 0.3, gold.shape)
        proxies[f"perturb-bt-seed{seed}"] = proxies[f"perturb-normbt-seed{seed}"] = same
    runs = [str(tmp_path / f"rm-{name}") for name in proxies]
    result = bon_study(
        BonStudyOptions(
            policy_eval=policy_eval(tmp_path, proxies, gold), runs=runs, out=tmp_path / "out", n=16
        )
    )
    helps, same = result["effects"]["onpolicy/normbt"], result["effects"]["perturb/normbt"]
    assert helps["decision"] == "helps" and helps["seeds"] == 6 and helps["boot_ci95"][0] > 0.05
    assert same["decision"] == "no difference" and same["mean"] == 0 and same["boot_ci90"] == (0.0, 0.0)
    assert result["interaction"]["mean"] == pytest.approx(helps["mean"])
    # the better ranker gains more per unit sqrt(KL) (Gao's a), and agrees with the judge more
    cells = result["cells"]
    assert helps["gao_a_diff"]["mean"] > 0
    assert (
        cells["onpolicy/normbt"]["rank_agreement"]["mean"]
        > 0.9
        > cells["onpolicy/bt"]["rank_agreement"]["mean"]
    )
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| onpolicy | normbt | 6 |" in report and "helps" in report and "no difference" in report
    assert_plot(tmp_path / "out" / "best_of_n.png")


def test_decision_rule_and_what_it_would_take():
    assert decide(0.05, (0.01, 0.09), (0.02, 0.08), 0.03) == "helps"
    assert decide(-0.05, (-0.09, -0.01), (-0.08, -0.02), 0.03) == "hurts"
    assert decide(0.0, (-0.04, 0.04), (-0.02, 0.02), 0.03) == "no difference"
    assert decide(0.01, (-0.05, 0.07), (-0.04, 0.06), 0.03) == "inconclusive"
    # n = ((z_.975 + z_.8) sd / effect)^2 = (2.80 * 0.1 / 0.05)^2 = 31.4 -> 32
    assert seeds_needed(0.1, 0.05) == 32 and seeds_needed(0.1, 0.0) == -1


def test_an_inconclusive_effect_says_what_settles_it_in_words():
    """SmolLM2's best-of-N arm (docs/results.md): 4 seeds, +0.044 with sd 0.075 over seeds. Outside the
    +-0.03 margin no number of seeds can show equivalence; the report says so (it printed -1)."""

    def proxies(loss: str, per_seed: list[float]) -> list[Proxy]:
        return [Proxy(f"onpolicy-{loss}-seed{k}", "onpolicy", loss, k, np.full((32, 1), v), np.zeros((32, 2)))
                for k, v in enumerate(per_seed, start=1)]  # fmt: skip

    wide = paired_effect(proxies("normbt", [0.53, 0.64, 0.46, 0.54]), proxies("bt", [0.5] * 4), 0, 0.03)
    assert wide["decision"] == "inconclusive" and wide["mean"] == pytest.approx(0.0425)
    assert wide["seeds_to_detect"] == seeds_needed(wide["sd_over_seeds"], 0.0425) > 4
    text = what_it_would_take(wide, 0.03)
    assert f": {wide['seeds_to_detect']};" in text and "-1" not in text
    assert text.endswith("equivalence within +-0.03: none (the measured +0.043 lies outside it)")
    near = paired_effect(proxies("normbt", [0.53, 0.56, 0.46, 0.47]), proxies("bt", [0.5] * 4), 0, 0.03)
    assert near["decision"] == "inconclusive" and abs(near["mean"]) < 0.03
    assert what_it_would_take(near, 0.03).endswith(f"within +-0.03: {near['seeds_for_equivalence']}")
    noisy = proxies("normbt", [0.0])
    noisy[0].bon[::2] = 1.04  # one seed, prompts split between 0 and 1.04: wide, no spread over seeds
    single = paired_effect(noisy, proxies("bt", [0.5]), 0, 0.03)
    assert single["decision"] == "inconclusive" and single["seeds_for_equivalence"] == -1
    assert what_it_would_take(single, 0.03) == "one seed: no spread over seeds to size more by"


def test_nested_bootstrap_counts_both_levels():
    rng = np.random.default_rng(1)
    flat = rng.normal(0, 1, (8, 100))
    shifted = flat + rng.normal(0, 1, (8, 1))  # seeds differ: the interval must widen
    narrow, wide = nested_bootstrap(flat)[0.95], nested_bootstrap(shifted)[0.95]
    assert wide[1] - wide[0] > 2 * (narrow[1] - narrow[0])
    low, high = nested_bootstrap(flat + 3.0)[0.95]
    assert low < 3.0 + flat.mean() < high


def test_gao_fit_and_spread():
    d = np.sqrt(np.array([bon_kl(n) for n in NS]))
    assert gao_fit(d, d * (0.4 - 0.1 * d)) == pytest.approx((0.4, 0.1))
    flat = within_prompt_spread(np.repeat(np.arange(5.0)[:, None], 8, axis=1))  # differs only across prompts
    assert flat["within_share"] == 0 and flat["std"] > 0


def test_bon_study_refuses_unnamed_proxies_and_a_missing_n(tmp_path):
    gold = np.random.default_rng(0).random((4, 16))
    path = policy_eval(tmp_path, {"bt-1": gold}, gold)
    with pytest.raises(EvalInputError, match="<arm>-<loss>-seed<k>"):
        bon_study(BonStudyOptions(policy_eval=path, runs=[], out=tmp_path / "out"))
    named = policy_eval(tmp_path, {"onpolicy-bt-seed1": gold}, gold)
    with pytest.raises(EvalInputError, match="--n 3 is not among"):
        bon_study(BonStudyOptions(policy_eval=named, runs=[], out=tmp_path / "out", n=3))


def test_seeds_added_by_a_later_run_pool_into_one_analysis(tmp_path):
    """Seed pairs scored by a second eval-policy run on the same samples (``--also``) give the
    analysis of one run holding every proxy; other samples or a proxy twice are refused."""
    rng = np.random.default_rng(1)
    gold = rng.random((50, 16))
    proxies = {f"onpolicy-{loss}-seed{seed}": gold + rng.normal(0, noise, gold.shape)
               for seed in range(1, 5) for loss, noise in (("bt", 1.0), ("normbt", 0.3))}  # fmt: skip
    names = list(proxies)
    whole = policy_eval(tmp_path / "whole", proxies, gold)
    first = policy_eval(tmp_path / "seeds-1-2", {k: proxies[k] for k in names[:4]}, gold)
    later = policy_eval(tmp_path / "seeds-3-4", {k: proxies[k] for k in names[4:]}, gold)
    one = bon_study(BonStudyOptions(policy_eval=whole, runs=[], out=tmp_path / "one", n=16))
    pooled = bon_study(
        BonStudyOptions(policy_eval=first, also=[later], runs=[], out=tmp_path / "pooled", n=16)
    )
    assert pooled["effects"]["onpolicy/normbt"]["seeds"] == 4
    assert pooled == one
    other_samples = policy_eval(tmp_path / "other", {names[4]: proxies[names[4]]}, gold[::-1])
    with pytest.raises(EvalInputError, match="not on the samples of"):
        bon_study(BonStudyOptions(policy_eval=first, also=[other_samples], runs=[], out=tmp_path / "x"))
    again = policy_eval(tmp_path / "again", {names[0]: proxies[names[0]]}, gold)
    with pytest.raises(EvalInputError, match=r"\['onpolicy-bt-seed1'\] are in both"):
        bon_study(BonStudyOptions(policy_eval=first, also=[again], runs=[], out=tmp_path / "x"))
    bare = PolicyEval(reference="initial", gold="fn:gold", gold_fn="gold", prompts=50, samples=1, max_new=8,
                      temperature=1.0, seed=0, tie_tol=0.0, policies={}).write(tmp_path / "bare")  # fmt: skip
    with pytest.raises(EvalInputError, match="has no best-of-N"):
        bon_study(BonStudyOptions(policy_eval=first, also=[bare], runs=[], out=tmp_path / "x"))


def test_pairs_of_drops_ties_and_duplicates_and_orders_by_the_gold(tmp_path):
    texts = [" 1 2", " 2 1", " 1 2", " x", " 2 2"]
    golds = [1.0, 0.5, 1.0, 0.0, 0.5]
    pairs = pairs_of("sort: 2 1 ->", texts, golds, limit=10, min_gap=0.0, rng=random.Random(0))
    # 4 distinct texts; " 2 1" and " 2 2" tie: 6 - 1 = 5 pairs
    assert len(pairs) == 5 and all(p.chosen_gold > p.rejected_gold for p in pairs)
    assert all(p.chosen != p.rejected for p in pairs)
    assert len(pairs_of("p", texts, golds, limit=2, min_gap=0.0, rng=random.Random(0))) == 2
    assert len(pairs_of("p", texts, golds, limit=10, min_gap=0.6, rng=random.Random(0))) == 1  # 1.0 vs 0.0
    write_pairs(pairs, tmp_path / "pairs.jsonl")
    assert read_pairs(tmp_path / "pairs.jsonl") == pairs
    cut = subsample(tmp_path / "pairs.jsonl", 3, 7, tmp_path / "cut.jsonl")
    again = subsample(tmp_path / "pairs.jsonl", 3, 7, tmp_path / "again.jsonl")
    assert cut.read_text() == again.read_text() and set(read_pairs(cut)) <= set(pairs)
    assert subsample(tmp_path / "pairs.jsonl", 3, 8, tmp_path / "other.jsonl").read_text() != cut.read_text()
    with pytest.raises(EvalInputError, match="fewer than the 9"):
        subsample(tmp_path / "pairs.jsonl", 9, 7, tmp_path / "cut.jsonl")
    assert isinstance(pairs[0], LabelledPair)
