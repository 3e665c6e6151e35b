"""``normbt compare``: reward-model runs (losses x seeds) into one Markdown report with PNG plots.

Each run folder is what ``recipes/rm.sh`` writes: ``metrics/meta.json`` (loss, seed),
``metrics/train_rank0.jsonl``, ``tensorboard/`` and the ``normbt eval-rm --out`` result
(``eval.json`` by default). All runs must be evaluated on the same pairs: the comparison is
paired, pair by pair and seed by seed.

Statistics: 95% bootstrap intervals (scipy.stats.bootstrap, pairs resampled jointly across the
runs of a loss, seeds averaged); the difference to the baseline loss with a paired bootstrap
interval and a paired permutation test over pairs (scipy.stats.permutation_test); with two or more
seeds per loss, a paired t-test across seeds (scipy.stats.ttest_rel).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from normbt_plugin.common.intervals import bootstrap_ci, ci_text, interval, paired_difference
from normbt_plugin.options import CompareOptions
from normbt_plugin.rm_evaluation.pairs import EvalInputError
from normbt_plugin.runs import rm as rm_run
from normbt_plugin.runs.rm_eval import EVAL, RmEval
from normbt_plugin.stats import quantile_bins


@dataclass
class Section:
    """A report section another stage contributes (the downstream policies): Markdown lines, named
    figures, and its entry in ``summary.json``."""

    lines: list[str]
    figures: list[tuple[str, Any]]
    summary: dict[str, Any]


@dataclass
class Run:
    path: Path
    label: str  # the variant's name: --plugin.label, else the loss
    seed: int
    eval: RmEval
    train: list[dict]

    @property
    def correct(self) -> np.ndarray:
        return self.eval.correct


def load_runs(paths: list[str], eval_name: str = EVAL) -> list[Run]:
    runs = []
    for p in paths:
        folder = Path(p)
        metrics, eval_path = folder / "metrics", folder / eval_name
        if not (metrics / rm_run.META).exists():
            raise EvalInputError(f"{folder}: no metrics/{rm_run.META} (train with --plugin.metrics_dir)")
        meta = rm_run.RunMeta.read(metrics)  # its name: the variant's (--plugin.label), else the loss
        runs.append(
            Run(
                folder,
                meta.name,
                int(meta.seed),
                RmEval.read(eval_path),
                rm_run.read_steps(metrics),
            )
        )
    sizes = {len(r.correct) for r in runs}
    if len(sizes) != 1:
        raise EvalInputError(f"runs were evaluated on different pair sets (sizes {sorted(sizes)})")
    return runs


def _group(runs: list[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in sorted(runs, key=lambda r: (r.label, r.seed)):
        groups[r.label].append(r)
    return dict(groups)


def _subset_masks(run: Run, pools: dict[str, list[str]] | None = None) -> dict[str, np.ndarray]:
    """A mask per subset, then one per pool (a union of subsets, e.g. every fine-pair bug kind)."""
    subsets = run.eval.per_pair.subset
    if not subsets:
        if pools:
            raise EvalInputError("--pool needs subsets: run eval-rm with --subset_key")
        return {}
    arr = np.asarray(subsets)
    masks = {s: arr == s for s in sorted(set(subsets))}
    for name, members in (pools or {}).items():
        if not set(members) & set(subsets):
            raise EvalInputError(f"--pool {name}: none of {members} is a subset here ({sorted(masks)})")
        masks[name] = np.isin(arr, members)
    return masks


def parse_pools(entries: list[str] | None) -> dict[str, list[str]]:
    """``NAME=A,B,...`` entries (``--pool``) as {NAME: [A, B, ...]}."""
    pools = {}
    for entry in entries or []:
        name, sep, members = entry.partition("=")
        if not sep or not name or not members:
            raise EvalInputError(f"--pool takes NAME=SUBSET,SUBSET,..., got {entry!r}")
        pools[name] = members.split(",")
    return pools


def build_report(o: CompareOptions, downstream: Callable[[str], Section] | None = None) -> Path:
    """``normbt compare``: the Markdown report (``report.md``), its plots and ``summary.json`` of RM
    runs (and, given ``downstream``, the section on the policies PPO made from them, called with the
    baseline): one section function each."""
    pools = parse_pools(o.pool)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = load_runs(o.runs, o.eval_name or EVAL)
    groups = _group(runs)
    out = Path(o.out)
    out.mkdir(parents=True, exist_ok=True)
    base = o.baseline if o.baseline in groups else next(iter(groups))
    summary: dict[str, Any] = {loss: {} for loss in groups}
    lines = [
        "# Reward-model comparison",
        "",
        f"Runs: {len(runs)} ({', '.join(f'{k} x{len(v)} seeds' for k, v in groups.items())}); "
        f"eval pairs: {len(runs[0].correct)} ({runs[0].eval.data or '?'}). Baseline: `{base}`.",
        "Intervals: 95% bootstrap over pairs (seeds averaged); p: paired permutation test over pairs;",
        "t-test: paired across seeds (needs two or more seeds per loss).",
    ]
    lines += _accuracy_section(groups, base, summary)
    figures: list[tuple[str, Any]] = []
    masks = _subset_masks(runs[0], pools)  # the same pairs in every run (load_runs checks)
    for section_lines, section_figures in (
        _subset_section(groups, base, summary, plt, masks),
        (_rewardbench_section(groups), []),
        _distance_section(runs, groups, base, summary, plt),
        (_subset_distance_section(groups, summary, masks), []),
        ([], [("training_curves.png", _training_figure(groups, plt))]),
    ):
        lines += section_lines
        figures += section_figures
    if downstream:
        section = downstream(base)
        lines += section.lines
        figures += section.figures
        summary["downstream"] = section.summary
    else:
        lines += [
            "",
            "## Downstream policies",
            "",
            "No `--policy_eval` given: policy quality is not compared here.",
        ]
    lines += ["", "## Plots", ""]
    for name, figure in figures:
        figure.savefig(out / name, dpi=110)
        plt.close(figure)
        lines.append(f"![{name}]({name})")
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return report


def _accuracy_section(groups: dict[str, list[Run]], base: str, summary: dict[str, Any]) -> list[str]:
    """Accuracy per loss with its interval, and against the baseline (pairs and seeds)."""
    lines = [
        "",
        "## Accuracy",
        "",
        "| loss | seeds | accuracy | 95% CI | vs baseline | 95% CI | p (pairs) | p (seeds, t-test) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for loss, rs in groups.items():
        correct = [r.correct for r in rs]
        acc = float(np.mean([c.mean() for c in correct]))
        low, high = bootstrap_ci(correct)
        row = {"accuracy": acc, "low": low, "high": high, "seeds": [r.seed for r in rs]}
        cells = ["", "", "", ""]
        if loss != base:
            d = paired_difference(correct, [r.correct for r in groups[base]])
            row["vs_baseline"] = d
            cells[:3] = [
                f"{d['diff']:+.4f}",
                f"[{d['low']:+.4f}, {d['high']:+.4f}]",
                f"{d['p_permutation']:.3g}",
            ]
            seeds = sorted({r.seed for r in rs} & {r.seed for r in groups[base]})
            if len(seeds) >= 2:
                a = [next(r.correct.mean() for r in rs if r.seed == s) for s in seeds]
                b = [next(r.correct.mean() for r in groups[base] if r.seed == s) for s in seeds]
                t = stats.ttest_rel(a, b)
                row["t_test"] = {"statistic": float(t.statistic), "p": float(t.pvalue), "seeds": seeds}
                cells[3] = f"{t.pvalue:.3g} (n={len(seeds)})"
            else:
                cells[3] = "n/a (1 seed)"
        summary[loss].update(row)
        lines.append(
            f"| {loss} | {len(rs)} | {acc:.4f} | [{low:.4f}, {high:.4f}] | " + " | ".join(cells) + " |"
        )

    return lines


def _subset_section(
    groups: dict[str, list[Run]], base: str, summary: dict[str, Any], plt: Any, masks: dict[str, np.ndarray]
) -> tuple[list[str], list[tuple[str, Any]]]:
    """Accuracy per subset (RewardBench sections come from per-subset accuracies), a bar chart."""
    losses = list(groups)
    lines: list[str] = []
    figures = []
    if masks:
        lines += [
            "",
            "## Accuracy per subset",
            "",
            "| subset | n | " + " | ".join(losses) + " |",
            "|---|---|" + "---|" * len(losses),
        ]
        versus = _versus_table("subset", masks, groups, base, summary, "per_subset")
        fig, ax = plt.subplots(figsize=(min(14, 3 + 0.5 * len(masks) * len(losses)), 4))
        width = 0.8 / len(losses)
        for k, loss in enumerate(losses):
            cells = [summary[loss]["per_subset"][s] for s in masks]
            means = [c["accuracy"] for c in cells]
            errs = [[c["accuracy"] - c["low"] for c in cells], [c["high"] - c["accuracy"] for c in cells]]
            ax.bar(np.arange(len(masks)) + k * width, means, width, yerr=errs, label=loss, capsize=3)
        for s, m in masks.items():
            cells = [f"{summary[loss]['per_subset'][s]['accuracy']:.4f}" for loss in losses]
            lines.append(f"| {s} | {int(m.sum())} | " + " | ".join(cells) + " |")
        lines += versus
        ax.set_xticks(np.arange(len(masks)) + 0.4 - width / 2, list(masks), rotation=30, ha="right")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.05)
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: bars reach 1.0
        ax.set_title("Accuracy per subset (95% bootstrap CI)")
        fig.tight_layout()
        figures.append(("accuracy_per_subset.png", fig))
    return lines, figures


def _subset_distance_section(
    groups: dict[str, list[Run]], summary: dict[str, Any], masks: dict[str, np.ndarray]
) -> list[str]:
    """Median representation distance per subset: where a loss puts fine pairs against coarse ones.
    Each model's distances are in its own scale, so each cell also gives the subset's median over
    the model's median over all pairs."""
    if not masks:
        return []
    lines = [
        "",
        "## Representation distance per subset (median over pairs, mean over seeds)",
        "",
        "Each model's own final-layer ||h_c - h_r||; in brackets, over that model's median over all pairs.",
        "",
        "| subset | n | " + " | ".join(groups) + " |",
        "|---|---|" + "---|" * len(groups),
    ]
    cells: dict[str, list[str]] = {s: [] for s in masks}
    for loss, rs in groups.items():
        distances = [np.asarray(r.eval.per_pair.distance) for r in rs]
        overall = [float(np.median(d)) for d in distances]
        summary[loss]["median_distance"] = {"all": {"mean": float(np.mean(overall)), "per_seed": overall}}
        for s, m in masks.items():
            per_seed = [float(np.median(d[m])) for d in distances]
            relative = float(np.mean([v / o for v, o in zip(per_seed, overall, strict=True)]))
            summary[loss]["median_distance"][s] = {
                "mean": float(np.mean(per_seed)), "per_seed": per_seed, "relative": relative,
            }  # fmt: skip
            cells[s].append(f"{np.mean(per_seed):.3g} (x{relative:.2f})")
    lines += [f"| {s} | {int(m.sum())} | " + " | ".join(cells[s]) + " |" for s, m in masks.items()]
    return lines


