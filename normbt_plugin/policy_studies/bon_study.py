"""Best-of-N with proxy reward models: the on-policy protocol's primary analysis.

    normbt bon-study runs/downstream/bon/policy_eval.json runs/downstream/rm-* --baseline bt --n 16 \\
        --out runs/downstream/bon-study

Reads ``normbt eval-policy``'s best-of-N (K samples per held-out prompt from the SFT policy, every
RM a proxy, the true reward or a gold RM as judge) and each RM run's ``eval.json`` (eval-rm on
held-out on-policy pairs). RM folders are named ``rm-<arm>-<loss>-seed<k>`` (arm: where the RM's
training pairs came from, e.g. ``onpolicy``, ``perturb``), the proxies ``<arm>-<loss>-seed<k>``.
Seeds added later (a second eval-policy run, same policy, prompts and sampling seed, new proxies
only) join with ``--also runs/downstream/bon-5-8/policy_eval.json``: one pooled analysis.

Pre-registered (docs/results.md, Downstream): the primary metric is the judge's reward of the proxy's
pick at N = ``--n``, the loss minus the baseline, paired by seed; the interval that decides is the
nested bootstrap over seeds then prompts; "helps" if its 95% interval is above 0, "hurts" if below,
"no difference" if its 90% interval lies within +-``--margin`` (an equivalence test), otherwise
"inconclusive" with the seeds it would take. Beside it: a t-test over seeds, Gao et al.'s fit
R(d) = d (a - b d) with d = sqrt(KL_bon(N)) per RM (a: gain, b: over-optimisation), and the
mechanism: held-out on-policy accuracy (overall, by the RM's representation-distance quintile, by
the judge's reward gap), and the RM's reward spread on the SFT policy's samples (Razin et al. 2025).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from normbt_plugin.common.intervals import nested_bootstrap, seeds_needed, t_interval
from normbt_plugin.options import BonStudyOptions
from normbt_plugin.rm_evaluation.pairs import EvalInputError
from normbt_plugin.runs.policy_eval import BestOfN, PolicyEval
from normbt_plugin.runs.rm_eval import EVAL, RmEval

NAME = re.compile(r"^(?P<arm>.+)-(?P<loss>[^-]+)-seed(?P<seed>\d+)$")


@dataclass
class Proxy:
    """One RM as a best-of-N proxy, with what eval-rm measured of it."""

    name: str
    arm: str
    loss: str
    seed: int
    bon: np.ndarray  # [prompts, len(ns)]: the judge's reward of the proxy's pick among N
    scores: np.ndarray  # [prompts, K]: the proxy's reward of every sample
    evaluation: RmEval | None = None  # eval-rm on the held-out on-policy pairs, where the run has it


def gao_fit(d: np.ndarray, gain: np.ndarray) -> tuple[float, float]:
    """Least squares of gain = d (a - b d) (no intercept): (a, b)."""
    design = np.stack([d, -(d**2)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, gain, rcond=None)
    return float(a), float(b)


def within_prompt_spread(scores: np.ndarray) -> dict[str, float]:
    """The reward's spread on the policy's samples: overall std, the mean within-prompt std (what
    best-of-N and a group baseline see), and their ratio (scale-free)."""
    total = float(scores.std())
    within = float(scores.std(axis=1).mean())
    return {"std": total, "within_std": within, "within_share": within / total if total > 0 else 0.0}


def rank_agreement(scores: np.ndarray, gold: np.ndarray) -> float:
    """Mean over prompts of Spearman's rho between proxy and judge over the K samples (prompts where
    either is constant count 0: the proxy tells nothing there)."""
    rhos = []
    for s, g in zip(scores, gold, strict=True):
        rho = stats.spearmanr(s, g).statistic if s.std() > 0 and g.std() > 0 else 0.0
        rhos.append(0.0 if not np.isfinite(rho) else rho)
    return float(np.mean(rhos))


def pooled_best_of_n(paths: list[str | Path]) -> BestOfN:
    """The best-of-N of one or more ``eval-policy`` runs on the same samples (seed pairs added by a
    later run: same policy, prompts and sampling seed), their proxies pooled. The samples are checked
    through the judge's reward of every one; a proxy may appear in one run only."""
    first, *rest = paths
    bon = _best_of_n(first)
    for path in rest:
        other = _best_of_n(path)
        same_shape = (other.n, other.prompts, other.samples) == (bon.n, bon.prompts, bon.samples)
        if not same_shape or not np.allclose(other.gold_scores, bon.gold_scores, rtol=1e-5, atol=1e-6):
            raise EvalInputError(
                f"{path}'s best-of-N is not on the samples of {first} (N, prompts, samples or the judge's "
                "scores differ): pool only eval-policy runs of one policy on the same prompts and seed"
            )
        if twice := sorted(bon.proxy_scores.keys() & other.proxy_scores.keys()):
            raise EvalInputError(f"proxies {twice} are in both {first} and {path}: pass each run once")
        curves = {**other.curves, **bon.curves}  # the oracle's (the same in both) kept once
        bon = replace(bon, curves=curves, proxy_scores={**bon.proxy_scores, **other.proxy_scores})
    return bon


