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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from normbt_plugin.evaluation import EvalInputError


@dataclass
class Run:
    path: Path
    loss: str
    seed: int
    eval: dict[str, Any]
    train: list[dict]

    @property
    def correct(self) -> np.ndarray:
        return np.asarray(self.eval["per_pair"]["correct"], dtype=np.float64)


def load_runs(paths: list[str], eval_name: str = "eval.json") -> list[Run]:
    runs = []
    for p in paths:
        folder = Path(p)
        meta_path, eval_path = folder / "metrics" / "meta.json", folder / eval_name
        if not meta_path.exists():
            raise EvalInputError(f"{folder}: no metrics/meta.json (train with --plugin.metrics_dir)")
        if not eval_path.exists():
            raise EvalInputError(f"{folder}: no {eval_name} (run normbt eval-rm --out {eval_path})")
        meta = json.loads(meta_path.read_text())
        train_path = folder / "metrics" / "train_rank0.jsonl"
        train = [json.loads(x) for x in train_path.read_text().splitlines()] if train_path.exists() else []
        label = meta.get("label") or meta["loss"]  # a variant's name (--plugin.label), else the loss
        runs.append(Run(folder, label, int(meta["seed"]), json.loads(eval_path.read_text()), train))
    sizes = {len(r.correct) for r in runs}
    if len(sizes) != 1:
        raise EvalInputError(f"runs were evaluated on different pair sets (sizes {sorted(sizes)})")
    return runs


