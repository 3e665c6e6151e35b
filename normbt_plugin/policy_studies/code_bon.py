"""Best-of-N on code, the candidates: a policy's completions of HumanEval problems, each labelled by
running the problem's own tests (``rm_evaluation.humaneval.passes``: a fresh isolated interpreter, time
and memory limits). A 135M policy rarely writes a whole solution, so it is given the signature, the
docstring and the first part of the canonical body (``--fraction`` of its characters, cut mid-line where
it falls) and completes the rest: what it gets wrong are near misses, the pairs NormBT is about.

    python -m normbt_plugin.policy_studies.code_bon sample --policy DIR --out DIR --fraction 0.5 --samples 16
    python -m normbt_plugin.policy_studies.code_bon sample ... --pilot 0.25,0.5,0.75 --problems 24 --samples 8
    python -m normbt_plugin.policy_studies.code_bon split --dir DIR     # problems into train/test, once
    python -m normbt_plugin.policy_studies.code_bon power --dir DIR     # seeds for the primary, by simulation
    python -m normbt_plugin.policy_studies.code_bon pairs --dir DIR --out F  # the on-policy arm's pairs

Writes ``candidates.jsonl.gz`` (one row per sample: the completion, the program run, pass/fail, and the
function as the reward models read it) and ``summary.json`` (pass@1, the oracle's pass@N, problems with
both outcomes). Reward models trained later score these very candidates.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import gzip
import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from normbt_plugin.common.intervals import nested_bootstrap
from normbt_plugin.rm_evaluation.humaneval import Problem, passes, problems

# a completion ends where top-level code starts again (the Codex paper's stop sequences) or the fence closes
SPLIT_SEED = 38  # the train/test split's shuffle (issue 38), fixed before any reward model trained
CANDIDATES, SUMMARY, SPLIT = "candidates.jsonl.gz", "summary.json", "split.json"
STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ", "```"]
ASK = "Complete this Python function. Reply with the whole function in one code block."


def policy_prompt(tokenizer, code: str) -> str:
    """An instruct policy's turn: asked to complete the function, its reply begun with the code given
    (a code fence, then ``code``), so what it writes next is the rest of the function."""
    messages = [{"role": "user", "content": f"{ASK}\n\n```python\n{code}```"}]
    return (
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        + f"```python\n{code}"
    )


@dataclass(frozen=True)
class Candidate:
    task_id: str
    fraction: float  # share of the canonical body's characters the policy was given
    sample: int
    completion: str  # what the policy wrote
    program: str  # what the tests ran: the prompt, the given lines and the completion
    passed: bool
    response: str | None  # the function without its docstring, as the RMs read it (None: no parse)


@dataclass(frozen=True)
class Summary:
    fraction: float
    problems: int
    samples: int
    pass_at_1: float  # a random pick
    pass_at_n: float  # the oracle's pick: a problem with any passing sample
    mixed: float  # share of problems with both passing and failing samples
    unparsed: float  # share of samples that do not parse


def given_code(problem: Problem, fraction: float) -> str:
    """The prompt (signature and docstring) and the first ``fraction`` of the canonical body's
    characters (blank lines dropped), cut mid-line where it falls; at least one character is left."""
    body = "".join(line for line in problem.canonical_solution.splitlines(keepends=True) if line.strip())
    return problem.prompt + body[: min(math.floor(fraction * len(body)), len(body.rstrip()) - 1)]


def label(problem: Problem, fraction: float, sample: int, completion: str, timeout: float = 5.0) -> Candidate:
    program = given_code(problem, fraction) + completion
    try:
        module = ast.parse(program)
        response = problem.function(module)
    except (SyntaxError, StopIteration, ValueError):
        module, response = None, None
    passed = module is not None and passes(program, problem, timeout)
    return Candidate(problem.task_id, fraction, sample, completion, program, passed, response)


def summarize(candidates: list[Candidate], fraction: float) -> Summary:
    by_problem = list(outcomes(candidates).values())
    return Summary(
        fraction=fraction,
        problems=len(by_problem),
        samples=max(len(o) for o in by_problem),
        pass_at_1=sum(sum(o) / len(o) for o in by_problem) / len(by_problem),
        pass_at_n=sum(any(o) for o in by_problem) / len(by_problem),
        mixed=sum(any(o) and not all(o) for o in by_problem) / len(by_problem),
        unparsed=sum(c.response is None for c in candidates) / len(candidates),
    )


def sample_candidates(
    policy: str,
    fraction: float,
    todo: list[Problem],
    samples: int,
    max_new: int,
    temperature: float,
    seed: int,
    out: Path,
) -> list[Candidate]:
    """The policy's ``samples`` completions of each problem (vLLM), labelled by the tests."""
    from transformers import AutoTokenizer

    from normbt_plugin.policy_studies.generation import GenerationSpec, context_length, generate_all

    tokenizer = AutoTokenizer.from_pretrained(policy)
    # prompts up to 1024 tokens, fewer where the policy has fewer positions; a longer one keeps its last
    # tokens (at fraction 0.95, SmolLM2's prompts of HumanEval/81 and /129 are 1085 and 1195 tokens: the
    # committed candidates of those two were written without the start of the instruction)
    max_prompt_len = min(1024, (context_length(policy) or 1024 + max_new) - max_new)
    prompts = [policy_prompt(tokenizer, given_code(p, fraction)) for p in todo]
    spec = GenerationSpec(
        model=policy, prompts=prompts, samples=samples, max_new=max_new, max_prompt_len=max_prompt_len,
        out=str(out / f"generations-{fraction}.jsonl"), temperature=temperature, seed=seed, stop=STOP,
        extra={"fraction": fraction},
    )  # fmt: skip
    (rows,) = generate_all([spec], log=out / "vllm.log")
    jobs = [(p, i, s.text) for p, row in zip(todo, rows, strict=True) for i, s in enumerate(row.samples)]
    with ThreadPoolExecutor(4) as pool:
        return list(tqdm(pool.map(lambda j: label(j[0], fraction, j[1], j[2]), jobs), total=len(jobs),
                         desc=f"running the tests (fraction {fraction})"))  # fmt: skip