def _best_of_n(path: str | Path) -> BestOfN:
    bon = PolicyEval.read(path).best_of_n
    if not bon or not bon.proxy_scores:
        raise EvalInputError(f"{path} has no best-of-N with proxy scores (eval-policy --bon_samples --proxy)")
    return bon


def load_proxies(bon: BestOfN, runs: list[str]) -> list[Proxy]:
    folders = {Path(r).name.removeprefix("rm-"): Path(r) for r in runs}
    proxies = []
    for name, scores in bon.proxy_scores.items():
        match = NAME.match(name)
        if not match:
            raise EvalInputError(f"proxy {name!r} is not named <arm>-<loss>-seed<k>")
        proxy = Proxy(name=name, arm=match["arm"], loss=match["loss"], seed=int(match["seed"]),
                      bon=np.array(bon.curves[name].per_prompt), scores=np.array(scores))  # fmt: skip
        folder = folders.get(name)
        if folder is not None and (folder / EVAL).exists():
            proxy.evaluation = RmEval.read(folder / EVAL)
        proxies.append(proxy)
    return proxies


def decide(mean: float, ci95: tuple[float, float], ci90: tuple[float, float], margin: float) -> str:
    if ci95[0] > 0:
        return "helps"
    if ci95[1] < 0:
        return "hurts"
    if -margin < ci90[0] and ci90[1] < margin:
        return "no difference"
    return "inconclusive"


def paired_effect(a: list[Proxy], b: list[Proxy], column: int, margin: float) -> dict[str, Any]:
    """``a`` minus ``b`` at one best-of-N column, paired by seed: per-seed differences, a t-test over
    seeds, the nested bootstrap (seeds, then prompts), the decision, and the seeds it would take."""
    by_seed = {p.seed: p for p in b}
    pairs = [(p, by_seed[p.seed]) for p in sorted(a, key=lambda p: p.seed) if p.seed in by_seed]
    if not pairs:
        return {"seeds": 0}
    diffs = np.array([x.bon[:, column] - y.bon[:, column] for x, y in pairs])  # [seeds, prompts]
    per_seed = diffs.mean(axis=1)
    mean = float(per_seed.mean())
    boot = nested_bootstrap(diffs)
    sd = float(per_seed.std(ddof=1)) if len(pairs) > 1 else float("nan")
    out: dict[str, Any] = {
        "seeds": len(pairs), "mean": mean, "per_seed": per_seed.tolist(),
        "t_ci95": t_interval(per_seed, 0.95), "t_ci90": t_interval(per_seed, 0.90),
        "t_p": float(stats.ttest_1samp(per_seed, 0.0).pvalue) if len(pairs) > 1 and sd > 0 else float("nan"),
        "boot_ci95": boot[0.95], "boot_ci90": boot[0.90], "sd_over_seeds": sd,
    }  # fmt: skip
    out["decision"] = decide(mean, boot[0.95], boot[0.90], margin)
    if out["decision"] == "inconclusive":
        out["seeds_to_detect"] = seeds_needed(sd, abs(mean))  # the measured effect, 80% power
        out["seeds_for_equivalence"] = seeds_needed(sd, margin - abs(mean), alpha=0.10, sided=1)
    return out


