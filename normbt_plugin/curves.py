"""Reward against KL along PPO runs (Gao et al. 2022, "Scaling Laws for Reward Model Overoptimization").

    normbt curves runs/downstream/ppo-* --tokenizer runs/downstream/policy \\
        --gold_fn normbt_plugin.tasks:gold_reward --out runs/downstream/curves

Each run folder is what ``recipes/ppo.sh`` writes with ``ROLLOUT_LOG=1``: ``rollouts/rollouts.jsonl``
(one line per sample: step, prompt, response ids, the reward PPO was given, and the sample's KL to
the initial policy, ``sum_t log pi - log pi_ref`` over its response tokens) and ``run.json`` (label,
RM seed, PPO seed). With one episode every prompt is seen once, so each step's rollouts are the
current policy's samples on prompts it has not been trained on: the curve is an evaluation along
the run, read off samples PPO draws anyway.

Per run, steps are grouped into windows; per window: mean KL, mean proxy reward (what PPO
optimised: the RM's normalised reward, or the true reward for the ceiling run), mean true reward
(``--gold_fn``), exact success, and response length. RMs are compared at matched KL: each run's
true reward is interpolated linearly in KL on a common grid (up to the smallest KL every run of both
labels reached), run means per label get 95% bootstrap intervals over runs, and the difference to the
baseline a paired bootstrap interval and a paired t-test over runs matched by (RM seed, PPO seed).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from normbt_plugin.pairs import EvalInputError


def load_function(spec: str) -> Callable[[str, str], float]:
    """``module:function`` or ``path/to/file.py:function``: a ``f(prompt, response) -> float``."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise EvalInputError(f"--gold_fn takes module:function or file.py:function, got {spec!r}")
    if target.endswith(".py"):
        if not Path(target).exists():
            raise EvalInputError(f"--gold_fn {spec}: {target} does not exist")
        loaded = importlib.util.spec_from_file_location(Path(target).stem, target)
        module = importlib.util.module_from_spec(loaded)
        loaded.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise EvalInputError(f"--gold_fn {spec}: cannot import {target}: {exc}") from exc
    fn = getattr(module, name, None)
    if not callable(fn):
        raise EvalInputError(f"--gold_fn {spec}: {target} has no function {name!r}")
    return fn


# ------------------------------------------------------------------ one run's curve


