"""On-policy preference pairs: a policy's own samples, ranked by a gold judge.

    normbt label-pairs --policy runs/sft --prompts rm_prompts.jsonl --samples 8 \\
        --gold_fn normbt_plugin.common.tasks:gold_reward --out runs/onpolicy/pairs.jsonl

The standard protocol for measuring what a reward model does downstream (Gao, Schulman, Hilton
2022; Razin et al. 2025): the policy that will be optimised samples K responses per prompt (vLLM,
``generation.py``, cached beside ``--out``), a gold (a strong reward model, or the task's true
reward) scores each, and pairs of distinct responses whose gold rewards differ by more than
``--min_gap`` become preference pairs, chosen = the higher. Up to ``--pairs_per_prompt`` pairs a
prompt, drawn at random among the eligible ones. The output is what OpenRLHF's RM stage reads
(``prompt``, ``chosen``, ``rejected``) plus the gold rewards; with ``--apply_chat_template`` the three
are message lists (the user turn; the assistant turn), as the RM stage's ``--data.prompt_key prompt
--data.apply_chat_template`` reads them. ``<out>.summary.json`` says how many prompts, samples, ties
and pairs it came from.

    python -m normbt_plugin.policy_studies.label_pairs subsample POOL N SEED OUT  # N pairs at random
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from normbt_plugin.options import LabelPairsOptions
from normbt_plugin.policy_studies.generation import generate_all, sampling_spec
from normbt_plugin.rm_evaluation.pairs import EvalInputError
from normbt_plugin.runs import files
from normbt_plugin.runs.generations import Generation, Prompt, prompt_task


@dataclass(frozen=True)
class LabelledPair:
    """One line of label-pairs' output (and of the RM stage's input)."""

    prompt: Prompt  # as the prompt set has it (chat messages: every turn)
    chosen: str
    rejected: str
    chosen_gold: float
    rejected_gold: float


@dataclass
class LabelSummary:
    """``<out>.summary.json``: where the pairs came from."""

    policy: str
    gold: str
    prompts: int
    samples: int
    pairs_per_prompt: int
    min_gap: float
    pairs: int
    prompts_without_pair: int  # every sample tied (or identical) with every other
    gold_mean: float  # over all samples: the policy's level under the gold
    gold_std: float


def _row(pair: LabelledPair, chat: bool) -> dict:
    row = dataclasses.asdict(pair)
    if chat:  # OpenRLHF's chat form: prompt + chosen is the conversation
        prompt = pair.prompt
        row.update(prompt=[{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt,
                   chosen=[{"role": "assistant", "content": pair.chosen}],
                   rejected=[{"role": "assistant", "content": pair.rejected}])  # fmt: skip
    return row


def _text(value: str | list[dict]) -> str:
    return value if isinstance(value, str) else value[-1]["content"]


def _prompt(value: Prompt) -> Prompt:
    """A written prompt back as given: one user turn was a plain prompt (``_row``)."""
    single = isinstance(value, list) and len(value) == 1 and value[0].get("role") == "user"
    return value[0]["content"] if single else value


def write_pairs(pairs: list[LabelledPair], path: str | Path, chat: bool = False) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    tmp.write_text("".join(json.dumps(_row(p, chat)) + "\n" for p in pairs))
    tmp.rename(path)  # whole or absent
    return path


def read_pairs(path: str | Path) -> list[LabelledPair]:
    """The pairs of a label-pairs file (either form)."""
    pairs = []
    for line in Path(path).read_text().splitlines():
        if line:
            row = json.loads(line)
            pairs.append(
                LabelledPair(
                    **{
                        **row,
                        "prompt": _prompt(row["prompt"]),
                        **{k: _text(row[k]) for k in ("chosen", "rejected")},
                    }
                )  # fmt: skip
            )
    return pairs


def summary_path(out: str | Path) -> Path:
    return Path(out).with_suffix(".summary.json")


def read_summary(out: str | Path) -> LabelSummary:
    return files.read(LabelSummary, summary_path(out), "normbt label-pairs")


def pairs_of(
    prompt: Prompt, texts: list[str], golds: list[float], limit: int, min_gap: float, rng: random.Random
) -> list[LabelledPair]:
    """Up to ``limit`` pairs of distinct responses to ``prompt`` whose gold rewards differ by more
    than ``min_gap``, drawn at random (each response text counted once)."""
    unique: dict[str, float] = {}
    for text, gold in zip(texts, golds, strict=True):
        unique.setdefault(text, gold)
    eligible = [(a, b) for a, b in itertools.combinations(unique, 2) if abs(unique[a] - unique[b]) > min_gap]
    chosen = rng.sample(eligible, min(limit, len(eligible)))
    return [
        LabelledPair(prompt, a, b, unique[a], unique[b])
        if unique[a] > unique[b]
        else LabelledPair(prompt, b, a, unique[b], unique[a])
        for a, b in chosen
    ]


def _gold_scores(
    rows: list[Generation],
    gold: str | None,
    gold_fn: Callable[[str, str], float] | None,
    opts: LabelPairsOptions,
) -> np.ndarray:
    from tqdm import tqdm

    if gold_fn is not None:
        rows = tqdm(rows, desc="gold_fn")
        return np.array([[float(gold_fn(prompt_task(r.prompt), s.text)) for s in r.samples] for r in rows])
    from normbt_plugin.rm_evaluation.scoring import RewardScorer

    scorer = RewardScorer.for_samples(gold, opts)
    texts = [scorer.format(r.prompt, s.text) for r in rows for s in r.samples]
    scores, _ = scorer.score(texts, progress="gold")
    return scores.reshape(len(rows), -1)


def label_pairs(opts: LabelPairsOptions) -> LabelSummary:
    """Sample, judge, pair; writes ``--out`` and its summary and returns the summary. Inputs are
    checked before anything is sampled; the samples are cached (``<out>.samples.jsonl``, reused
    when made by the same policy and settings), the gold's scores too (``<out>.gold.json``)."""
    from normbt_plugin.policy_studies.curves import load_function
    from normbt_plugin.policy_studies.eval_policy import check_policy, load_prompts
    from normbt_plugin.rm_evaluation.scoring import check_reward_model

    policy, gold, samples, out = opts.policy, opts.gold, opts.samples, Path(opts.out)
    if (gold is None) == (opts.gold_fn is None):
        raise EvalInputError("name one gold: --gold (a reward model) or --gold_fn (module:function)")
    gold_fn = load_function(opts.gold_fn) if opts.gold_fn else None  # fails before sampling
    if samples < 2:
        raise EvalInputError(f"--samples must be at least 2 to make a pair, got {samples}")
    if opts.pairs_per_prompt < 1:
        raise EvalInputError(f"--pairs_per_prompt must be at least 1, got {opts.pairs_per_prompt}")
    prompts = load_prompts(
        opts.prompts, opts.prompt_key, opts.split, opts.n_prompts, opts.apply_chat_template
    )
    check_policy("--policy", policy)
    if gold is not None:
        check_reward_model(gold)
    spec = sampling_spec(opts, policy, prompts, out.with_suffix(".samples.jsonl"), samples)
    print(f"label-pairs: sampling {policy} ({len(prompts)} prompts x {samples})", flush=True)
    rows = generate_all([spec], log=out.with_suffix(".vllm.log"))[0]
    gold_name = gold or f"fn:{opts.gold_fn}"
    cache = out.with_suffix(".gold.json")
    key = {"gold": gold_name, "samples": dataclasses.asdict(spec)}
    cached = json.loads(cache.read_text()) if cache.exists() else {}
    if cached.get("key") == key:
        scores = np.array(cached["scores"])
    else:
        scores = _gold_scores(rows, gold, gold_fn, opts)
        if not np.isfinite(scores).all():
            raise FloatingPointError(f"the gold {gold_name} gave a non-finite reward")
        cache.write_text(json.dumps({"key": key, "scores": scores.tolist()}))
    rng = random.Random(opts.seed)
    pairs, empty = [], 0
    for row, golds in zip(rows, scores, strict=True):
        found = pairs_of(row.prompt, [s.text for s in row.samples], golds.tolist(),
                         opts.pairs_per_prompt, opts.min_gap, rng)  # fmt: skip
        pairs += found
        empty += not found
    if not pairs:
        raise EvalInputError(
            f"no pairs: on every prompt the {samples} samples tie under the gold (within --min_gap "
            f"{opts.min_gap}) or are identical; sample more (--samples) or at a higher --temperature"
        )
    write_pairs(pairs, out, chat=opts.apply_chat_template)
    summary = LabelSummary(
        policy=policy, gold=gold_name, prompts=len(prompts), samples=samples,
        pairs_per_prompt=opts.pairs_per_prompt, min_gap=opts.min_gap, pairs=len(pairs),
        prompts_without_pair=empty,
        gold_mean=float(scores.mean()), gold_std=float(scores.std()),
    )  # fmt: skip
    files.write(summary, summary_path(out))
    return summary


def subsample(pool: str | Path, n: int, seed: int, out: str | Path) -> Path:
    """``n`` lines of the pair file ``pool`` drawn at random by ``seed``, in random order: one RM
    seed's data (any JSON-lines pair file: label-pairs' or the tiny task's perturbation pairs)."""
    lines = [line for line in Path(pool).read_text().splitlines() if line]
    if n > len(lines):
        raise EvalInputError(f"{pool} holds {len(lines)} pairs, fewer than the {n} asked for")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".part")
    tmp.write_text("".join(line + "\n" for line in random.Random(seed).sample(lines, n)))
    tmp.rename(out)
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command line (the recipes' calls are read back through it in the tests)."""
    parser = argparse.ArgumentParser(description="one RM seed's pairs: a random subsample of a pool")
    sub = parser.add_subparsers(dest="command", required=True)
    cut = sub.add_parser("subsample", help="N pairs of POOL at random (by SEED), in random order")
    cut.add_argument("pool")
    cut.add_argument("n", type=int)
    cut.add_argument("seed", type=int)
    cut.add_argument("out")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    print(subsample(args.pool, args.n, args.seed, args.out))


if __name__ == "__main__":
    main()
