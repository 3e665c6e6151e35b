"""The downstream part of ``normbt compare``: the policies PPO made from each reward model, as
``normbt eval-policy`` judged them (``--policy_eval``), per loss label with seeds paired: gold
reward, win rate and KL with intervals, the difference to the baseline's policies (compared only at
comparable KL), head-to-head win rates and best-of-N. ``rm_evaluation.report`` holds the
reward-model report; ``normbt compare`` puts this section in it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import numpy as np
from scipy import stats

from normbt_plugin.common.intervals import ci_text, interval, paired_difference
from normbt_plugin.rm_evaluation.report import Section
from normbt_plugin.runs.policy_eval import PolicyEval, PolicyResult


def _label(name: str) -> tuple[str, int | None]:
    """``bt-seed3`` -> ('bt', 3); a name without a seed is its own group."""
    match = re.fullmatch(r"(.+)-seed(\d+)", name)
    return (match.group(1), int(match.group(2))) if match else (name, None)


def _matched(a: dict[int | None, Any], b: dict[int | None, Any]) -> list[tuple[Any, Any]]:
    """Seed-matched pairs of two groups; every pair when they share no seed."""
    common = sorted(set(a) & set(b), key=str)
    return [(a[s], b[s]) for s in common] if common else [(x, y) for x in a.values() for y in b.values()]


KL_RATIO = 2.0  # policies whose KLs to the reference differ more than this are not compared at a point


def kl_note(kl_a: float, kl_b: float) -> str:
    """'' when two policies sit at comparable KL, else why their rewards cannot be compared."""
    low, high = sorted((abs(kl_a), abs(kl_b)))
    if high > KL_RATIO * max(low, 1e-12):
        return f"not comparable: KL {kl_a:.2f} vs {kl_b:.2f} (> {KL_RATIO:g}x)"
    return ""


def _kl(summary: dict[str, Any], label: str) -> float:
    return summary["policies"][label]["kl"]["mean"]


def downstream_section(path: str, baseline: str, note: str | None = None) -> Section:
    """The ``normbt eval-policy`` result as report lines, figures and a summary: per loss label
    (seeds averaged) gold reward, win rate against the reference policy and KL with bootstrap 95%
    intervals over prompts, the difference to the baseline label's policies (paired bootstrap,
    permutation test over prompts, t-test across seeds), head-to-head win rates, best-of-N."""
    result = PolicyEval.read(path)
    ref = result.reference
    groups: dict[str, dict[int | None, PolicyResult]] = defaultdict(dict)
    for name, policy in result.policies.items():
        label, seed = _label(name)
        groups[label][seed] = policy
    labels = [ref] + sorted(g for g in groups if g != _label(ref)[0])
    groups[ref] = groups.pop(_label(ref)[0])
    base = baseline if baseline in groups else None
    summary: dict[str, Any] = {"reference": ref, "policies": {}}
    lines = _policies_intro(result, ref, base, note)
    lines += _policy_rows(result, groups, labels, ref, base, summary)
    lines += _head_to_head(result, groups, labels, ref, summary)
    figures = [("downstream_policies.png", _policies_figure(labels, summary, ref))]
    if result.best_of_n:
        bon_lines, bon_figure = _best_of_n_table(result, ref, summary)
        lines += bon_lines
        figures.append(("best_of_n.png", bon_figure))
    return Section(lines, figures, summary)


def _per_prompt(policy: PolicyResult, key: str) -> np.ndarray:
    return np.asarray(getattr(policy.per_prompt, key), dtype=np.float64)


def _policies_intro(result: PolicyEval, ref: str, base: str | None, note: str | None) -> list[str]:
    """The section's heading, what was sampled and judged, and the policy table's header."""
    has_true = result.has_true
    lines = [
        "",
        "## Downstream policies",
        "",
        *([f"**{note}**", ""] if note else []),
        "Each policy is compared at one point, the end of its PPO run, and at its own KL to the "
        f"reference: rewards of policies whose KLs differ by more than {KL_RATIO:g}x are marked not "
        "comparable (a policy that moved further can gain or lose for that reason alone; "
        "`normbt curves` compares along the KL curve, at matched KL).",
        "",
        f"`normbt eval-policy`: {result.prompts} held-out prompts x {result.samples} samples per "
        f"policy (temperature {result.temperature}, up to {result.max_new} new tokens), gold RM "
        f"`{result.gold}`, reference policy `{ref}`. Win rate: 1 / 0 / 0.5 for a higher / lower / tied "
        "gold reward on the same prompt and sample index (tie: identical text or within "
        f"{result.tie_tol}). KL: mean of log pi - log pi_ref over the policy's own samples.",
        "Intervals: 95% bootstrap over prompts (seeds averaged); p: paired permutation test over "
        "prompts; t-test: paired across seeds.",
        "",
        f"| policy | seeds | gold reward |{' true reward |' if has_true else ''} win rate vs {ref} | "
        f"KL to {ref} | length | gold vs {base or '-'} (KLs) | p (prompts) | p (seeds, t-test) |",
        "|---|---|---|" + ("---|" if has_true else "") + "---|---|---|---|---|---|",
    ]
    return lines


def _policy_rows(
    result: PolicyEval,
    groups: dict[str, dict[int | None, PolicyResult]],
    labels: list[str],
    ref: str,
    base: str | None,
    summary: dict[str, Any],
) -> list[str]:
    """One row per label: gold (and true) reward, win rate vs the reference, KL, length, and the
    paired difference to the baseline's policies; each row's numbers into ``summary``."""
    has_true, lines = result.has_true, []
    for label in labels:
        members = groups[label]
        gold = [_per_prompt(p, "gold") for p in members.values()]
        row: dict[str, Any] = {
            "seeds": sorted((s for s in members if s is not None), key=int),
            "gold": interval(gold),
            "kl": interval([_per_prompt(p, "kl") for p in members.values()]),
            "length": float(np.mean([p.length for p in members.values()])),
        }
        cells = [ci_text(row["gold"]), "", ci_text(row["kl"], 3), f"{row['length']:.1f}", "", "", ""]
        if has_true:
            row["true"] = interval([_per_prompt(p, "true") for p in members.values()])
            cells.insert(1, ci_text(row["true"]))
        win_cell, diff_cell = (2, 5) if has_true else (1, 4)
        if label != ref:
            wins = [np.asarray(p.wins[ref].per_prompt) for p in members.values()]
            row["win_vs_reference"] = interval(wins)
            cells[win_cell] = ci_text(row["win_vs_reference"], 3)
        if base and label not in (base, ref):
            pairs = _matched(members, groups[base])
            d = paired_difference(
                [_per_prompt(a, "gold") for a, _ in pairs], [_per_prompt(b, "gold") for _, b in pairs]
            )
            row["gold_vs_baseline"] = d
            kl_self = float(np.mean([p.kl for p in members.values()]))
            kl_base = float(np.mean([p.kl for p in groups[base].values()]))
            row["comparable"] = not kl_note(kl_self, kl_base)
            cells[diff_cell] = (
                f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}] (KL {kl_self:.2f} vs {kl_base:.2f})"
                + (f"; **{kl_note(kl_self, kl_base)}**" if kl_note(kl_self, kl_base) else "")
            )
            cells[diff_cell + 1] = f"{d['p_permutation']:.3g}"
            seeds = sorted(set(members) & set(groups[base]) - {None})
            if len(seeds) >= 2:
                t = stats.ttest_rel(
                    [members[s].gold_mean for s in seeds], [groups[base][s].gold_mean for s in seeds]
                )
                row["t_test"] = {"statistic": float(t.statistic), "p": float(t.pvalue), "seeds": seeds}
                cells[diff_cell + 2] = f"{t.pvalue:.3g} (n={len(seeds)})"
            else:
                cells[diff_cell + 2] = "n/a (1 seed)"
        summary["policies"][label] = row
        lines.append(f"| {label} | {len(members)} | " + " | ".join(cells) + " |")

    return lines


def _head_to_head(
    result: PolicyEval,
    groups: dict[str, dict[int | None, PolicyResult]],
    labels: list[str],
    ref: str,
    summary: dict[str, Any],
) -> list[str]:
    """Win rates of each trained label's policies against each other's (seeds paired)."""
    lines: list[str] = []
    trained = [g for g in labels if g != ref]
    if len(trained) >= 2:
        lines += [
            "",
            "Head to head: win rate of the row's policies against the column's (same seeds paired), 95% CI; "
            "the KL of each beside its name.",
            "",
            "| | " + " | ".join(f"{t} (KL {_kl(summary, t):.2f})" for t in trained) + " |",
            "|---|" + "---|" * len(trained),
        ]
        for a in trained:
            cells = []
            for b in trained:
                if a == b:
                    cells.append("-")
                    continue
                pairs = _matched(groups[a], groups[b])
                names = {id(p): n for n, p in result.policies.items()}
                wins = [np.asarray(x.wins[names[id(y)]].per_prompt) for x, y in pairs]
                ci = interval(wins)
                summary["policies"][a].setdefault("head_to_head", {})[b] = ci
                apart = kl_note(_kl(summary, a), _kl(summary, b))
                cells.append(ci_text(ci, 3) + (" (not comparable: KL > 2x apart)" if apart else ""))
            lines.append(f"| {a} (KL {_kl(summary, a):.2f}) | " + " | ".join(cells) + " |")

    return lines


def _policies_figure(labels: list[str], summary: dict[str, Any], ref: str) -> Any:
    """Gold reward and win rate vs the reference per label, with their intervals."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in (
        (axes[0], "gold", "gold reward"),
        (axes[1], "win_vs_reference", f"win rate vs {ref}"),
    ):
        shown = [g for g in labels if key in summary["policies"][g]]
        values = [summary["policies"][g][key] for g in shown]
        for i, (g, v) in enumerate(zip(shown, values, strict=True)):  # points: rewards can be negative
            err = [[v["mean"] - v["low"]], [v["high"] - v["mean"]]]
            ax.errorbar([i], [v["mean"]], yerr=err, fmt="o", color=f"C{labels.index(g)}", capsize=5, ms=8)
        ax.set_xticks(range(len(shown)), shown, rotation=20, ha="right")
        ax.set_xlim(-0.5, len(shown) - 0.5)
        ax.set_title(f"{title} (95% bootstrap CI)")
        if key == "win_vs_reference":
            ax.axhline(0.5, color="grey", lw=0.8, ls="--")
            ax.set_ylim(0, 1)
    fig.tight_layout()
    return fig