def _rewardbench_section(groups: dict[str, list[Run]]) -> list[str]:
    """RewardBench's sections and RewardBench 2's subsets, mean over seeds, where every run has them."""
    lines: list[str] = []
    for key, title, parts, total in (
        ("rewardbench", "RewardBench sections", "sections", "overall"),
        ("rewardbench2", "RewardBench 2", "subsets", "score"),
    ):
        scores = {loss: [getattr(r.eval, key) for r in rs] for loss, rs in groups.items()}
        if not all(all(s is not None for s in v) for v in scores.values()):
            continue
        names = list(next(iter(scores.values()))[0][parts])
        lines += [
            "",
            f"## {title} (mean over seeds; ties as the benchmark counts them)",
            "",
            "| loss | " + " | ".join(names) + f" | {total} |",
            "|---|" + "---|" * (len(names) + 1),
        ]
        for loss, runs in scores.items():
            vals = [np.mean([s[parts][n] for s in runs]) for n in names]
            mean = np.mean([s[total] for s in runs])
            lines.append(f"| {loss} | " + " | ".join(f"{v:.4f}" for v in vals) + f" | {mean:.4f} |")
    return lines


def _distance_section(
    runs: list[Run], groups: dict[str, list[Run]], base: str, summary: dict[str, Any], plt: Any
) -> tuple[list[str], list[tuple[str, Any]]]:
    """Accuracy by distance bin: each model's own bins, then the baseline's bins (paired)."""
    lines: list[str] = []
    # distance bins: each model's own quantile bins of its representation distances
    fig, ax = plt.subplots(figsize=(6, 4))
    lines += [
        "",
        "## Accuracy by representation-distance quantile bin (closest first)",
        "",
        "Bins are each model's own distance quantiles (as in the paper).",
        "",
        "| loss | " + " | ".join(f"bin {i}" for i in range(len(runs[0].eval.distance_bins))) + " |",
        "|---|" + "---|" * len(runs[0].eval.distance_bins),
    ]
    for loss, rs in groups.items():
        per_bin = np.array([[b.acc for b in r.eval.distance_bins] for r in rs])
        mean = per_bin.mean(axis=0)
        spread = per_bin.std(axis=0) if len(rs) > 1 else np.zeros_like(mean)
        ax.errorbar(np.arange(len(mean)), mean, yerr=spread, marker="o", capsize=3, label=loss)
        lines.append(f"| {loss} | " + " | ".join(f"{v:.4f}" for v in mean) + " |")
        summary[loss]["distance_bins"] = mean.tolist()
    # the same pairs for every loss, so differences can be paired: bins of the baseline's distance
    n_bins = len(runs[0].eval.distance_bins)
    base_distance = np.mean([r.eval.per_pair.distance for r in groups[base]], axis=0)
    _, bin_of = quantile_bins(base_distance, n_bins)
    common = {f"bin {i}": bin_of == i for i in range(n_bins)}
    lines += [
        "",
        f"The same pairs binned by the baseline's (`{base}`) distance, mean over its seeds, so every"
        " loss is scored on the same pairs per bin:",
    ]
    lines += _versus_table("baseline bin", common, groups, base, summary, "baseline_distance_bins")
    ax.set_xticks(range(n_bins))
    ax.set_xlabel("distance quantile bin (0 = closest pairs)")
    ax.set_ylabel("accuracy (error bars: std over seeds)")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_ylim(0, 1.05)
    ax.legend()
    ax.set_title("Accuracy by representation distance")
    fig.tight_layout()
    return lines, [("accuracy_by_distance.png", fig)]