def what_it_would_take(effect: dict[str, Any], margin: float) -> str:
    """An inconclusive effect's seeds to settle it, in words: to detect the measured effect, and to
    show equivalence (which no number of seeds can when the measured effect lies outside the margin)."""
    if not np.isfinite(effect["sd_over_seeds"]):  # seeds_needed's -1 then means "not measured", not "none"
        return "one seed: no spread over seeds to size more by"
    mean, detect, equivalence = effect["mean"], effect["seeds_to_detect"], effect["seeds_for_equivalence"]
    detect_text = str(detect) if detect > 0 else "none (no effect measured)"
    outside = f"none (the measured {mean:+.3f} lies outside it)"
    equivalence_text = str(equivalence) if equivalence > 0 else outside
    return (
        f"seeds to detect {mean:+.3f} at 80% power: {detect_text}; "
        f"to show equivalence within +-{margin}: {equivalence_text}"
    )


def _mean_ci(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    low, high = t_interval(arr) if len(arr) > 1 else (float("nan"), float("nan"))
    return {"mean": float(arr.mean()), "low": low, "high": high, "n": len(arr)}


def gap_accuracy(correct: np.ndarray, gaps: np.ndarray, edges: np.ndarray) -> list[float]:
    """Accuracy of one RM's held-out pairs within each judge-gap bin (``edges``: bin bounds)."""
    if len(correct) != len(gaps):
        return []
    index = np.clip(np.searchsorted(edges, gaps, side="right") - 1, 0, len(edges) - 2)
    return [
        float(correct[index == i].mean()) if (index == i).any() else float("nan")
        for i in range(len(edges) - 1)
    ]


def bon_study(o: BonStudyOptions) -> dict[str, Any]:
    """The analysis (``summary.json``, ``report.md``, ``best_of_n.png``) under ``o.out``, of one
    eval-policy run's best-of-N or several pooled (``o.also``: ``pooled_best_of_n``)."""
    runs, baseline, n, margin, pairs, out = o.runs, o.baseline, o.n, o.margin, o.pairs, o.out
    bon = pooled_best_of_n([o.policy_eval, *(o.also or [])])  # raises without a best-of-N
    proxies = load_proxies(bon, runs)
    ns = list(bon.n)
    if n not in ns:
        raise EvalInputError(f"--n {n} is not among the best-of-N sizes {ns}")
    column = ns.index(n)
    gold = np.array(bon.gold_scores)
    d = np.sqrt(np.array(bon.kl))
    # each proxy's gain over best-of-1 along sqrt(KL), fitted once (Gao et al.'s d (a - b d))
    gao = {p.name: gao_fit(d, p.bon.mean(axis=0) - p.bon.mean(axis=0)[0]) for p in proxies}
    groups: dict[tuple[str, str], list[Proxy]] = defaultdict(list)
    for p in proxies:
        groups[(p.arm, p.loss)].append(p)
    arms = sorted({p.arm for p in proxies})
    losses = sorted({p.loss for p in proxies}, key=lambda x: (x != baseline, x))
    gaps = edges = None
    if pairs:  # the held-out pairs eval-rm scored, with the judge's rewards (label-pairs' output)
        from normbt_plugin.policy_studies.label_pairs import read_pairs

        gaps = np.array([x.chosen_gold - x.rejected_gold for x in read_pairs(pairs)])
        edges = np.quantile(gaps, [0, 1 / 3, 2 / 3, 1])

    oracle = np.array(bon.curves["oracle (gold)"].mean)
    result: dict[str, Any] = {
        "n": n, "ns": ns, "kl": bon.kl, "prompts": bon.prompts, "samples": bon.samples,
        "baseline": baseline, "margin": margin, "oracle": oracle.tolist(), "cells": {}, "effects": {},
    }  # fmt: skip
    for (arm, loss), group in sorted(groups.items()):
        result["cells"][f"{arm}/{loss}"] = _cell(group, gao, gold, column, gaps, edges)
    result["effects"] = _effects(groups, arms, losses, baseline, gao, column, margin)
    if len(arms) == 2:  # the 2x2: does the loss effect depend on where the pairs came from?
        interaction = _interaction(groups, arms, losses, baseline, column)
        if interaction:
            result["interaction"] = interaction
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(result, indent=1))
    plot_bon(result, out / "best_of_n.png")
    (out / "report.md").write_text(format_report(result))
    return result