def _best_of_n_table(result: PolicyEval, ref: str, summary: dict[str, Any]) -> tuple[list[str], Any]:
    """Best-of-N from the reference: each proxy's expected gold reward at every N, table and plot."""
    import matplotlib.pyplot as plt

    bon = result.best_of_n
    ns = bon.n
    lines = [
        "",
        f"Best-of-N from `{ref}` ({bon.prompts} prompts x {bon.samples} samples): expected gold "
        "reward of the response each proxy RM ranks first among N (exact over all N-subsets), "
        "proxies of a loss averaged over seeds, 95% bootstrap CI over prompts.",
        "",
        "| proxy | " + " | ".join(f"N={n}" for n in ns) + " |",
        "|---|" + "---|" * len(ns),
        "| KL bound (nats) | " + " | ".join(f"{k:.2f}" for k in bon.kl) + " |",
    ]
    bon_groups: dict[str, list[np.ndarray]] = defaultdict(list)
    for name, curve in bon.curves.items():
        bon_groups[_label(name)[0]].append(np.asarray(curve.per_prompt, dtype=np.float64))
    fig, ax = plt.subplots(figsize=(6, 4))
    summary["best_of_n"] = {"n": ns, "kl": bon.kl, "curves": {}}
    for k, (label, curves) in enumerate(bon_groups.items()):
        points = [interval([c[:, j] for c in curves]) for j in range(len(ns))]
        summary["best_of_n"]["curves"][label] = points
        lines.append(f"| {label} | " + " | ".join(f"{p['mean']:.4f}" for p in points) + " |")
        style = {"color": "black", "ls": "--"} if label.startswith("oracle") else {"color": f"C{k}"}
        ax.plot(ns, [p["mean"] for p in points], marker="o", label=label, **style)
        ax.fill_between(ns, [p["low"] for p in points], [p["high"] for p in points], alpha=0.2, **style)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (KL bound log N - (N-1)/N)")
    ax.set_ylabel("gold reward of the proxy's best of N")
    ax.set_title("Best-of-N")
    ax.legend()
    fig.tight_layout()
    return lines, fig