def bootstrap_ci(samples: list[np.ndarray], seed: int = 0, n_resamples: int = 2000) -> tuple[float, float]:
    """95% interval of the mean over ``samples`` (one per-pair array per seed, same pairs),
    resampling pairs jointly."""

    def statistic(*xs, axis=-1):
        return np.mean([x.mean(axis=axis) for x in xs], axis=0)

    res = stats.bootstrap(
        tuple(samples),
        statistic,
        paired=True,
        vectorized=True,
        n_resamples=n_resamples,
        confidence_level=0.95,
        method="percentile",
        random_state=seed,
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_difference(a: list[np.ndarray], b: list[np.ndarray], seed: int = 0) -> dict[str, float]:
    """Mean of a minus b (per-pair means over seeds), its bootstrap interval and a paired
    permutation test p-value over pairs."""
    x, y = np.mean(a, axis=0), np.mean(b, axis=0)
    diff = x - y
    low, high = bootstrap_ci([diff], seed=seed)
    test = stats.permutation_test(
        (x, y),
        lambda u, v, axis=-1: np.mean(u, axis=axis) - np.mean(v, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=2000,
        random_state=seed,
    )
    return {"diff": float(diff.mean()), "low": low, "high": high, "p_permutation": float(test.pvalue)}


def _group(runs: list[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in sorted(runs, key=lambda r: (r.loss, r.seed)):
        groups[r.loss].append(r)
    return dict(groups)


def _subset_masks(run: Run) -> dict[str, np.ndarray]:
    subsets = run.eval["per_pair"].get("subset") or []
    if not subsets:
        return {}
    arr = np.asarray(subsets)
    return {s: arr == s for s in sorted(set(subsets))}


def build_report(paths: list[str], out_dir: str, baseline: str = "bt", eval_name: str = "eval.json") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = load_runs(paths, eval_name)
    groups = _group(runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    losses = list(groups)
    base = baseline if baseline in groups else losses[0]
    lines = [
        "# Reward-model comparison",
        "",
        f"Runs: {len(runs)} ({', '.join(f'{k} x{len(v)} seeds' for k, v in groups.items())}); "
        f"eval pairs: {len(runs[0].correct)} ({runs[0].eval.get('data', '?')}). Baseline: `{base}`.",
        "Intervals: 95% bootstrap over pairs (seeds averaged); p: paired permutation test over pairs;",
        "t-test: paired across seeds (needs two or more seeds per loss).",
        "",
        "## Accuracy",
        "",
        "| loss | seeds | accuracy | 95% CI | vs baseline | 95% CI | p (pairs) | p (seeds, t-test) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    summary: dict[str, Any] = {}
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
        summary[loss] = row
        lines.append(
            f"| {loss} | {len(rs)} | {acc:.4f} | [{low:.4f}, {high:.4f}] | " + " | ".join(cells) + " |"
        )

    # per subset (RewardBench sections come from per-subset accuracies)
    masks = _subset_masks(runs[0])
    figures = []
    if masks:
        lines += [
            "",
            "## Accuracy per subset",
            "",
            "| subset | n | " + " | ".join(losses) + " |",
            "|---|---|" + "---|" * len(losses),
        ]
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(masks) * len(losses)), 4))
        width = 0.8 / len(losses)
        for k, loss in enumerate(losses):
            means, errs = [], [[], []]
            for s, m in masks.items():
                samples = [r.correct[m] for r in groups[loss]]
                mean = float(np.mean([x.mean() for x in samples]))
                lo, hi = bootstrap_ci(samples) if m.sum() > 1 else (mean, mean)
                means.append(mean)
                errs[0].append(mean - lo)
                errs[1].append(hi - mean)
                summary[loss].setdefault("per_subset", {})[s] = {"accuracy": mean, "low": lo, "high": hi}
            ax.bar(np.arange(len(masks)) + k * width, means, width, yerr=errs, label=loss, capsize=3)
        for s, m in masks.items():
            cells = [f"{summary[loss]['per_subset'][s]['accuracy']:.4f}" for loss in losses]
            lines.append(f"| {s} | {int(m.sum())} | " + " | ".join(cells) + " |")
        ax.set_xticks(np.arange(len(masks)) + 0.4 - width / 2, list(masks), rotation=30, ha="right")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.05)
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.legend()
        ax.set_title("Accuracy per subset (95% bootstrap CI)")
        fig.tight_layout()
        figures.append(("accuracy_per_subset.png", fig))
    sections = {loss: [r.eval.get("rewardbench") for r in rs] for loss, rs in groups.items()}
    if all(all(s is not None for s in v) for v in sections.values()):
        names = list(next(iter(sections.values()))[0]["sections"])
        lines += [
            "",
            "## RewardBench sections (mean over seeds)",
            "",
            "| loss | " + " | ".join(names) + " | overall |",
            "|---|" + "---|" * (len(names) + 1),
        ]
        for loss, secs in sections.items():
            vals = [np.mean([s["sections"][n] for s in secs]) for n in names]
            overall = np.mean([s["overall"] for s in secs])
            lines.append(f"| {loss} | " + " | ".join(f"{v:.4f}" for v in vals) + f" | {overall:.4f} |")

    # distance bins: each model's own quantile bins of its representation distances
    fig, ax = plt.subplots(figsize=(6, 4))
    lines += [
        "",
        "## Accuracy by representation-distance quantile bin (closest first)",
        "",
        "Bins are each model's own distance quantiles (as in the paper).",
        "",
        "| loss | " + " | ".join(f"bin {i}" for i in range(len(runs[0].eval["distance_bins"]))) + " |",
        "|---|" + "---|" * len(runs[0].eval["distance_bins"]),
    ]
    for loss, rs in groups.items():
        per_bin = np.array([[b["acc"] for b in r.eval["distance_bins"]] for r in rs])
        mean = per_bin.mean(axis=0)
        spread = per_bin.std(axis=0) if len(rs) > 1 else np.zeros_like(mean)
        ax.errorbar(np.arange(len(mean)), mean, yerr=spread, marker="o", capsize=3, label=loss)
        lines.append(f"| {loss} | " + " | ".join(f"{v:.4f}" for v in mean) + " |")
        summary[loss]["distance_bins"] = mean.tolist()
    ax.set_xticks(range(len(runs[0].eval["distance_bins"])))
    ax.set_xlabel("distance quantile bin (0 = closest pairs)")
    ax.set_ylabel("accuracy (error bars: std over seeds)")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_ylim(0, 1.05)
    ax.legend()
    ax.set_title("Accuracy by representation distance")
    fig.tight_layout()
    figures.append(("accuracy_by_distance.png", fig))

    # training curves from the TensorBoard logs (JSON lines when there are none)
    keys = [
        ("loss", "loss as optimised (log)"),
        ("acc", "accuracy"),
        ("normbt_mu", "NormBT mu"),
        ("normbt_weight_mean", "NormBT weight mean"),
        ("normbt_weight_max", "NormBT weight max"),
    ]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.5))
    for loss, rs in groups.items():
        for ax, (key, title) in zip(axes, keys, strict=True):
            for i, r in enumerate(rs):
                steps, values = training_curve(r, key)
                if steps:
                    ax.plot(
                        steps,
                        values,
                        color=f"C{losses.index(loss)}",
                        alpha=0.8,
                        label=loss if i == 0 else None,
                    )
            ax.set_title(title)
            ax.set_xlabel("step")
            if key == "loss":
                ax.set_yscale("log")  # NormBT's loss is weighted: its scale moves with mu
    axes[0].legend()
    fig.tight_layout()
    figures.append(("training_curves.png", fig))

    lines += ["", "## Plots", ""]
    for name, figure in figures:
        figure.savefig(out / name, dpi=110)
        plt.close(figure)
        lines.append(f"![{name}]({name})")
    lines += [
        "",
        "## Downstream policies",
        "",
        "No PPO runs in these folders: policy quality is not compared here.",
    ]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return report


def training_curve(run: Run, key: str) -> tuple[list[int], list[float]]:
    """``train/<key>`` from the run's TensorBoard events, else from its metrics JSON lines."""
    tb = run.path / "tensorboard"
    if tb.exists():
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        for events in sorted(p.parent for p in tb.rglob("events.out.tfevents.*")):
            acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
            acc.Reload()
            if f"train/{key}" in acc.Tags()["scalars"]:
                scalars = acc.Scalars(f"train/{key}")
                return [s.step for s in scalars], [s.value for s in scalars]
    points = [(r["step"], r[key]) for r in run.train if key in r]
    return [p[0] for p in points], [p[1] for p in points]