def _cell(
    group: list[Proxy],
    gao: dict[str, tuple[float, float]],
    gold: np.ndarray,
    column: int,
    gaps: np.ndarray | None,
    edges: np.ndarray | None,
) -> dict[str, Any]:
    """One arm x loss: its best-of-N curve, the value at N, Gao's fit, the proxies' spread and rank
    agreement with the gold, and its eval-rm accuracy (by distance, by the judge's gap)."""
    fits = [gao[p.name] for p in group]
    spreads = [within_prompt_spread(p.scores) for p in group]
    cell: dict[str, Any] = {
        "seeds": sorted(p.seed for p in group),
        "curve": np.mean([p.bon.mean(axis=0) for p in group], axis=0).tolist(),
        "at_n": _mean_ci([float(p.bon[:, column].mean()) for p in group]),
        "gao_a": _mean_ci([a for a, _ in fits]), "gao_b": _mean_ci([b for _, b in fits]),
        "within_share": _mean_ci([s["within_share"] for s in spreads]),
        "rank_agreement": _mean_ci([rank_agreement(p.scores, gold) for p in group]),
    }  # fmt: skip
    evaluated = [p.evaluation for p in group if p.evaluation is not None]
    if evaluated:
        cell["accuracy"] = _mean_ci([e.accuracy for e in evaluated])
        bins = [e.distance_bins for e in evaluated if e.distance_bins]
        if bins:
            cell["accuracy_by_distance"] = np.nanmean([[b.acc for b in x] for x in bins], axis=0).tolist()
        if gaps is not None:
            by_gap = [gap_accuracy(e.correct, gaps, edges) for e in evaluated]
            by_gap = [x for x in by_gap if x]
            if by_gap:
                cell["accuracy_by_gap"] = np.nanmean(by_gap, axis=0).tolist()
    return cell


def _effects(
    groups: dict[tuple[str, str], list[Proxy]],
    arms: list[str],
    losses: list[str],
    baseline: str,
    gao: dict[str, tuple[float, float]],
    column: int,
    margin: float,
) -> dict[str, Any]:
    """Per arm and loss, the paired effect against the baseline (the decision), with Gao's fit's."""
    effects: dict[str, Any] = {}
    for arm in arms:
        for loss in losses:
            if loss == baseline or (arm, loss) not in groups or (arm, baseline) not in groups:
                continue
            effect = paired_effect(groups[(arm, loss)], groups[(arm, baseline)], column, margin)
            a_base = {p.seed: p for p in groups[(arm, baseline)]}
            fit_diff = [
                np.subtract(gao[p.name], gao[a_base[p.seed].name])
                for p in groups[(arm, loss)]
                if p.seed in a_base
            ]
            effect["gao_a_diff"] = _mean_ci([x[0] for x in fit_diff])
            effect["gao_b_diff"] = _mean_ci([x[1] for x in fit_diff])
            effects[f"{arm}/{loss}"] = effect
    return effects


