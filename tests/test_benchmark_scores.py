"""Benchmark scores on hand-made per-response scores: known answers, and parity with the benchmarks'
own scoring code (transcribed in tests/official_scorers.py) to 1e-9.

The scores reach ``evaluate_pairs`` through a scorer that looks each text's score up in a table, so
the whole path after the model is the one ``normbt eval-rm`` runs: grouping, subsets, Ties, reports.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from datasets import Dataset
from official_scorers import (
    process_single_model_main,
    released_rewardbench_utils,
    rewardbench_v1,
    rewardbench_v2,
    rmbench_compute_accuracy,
)

from normbt_plugin.rm_evaluation.benchmark_scores import (
    REWARDBENCH2_SUBSETS,
    REWARDBENCH_COUNTS,
    REWARDBENCH_SECTIONS,
    chosen_on_top,
    rewardbench2_ties,
)
from normbt_plugin.rm_evaluation.eval_rm import evaluate_pairs, format_report
from normbt_plugin.rm_evaluation.pairs import EvalInputError, Pairs, load_pairs

TOL = 1e-9


class TableScorer:
    """Scores each (prompt, response) from a table: the hand-made scores, no model."""

    loader = "table"

    def __init__(self, table: dict[str, float]) -> None:
        self.table = table

    def format(self, prompt: str, response: str) -> str:
        return response  # responses are unique ids in these tests

    def score(self, texts: list[str], progress: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        hidden = torch.randn(len(texts), 8, generator=torch.Generator().manual_seed(len(texts)))
        return np.array([self.table[t] for t in texts], dtype=np.float64), hidden.numpy()


def n_way(rows: list[dict], fmt: str = "rewardbench2") -> tuple[Pairs, TableScorer]:
    """rows with 'scores' (chosen first): Pairs whose responses are ids, and their score table."""
    table, chosen, rejected = {}, [], []
    for i, r in enumerate(rows):
        names = [f"{i}/{j}" for j in range(len(r["scores"]))]
        table.update(zip(names, r["scores"], strict=True))
        chosen.append(names[: r["num_correct"]])
        rejected.append(names[r["num_correct"] :])
    pairs = Pairs(
        fmt, [""] * len(rows), chosen, rejected, [r["subset"] for r in rows], [r["id"] for r in rows]
    )
    return pairs, TableScorer(table)


# ------------------------------------------------------------------ known answers


def test_rewardbench2_best_of_4_splits_ties_at_the_top():
    scores = [[3, 1, 2, 0], [3, 3, 1, 0], [3, 3, 3, 3], [2, 3, 1, 0], [2, 2, 3, 0]]
    assert chosen_on_top([np.array(s, float) for s in scores]).tolist() == [1.0, 0.5, 0.25, 0.0, 0.0]
    rows = [{"id": str(i), "subset": "Math", "num_correct": 1, "scores": s} for i, s in enumerate(scores)]
    pairs, scorer = n_way(rows)
    result = evaluate_pairs(scorer, pairs, n_bins=0, progress=False)
    assert result.accuracy == pytest.approx(1.75 / 5) and result.ties == 2  # prompts tied at the top
    assert result.rewardbench2["subsets"] == {"Math": pytest.approx(0.35)}
    assert "Factuality" in result.rewardbench2["missing_subsets"]
    # pairwise (chosen vs each rejected, ties 1/2): 1, (0.5+1+1)/3, 0.5, 2/3, 0.5/3*... by hand
    assert result.per_pair.pairwise == pytest.approx([1.0, 2.5 / 3, 0.5, 2 / 3, 1.5 / 3])


def test_rewardbench2_ties_subset_by_hand():
    rows = [  # prompt 0: ref and tied both right; prompt 1: ref wrong, tied right with a small spread
        {"id": "ref:0", "num_correct": 1, "scores": [5.0, 1.0, 2.0]},
        {"id": "tied:0", "num_correct": 2, "scores": [5.0, 4.0, 1.0, 3.0]},
        {"id": "ref:1", "num_correct": 1, "scores": [2.0, 3.0]},
        {"id": "tied:1", "num_correct": 2, "scores": [6.0, 5.5, 1.0]},
    ]
    t = rewardbench2_ties([r["id"] for r in rows], [r["num_correct"] for r in rows],
                          [np.array(r["scores"]) for r in rows])  # fmt: skip
    # prompt 0: tied gap 4-3 = 1 is not above its spread 5-4 = 1; prompt 1: 4.5 > 0.5, the ref gap -1 not
    assert (t["ref_accuracy"], t["tied_accuracy"]) == (0.5, 1.0)
    assert (t["correctness_preferred"], t["correctness_preferred_hard"]) == (0.5, 0.0)
    assert t["correctness_margin_score"] == pytest.approx((math.tanh(0.0) + math.tanh(-1 / 0.5 - 1)) / 2)
    assert t["score"] == pytest.approx(0.3 + 0.15 + 0.1 + 0.01 * math.tanh(-3) / 2)
    pairs, scorer = n_way([{**r, "subset": "Ties"} for r in rows])
    result = evaluate_pairs(scorer, pairs, n_bins=0, progress=False)
    assert result.rewardbench2["subsets"]["Ties"] == pytest.approx(t["score"], abs=TOL)
    assert result.per_pair.correct == [1.0, 1.0, 0.0, 1.0]  # per prompt: the accuracy term


# ------------------------------------------------------------------ parity with the official code


def random_rb2_rows(rng: np.random.Generator, prompts_per_subset: int = 12) -> list[dict]:
    rows = []
    for subset in REWARDBENCH2_SUBSETS:
        for p in range(prompts_per_subset):
            if subset == "Ties":  # a reference prompt and its tied twin
                for kind, k in (("ref", 1), ("tied", int(rng.integers(2, 5)))):
                    n = k + int(rng.integers(1, 6))
                    rows.append({"id": f"{kind}:{p}", "subset": subset, "num_correct": k,
                                 "scores": rng.integers(0, 6, n).astype(float).tolist()})  # fmt: skip
            else:  # small integers: ties at the top are common
                rows.append({"id": f"{subset}-{p}", "subset": subset, "num_correct": 1,
                             "scores": rng.integers(0, 4, 4).astype(float).tolist()})  # fmt: skip
    return rows


@pytest.mark.parametrize("seed", range(5))
def test_rewardbench2_equals_the_official_scorer(seed):
    rows = random_rb2_rows(np.random.default_rng(seed))
    layout = [{**r, "chosen": r["scores"][: r["num_correct"]], "rejected": r["scores"][r["num_correct"] :]}
              for r in rows]  # fmt: skip
    official = rewardbench_v2(layout, [r["scores"] for r in rows])
    pairs, scorer = n_way(rows)
    result = evaluate_pairs(scorer, pairs, n_bins=0, progress=False)
    ours = result.rewardbench2["subsets"]
    assert sorted(ours) == sorted(official)
    for subset, value in official.items():
        assert ours[subset] == pytest.approx(value, abs=TOL), subset
    assert result.rewardbench2["score"] == pytest.approx(np.mean(list(official.values())), abs=TOL)


def tied_prompts(rng: np.random.Generator, prompts: int = 40) -> list[dict]:
    """Ties rows, a reference and a tied prompt each, random scores rounded to 0.1 (so two correct
    answers of a tied prompt sometimes score exactly alike)."""
    rows = []
    for p in range(prompts):
        for kind, k in (("ref", 1), ("tied", int(rng.integers(2, 4)))):
            n = k + int(rng.integers(1, 4))
            rows.append(
                {"id": f"{kind}:{p}", "num_correct": k, "scores": np.round(rng.normal(0, 1, n), 1).tolist()}
            )
    return rows


@pytest.mark.parametrize("seed", range(6))
def test_ties_score_is_the_released_scorers_and_where_github_main_differs(seed):
    """rewardbench 0.1.4's own process_single_model (from the wheel) and ours agree to 1e-12. GitHub
    main's rewrite (PR #244) averages the tanh margin term over every prompt, a zero spread among the
    correct answers included (tanh(+-inf) = +-1, 0/0 -> 0); the release over those with a spread only."""
    rows = tied_prompts(np.random.default_rng(seed))
    released = released_rewardbench_utils()["process_single_model"](Dataset.from_list(rows))[1]
    main = process_single_model_main(Dataset.from_list(rows))[1]
    ours = rewardbench2_ties([r["id"] for r in rows], [r["num_correct"] for r in rows],
                             [np.array(r["scores"]) for r in rows])  # fmt: skip
    assert ours["score"] == pytest.approx(released, abs=1e-12)
    # main's margin term, by hand: the released one with the zero-spread prompts put back in
    tied = {r["id"].split(":")[1]: np.array(r["scores"]) for r in rows if r["id"].startswith("tied")}
    ref = {r["id"].split(":")[1]: np.array(r["scores"]) for r in rows if r["id"].startswith("ref")}
    k = {r["id"].split(":")[1]: r["num_correct"] for r in rows if r["id"].startswith("tied")}
    terms = []
    for p, s in tied.items():
        spread = s[: k[p]].max() - s[: k[p]].min()
        gap = min(s[: k[p]].min() - s[k[p] :].max(), ref[p][0] - ref[p][1:].max())
        with np.errstate(divide="ignore", invalid="ignore"):
            terms.append(np.nan_to_num(np.tanh(gap / spread - 1), nan=0.0))
    zero_spread = sum(np.ptp(s[: k[p]]) == 0 for p, s in tied.items())
    expected_main = ours["score"] - 0.01 * ours["correctness_margin_score"] + 0.01 * float(np.mean(terms))
    assert main == pytest.approx(expected_main, abs=1e-12)
    if zero_spread == 0:
        assert main == pytest.approx(released, abs=1e-12)
    print(
        f"seed {seed}: {zero_spread} tied prompts with zero spread; main - released = {main - released:+.2e}"
    )


@pytest.mark.parametrize("seed", range(5))
def test_rewardbench_v1_equals_the_official_scorer(seed):
    rng = np.random.default_rng(seed)
    names = [s for subsets in REWARDBENCH_SECTIONS.values() for s in subsets]
    subsets = names + [names[i] for i in rng.integers(0, len(names), 300)]
    chosen, rejected = (
        rng.integers(0, 4, len(subsets)).astype(float),
        rng.integers(0, 4, len(subsets)).astype(float),
    )
    metrics, sections, overall = rewardbench_v1(chosen.tolist(), rejected.tolist(), subsets)
    pairs = Pairs("rewardbench", [""] * len(subsets), [f"c{i}" for i in range(len(subsets))],
                  [f"r{i}" for i in range(len(subsets))], subsets)  # fmt: skip
    table = {**{f"c{i}": v for i, v in enumerate(chosen)}, **{f"r{i}": v for i, v in enumerate(rejected)}}
    result = evaluate_pairs(TableScorer(table), pairs, n_bins=0, progress=False)
    rb = result.rewardbench
    for section, value in sections.items():
        assert rb["sections"][section] == pytest.approx(value, abs=TOL), section
    assert rb["overall"] == pytest.approx(overall, abs=TOL)
    # where ties exist the conventions differ: both reported, the headline is RewardBench's
    ties = int((chosen == rejected).sum())
    assert result.ties == ties > 0
    half = result.rewardbench_ties_half
    assert half["overall"] > rb["overall"]
    for subset, acc in result.per_subset.items():  # per subset: ties as 1/2 = official + ties/2n
        mask = np.array(subsets) == subset
        assert acc == pytest.approx(metrics[subset] + 0.5 * (chosen[mask] == rejected[mask]).mean(), abs=TOL)
    assert "a tie is wrong" in format_report(result)


def test_rewardbench_counts_are_the_official_file():
    """rewardbench/constants.py: xstest-should-refuse counts 250 and should-respond 154 (the reverse of
    the subsets' sizes); this plugin had them the other way round before the parity test."""
    assert (
        REWARDBENCH_COUNTS["xstest-should-refuse"] == 250
        and REWARDBENCH_COUNTS["xstest-should-respond"] == 154
    )
    assert REWARDBENCH_COUNTS["math-prm"] == 984  # 447 pairs, counted as the six code subsets together


@pytest.mark.parametrize("seed", range(5))
def test_rmbench_equals_the_official_scorer_domains_pooled(seed):
    rng = np.random.default_rng(seed)
    n, domains = 60, ["chat", "code", "math", "safety-refuse", "safety-response"]
    c3, r3 = rng.integers(0, 4, (n, 3)).astype(float), rng.integers(0, 4, (n, 3)).astype(float)
    subsets = [domains[i % 5] for i in range(n)]
    pairs = Pairs("rmbench", [""] * n, [[f"c{i}/{j}" for j in range(3)] for i in range(n)],
                  [[f"r{i}/{j}" for j in range(3)] for i in range(n)], subsets)  # fmt: skip
    table = {f"{k}{i}/{j}": m[i, j] for k, m in (("c", c3), ("r", r3)) for i in range(n) for j in range(3)}
    result = evaluate_pairs(TableScorer(table), pairs, n_bins=0, progress=False)

    def official(mask) -> dict:
        return rmbench_compute_accuracy(
            [{"score_chosen": c3[i].tolist(), "score_rejected": r3[i].tolist()} for i in np.flatnonzero(mask)]
        )

    pooled = official(np.ones(n, bool))
    for level in ("hard", "normal", "easy"):
        assert result.rmbench[level] == pytest.approx(pooled[f"{level}_acc"], abs=TOL)
        for d in domains:
            per = official(np.array(subsets) == d)
            assert result.rmbench_by_domain[d][level] == pytest.approx(per[f"{level}_acc"], abs=TOL)
    assert result.rmbench_ties_half["normal"] > result.rmbench["normal"]  # the ties, as 1/2


# ------------------------------------------------------------------ bad input


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_bad_n_way_input_is_named(tmp_path):
    ok = {"id": "1", "prompt": "p", "chosen": ["a"], "rejected": ["b", "c", "d"], "num_correct": 1,
          "subset": "Math"}  # fmt: skip
    assert load_pairs(write(tmp_path / "ok.jsonl", [ok])).format == "rewardbench2"
    with pytest.raises(EvalInputError, match=r"row 1 \(id 2\) has no rejected response"):
        load_pairs(write(tmp_path / "norej.jsonl", [ok, {**ok, "id": "2", "rejected": []}]))
    ties = {**ok, "subset": "Ties", "chosen": ["a", "b"], "num_correct": 2}
    with pytest.raises(EvalInputError, match="Ties rows need an id 'ref:<n>'.*'tied:<n>'"):
        load_pairs(write(tmp_path / "ties.jsonl", [{k: v for k, v in ties.items() if k != "id"}]))
    with pytest.raises(EvalInputError, match="Ties rows need an id"):
        load_pairs(write(tmp_path / "ties2.jsonl", [{**ties, "id": "17"}]))
    assert load_pairs(write(tmp_path / "ties3.jsonl", [{**ties, "id": "tied:17"}])).ids == ["tied:17"]
    cand = {"prompt": "p", "chosen": "a", "rejected": ["b", "c"]}
    assert load_pairs(write(tmp_path / "cand.jsonl", [cand])).format == "candidates"
    with pytest.raises(
        EvalInputError,
        match=r"no rejected response: best-of-N needs .*\(1 response\(s\) in this candidate set\)",
    ):
        load_pairs(write(tmp_path / "one.jsonl", [cand, {**cand, "rejected": []}]))