@dataclass
class Curve:
    label: str
    rm_seed: int | None
    ppo_seed: int | None
    kl: np.ndarray  # [windows]
    true: np.ndarray
    proxy: np.ndarray
    exact: np.ndarray
    length: np.ndarray
    steps: np.ndarray  # last step of each window
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. the gold RM's reward

    @property
    def key(self) -> tuple[int | None, int | None]:
        return (self.rm_seed, self.ppo_seed)

    def at(self, grid: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
        """``values`` (default: the true reward) interpolated linearly in KL at ``grid``."""
        values = self.true if values is None else values
        order = np.argsort(self.kl, kind="stable")
        return np.interp(grid, self.kl[order], values[order])

    def peak(self) -> tuple[float, float]:
        """(highest window mean of the true reward, the KL where it falls)."""
        i = int(np.argmax(self.true))
        return float(self.true[i]), float(self.kl[i])


def window_means(steps: np.ndarray, columns: dict[str, np.ndarray], window: int) -> dict[str, np.ndarray]:
    """Means of each column over windows of ``window`` consecutive PPO steps (the first window
    starts at step 1), plus ``steps``: the last step of each window."""
    group = (steps - 1) // window
    out: dict[str, list[float]] = defaultdict(list)
    for g in np.unique(group):
        mask = group == g
        out["steps"].append(float(steps[mask].max()))
        for name, values in columns.items():
            out[name].append(float(np.mean(values[mask])))
    return {k: np.asarray(v) for k, v in out.items()}


def curve_from_rollouts(
    run_dir: Path,
    decode: Callable[[list[int]], str],
    gold_fn: Callable[[str, str], float],
    exact_fn: Callable[[str, str], float] | None = None,
    window: int = 4,
) -> Curve:
    rollouts = run_dir / "rollouts" / "rollouts.jsonl"
    meta_path = run_dir / "run.json"
    if not rollouts.exists():
        raise EvalInputError(f"{run_dir}: no rollouts/rollouts.jsonl (run recipes/ppo.sh with ROLLOUT_LOG=1)")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    rows = [json.loads(line) for line in rollouts.read_text().splitlines()]
    if not rows or rows[0].get("kl") is None or rows[0].get("prompt") is None:
        raise EvalInputError(
            f"{rollouts}: rows without prompt or KL (PPO needs a reference model: KL coef > 0)"
        )
    responses = [decode(r["response_ids"]) for r in rows]
    columns = {
        "kl": np.array([r["kl"] for r in rows]),
        "proxy": np.array([r["reward"] for r in rows]),
        "true": np.array([gold_fn(r["prompt"], y) for r, y in zip(rows, responses, strict=True)]),
        "exact": np.array(
            [exact_fn(r["prompt"], y) if exact_fn else np.nan for r, y in zip(rows, responses, strict=True)]
        ),
        "length": np.array([len(r["response_ids"]) for r in rows], dtype=np.float64),
    }
    means = window_means(np.array([r["step"] for r in rows]), columns, window)
    return Curve(
        label=meta.get("label", run_dir.name), rm_seed=meta.get("rm_seed"), ppo_seed=meta.get("ppo_seed"),
        kl=means["kl"], true=means["true"], proxy=means["proxy"], exact=means["exact"],
        length=means["length"], steps=means["steps"],
    )  # fmt: skip


# ------------------------------------------------------------------ comparisons


def common_grid(curves: list[Curve], points: int = 6) -> np.ndarray:
    """KL values every curve reaches: from 0 to the smallest of the runs' largest window KL."""
    top = min(float(np.max(c.kl)) for c in curves)
    return np.linspace(0.0, max(top, 0.0), points)


def _interval(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    if len(values) < 2:
        return (float("nan"), float("nan"))
    res = stats.bootstrap((values,), np.mean, confidence_level=0.95, n_resamples=4000, random_state=seed)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _paired_p(diff: np.ndarray) -> float:
    if len(diff) < 2 or diff.std() == 0:
        return float("nan")
    return float(stats.ttest_1samp(diff, 0.0).pvalue)


def matched_kl(curves: list[Curve], baseline: str, grid: np.ndarray | None = None) -> dict[str, Any]:
    """Every label's true reward at matched KL, and its difference to ``baseline`` (runs paired by
    (RM seed, PPO seed); unpaired runs are left out of the paired statistics)."""
    by_label: dict[str, list[Curve]] = defaultdict(list)
    for c in curves:
        by_label[c.label].append(c)
    if baseline not in by_label:
        raise EvalInputError(f"baseline {baseline!r} is not among the curves' labels {sorted(by_label)}")
    grid = common_grid(curves) if grid is None else grid
    out: dict[str, Any] = {"grid": grid.tolist(), "baseline": baseline, "labels": {}}
    base = {c.key: c.at(grid) for c in by_label[baseline]}
    for label, group in sorted(by_label.items()):
        values = np.array([c.at(grid) for c in group])  # [runs, grid]
        peaks = np.array([c.peak() for c in group])
        entry: dict[str, Any] = {
            "runs": len(group),
            "mean": values.mean(axis=0).tolist(),
            "ci": [_interval(values[:, j]) for j in range(len(grid))],
            "peak_true": float(peaks[:, 0].mean()),
            "peak_true_ci": _interval(peaks[:, 0]),
            "peak_kl": float(peaks[:, 1].mean()),
            "peak_kl_ci": _interval(peaks[:, 1]),
        }
        paired = [(c.at(grid), base[c.key]) for c in group if c.key in base]
        if label != baseline and paired:
            diff = np.array([a - b for a, b in paired])  # [pairs, grid]
            entry["vs_baseline"] = {
                "pairs": len(paired),
                "mean": diff.mean(axis=0).tolist(),
                "ci": [_interval(diff[:, j]) for j in range(len(grid))],
                "p": [
                    float(stats.ttest_1samp(diff[:, j], 0.0).pvalue)
                    if len(paired) > 1 and diff[:, j].std() > 0
                    else float("nan")
                    for j in range(len(grid))
                ],  # fmt: skip
            }
        out["labels"][label] = entry
    return out


# ------------------------------------------------------------------ plot


def plot_curves(curves: list[Curve], path: Path, title: str = "") -> None:
    """True reward (solid, left axis) and proxy reward (dashed, right axis) against KL to the
    initial policy, per label: each run thin, the label's mean at matched KL thick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted({c.label for c in curves})
    colors = dict(zip(labels, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3, strict=False))
    fig, ax = plt.subplots(figsize=(9, 6.5))
    proxy_ax = ax.twinx()
    for label in labels:
        group = [c for c in curves if c.label == label]
        grid = np.linspace(0, min(float(np.max(c.kl)) for c in group), 40)
        for c in group:
            order = np.argsort(c.kl)
            ax.plot(c.kl[order], c.true[order], color=colors[label], alpha=0.25, lw=0.8)
        ax.plot(grid, np.mean([c.at(grid) for c in group], axis=0), color=colors[label], lw=2.2,
                label=f"{label}: true reward ({len(group)} runs)")  # fmt: skip
        proxy_ax.plot(grid, np.mean([c.at(grid, c.proxy) for c in group], axis=0), color=colors[label],
                      lw=1.5, ls="--", label=f"{label}: proxy PPO optimised")  # fmt: skip
    ax.set_xscale("symlog", linthresh=0.1)  # runs that barely move and runs that run away, both seen
    ax.set_xlabel("KL(policy || initial policy), nats per response (linear below 0.1, log above)")
    ax.set_ylabel("true reward (solid)")
    proxy_ax.set_ylabel("proxy reward PPO optimised (dashed)")
    handles = ax.get_legend_handles_labels()[0] + proxy_ax.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="upper center",
              bbox_to_anchor=(0.5, -0.14), ncol=2)  # fmt: skip
    ax.set_title(title or "Reward vs KL along PPO (Gao et al. 2022)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------ the command


def format_matched(result: dict[str, Any], curves: list[Curve]) -> str:
    grid, base = result["grid"], result["baseline"]
    lines = [
        "# Reward vs KL along PPO",
        "",
        f"True reward at matched KL (nats per response; interpolated along each run), mean over runs "
        f"[95% bootstrap CI over runs]; difference to `{base}` paired by (RM seed, PPO seed), paired t-test.",
        "",
        "| label | runs | " + " | ".join(f"KL {k:.2f}" for k in grid) + " | peak true | KL at peak |",
        "|---|---:|" + "---:|" * len(grid) + "---:|---:|",
    ]

    def cell(mean: float, ci: tuple[float, float]) -> str:
        return f"{mean:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if np.isfinite(ci[0]) else f"{mean:.3f}"

    for label, e in result["labels"].items():
        row = [cell(m, ci) for m, ci in zip(e["mean"], e["ci"], strict=True)]
        lines.append(
            f"| {label} | {e['runs']} | "
            + " | ".join(row)
            + f" | {cell(e['peak_true'], e['peak_true_ci'])} | {cell(e['peak_kl'], e['peak_kl_ci'])} |"
        )
    for label, e in result["labels"].items():
        if "vs_baseline" not in e:
            continue
        v = e["vs_baseline"]
        row = [f"{m:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}] p={p:.2g}" if np.isfinite(ci[0]) else f"{m:+.3f}"
               for m, ci, p in zip(v["mean"], v["ci"], v["p"], strict=True)]  # fmt: skip
        lines += ["", f"{label} - {base} ({v['pairs']} paired runs): " + "; ".join(
            f"KL {k:.2f}: {r}" for k, r in zip(grid, row, strict=True))]  # fmt: skip
    lines += ["", "Per run (last window): step, KL, proxy, true, exact, length", ""]
    lines += ["| run | steps | KL | proxy | true | exact | length |", "|---|---:|---:|---:|---:|---:|---:|"]
    for c in curves:
        lines.append(
            f"| {c.label} rm{c.rm_seed} ppo{c.ppo_seed} | {c.steps[-1]:.0f} | {c.kl[-1]:.3f} "
            f"| {c.proxy[-1]:.3f} | {c.true[-1]:.3f} | {c.exact[-1]:.3f} | {c.length[-1]:.1f} |"
        )
    lines += ["", "![reward_vs_kl.png](reward_vs_kl.png)", ""]
    return "\n".join(lines)


def run_curves(
    runs: list[str],
    tokenizer: str,
    gold_fn: str,
    out: str | Path,
    *,
    exact_fn: str | None = None,
    baseline: str = "bt",
    window: int = 4,
    grid_points: int = 6,
) -> Path:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer)

    def decode(ids: list[int]) -> str:
        return tok.decode(ids, skip_special_tokens=True)

    true, exact = load_function(gold_fn), load_function(exact_fn) if exact_fn else None
    curves = [curve_from_rollouts(Path(r), decode, true, exact, window) for r in runs]
    # the RMs are compared with each other; the ceiling (no RM seed) only as the baseline if asked
    rm_curves = [c for c in curves if c.label == baseline or c.rm_seed is not None]
    if not any(c.label == baseline for c in rm_curves):
        labels = sorted({c.label for c in curves})
        raise EvalInputError(f"--baseline {baseline!r} is not among the runs' labels {labels}")
    result = matched_kl(rm_curves, baseline, common_grid(rm_curves, grid_points))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(curves, out / "reward_vs_kl.png")
    (out / "curves.json").write_text(json.dumps({
        "matched_kl": result,
        "runs": [{"label": c.label, "rm_seed": c.rm_seed, "ppo_seed": c.ppo_seed,
                  **{k: getattr(c, k).tolist() for k in ("steps", "kl", "proxy", "true", "exact", "length")}}
                 for c in curves],
    }))  # fmt: skip
    report = out / "curves.md"
    report.write_text(format_matched(result, curves))
    return report
