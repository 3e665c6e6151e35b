"""Best-of-N on code, the candidates: a policy's completions of HumanEval problems, each labelled by
running the problem's own tests (``rm_evaluation.humaneval.passes``: a fresh isolated interpreter, time
and memory limits). A 135M policy rarely writes a whole solution, so it is given the signature, the
docstring and the first part of the canonical body (``--fraction`` of its characters, cut mid-line where
it falls) and completes the rest: what it gets wrong are near misses, the pairs NormBT is about.

    python -m normbt_plugin.policy_studies.code_bon sample --policy DIR --out DIR --fraction 0.5 --samples 16
    python -m normbt_plugin.policy_studies.code_bon sample ... --pilot 0.25,0.5,0.75 --problems 24 --samples 8

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

from tqdm import tqdm

from normbt_plugin.rm_evaluation.humaneval import Problem, passes, problems

# a completion ends where top-level code starts again (the Codex paper's stop sequences) or the fence closes
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
    by_problem: dict[str, list[bool]] = {}
    for c in candidates:
        by_problem.setdefault(c.task_id, []).append(c.passed)
    outcomes = list(by_problem.values())
    return Summary(
        fraction=fraction,
        problems=len(outcomes),
        samples=max(len(o) for o in outcomes),
        pass_at_1=sum(sum(o) / len(o) for o in outcomes) / len(outcomes),
        pass_at_n=sum(any(o) for o in outcomes) / len(outcomes),
        mixed=sum(any(o) and not all(o) for o in outcomes) / len(outcomes),
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

    from normbt_plugin.policy_studies.generation import GenerationSpec, generate_all

    tokenizer = AutoTokenizer.from_pretrained(policy)
    prompts = [policy_prompt(tokenizer, given_code(p, fraction)) for p in todo]
    spec = GenerationSpec(
        model=policy, prompts=prompts, samples=samples, max_new=max_new, max_prompt_len=1024,
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
    with gzip.open(out / "candidates.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(dataclasses.asdict(c)) + "\n" for c in candidates)
    (out / "summary.json").write_text(json.dumps([dataclasses.asdict(s) for s in summaries], indent=1))


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
    args = parser.parse_args()
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
