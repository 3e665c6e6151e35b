"""Downstream policy quality: what the policies trained on each reward model generate.

    normbt eval-policy --policy initial=runs/compare/policy \\
        --policy bt-seed1=runs/compare/ppo-bt-seed1/model --policy normbt-seed1=... \\
        --proxy bt-seed1=runs/compare/rm-bt-seed1/model --proxy normbt-seed1=... \\
        --gold runs/compare/gold/model --prompts eval_prompts.jsonl --out runs/compare/policy-eval

For each policy, vLLM samples ``--samples`` responses per held-out prompt (``generation.py``: on
CPU one engine for the policies, each one's weights loaded in turn). A gold reward model the user
names scores every response; per policy:
- gold reward mean;
- win rate against the reference policy and head to head: the same prompt and sample index of two
  policies, 1 if the gold reward is higher, 0 if lower, 1/2 for a tie (identical response text,
  or gold rewards within ``--tie_tol``);
- KL to the reference policy, ``E_y~pi [log pi(y|x) - log pi_ref(y|x)]`` over the sampled
  responses, both log-probabilities from ``transformers`` at the sampling temperature;
- response length in tokens and the share cut at ``--max_new``.
Best-of-N (as in the paper; Gao et al. 2023): ``--bon_samples`` K responses per prompt from the
reference policy, scored by each proxy RM and the gold RM; for N = 1, 2, 4 ... K the expected gold
reward of the response the proxy ranks first among N drawn without replacement, computed exactly
over all N-subsets (``best_of_n``), and its KL bound ``log N - (N-1)/N``.

Names ``<label>-seed<k>`` group policies and proxies by loss label for ``normbt compare``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from normbt_plugin.options import EvalPolicyOptions
from normbt_plugin.policy_studies.generation import generate_all, sampling_spec
from normbt_plugin.rm_evaluation.pairs import EvalInputError, load_rows
from normbt_plugin.rm_evaluation.scoring import RewardScorer, check_reward_model
from normbt_plugin.runs.generations import Generation, Prompt, prompt_task
from normbt_plugin.runs.policy_eval import (
    BestOfN,
    Curve,
    PerPrompt,
    PolicyEval,
    PolicyResult,
    RewardScale,
    Wins,
)

# ------------------------------------------------------------------ metrics


def win_rate(
    a: np.ndarray, b: np.ndarray, a_text: list[list[str]], b_text: list[list[str]], tie_tol: float = 0.0
) -> np.ndarray:
    """Per prompt, the mean over sample indices of 1 (a's gold reward higher), 0 (lower) or 1/2
    (a tie: identical response text, or rewards within ``tie_tol``). ``a``, ``b``: [prompts, samples]."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"win rate needs the same prompts and samples, got {a.shape} and {b.shape}")
    same = np.array(
        [[x == y for x, y in zip(ra, rb, strict=True)] for ra, rb in zip(a_text, b_text, strict=True)]
    )
    outcome = np.where(a > b, 1.0, 0.0)
    outcome = np.where(same | (np.abs(a - b) <= tie_tol), 0.5, outcome)
    return outcome.mean(axis=1)


def best_of_n(proxy: np.ndarray, gold: np.ndarray, ns: list[int]) -> np.ndarray:
    """Expected gold reward of the proxy's best among N of the K samples (drawn without
    replacement), exactly: sorted by proxy reward, the i-th smallest (1-based) is the best of a
    random N-subset with probability C(i-1, N-1) / C(K, N). [prompts, K] -> [prompts, len(ns)]."""
    proxy, gold = np.asarray(proxy, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    k = proxy.shape[1]
    order = np.argsort(proxy, axis=1, kind="stable")
    gold_sorted = np.take_along_axis(gold, order, axis=1)
    out = np.empty((proxy.shape[0], len(ns)))
    for j, n in enumerate(ns):
        if not 1 <= n <= k:
            raise ValueError(f"best-of-{n} needs 1 <= N <= {k} samples per prompt")
        rank = np.arange(1, k + 1)
        weights = np.array([math.comb(i - 1, n - 1) for i in rank], dtype=np.float64) / math.comb(k, n)
        out[:, j] = gold_sorted @ weights
    return out


def bon_kl(n: int) -> float:
    """KL(best-of-N || policy) upper bound, log N - (N-1)/N (Stiennon et al. 2020)."""
    return math.log(n) - (n - 1) / n


@torch.no_grad()
def sequence_logprobs(
    model_path: str,
    row_sets: list[list[Generation]],
    temperature: float = 1.0,
    batch_size: int = 8,
    dtype: str = "float32",
) -> list[np.ndarray]:
    """Sum of log p(response token | prefix) under ``model_path`` for every sample of each set of
    rows (as ``generation`` writes them), at ``temperature``: one [prompts, samples] array per set,
    the model loaded once."""
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
    except (OSError, ValueError) as exc:
        raise EvalInputError(f"{model_path} is not a causal LM policy: {exc}") from exc
    model = model.to(device).eval()
    out = []
    for rows in row_sets:
        seqs = [(r.prompt_ids, s.ids) for r in rows for s in r.samples]
        totals = np.zeros(len(seqs))
        for start in range(0, len(seqs), batch_size):
            batch = seqs[start : start + batch_size]
            width = max(len(p) + len(y) for p, y in batch)
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            for i, (p, y) in enumerate(batch):  # right padding: positions stay those of generation
                ids[i, : len(p) + len(y)] = torch.tensor(p + y)
                mask[i, : len(p) + len(y)] = 1
            logits = model(ids.to(device), attention_mask=mask.to(device)).logits.float() / temperature
            logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(2, ids[:, 1:, None].to(device))[..., 0]
            for i, (p, y) in enumerate(batch):
                totals[start + i] = logp[i, len(p) - 1 : len(p) + len(y) - 1].sum().item()
        out.append(totals.reshape(len(rows), -1))
    del model
    return out


# ------------------------------------------------------------------ inputs


def check_policy(name: str, path: str) -> None:
    """A local policy folder must hold a causal LM (a reward model's folder would load with a
    random LM head)."""
    config_path = Path(path) / "config.json"
    if not Path(path).exists():
        if path.startswith((".", "/")):
            raise EvalInputError(f"policy {name}: {path} does not exist")
        return  # a hub name, loaded on users' nodes
    if not config_path.exists():
        raise EvalInputError(f"policy {name}: {path} has no config.json (not a model folder)")
    architectures = json.loads(config_path.read_text()).get("architectures") or []
    if not any(a.endswith(("ForCausalLM", "ForConditionalGeneration")) for a in architectures):
        raise EvalInputError(
            f"policy {name}: {path} is not a causal LM (architectures {architectures}); a reward "
            "model goes to --gold or --proxy"
        )


def parse_named(entries: list[str], what: str) -> dict[str, str]:
    """``name=path`` entries, names unique."""
    out: dict[str, str] = {}
    for entry in entries:
        name, sep, path = entry.partition("=")
        if not sep or not name or not path:
            raise EvalInputError(f"--{what} takes name=path, got {entry!r}")
        if name in out:
            raise EvalInputError(f"--{what} name {name!r} given twice")
        out[name] = path
    return out


def prompt_rows(
    source: str, key: str = "input", split: str = "train", limit: int | None = None
) -> list[dict]:
    """The first ``limit`` rows of a prompt file or dataset, checked to have the ``key`` column."""
    path = Path(source)
    if not path.exists() and (
        source.startswith((".", "/")) or path.suffix in {".jsonl", ".json", ".parquet"}
    ):
        raise EvalInputError(f"prompt file {source} does not exist")
    rows = load_rows(source, split)
    if not rows:
        raise EvalInputError(f"{source} has no prompts")
    if key not in rows[0]:
        raise EvalInputError(
            f"{source} has no {key!r} column (columns: {sorted(rows[0])}): pass --prompt_key"
        )
    return rows[:limit] if limit else rows


def prompt_of(row: dict, key: str = "input", apply_chat_template: bool = False) -> Prompt:
    """The prompt of a row as PPO reads it: a string, or chat messages (every turn, kept whole)."""
    prompt = row[key]
    if isinstance(prompt, str):
        return prompt
    if not isinstance(prompt, list) or not all(isinstance(m, dict) and "role" in m for m in prompt):
        raise EvalInputError(f"a prompt must be a string or a list of chat messages, got {prompt!r:.200}")
    if not apply_chat_template:
        raise EvalInputError(
            f"the {key!r} column holds chat messages: pass --apply_chat_template (as PPO's "
            "--data.apply_chat_template), so the policy sees them through its chat template"
        )
    return prompt


def load_prompts(
    source: str,
    key: str = "input",
    split: str = "train",
    limit: int | None = None,
    apply_chat_template: bool = False,
) -> list[Prompt]:
    return [prompt_of(r, key, apply_chat_template) for r in prompt_rows(source, key, split, limit)]


# ------------------------------------------------------------------ the evaluation


def _scores(scorer: RewardScorer, rows: list[Generation], label: str) -> np.ndarray:
    texts = [scorer.format(r.prompt, s.text) for r in rows for s in r.samples]
    rewards, _ = scorer.score(texts, progress=label)
    if not np.isfinite(rewards).all():
        raise FloatingPointError(f"{label}: the reward model gave a non-finite reward")
    return rewards.reshape(len(rows), -1)


def reward_scale(scores: np.ndarray, rm_path: str) -> RewardScale:
    """Mean and std of an RM's rewards, raw and normalised with the mean/std its config holds
    (what PPO's --reward.normalize_enable divides by; None where the config has none)."""
    config = Path(rm_path) / "config.json"
    saved = json.loads(config.read_text()) if config.exists() else {}
    mean, std = saved.get("mean"), saved.get("std")
    normed = (scores - mean) / std if mean is not None and std else None
    return RewardScale(
        mean=float(scores.mean()), std=float(scores.std()), saved_mean=mean, saved_std=std,
        normalised_mean=float(normed.mean()) if normed is not None else None,
        normalised_std=float(normed.std()) if normed is not None else None,
    )  # fmt: skip


def _true_scores(gold_fn: Callable[[str, str], float], rows: list[Generation]) -> np.ndarray:
    return np.array([[float(gold_fn(prompt_task(r.prompt), s.text)) for s in r.samples] for r in rows])


def evaluate_policies(opts: EvalPolicyOptions) -> PolicyEval:
    """Generate, score and compare; writes and returns what ``normbt compare`` reads. ``--gold_fn``
    (prompt, response) is the task's true reward where one exists: beside the gold RM (``true_*``
    fields, best-of-N judged by it too), or alone as the gold."""
    from normbt_plugin.policy_studies.curves import load_function

    out, gold, samples, bon_samples = Path(opts.out), opts.gold, opts.samples, opts.bon_samples
    policies, proxies, prompts, reference = _checked_inputs(opts)
    gold_fn = load_function(opts.gold_fn) if opts.gold_fn else None

    def scorer(path: str) -> RewardScorer:  # loaded after generation: vLLM has the GPU until then
        return RewardScorer.for_samples(path, opts)

    generations, bon_rows = _sample_policies(opts, policies, prompts, reference, out)
    result = PolicyEval(
        reference=reference, gold=gold or f"fn:{opts.gold_fn}", gold_fn=opts.gold_fn, prompts=len(prompts),
        samples=samples, max_new=opts.max_new, temperature=opts.temperature, seed=opts.seed,
        tie_tol=opts.tie_tol, policies={},
    )  # fmt: skip
    texts = {n: [[s.text for s in r.samples] for r in rows] for n, rows in generations.items()}
    # one model in memory at a time, each loaded once: the gold, the proxies, the policies
    true_scores = {n: _true_scores(gold_fn, rows) for n, rows in generations.items()} if gold_fn else {}
    true_k = _true_scores(gold_fn, bon_rows) if gold_fn and bon_rows else None
    if gold:
        gold_scorer = scorer(gold)
        gold_scores = {n: _scores(gold_scorer, rows, f"gold on {n}") for n, rows in generations.items()}
        gold_k = _scores(gold_scorer, bon_rows, "gold on best-of-N samples") if bon_rows else None
        del gold_scorer
    else:  # the true reward is the gold
        gold_scores, gold_k = true_scores, true_k
    proxy_k = (
        {name: _scores(scorer(path), bon_rows, f"proxy {name}") for name, path in proxies.items()}
        if bon_rows
        else {}
    )
    logp_ref = dict(
        zip(
            generations,
            sequence_logprobs(
                policies[reference], list(generations.values()), opts.temperature, opts.batch_size, opts.dtype
            ),
            strict=True,
        )
    )
    for name, rows in generations.items():
        logp = (
            logp_ref[name]
            if name == reference
            else sequence_logprobs(policies[name], [rows], opts.temperature, opts.batch_size, opts.dtype)[0]
        )
        result.policies[name] = _policy_result(
            opts,
            policies[name],
            rows,
            logp,
            logp_ref[name],
            gold_scores[name],
            true_scores.get(name),
            texts[name],
        )
    for a in policies:
        for b in policies:
            if a != b:
                per_prompt = win_rate(gold_scores[a], gold_scores[b], texts[a], texts[b], opts.tie_tol)
                result.policies[a].wins[b] = Wins(float(per_prompt.mean()), per_prompt.tolist())

    if proxy_k:  # each RM's reward scale on the reference's samples, raw and as PPO normalises it
        result.proxy_scale = {name: reward_scale(scores, proxies[name]) for name, scores in proxy_k.items()}
    if gold_k is not None:
        result.best_of_n = _best_of_n_result(gold_k, proxy_k, true_k if gold else None, bon_samples)
    result.write(out)
    return result


def _checked_inputs(opts: EvalPolicyOptions) -> tuple[dict[str, str], dict[str, str], list, str]:
    """The policies, proxies, prompts and reference, every path checked before any generation."""
    policies = parse_named(opts.policy, "policy")
    proxies = parse_named(opts.proxy or [], "proxy")
    prompts = load_prompts(
        opts.prompts, opts.prompt_key, opts.split, opts.n_prompts, opts.apply_chat_template
    )
    if opts.gold is None and opts.gold_fn is None:
        raise EvalInputError("name a judge: --gold (a reward model) and/or --gold_fn (module:function)")
    reference = opts.reference or next(iter(policies))
    if reference not in policies:
        raise EvalInputError(f"--reference {reference!r} is not one of the policies {sorted(policies)}")
    if opts.bon_samples and opts.bon_samples < opts.samples:
        raise EvalInputError(
            f"--bon_samples ({opts.bon_samples}) must be at least --samples ({opts.samples})"
        )
    # fail before any generation on a path that is not what it should be
    for path in [*([opts.gold] if opts.gold else []), *proxies.values()]:
        check_reward_model(path)
    for name, path in policies.items():
        check_policy(name, path)
    return policies, proxies, prompts, reference


def _sample_policies(
    opts: EvalPolicyOptions, policies: dict[str, str], prompts: list, reference: str, out: Path
) -> tuple[dict[str, list], list | None]:
    """Every policy's samples (vLLM), and the reference's best-of-N samples (its first prompts, K each)."""
    samples, bon_samples = opts.samples, opts.bon_samples
    n_bon = min(opts.bon_prompts or len(prompts), len(prompts)) if bon_samples else 0
    specs = []
    for name in policies:
        # the reference also draws best-of-N's K samples on the first prompts
        counts = [bon_samples if name == reference and i < n_bon else samples for i in range(len(prompts))]
        print(
            f"eval-policy: sampling {name} ({len(prompts)} prompts x {samples}"
            + (f"; best-of-N: {n_bon} x {bon_samples})" if name == reference and n_bon else ")"),
            flush=True,
        )
        path = out / "generations" / f"{name}.jsonl"
        specs.append(sampling_spec(opts, policies[name], prompts, path, counts, name=name))
    generations = dict(zip(policies, generate_all(specs, log=out / "generations" / "vllm.log"), strict=True))
    bon_rows = None
    if n_bon:
        bon_rows = generations[reference][:n_bon]
        generations[reference] = [replace(r, samples=r.samples[:samples]) for r in generations[reference]]
    return generations, bon_rows


def _policy_result(
    opts: EvalPolicyOptions,
    path: str,
    rows: list,
    logp: np.ndarray,
    logp_ref: np.ndarray,
    gold: np.ndarray,
    true: np.ndarray | None,
    texts: list[list[str]],
) -> PolicyResult:
    """One policy's gold (and true) reward, KL to the reference, lengths, and the sampler check."""
    engine = np.array([[s.engine_logprob for s in r.samples] for r in rows])
    lengths = np.array([[len(s.ids) for s in r.samples] for r in rows], dtype=np.float64)
    truncated = np.array([[s.truncated for s in r.samples] for r in rows], dtype=np.float64)
    kl = (logp - logp_ref).mean(axis=1)
    return PolicyResult(
        path=path,
        gold_mean=float(gold.mean()),
        kl=float(kl.mean()),
        length=float(lengths.mean()),
        truncated=float(truncated.mean()),
        # vLLM's own log-probs vs transformers' (temperature 1 only): the sampler is the model
        engine_logprob_gap=float(np.abs(engine - logp).max()) if opts.temperature == 1.0 else None,
        per_prompt=PerPrompt(
            gold=gold.mean(axis=1).tolist(),
            kl=kl.tolist(),
            length=lengths.mean(axis=1).tolist(),
            true=true.mean(axis=1).tolist() if true is not None else None,
        ),
        gold_per_sample=gold.tolist(),
        texts=texts,
        true_mean=float(true.mean()) if true is not None else None,
        wins={},
    )


def _best_of_n_result(
    gold_k: np.ndarray, proxy_k: dict[str, np.ndarray], true_k: np.ndarray | None, bon_samples: int
) -> BestOfN:
    """Each proxy's (and the oracle's) best-of-N curve at N = 1, 2, 4, ..., K, judged by the gold and,
    where a true reward stands beside a gold RM (``true_k``), by it too."""
    ns = [n for n in (2**i for i in range(int(math.log2(bon_samples)) + 1))]
    if ns[-1] != bon_samples:
        ns.append(bon_samples)
    curves = {"oracle (gold)": best_of_n(gold_k, gold_k, ns)}
    curves.update({name: best_of_n(scores, gold_k, ns) for name, scores in proxy_k.items()})
    if true_k is not None:  # the same choices judged by the true reward
        curves["oracle (true)"] = best_of_n(true_k, true_k, ns)
        curves.update({f"{name} (true)": best_of_n(sc, true_k, ns) for name, sc in proxy_k.items()})
    return BestOfN(
        n=ns,
        kl=[bon_kl(n) for n in ns],
        prompts=len(gold_k),
        samples=bon_samples,
        curves={k: Curve(v.mean(axis=0).tolist(), v.tolist()) for k, v in curves.items()},
        # every sample's reward [prompts, K]: the gold's and each proxy's (variance, correlation)
        gold_scores=gold_k.tolist(),
        proxy_scores={name: scores.tolist() for name, scores in proxy_k.items()},
    )


def format_policy_report(result: PolicyEval) -> str:
    ref = result.reference
    lines = [
        f"policies on {result.prompts} prompts x {result.samples} samples, gold RM {result.gold}",
        f"{'policy':<24} {'gold':>9} {'true':>7} {'win vs ' + ref:>16} {'KL':>9} {'length':>8} {'cut':>6}",
    ]
    for name, p in result.policies.items():
        win_text = f"{p.wins[ref].win_rate:.3f}" if ref in p.wins else "-"
        true_text = f"{p.true_mean:.4f}" if p.true_mean is not None else "-"
        lines.append(
            f"{name:<24} {p.gold_mean:>9.4f} {true_text:>7} {win_text:>16} {p.kl:>9.4f} "
            f"{p.length:>8.1f} {p.truncated:>6.2f}"
        )
    for name, scale in result.proxy_scale.items():
        normed = (
            f", normalised as PPO does {scale.normalised_mean:+.3f} +- {scale.normalised_std:.3f}"
            if scale.normalised_mean is not None
            else ""
        )
        lines.append(
            f"reward scale of {name} on {ref}'s samples: {scale.mean:+.3f} +- {scale.std:.3f}{normed}"
        )
    if result.best_of_n:
        bon = result.best_of_n
        lines.append(f"best-of-N gold reward ({bon.prompts} prompts x {bon.samples} samples from {ref})")
        lines.append(f"{'proxy':<24} " + " ".join(f"{'N=' + str(n):>8}" for n in bon.n))
        for name, curve in bon.curves.items():
            lines.append(f"{name:<24} " + " ".join(f"{v:>8.4f}" for v in curve.mean))
    return "\n".join(lines)


__all__ = [
    "best_of_n",
    "bon_kl",
    "evaluate_policies",
    "format_policy_report",
    "load_prompts",
    "prompt_of",
    "parse_named",
    "sequence_logprobs",
    "win_rate",
]