def _interaction(
    groups: dict[tuple[str, str], list[Proxy]], arms: list[str], losses: list[str], baseline: str, column: int
) -> dict[str, Any] | None:
    """The 2x2's interaction: the loss effect in one arm minus the other's, paired by seed."""
    interaction = None
    for loss in losses:
        if loss == baseline or not all((arm, k) in groups for arm in arms for k in (loss, baseline)):
            continue
        seeds = sorted(
            set(_seeds(groups, arms[0], loss, baseline)) & set(_seeds(groups, arms[1], loss, baseline))
        )
        per = [_seed_diff(groups, arms[0], loss, baseline, column, s)
               - _seed_diff(groups, arms[1], loss, baseline, column, s) for s in seeds]  # fmt: skip
        if per:
            interaction = {"loss": loss, "arms": arms, **_mean_ci(per), "per_seed": per}
    return interaction


def _seeds(groups: dict, arm: str, loss: str, baseline: str) -> list[int]:
    return sorted({p.seed for p in groups[(arm, loss)]} & {p.seed for p in groups[(arm, baseline)]})


def _seed_diff(groups: dict, arm: str, loss: str, baseline: str, column: int, seed: int) -> float:
    pick = {p.seed: p for p in groups[(arm, loss)]}[seed]
    base = {p.seed: p for p in groups[(arm, baseline)]}[seed]
    return float(pick.bon[:, column].mean() - base.bon[:, column].mean())


