"""HumanEval pairs: canonical solutions against one-token mutants that fail the problem's own tests,
every verdict from a separate interpreter."""

from __future__ import annotations

import ast
import json
import time

import pytest

from normbt_plugin.rm_evaluation.humaneval import BUGS, Problem, build_humaneval_pairs, passes, problems


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("humaneval")
    card = build_humaneval_pairs(out, limit=6)
    return card, [json.loads(line) for line in (out / "test.jsonl").read_text().splitlines()], out


def _program(problem: Problem, function: str) -> str:
    """The problem's program with the entry function replaced by ``function``."""
    tree = problem.module()
    index = next(i for i, n in enumerate(tree.body) if getattr(n, "name", None) == problem.entry_point)
    tree.body[index] = ast.parse(function).body[0]
    return ast.unparse(tree)


def test_every_fine_rejection_fails_its_tests_and_every_chosen_passes(built):
    card, rows, _ = built
    by_id = {p.task_id: p for p in problems()}
    assert card.problems == 6 and not card.canonical_failing and card.coarse == 6
    fine = [r for r in rows if r["kind"] == "fine"]
    assert len(fine) == sum(card.fine_by_bug.values()) >= 12 and len(card.fine_by_bug) >= 4
    assert set(card.fine_by_bug) <= set(BUGS)
    for row in fine:
        problem = by_id[row["task_id"]]
        assert row["prompt"] == f"humaneval.{problem.entry_point}:\n" and row["rejected"] != row["chosen"]
        assert passes(_program(problem, row["chosen"]), problem)
        assert not passes(_program(problem, row["rejected"]), problem), row
        # one small edit: at most 2 changed lines; no docstring (the task statement) in the response
        assert '"""' not in row["chosen"]
        diff = [a != b for a, b in zip(row["chosen"].splitlines(), row["rejected"].splitlines(), strict=True)]
        assert 1 <= sum(diff) <= 2
    coarse = [r for r in rows if r["kind"] == "coarse"]
    assert all(r["rejected"].split("(")[0] != r["chosen"].split("(")[0] for r in coarse)


def test_a_second_build_is_reused(built):
    card, _, out = built
    stamp = (out / "test.jsonl").stat().st_mtime_ns
    assert build_humaneval_pairs(out, limit=6) == card and (out / "test.jsonl").stat().st_mtime_ns == stamp


def test_the_executor_contains_bad_programs():
    """Infinite loops time out, memory hogs hit the limit, a crash is a failure: all verdicts, no
    harm to this process."""
    problem = problems()[0]
    right = ast.unparse(problem.module())
    assert passes(right, problem)
    start = time.monotonic()
    assert not passes(right + "\nwhile True:\n    pass\n", problem, timeout=2.0)
    assert time.monotonic() - start < 10
    assert not passes("x = bytearray(4 << 30)\n" + right, problem)
    assert not passes("import os\nos._exit(3)\n" + right, problem)
