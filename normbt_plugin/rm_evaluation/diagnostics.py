"""The paper's gradient diagnostic on a trained reward model: per-pair gradient norm (all
parameters, one backward pass per pair) against the representation distance, binned by
prediction error, under BT and under NormBT.

NormBT multiplies a pair's loss by a detached weight, so its per-pair gradient is exactly
``w_i`` times BT's: one backward pass per pair serves both.

    normbt diagnose --model ckpt/rm --data test.jsonl --pairs 128 --out diag/
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from normbt_plugin.options import DiagnoseOptions
from normbt_plugin.rm_evaluation.pairs import load_pairs
from normbt_plugin.rm_evaluation.scoring import RewardScorer
from normbt_plugin.stats import normbt_weight, pair_distance, quantile_bins

GRADIENTS = "gradients.json"  # the per-pair records


def per_pair_gradients(scorer: RewardScorer, prompts, chosen, rejected) -> dict[str, np.ndarray]:
    """BT per-pair gradient norm over every trainable parameter, distance, prediction error."""
    model = scorer.model.train(False)
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm, distance, error = [], [], []
    for prompt, c, r in zip(prompts, chosen, rejected, strict=True):
        reward, hidden = scorer.forward([scorer.format(prompt, c), scorer.format(prompt, r)])
        hidden = hidden.detach().float()
        d = reward[0] - reward[1]
        grads = torch.autograd.grad(-F.logsigmoid(d), params, allow_unused=True)
        grad_norm.append(float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None))))
        distance.append(float(pair_distance(hidden[:1], hidden[1:])[0]))
        error.append(float(1 - torch.sigmoid(d.detach().float())))
    return {"bt_grad": np.array(grad_norm), "distance": np.array(distance), "error": np.array(error)}


def diagnose(o: DiagnoseOptions, *, eps: float = 1e-6, seed: int = 0) -> dict:
    """``normbt diagnose``: per-pair gradients of ``o.pairs`` sampled pairs, their summary, the plot
    (``gradient_vs_distance.png``) and the records (``gradients.json``) under ``o.out``."""
    data_pairs = load_pairs(o.data)
    rng = np.random.default_rng(seed)
    index = rng.choice(len(data_pairs), size=min(o.pairs, len(data_pairs)), replace=False)
    scorer = RewardScorer(o.model, loader="auto", max_len=o.max_len, input_template=o.input_template)
    res = per_pair_gradients(
        scorer,
        [data_pairs.prompts[i] for i in index],
        [data_pairs.chosen[i] for i in index],
        [data_pairs.rejected[i] for i in index],
    )
    mu = float(np.mean(res["distance"])) if o.mu is None else o.mu
    res["normbt_grad"] = normbt_weight(res["distance"], mu, eps) * res["bt_grad"]
    summary, err_bin, edges = gradient_summary(res, mu)
    out_dir = Path(o.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_gradients(res, summary, err_bin, edges, out_dir / "gradient_vs_distance.png")
    records = {k: v.tolist() for k, v in res.items()}
    if data_pairs.subsets:
        records["subset"] = np.asarray(data_pairs.subsets)[index].tolist()
    (out_dir / GRADIENTS).write_text(json.dumps({"summary": summary, "per_pair": records}))
    return summary


def gradient_summary(res: dict[str, np.ndarray], mu: float) -> tuple[dict, np.ndarray, np.ndarray]:
    """Spearman of each gradient with distance, overall and within prediction-error terciles
    (|sigmoid(d) - 1|), and log-log Pearson of BT's; with each pair's tercile and the edges."""
    edges, err_bin = quantile_bins(res["error"], 3)
    summary: dict = {"pairs": len(res["error"]), "mu": mu, "error_bin_edges": edges.tolist(), "spearman": {}}
    for name in ("bt_grad", "normbt_grad"):
        overall = stats.spearmanr(res["distance"], res[name])
        summary["spearman"][name] = {"all": float(overall.statistic)}
        for b in range(3):
            sel = err_bin == b
            if sel.sum() > 3:
                rho = stats.spearmanr(res["distance"][sel], res[name][sel]).statistic
                summary["spearman"][name][f"error_bin{b}"] = float(rho)
    summary["pearson_log_bt_grad_vs_log_distance"] = float(
        stats.pearsonr(np.log(res["distance"]), np.log(res["bt_grad"])).statistic
    )
    return summary, err_bin, edges


def plot_gradients(
    res: dict[str, np.ndarray], summary: dict, err_bin: np.ndarray, edges: np.ndarray, path: Path
) -> None:
    """BT's and NormBT's per-pair gradient norm against distance, coloured by error tercile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, name, title in zip(axes, ("bt_grad", "normbt_grad"), ("BT", "NormBT"), strict=True):
        for b in range(3):
            sel = err_bin == b
            ax.scatter(
                res["distance"][sel],
                res[name][sel],
                s=14,
                alpha=0.75,
                label=f"|sigmoid(d)-1| in [{edges[b]:.2f}, {edges[b + 1]:.2f}]",
            )
        rho = summary["spearman"][name]["all"]
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="representation distance ||h_c - h_r||",
            title=f"{title}: per-pair gradient norm (Spearman vs distance {rho:.2f})",
        )
    axes[0].set_ylabel("gradient norm, all parameters")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