def _training_figure(groups: dict[str, list[Run]], plt: Any) -> Any:
    """Training curves from the TensorBoard logs (JSON lines when there are none)."""
    losses = list(groups)
    keys = [("loss", "loss as optimised (log)"), ("acc", "accuracy"), ("normbt_mu", "NormBT mu")]
    weights = ("mean", "min", "max")
    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(4 * (len(keys) + 1), 3.5))
    for loss, rs in groups.items():
        color = f"C{losses.index(loss)}"
        for i, r in enumerate(rs):
            label = loss if i == 0 else None
            curves = training_curves(r, [k for k, _ in keys] + [f"normbt_weight_{k}" for k in weights])
            for ax, (key, _) in zip(axes, keys, strict=False):
                steps, values = curves[key]
                if steps:
                    ax.plot(steps, values, color=color, alpha=0.8, label=label)
            # the weight distribution per step: mean line, min-max band (per seed)
            steps, mean = curves["normbt_weight_mean"]
            if steps:
                low, high = curves["normbt_weight_min"][1], curves["normbt_weight_max"][1]
                axes[-1].plot(steps, mean, color=color, alpha=0.8, label=label)
                if len(low) == len(high) == len(steps):
                    axes[-1].fill_between(steps, low, high, color=color, alpha=0.08, lw=0)
    for ax, (key, title) in zip(axes, [*keys, ("", "NormBT weights: mean, min-max band (log)")], strict=True):
        ax.set_title(title)
        ax.set_xlabel("step")
        if key in ("loss", ""):
            ax.set_yscale("log")  # NormBT's loss is weighted: its scale moves with mu
    if axes[0].get_legend_handles_labels()[0]:  # runs without training logs draw nothing
        axes[0].legend()
    fig.tight_layout()
    return fig