def plot_bon(result: dict[str, Any], path: Path) -> None:
    """Left: the judge's reward of each cell's pick against N (sqrt KL axis), mean over seeds, with
    the oracle. Right: per-seed differences at N to the baseline, per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [3, 2]})
    d = np.sqrt(result["kl"])
    left.plot(d, result["oracle"], color="black", ls=":", label="oracle (the judge picks)")
    styles = {}
    for key, cell in result["cells"].items():
        arm, loss = key.split("/")
        styles.setdefault(arm, ["-", "--", "-.", ":"][len(styles) % 4])
        left.plot(
            d,
            cell["curve"],
            ls=styles[arm],
            marker="o",
            ms=3,
            label=f"{arm} {loss} ({len(cell['seeds'])} seeds)",
        )
    for x, n in zip(d, result["ns"], strict=True):
        left.annotate(f"N={n}", (x, left.get_ylim()[0]), fontsize=7, ha="center", va="bottom")
    left.set_xlabel("sqrt(KL(best-of-N || policy)), nats^0.5")
    left.set_ylabel("judge's reward of the proxy's pick")
    left.legend(fontsize=8)
    left.set_title("Best-of-N from the SFT policy")
    names = list(result["effects"])
    for i, key in enumerate(names):
        e = result["effects"][key]
        right.scatter(np.full(len(e["per_seed"]), i), e["per_seed"], alpha=0.6)
        low, high = e["boot_ci95"]
        right.errorbar(i + 0.15, e["mean"], yerr=[[e["mean"] - low], [high - e["mean"]]], fmt="s",
                       color="black", capsize=4)  # fmt: skip
    right.axhline(0, color="grey", lw=0.8)
    for m in (-result["margin"], result["margin"]):
        right.axhline(m, color="grey", lw=0.8, ls=":")
    right.set_xticks(range(len(names)), [f"{k} - {result['baseline']}" for k in names], fontsize=8)
    right.set_ylabel(f"difference at N={result['n']} (per seed; mean, 95% nested bootstrap)")
    right.set_title("Paired by seed")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _ci(x: dict[str, float], digits: int = 3) -> str:
    if not np.isfinite(x.get("low", np.nan)):
        return f"{x['mean']:.{digits}f}"
    return f"{x['mean']:.{digits}f} [{x['low']:.{digits}f}, {x['high']:.{digits}f}]"


def format_report(result: dict[str, Any]) -> str:
    n, base, margin = result["n"], result["baseline"], result["margin"]
    oracle = result["oracle"][result["ns"].index(n)]
    lines = [
        "# Best-of-N from the SFT policy, proxy reward models",
        "",
        f"{result['prompts']} held-out prompts x {result['samples']} samples; the judge's reward of the "
        f"proxy's pick among N, exact over all N-subsets. Oracle at N={n}: {oracle:.3f}.",
        "",
        f"Decision rule (pre-registered): at N={n}, loss minus {base} paired by seed; nested bootstrap over "
        f"seeds then prompts: helps if the 95% interval > 0, hurts if < 0, no difference if the 90% interval "
        f"lies within +-{margin}, else inconclusive.",
        "",
        f"| arm | loss | seeds | at N={n} [95% t over seeds] | held-out accuracy | Gao a | Gao b "
        "| within-prompt share of reward std | rank agreement with the judge |",
        "|---|---|---:|---|---|---|---|---|---|",
    ]
    for key, c in result["cells"].items():
        arm, loss = key.split("/")
        acc = _ci(c["accuracy"]) if "accuracy" in c else "-"
        lines.append(
            f"| {arm} | {loss} | {len(c['seeds'])} | {_ci(c['at_n'])} | {acc} | {_ci(c['gao_a'])} | "
            f"{_ci(c['gao_b'])} | {_ci(c['within_share'])} | {_ci(c['rank_agreement'])} |"
        )
    lines += ["", f"## Effects (loss - {base}, paired by seed, at N={n})", ""]
    lines += [
        "| arm | loss | seeds | mean | 95% nested bootstrap | 90% nested bootstrap | 95% t | p (t) "
        "| decision | Gao a diff | Gao b diff |",
        "|---|---|---:|---:|---|---|---|---:|---|---|---|",
    ]
    for key, e in result["effects"].items():
        arm, loss = key.split("/")
        b95, b90, t95 = e["boot_ci95"], e["boot_ci90"], e["t_ci95"]
        decision = e["decision"]
        if decision == "inconclusive":
            decision += f" ({what_it_would_take(e, margin)})"
        lines.append(
            f"| {arm} | {loss} | {e['seeds']} | {e['mean']:+.4f} | [{b95[0]:+.4f}, {b95[1]:+.4f}] | "
            f"[{b90[0]:+.4f}, {b90[1]:+.4f}] | [{t95[0]:+.4f}, {t95[1]:+.4f}] | {e['t_p']:.3g} | "
            f"{decision} | {_ci(e['gao_a_diff'])} | {_ci(e['gao_b_diff'])} |"
        )
    if "interaction" in result:
        x = result["interaction"]
        lines += ["", f"2x2 interaction ({x['loss']} - {base} on {x['arms'][0]} minus on {x['arms'][1]}, "
                  f"paired by seed): {_ci(x, 4)}"]  # fmt: skip
    lines += ["", "## Mechanism: held-out on-policy accuracy", ""]
    for key, c in result["cells"].items():
        if "accuracy_by_distance" in c:
            lines.append(f"- {key}: by the RM's representation-distance quintile (closest first) "
                         + ", ".join(f"{a:.3f}" for a in c["accuracy_by_distance"]))  # fmt: skip
        if "accuracy_by_gap" in c:
            lines.append(f"- {key}: by the judge's reward gap tercile (smallest first) "
                         + ", ".join(f"{a:.3f}" for a in c["accuracy_by_gap"]))  # fmt: skip
    lines += ["", "![best_of_n.png](best_of_n.png)", ""]
    return "\n".join(lines)


__all__ = ["Proxy", "bon_study", "gao_fit", "paired_effect", "within_prompt_spread"]
