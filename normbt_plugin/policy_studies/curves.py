"""Reward against KL along PPO runs (Gao et al. 2022, "Scaling Laws for Reward Model Overoptimization").

    normbt curves runs/downstream/ppo-* --tokenizer runs/downstream/policy \\
        --gold_fn normbt_plugin.common.tasks:gold_reward --out runs/downstream/curves

Each run folder is what ``recipes/ppo.sh`` writes with ``ROLLOUT_LOG=1``: ``rollouts/rollouts.jsonl``
(one line per sample: step, prompt, response ids, the reward PPO was given, and the sample's KL to
the initial policy, ``sum_t log pi - log pi_ref`` over its response tokens) and ``run.json`` (label,
RM seed, PPO seed). With one episode every prompt is seen once, so each step's rollouts are the
current policy's samples on prompts it has not been trained on: the curve is an evaluation along
the run, read off samples PPO draws anyway.

Per run, steps are grouped into windows; per window: mean KL, mean proxy reward (what PPO
optimised: the RM's normalised reward, or the true reward for the ceiling run), mean true reward
(``--gold_fn``), exact success, and response length. RMs are compared at matched KL: each run's
true reward is interpolated linearly in KL on a common grid, never beyond the KLs the run reached (no
clamping: a run counts at a grid point only if it got there); the grid spans what the runs of every
label reach. The unit is the RM seed (PPO seeds averaged within it): label means get 95% bootstrap
intervals over RM seeds, and the difference to the baseline a bootstrap interval and a t-test over
the RM seeds both labels have at that point. Per run, Gao et al.'s RL fit R(d) = d (a - b log d),
d = sqrt(KL), R the true reward gained since the first window.

    python -m normbt_plugin.policy_studies.curves record RUN --label bt --rm_seed 1 --ppo_seed 1   # run.json
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from normbt_plugin.common.intervals import finite_mean_ci, finite_t_p
from normbt_plugin.options import CurvesOptions
from normbt_plugin.rm_evaluation.pairs import EvalInputError
from normbt_plugin.runs.ppo import ROLLOUTS, RunRecord, read_rollouts


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
        """``values`` (default: the true reward) interpolated linearly in KL at ``grid``; NaN outside
        the KLs the run reached (never clamped to its ends)."""
        values = self.true if values is None else values
        order = np.argsort(self.kl, kind="stable")
        return np.interp(grid, self.kl[order], values[order], left=np.nan, right=np.nan)

    def rl_fit(self) -> tuple[float, float]:
        """Gao et al.'s RL form, R(d) = d (a - b log d), d = sqrt(KL), R the true reward gained since
        the first window: (a, b) by least squares over the windows past the first."""
        d = np.sqrt(np.maximum(self.kl[1:], 1e-12))
        gain = self.true[1:] - self.true[0]
        (a, b), *_ = np.linalg.lstsq(np.stack([d, -d * np.log(d)], axis=1), gain, rcond=None)
        return float(a), float(b)

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
    rollouts = run_dir / "rollouts"
    if not (rollouts / ROLLOUTS).exists():
        raise EvalInputError(f"{run_dir}: no rollouts/{ROLLOUTS} (run recipes/ppo.sh with ROLLOUT_LOG=1)")
    meta = RunRecord.read(run_dir)
    rows = read_rollouts(rollouts)
    if not rows or rows[0].kl is None or rows[0].prompt is None:
        raise EvalInputError(
            f"{rollouts / ROLLOUTS}: rows without prompt or KL (PPO needs a reference model: KL coef > 0)"
        )
    responses = [decode(r.response_ids) for r in rows]
    columns = {
        "kl": np.array([r.kl for r in rows]),
        "proxy": np.array([r.reward for r in rows]),
        "true": np.array([gold_fn(r.prompt, y) for r, y in zip(rows, responses, strict=True)]),
        "exact": np.array(
            [exact_fn(r.prompt, y) if exact_fn else np.nan for r, y in zip(rows, responses, strict=True)]
        ),
        "length": np.array([len(r.response_ids) for r in rows], dtype=np.float64),
    }
    means = window_means(np.array([r.step for r in rows]), columns, window)
    return Curve(
        label=meta.label, rm_seed=meta.rm_seed, ppo_seed=meta.ppo_seed,
        kl=means["kl"], true=means["true"], proxy=means["proxy"], exact=means["exact"],
        length=means["length"], steps=means["steps"],
    )  # fmt: skip


# ------------------------------------------------------------------ comparisons


def common_grid(curves: list[Curve], points: int = 6) -> np.ndarray:
    """From the smallest KL every run reached to the largest KL some run of every label reached."""
    by_label: dict[str, list[Curve]] = defaultdict(list)
    for c in curves:
        by_label[c.label].append(c)
    low = max(float(np.min(c.kl)) for c in curves)
    high = min(max(float(np.max(c.kl)) for c in group) for group in by_label.values())
    return np.linspace(low, max(high, low), points)


def by_rm_seed(group: list[Curve], grid: np.ndarray) -> dict[int | None, np.ndarray]:
    """Per RM seed, its runs' true reward at ``grid`` averaged over PPO seeds (over the runs that
    reached each point; NaN where none did)."""
    runs: dict[int | None, list[np.ndarray]] = defaultdict(list)
    for c in group:
        runs[c.rm_seed].append(c.at(grid))
    return {seed: _nanmean(np.array(values), axis=0) for seed, values in runs.items()}


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    """Mean over the finite entries; NaN where there are none (without numpy's warning)."""
    finite = np.isfinite(values)
    total = np.where(finite, values, 0.0).sum(axis=axis)
    count = finite.sum(axis=axis)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def matched_kl(curves: list[Curve], baseline: str, grid: np.ndarray | None = None) -> dict[str, Any]:
    """Every label's true reward at matched KL, and its difference to ``baseline``: the unit is the
    RM seed; at each grid point only the seeds whose runs reached it count (``n``)."""
    by_label: dict[str, list[Curve]] = defaultdict(list)
    for c in curves:
        by_label[c.label].append(c)
    if baseline not in by_label:
        raise EvalInputError(f"baseline {baseline!r} is not among the curves' labels {sorted(by_label)}")
    grid = common_grid(curves) if grid is None else grid
    out: dict[str, Any] = {"grid": grid.tolist(), "baseline": baseline, "unit": "rm_seed", "labels": {}}
    base = by_rm_seed(by_label[baseline], grid)
    for label, group in sorted(by_label.items()):
        units = by_rm_seed(group, grid)
        values = np.array(list(units.values()))  # [RM seeds, grid]
        peaks = np.array([c.peak() for c in group])
        fits = np.array([c.rl_fit() for c in group])
        entry: dict[str, Any] = {
            "runs": len(group),
            "rm_seeds": len(units),
            "n": np.isfinite(values).sum(axis=0).tolist(),
            "mean": _nanmean(values, axis=0).tolist(),
            "ci": [finite_mean_ci(values[:, j]) for j in range(len(grid))],
            "peak_true": float(peaks[:, 0].mean()),
            "peak_true_ci": finite_mean_ci(peaks[:, 0]),
            "peak_kl": float(peaks[:, 1].mean()),
            "peak_kl_ci": finite_mean_ci(peaks[:, 1]),
            "rl_fit_a": float(fits[:, 0].mean()), "rl_fit_a_ci": finite_mean_ci(fits[:, 0]),
            "rl_fit_b": float(fits[:, 1].mean()), "rl_fit_b_ci": finite_mean_ci(fits[:, 1]),
        }  # fmt: skip
        paired = [units[s] - base[s] for s in units if s in base and s is not None]
        if label != baseline and paired:
            diff = np.array(paired)  # [RM seeds, grid], NaN where either did not reach
            entry["vs_baseline"] = {
                "pairs": len(paired),
                "n": np.isfinite(diff).sum(axis=0).tolist(),
                "mean": _nanmean(diff, axis=0).tolist(),
                "ci": [finite_mean_ci(diff[:, j]) for j in range(len(grid))],
                "p": [finite_t_p(diff[:, j]) for j in range(len(grid))],
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
        grid = np.linspace(
            min(float(np.min(c.kl)) for c in group), max(float(np.max(c.kl)) for c in group), 40
        )
        for c in group:
            order = np.argsort(c.kl)
            ax.plot(c.kl[order], c.true[order], color=colors[label], alpha=0.25, lw=0.8)
        true = _nanmean(np.array([c.at(grid) for c in group]), axis=0)
        proxy = _nanmean(np.array([c.at(grid, c.proxy) for c in group]), axis=0)
        ax.plot(grid, true, color=colors[label], lw=2.2, label=f"{label}: true reward ({len(group)} runs)")
        proxy_ax.plot(
            grid, proxy, color=colors[label], lw=1.5, ls="--", label=f"{label}: proxy PPO optimised"
        )
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
        f"True reward at matched KL (nats per response; interpolated along each run, never past the KL it "
        f"reached), mean over RM seeds (PPO seeds averaged within one) [95% bootstrap CI over RM seeds], "
        f"(n: RM seeds that reached the point); difference to `{base}` paired by RM seed, t-test over them. "
        "Gao's RL fit R(d) = d (a - b log d), d = sqrt(KL), per run.",
        "",
        "| label | runs | " + " | ".join(f"KL {k:.2f}" for k in grid) + " | peak true | KL at peak | a | b |",
        "|---|---:|" + "---:|" * len(grid) + "---:|---:|---:|---:|",
    ]

    def cell(mean: float, ci: tuple[float, float]) -> str:
        return f"{mean:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if np.isfinite(ci[0]) else f"{mean:.3f}"

    for label, e in result["labels"].items():
        row = [f"{cell(m, ci)} (n={n})" for m, ci, n in zip(e["mean"], e["ci"], e["n"], strict=True)]
        lines.append(
            f"| {label} | {e['runs']} | "
            + " | ".join(row)
            + f" | {cell(e['peak_true'], e['peak_true_ci'])} | {cell(e['peak_kl'], e['peak_kl_ci'])}"
            + f" | {cell(e['rl_fit_a'], e['rl_fit_a_ci'])} | {cell(e['rl_fit_b'], e['rl_fit_b_ci'])} |"
        )
    for label, e in result["labels"].items():
        if "vs_baseline" not in e:
            continue
        v = e["vs_baseline"]
        points = zip(v["mean"], v["ci"], v["p"], v["n"], strict=True)
        row = [f"{m:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}] p={p:.2g} n={n}" if np.isfinite(p) else f"{m:+.3f}"
               for m, ci, p, n in points]  # fmt: skip
        lines += ["", f"{label} - {base} ({v['pairs']} paired RM seeds): " + "; ".join(
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


def main() -> None:
    parser = argparse.ArgumentParser(description="a PPO run's record (run.json): which reward it optimised")
    sub = parser.add_subparsers(dest="command", required=True)
    record = sub.add_parser("record", help="write RUN/run.json")
    record.add_argument("run")
    record.add_argument("--label", required=True)
    record.add_argument("--rm_seed", type=int, default=None, help="none: no RM (the true reward)")
    record.add_argument("--ppo_seed", type=int, default=None)
    args = parser.parse_args()
    RunRecord(args.label, args.rm_seed, args.ppo_seed).write(args.run)


def run_curves(o: CurvesOptions) -> Path:
    """``normbt curves``: the report (``curves.md``), ``curves.json`` and the plot under ``o.out``."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(o.tokenizer)

    def decode(ids: list[int]) -> str:
        return tok.decode(ids, skip_special_tokens=True)

    true, exact = load_function(o.gold_fn), load_function(o.exact_fn) if o.exact_fn else None
    curves = [curve_from_rollouts(Path(r), decode, true, exact, o.window) for r in o.runs]
    # the RMs are compared with each other; the ceiling (no RM seed) only as the baseline if asked
    rm_curves = [c for c in curves if c.label == o.baseline or c.rm_seed is not None]
    if not any(c.label == o.baseline for c in rm_curves):
        labels = sorted({c.label for c in curves})
        raise EvalInputError(f"--baseline {o.baseline!r} is not among the runs' labels {labels}")
    result = matched_kl(rm_curves, o.baseline, common_grid(rm_curves, o.grid))
    out = Path(o.out)
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


if __name__ == "__main__":
    main()