def write(candidates: list[Candidate], summaries: list[Summary], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(out / CANDIDATES, "wt") as f:
        f.writelines(json.dumps(dataclasses.asdict(c)) + "\n" for c in candidates)
    (out / SUMMARY).write_text(json.dumps([dataclasses.asdict(s) for s in summaries], indent=1))


def read(folder: Path) -> list[Candidate]:
    with gzip.open(folder / CANDIDATES, "rt") as f:
        return [Candidate(**json.loads(line)) for line in f]


def outcomes(candidates: list[Candidate]) -> dict[str, list[bool]]:
    """Each problem's pass/fail per sample, in sample order."""
    by_problem: dict[str, list[bool]] = {}
    for c in sorted(candidates, key=lambda c: c.sample):
        by_problem.setdefault(c.task_id, []).append(c.passed)
    return by_problem


def split(candidates: list[Candidate], seed: int = SPLIT_SEED) -> dict[str, list[str]]:
    """Problems into halves by problem: on-policy RMs train on ``train``'s pass-over-fail pairs, every
    RM is judged on ``test``. The problems with both outcomes (the only ones a pick can change) and the
    rest are each shuffled and dealt alternately, so each half holds as many of them."""
    rng = np.random.default_rng(seed)
    halves: dict[str, list[str]] = {"train": [], "test": []}
    by_problem = outcomes(candidates)
    for mixed in (True, False):
        group = sorted(t for t, o in by_problem.items() if (any(o) and not all(o)) == mixed)
        for i, task in enumerate(rng.permutation(group)):
            halves[("test", "train")[i % 2]].append(str(task))
    return {k: sorted(v, key=lambda t: int(t.split("/")[1])) for k, v in halves.items()}


def pass_fail_pairs(candidates: list[Candidate]) -> list[tuple[int, int]]:
    """Every pass-over-fail pair of parsed candidates of the same problem, as (passing, failing) indices
    into ``candidates``: problem by problem in first-seen order, each one's candidates in the given order."""
    members: dict[str, list[int]] = {}
    for i, c in enumerate(candidates):
        if c.response is not None:
            members.setdefault(c.task_id, []).append(i)
    return [(i, j) for group in members.values() for i in group for j in group
            if candidates[i].passed and not candidates[j].passed]  # fmt: skip


def onpolicy_pairs(candidates: list[Candidate], tasks: list[str]) -> list[dict]:
    """Every pass-over-fail pair of parsed candidates within each of ``tasks`` (the split's train
    half), as the reward models read them: the problem's ``rm_prompt``, the two functions. A pair whose
    two functions read alike is left out (the difference the tests saw lies outside the function)."""
    problem = {p.task_id: p for p in problems()}
    order = {task: k for k, task in enumerate(tasks)}
    ordered = sorted(
        (c for c in candidates if c.task_id in order), key=lambda c: (order[c.task_id], c.sample)
    )
    return [{"prompt": problem[good.task_id].rm_prompt, "chosen": good.response, "rejected": bad.response,
             "task_id": good.task_id, "samples": [good.sample, bad.sample]}
            for good, bad in ((ordered[i], ordered[j]) for i, j in pass_fail_pairs(ordered))
            if bad.response != good.response]  # fmt: skip


def pick_rate(passing: np.ndarray, n: int, odds: np.ndarray) -> np.ndarray:
    """Chance that a reward model picks a passing program among ``n`` of which ``passing`` pass, when it
    favours each passing one ``odds`` times over each failing one (1: a random pick)."""
    return passing * odds / (passing * odds + (n - passing))


def simulated_power(
    passing: np.ndarray, n: int, seeds: int, effect: float, bt_odds: float = 3.0, shared_sd: float = 1.0,
    studies: int = 200, seed: int = 0,
) -> float:  # fmt: skip
    """Share of simulated studies whose nested-bootstrap 95% interval (seeds, then problems) of NormBT
    minus BT lies above 0, when NormBT's pick rate is ``effect`` above BT's. Model: each RM favours
    passing programs ``bt_odds`` times (BT; NormBT by the odds that add ``effect``), shifted per problem
    by a log-odds effect shared by every RM (``shared_sd``: blind spots all RMs have) and per seed by its
    own (same sd); the pick is a draw with that chance."""
    rng = np.random.default_rng(seed)
    base = pick_rate(passing, n, np.full(len(passing), bt_odds)).mean()
    lo, hi = bt_odds, bt_odds * 1e3  # NormBT's odds: bisection to the pick rate base + effect
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (
            (mid, hi)
            if pick_rate(passing, n, np.full(len(passing), mid)).mean() < base + effect
            else (lo, mid)
        )
    detected = 0
    for _ in range(studies):
        shared = rng.normal(0, shared_sd, len(passing))
        picks = []
        for odds in (lo, bt_odds):
            own = rng.normal(0, shared_sd, (seeds, len(passing)))
            picks.append(
                rng.random((seeds, len(passing))) < pick_rate(passing, n, odds * np.exp(shared + own))
            )
        low = nested_bootstrap(picks[0].astype(float) - picks[1], levels=(0.95,), n_resamples=1000)[0.95][0]
        detected += low > 0
    return detected / studies


def print_power(args: argparse.Namespace) -> None:
    folder = Path(args.dir)
    test = set(json.loads((folder / SPLIT).read_text())["test"])
    by_problem = {t: o for t, o in outcomes(read(folder)).items() if t in test}
    passing = np.array([sum(o) for o in by_problem.values()], dtype=float)
    n = max(len(o) for o in by_problem.values())
    seeds = [int(x) for x in args.seeds.split(",")]
    print(
        f"test half: {len(passing)} problems, {int(((passing > 0) & (passing < n)).sum())} with both "
        f"outcomes; pass@1 {passing.mean() / n:.3f}, pass@{n} {(passing > 0).mean():.3f}, a pick at "
        f"odds {args.bt_odds:g} {pick_rate(passing, n, np.full(len(passing), args.bt_odds)).mean():.3f}"
    )
    print("| NormBT - BT | " + " | ".join(f"power, {k} seeds" for k in seeds) + " |")
    print("|---:|" + "---:|" * len(seeds))
    for effect in (float(x) for x in args.effects.split(",")):
        cells = [
            simulated_power(passing, n, k, effect, args.bt_odds, args.shared_sd)
            for k in tqdm(seeds, leave=False)
        ]
        print(f"| {effect:+.2f} | " + " | ".join(f"{c:.2f}" for c in cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sample = sub.add_parser("sample", help="the policy's completions, labelled by the tests")
    sample.add_argument("--policy", required=True, help="the policy (a model folder)")
    sample.add_argument("--out", required=True)
    given = sample.add_mutually_exclusive_group(required=True)
    given.add_argument("--fraction", type=float, help="share of the canonical body's characters given")
    given.add_argument("--pilot", help="fractions to compare, e.g. 0.25,0.5,0.75 (no candidates kept)")
    sample.add_argument("--problems", type=int, default=164, help="the first N HumanEval problems")
    sample.add_argument("--samples", type=int, default=16)
    sample.add_argument("--max_new", type=int, default=128)
    sample.add_argument("--temperature", type=float, default=0.8, help="as Codex's pass@k sampling")
    sample.add_argument("--seed", type=int, default=0)
    halves = sub.add_parser("split", help="the problems into train and test halves (writes split.json)")
    halves.add_argument("--dir", required=True, help="the candidates' folder")
    power = sub.add_parser("power", help="the primary's power by seeds and effect, on the test half")
    power.add_argument("--dir", required=True, help="the candidates' folder, with split.json")
    power.add_argument("--seeds", default="5,8,10")
    power.add_argument("--effects", default="0.03,0.05,0.08,0.12")
    power.add_argument("--bt_odds", type=float, default=3.0)
    power.add_argument("--shared_sd", type=float, default=1.0)
    onpolicy = sub.add_parser("pairs", help="the train half's pass-over-fail pairs (JSONL): on-policy RMs")
    onpolicy.add_argument("--dir", required=True, help="the candidates' folder, with split.json")
    onpolicy.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.command == "pairs":
        folder = Path(args.dir)
        rows = onpolicy_pairs(read(folder), json.loads((folder / SPLIT).read_text())["train"])
        if not rows:
            raise SystemExit(f"{folder}: the train half has no pass-over-fail pair to train on")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return print(f"wrote {args.out}: {len(rows)} pairs")
    if args.command == "split":
        folder = Path(args.dir)
        (folder / SPLIT).write_text(json.dumps(split(read(folder)), indent=1) + "\n")
        return print(f"wrote {folder / SPLIT}")
    if args.command == "power":
        return print_power(args)
    out = Path(args.out)
    todo = [p for p in problems()[: args.problems] if passes(p.prompt + p.canonical_solution, p)]
    fractions = [float(x) for x in args.pilot.split(",")] if args.pilot else [args.fraction]
    kept: list[Candidate] = []
    summaries = []
    for fraction in fractions:
        candidates = sample_candidates(
            args.policy, fraction, todo, args.samples, args.max_new, args.temperature, args.seed, out
        )
        summaries.append(summarize(candidates, fraction))
        print(json.dumps(dataclasses.asdict(summaries[-1])), flush=True)
        kept += candidates
    write(kept, summaries, out)


if __name__ == "__main__":
    main()