def _versus_table(
    name: str,
    masks: dict[str, np.ndarray],
    groups: dict[str, list[Run]],
    base: str,
    summary: dict[str, Any],
    key: str,
) -> list[str]:
    """Per group of pairs: each loss's accuracy [95% CI] and its paired difference to the baseline
    [95% CI] with the permutation p over those pairs (also into ``summary[loss][key][group]``:
    accuracy, low, high, vs_baseline)."""
    lines = [
        "",
        f"| loss | {name}: " + " | ".join(f"{s} (n={int(m.sum())})" for s, m in masks.items()) + " |",
        "|---|" + "---|" * len(masks),
    ]
    for loss, rs in groups.items():
        cells = []
        for s, m in masks.items():
            acc = interval([r.correct[m] for r in rs])
            entry: dict[str, Any] = {"accuracy": acc["mean"], "low": acc["low"], "high": acc["high"],
                                     "per_seed": [float(r.correct[m].mean()) for r in rs]}  # fmt: skip
            text = ci_text(acc, 3)
            if loss != base:
                d = paired_difference([r.correct[m] for r in rs], [r.correct[m] for r in groups[base]])
                entry["vs_baseline"] = d
                text += f"; {d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] p={d['p_permutation']:.2g}"
            summary[loss].setdefault(key, {})[s] = entry
            cells.append(text)
        lines.append(f"| {loss} | " + " | ".join(cells) + " |")
    return lines + ["", f"Cells: accuracy [95% CI]; for other losses, minus `{base}` [95% CI], paired p."]


def training_curves(run: Run, keys: list[str]) -> dict[str, tuple[list[int], list[float]]]:
    """``train/<key>`` per key from the run's TensorBoard events (each file read once), else from
    its metrics JSON lines; empty where neither has it."""
    curves: dict[str, tuple[list[int], list[float]]] = {}
    tb = run.path / "tensorboard"
    if tb.exists():
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        for events in sorted(p.parent for p in tb.rglob("events.out.tfevents.*")):
            acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
            acc.Reload()
            tags = acc.Tags()["scalars"]
            for key in keys:
                if key not in curves and f"train/{key}" in tags:
                    scalars = acc.Scalars(f"train/{key}")
                    curves[key] = ([s.step for s in scalars], [s.value for s in scalars])
    for key in keys:
        if key not in curves:
            points = [(r["step"], r[key]) for r in run.train if key in r]
            curves[key] = ([p[0] for p in points], [p[1] for p in points])
    return curves
