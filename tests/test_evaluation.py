"""normbt eval-rm and normbt compare: metrics on hand-made inputs, statistics, real runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_plot

from normbt_plugin.common.intervals import bootstrap_ci, paired_difference
from normbt_plugin.options import CompareOptions, DiagnoseOptions
from normbt_plugin.rm_evaluation.benchmark_scores import (
    REWARDBENCH_COUNTS,
    REWARDBENCH_SECTIONS,
    rewardbench_sections,
    rmbench_matrix,
)
from normbt_plugin.rm_evaluation.eval_rm import accuracy
from normbt_plugin.rm_evaluation.pairs import EvalInputError, load_pairs
from normbt_plugin.rm_evaluation.report import build_report, parse_pools
from normbt_plugin.rm_evaluation.scoring import RewardScorer
from normbt_plugin.runs.rm_eval import PairScores, RmEval
from normbt_plugin.stats import distance_bins

BIN = Path(sys.executable).parent


# ------------------------------------------------------------------ metrics with known answers


def test_rewardbench_sections_weighting():
    per_subset = {s: 1.0 for subsets in REWARDBENCH_SECTIONS.values() for s in subsets}
    per_subset["math-prm"] = 0.0  # 447 pairs counted as 984: math weighs as much as all code
    per_subset["alpacaeval-easy"] = 0.0
    result = rewardbench_sections(per_subset)
    assert result["sections"]["Reasoning"] == pytest.approx(0.5)
    chat = sum(REWARDBENCH_COUNTS[s] for s in REWARDBENCH_SECTIONS["Chat"])
    assert result["sections"]["Chat"] == pytest.approx(1 - 100 / chat)
    assert result["sections"]["Safety"] == 1.0 and result["sections"]["Chat Hard"] == 1.0
    assert result["overall"] == pytest.approx((0.5 + 1 - 100 / chat + 2) / 4)
    assert result["missing_subsets"] == []
    partial = rewardbench_sections({"hep-go": 0.25})
    assert partial["sections"] == {"Reasoning": 0.25} and "math-prm" in partial["missing_subsets"]


def test_rmbench_matrix_easy_normal_hard():
    # one prompt: chosen scores rise with style (concise < detailed < markdown), rejected flat 1.5
    chosen = np.array([[1.0, 2.0, 3.0]])
    rejected = np.array([[1.5, 1.5, 1.5]])
    m = rmbench_matrix(chosen, rejected)
    assert m["matrix"] == [[0, 0, 0], [1, 1, 1], [1, 1, 1]]
    assert m["hard"] == pytest.approx(1 / 3)  # above the diagonal: (0,1) (0,2) (1,2)
    assert m["normal"] == pytest.approx(2 / 3)
    assert m["easy"] == pytest.approx(1.0)  # below: (1,0) (2,0) (2,1)


def test_accuracy_ties_and_distance_bins():
    assert accuracy(np.array([1.0, 0.0, 2.0]), np.array([0.0, 0.0, 3.0])).tolist() == [1, 0.5, 0]
    distance = np.arange(10, dtype=float)
    correct = (distance >= 5).astype(float)
    bins = distance_bins(distance, correct, 2)
    assert [b.n for b in bins] == [5, 5] and [b.acc for b in bins] == [0.0, 1.0]
    assert distance_bins(distance, correct, 0) == []


def test_bootstrap_interval_covers_a_known_mean_at_about_95_percent():
    rng = np.random.default_rng(0)
    true_p, covered, trials = 0.7, 0, 200
    for t in range(trials):
        sample = (rng.random(300) < true_p).astype(float)
        low, high = bootstrap_ci([sample], seed=t, n_resamples=1000)
        covered += low <= true_p <= high
    assert 0.90 <= covered / trials <= 0.99, covered / trials


def test_paired_difference_finds_a_known_effect_and_not_a_null_one():
    rng = np.random.default_rng(1)
    base = (rng.random(400) < 0.6).astype(float)
    better = base.copy()
    flip = np.flatnonzero(base == 0)[:60]  # +0.15 on the same pairs
    better[flip] = 1.0
    d = paired_difference([better], [base])
    assert d["diff"] == pytest.approx(0.15) and d["low"] > 0 and d["p_permutation"] < 0.01
    same = paired_difference([base], [base.copy()])
    assert same["diff"] == 0 and same["p_permutation"] > 0.5
    one = paired_difference([np.ones(1)], [np.zeros(1)])  # a subset of one pair: no interval
    assert one["diff"] == 1 and np.isnan(one["low"]) and np.isnan(one["p_permutation"])


# ------------------------------------------------------------------ loading and bad input


def test_load_pairs_formats_and_bad_input(tmp_path):
    rb = tmp_path / "rb.jsonl"
    rb.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", "subset": "hep-go"}) + "\n")
    assert load_pairs(str(rb)).format == "rewardbench"
    rm = tmp_path / "rm.jsonl"
    rm.write_text(json.dumps({"prompt": "p", "chosen": ["a", "b", "c"], "rejected": ["d", "e", "f"],
                              "domain": "math"}) + "\n")  # fmt: skip
    pairs = load_pairs(str(rm))
    assert pairs.format == "rmbench" and pairs.subsets == ["math"]
    with pytest.raises(EvalInputError, match="no column 'chosen'.*--chosen_key"):
        missing = tmp_path / "missing.jsonl"
        missing.write_text(json.dumps({"prompt": "p", "answer": "a", "rejected": "b"}) + "\n")
        load_pairs(str(missing))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(EvalInputError, match="empty"):
        load_pairs(str(empty))


def test_a_model_that_is_not_a_reward_model_is_refused(tiny):
    with pytest.raises(EvalInputError, match="not a reward model"):
        RewardScorer(str(tiny["model"]))  # the tiny causal LM (auto: HF loader)
    with pytest.raises(EvalInputError, match="no value head 'score.weight'"):
        RewardScorer(str(tiny["model"]), loader="openrlhf")
    with pytest.raises(EvalInputError, match="not a model folder"):
        RewardScorer(str(tiny["train"].parent / "nothing-here"))


# ------------------------------------------------------------------ real runs


@pytest.mark.slow
def test_openrlhf_and_hf_scoring_agree(trained_pair, tiny):
    """Parity: OpenRLHF's loader and AutoModelForSequenceClassification score the same pairs alike."""
    model = trained_pair["normbt"] / "model"
    pairs = load_pairs(str(tiny["test"]))
    texts = [p + c for p, c in zip(pairs.prompts, pairs.chosen, strict=True)][:32]
    scores = {}
    for loader in ("openrlhf", "hf"):
        scorer = RewardScorer(str(model), loader=loader, batch_size=8)
        scores[loader] = scorer.score([scorer.format("", t) for t in texts])
    np.testing.assert_allclose(scores["openrlhf"][0], scores["hf"][0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scores["openrlhf"][1], scores["hf"][1], rtol=1e-4, atol=1e-4)
    assert np.std(scores["hf"][0]) > 0


@pytest.mark.slow
def test_eval_rm_rewardbench_format_end_to_end(trained_pair, tiny, tmp_path):
    rows = [json.loads(line) for line in open(tiny["test"])][:40]
    names = ["math-prm", "hep-python", "alpacaeval-easy", "donotanswer"]
    data = tmp_path / "rb.jsonl"
    data.write_text("".join(json.dumps({**r, "subset": names[i % 4]}) + "\n" for i, r in enumerate(rows)))
    out = tmp_path / "eval.json"
    proc = subprocess.run(
        [str(BIN / "normbt"), "eval-rm", "--model", str(trained_pair["bt"] / "model"), "--data", str(data),
         "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = RmEval.read(out)
    per = result.per_subset
    reasoning = (per["math-prm"] * 984 + per["hep-python"] * 164) / (984 + 164)
    assert result.rewardbench["sections"]["Reasoning"] == pytest.approx(reasoning)
    assert "Reasoning" in proc.stdout and "distance quantile bin" in proc.stdout
    assert result.accuracy == pytest.approx(result.correct.mean())


@pytest.mark.slow
def test_compare_report_from_two_real_runs(trained_pair, tmp_path):
    import matplotlib.image

    report = build_report(
        CompareOptions(runs=[str(p) for p in trained_pair.values()], out=str(tmp_path / "report"))
    )
    text = report.read_text()
    assert "| bt | 1 |" in text and "| normbt | 1 |" in text and "fine" in text
    for name in ("accuracy_per_subset.png", "accuracy_by_distance.png", "training_curves.png"):
        png = tmp_path / "report" / name
        assert_plot(png)
        assert f"![{name}]" in text
        pixels = matplotlib.image.imread(png)
        assert pixels.std() > 0.01  # something was drawn
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert (
        "vs_baseline" in summary["normbt"]
        and summary["normbt"]["vs_baseline"]["low"] <= summary["normbt"]["vs_baseline"]["diff"]
    )


def _fake_run(
    folder: Path, loss: str, seed: int, correct: np.ndarray, distance: np.ndarray, subset: list[str]
) -> str:
    """A run folder as train_rm and eval-rm leave it, with chosen per-pair results."""
    (folder / "metrics").mkdir(parents=True)
    (folder / "metrics" / "meta.json").write_text(json.dumps({"loss": loss, "seed": seed}))
    scores = PairScores(chosen=correct.tolist(), rejected=[0.5] * len(correct), correct=correct.tolist(),
                        distance=distance.tolist(), subset=subset)  # fmt: skip
    RmEval(format="pairs", pairs=len(correct), loader="openrlhf", accuracy=float(correct.mean()), ties=0,
           distance_bins=distance_bins(distance, correct, 4), per_pair=scores, data="made up",
           ).write(folder / "eval.json")  # fmt: skip
    return str(folder)


def test_compare_pairs_subsets_and_baseline_distance_bins(tmp_path):
    """Known answer: the other loss gets every close (fine) pair right, the baseline half of them."""
    n = 200
    distance = np.linspace(0.1, 10, n)
    fine = distance < 2.6  # the closest quarter and a bit
    subset = ["fine" if f else "coarse" for f in fine]
    base = np.where(fine, np.arange(n) % 2, 1.0)
    runs = [_fake_run(tmp_path / f"bt{s}", "bt", s, base, distance, subset) for s in (1, 2)]
    runs += [_fake_run(tmp_path / f"nb{s}", "normbt", s, np.ones(n), distance * 3, subset) for s in (1, 2)]
    build_report(CompareOptions(runs=runs, out=str(tmp_path / "report")))
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())["normbt"]
    vs_fine = summary["per_subset"]["fine"]["vs_baseline"]
    assert vs_fine["diff"] == pytest.approx(0.5, abs=0.02)  # 26 of 51 fine pairs gained
    assert vs_fine["low"] > 0.3 and vs_fine["p_permutation"] < 0.01
    vs_coarse = summary["per_subset"]["coarse"]["vs_baseline"]
    assert vs_coarse["diff"] == 0 and vs_coarse["p_permutation"] > 0.5
    bins = summary["baseline_distance_bins"]  # the baseline's quartiles: bin 0 is all fine
    assert list(bins) == ["bin 0", "bin 1", "bin 2", "bin 3"]
    assert bins["bin 0"]["vs_baseline"]["diff"] == pytest.approx(0.5)
    assert bins["bin 3"]["vs_baseline"]["diff"] == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "p=" in report
    # where each loss puts the subsets: normbt's distances are 3x bt's, relative to their own median the same
    bt = json.loads((tmp_path / "report" / "summary.json").read_text())["bt"]["median_distance"]
    nb = summary["median_distance"]
    assert bt["fine"]["per_seed"] == [pytest.approx(np.median(distance[fine]))] * 2
    assert nb["coarse"]["mean"] == pytest.approx(3 * np.median(distance[~fine]))
    assert nb["coarse"]["relative"] == pytest.approx(np.median(distance[~fine]) / np.median(distance))
    assert nb["fine"]["relative"] == pytest.approx(bt["fine"]["relative"])
    assert bt["fine"]["relative"] < 1 < bt["coarse"]["relative"]
    assert f"| coarse | {int((~fine).sum())} | {np.median(distance[~fine]):.3g} (x" in report


def test_compare_pools_subsets_the_way_a_primary_metric_needs(tmp_path):
    """``--pool fine=a,b``: the pooled accuracy and its paired difference are those of the union
    (here the other loss gains all of kind a and none of b: +0.5 over a's and b's pairs together),
    with each seed's accuracy for a rule that asks for the sign in every seed."""
    n = 120
    subset = ["a"] * 40 + ["b"] * 40 + ["coarse"] * 40
    base = np.array([0.0, 1.0] * 20 + [0.0, 1.0] * 20 + [1.0] * 40)
    other = np.array([1.0] * 40 + [0.0, 1.0] * 20 + [1.0] * 40)
    distance = np.linspace(0.1, 10, n)
    runs = [_fake_run(tmp_path / f"bt{s}", "bt", s, base, distance, subset) for s in (1, 2)]
    runs += [_fake_run(tmp_path / f"nb{s}", "normbt", s, other, distance, subset) for s in (1, 2)]
    build_report(CompareOptions(runs=runs, out=str(tmp_path / "report"), pool=["fine=a,b"]))
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    fine = summary["normbt"]["per_subset"]["fine"]
    assert fine["accuracy"] == pytest.approx(0.75) and fine["per_seed"] == [0.75, 0.75]
    assert fine["vs_baseline"]["diff"] == pytest.approx(0.25) and fine["vs_baseline"]["low"] > 0.1
    assert summary["bt"]["per_subset"]["fine"]["accuracy"] == pytest.approx(0.5)
    assert "| fine | 80 |" in (tmp_path / "report" / "report.md").read_text()
    with pytest.raises(EvalInputError, match="none of"):
        build_report(CompareOptions(runs=runs, out=str(tmp_path / "r2"), pool=["fine=x,y"]))
    with pytest.raises(EvalInputError, match="NAME=SUBSET"):
        parse_pools(["fine"])


def test_compare_refuses_runs_on_different_pairs(tmp_path):
    distance = np.linspace(0.1, 10, 20)
    bt = _fake_run(tmp_path / "bt", "bt", 1, np.ones(20), distance, ["fine"] * 20)
    other = _fake_run(tmp_path / "other", "center", 1, np.ones(5), distance[:5], ["fine"] * 5)
    with pytest.raises(EvalInputError, match="different pair sets"):
        build_report(CompareOptions(runs=[bt, other], out=str(tmp_path / "r")))


@pytest.mark.slow
def test_gradient_diagnostic_on_a_real_run(trained_pair, tiny, tmp_path):
    from normbt_plugin.rm_evaluation.diagnostics import diagnose

    summary = diagnose(
        DiagnoseOptions(
            model=str(trained_pair["bt"] / "model"), data=str(tiny["test"]), out=str(tmp_path), pairs=24
        )
    )
    result = json.loads((tmp_path / "gradients.json").read_text())["per_pair"]
    bt, nb, dist = (np.asarray(result[k]) for k in ("bt_grad", "normbt_grad", "distance"))
    weight = summary["mu"] / (dist + 1e-6 * summary["mu"])
    np.testing.assert_allclose(nb, weight * bt, rtol=1e-9)  # detached weight times BT's gradient
    assert summary["spearman"]["bt_grad"]["all"] > summary["spearman"]["normbt_grad"]["all"]
    assert_plot(tmp_path / "gradient_vs_distance.png")


def one_swap_bugs(chosen: str, k: int) -> list[str]:
    """k distinct rejected answers, each the sorted list with one neighbouring pair swapped."""
    numbers = chosen.split()
    out = []
    for i in range(min(k, len(numbers) - 1)):
        wrong = numbers[:]
        wrong[i], wrong[i + 1] = wrong[i + 1], wrong[i]
        out.append(" " + " ".join(wrong))
    return out


@pytest.mark.slow
def test_eval_rm_best_of_n_on_a_tiny_trained_rm(trained_pair, tiny, tmp_path):
    """Candidate sets (one correct answer, three one-swap bugs: fine; or three unrelated-word answers:
    coarse) and a RewardBench 2 file (Math + Ties) scored by a real trained RM through the CLI."""
    from normbt_plugin.rm_evaluation.benchmark_scores import chosen_on_top, rewardbench2_ties

    rows = [json.loads(line) for line in open(tiny["test"])][:48]
    sets = []
    for i, r in enumerate(rows):
        fine = i % 2 == 0
        rejected = (
            one_swap_bugs(r["chosen"], 3) if fine else [rows[(i + j) % 48]["rejected"] for j in (1, 3, 5)]
        )
        if fine and len(rejected) < 3 or not fine and any(x.split()[0].isdigit() for x in rejected):
            continue  # a 4-number list has 3 swaps; coarse rejections from coarse rows only
        sets.append({"prompt": r["prompt"], "chosen": r["chosen"], "rejected": rejected,
                     "kind": "fine" if fine else "coarse"})  # fmt: skip
    data = tmp_path / "cands.jsonl"
    data.write_text("".join(json.dumps(s) + "\n" for s in sets))
    out = tmp_path / "eval.json"
    model = str(trained_pair["normbt"] / "model")
    proc = subprocess.run(
        [str(BIN / "normbt"), "eval-rm", "--model", model, "--data", str(data), "--subset_key", "kind",
         "--bins", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = RmEval.read(out)
    assert result.format == "candidates" and result.pairs == len(sets) and result.n_way
    scores = [np.asarray(s) for s in result.per_pair.scores]
    assert [len(s) for s in scores] == [4] * len(sets)
    assert result.per_pair.correct == chosen_on_top(scores).tolist()
    assert result.accuracy == pytest.approx(np.mean(chosen_on_top(scores)))
    per = result.per_subset
    print(f"best-of-4 accuracy: fine {per['fine']:.3f}, coarse {per['coarse']:.3f} (chance 0.25)")
    assert per["coarse"] > 0.6 and per["coarse"] > per["fine"]  # trained: coarse sets learnt first
    assert sum(b.n for b in result.distance_bins) == len(sets)
    assert "best-of-N accuracy" in proc.stdout and "closest rejected" in proc.stdout

    # RewardBench 2's layout: the fine sets as Math, and Ties rows (one or two correct answers)
    fine = [{"prompt": s["prompt"], "rejected": s["rejected"]} for s in sets if s["kind"] == "fine"]
    answers = [s["chosen"] for s in sets if s["kind"] == "fine"]
    rb2 = [{**f, "id": str(n), "chosen": [a], "num_correct": 1, "subset": "Math"}
           for n, (f, a) in enumerate(zip(fine, answers, strict=True))]  # fmt: skip
    for n, (f, a) in enumerate(zip(fine, answers, strict=True)):
        rb2.append({**f, "id": f"ref:{n}", "chosen": [a], "num_correct": 1, "subset": "Ties"})
        rb2.append({**f, "id": f"tied:{n}", "chosen": [a, a + " ."], "rejected": f["rejected"][:2],
                    "num_correct": 2, "subset": "Ties"})  # fmt: skip
    data = tmp_path / "rb2.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rb2))
    proc = subprocess.run(
        [str(BIN / "normbt"), "eval-rm", "--model", model, "--data", str(data), "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = RmEval.read(out)
    assert result.format == "rewardbench2"
    pp = result.per_pair
    ties = [i for i, s in enumerate(pp.subset) if s == "Ties"]
    expected = rewardbench2_ties([pp.id[i] for i in ties], [pp.num_correct[i] for i in ties],
                                 [np.asarray(pp.scores[i]) for i in ties])  # fmt: skip
    subsets = result.rewardbench2["subsets"]
    assert subsets["Ties"] == pytest.approx(expected["score"]) and subsets["Math"] == pytest.approx(
        per["fine"]
    )
    assert result.rewardbench2["score"] == pytest.approx((subsets["Ties"] + subsets["Math"]) / 2)
    assert "RewardBench 2 score" in proc.stdout
