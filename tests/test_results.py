"""The headline figures docs/results.md states, recomputed from the committed records by the
commands that made them: a change to ``normbt compare`` or ``normbt bon-study`` that moved them fails
here (the records are results/, not regenerated)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from normbt_plugin.rm_evaluation.humaneval import BUGS

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EVIDENCE = REPO / "results" / "smollm2-evidence"
DOWNSTREAM = REPO / "results" / "downstream-smollm2"
RESULTS_MD = (REPO / "docs" / "results.md").read_text()
FINE_KINDS = sorted(BUGS)  # the HumanEval bug kinds the studies pool as "fine"


def normbt(*args: str) -> None:
    proc = subprocess.run(
        [str(BIN / "normbt"), *args], capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def stated(diff: float, low: float, high: float) -> str:
    return f"{diff:+.3f} [{low:+.3f}, {high:+.3f}]"


@pytest.mark.parametrize(
    ("loss", "fine_stated", "coarse_stated"),
    [
        ("normbt", "+0.165 [+0.136, +0.196]", "-0.033 [-0.050, -0.018]"),  # the primary and its guard
        ("partial", "+0.115 [+0.092, +0.140]", "-0.004 [-0.010, +0.000]"),  # normbt_partial's rule, 5 seeds
    ],
)
def test_the_smollm2_figures_as_results_md_states(loss, fine_stated, coarse_stated, tmp_path):
    runs = [str(EVIDENCE / f"rm-{name}-seed{s}") for name in ("bt", loss) for s in range(1, 6)]
    normbt("compare", *runs, "--eval_name", "eval-humaneval.json", "--out", str(tmp_path), "--baseline", "bt",
           "--pool", f"fine={','.join(FINE_KINDS)}")  # fmt: skip
    subsets = json.loads((tmp_path / "summary.json").read_text())[loss]["per_subset"]
    fine, coarse = subsets["fine"]["vs_baseline"], subsets["coarse"]["vs_baseline"]
    primary = stated(fine["diff"], fine["low"], fine["high"])
    guard = stated(coarse["diff"], coarse["low"], coarse["high"])
    assert primary == fine_stated and primary in RESULTS_MD
    assert guard == coarse_stated and guard in RESULTS_MD


def test_the_smollm2_best_of_n_arm_as_results_md_states(tmp_path):
    proxies = sorted(str(p) for p in DOWNSTREAM.glob("rm-onpolicy-*"))
    normbt("bon-study", str(DOWNSTREAM / "bon" / "policy_eval.json"), *proxies, "--baseline", "bt",
           "--n", "16", "--out", str(tmp_path))  # fmt: skip
    effect = json.loads((tmp_path / "summary.json").read_text())["effects"]["onpolicy/normbt"]
    arm = stated(effect["mean"], *effect["boot_ci95"])
    assert arm == "+0.044 [-0.020, +0.111]" and arm in RESULTS_MD
    assert effect["decision"] == "inconclusive" and effect["seeds"] == 4 and effect["seeds_to_detect"] == 24
    committed = (DOWNSTREAM / "bon-study" / "report.md").read_text()
    assert "| onpolicy | normbt | 4 | +0.0438 | [-0.0201, +0.1112]" in committed


@pytest.mark.parametrize("name", ["smollm2-evidence", "downstream-smollm2", "trl-evidence"])
def test_the_records_hold_no_models(name):
    """results/ holds records (metrics, eval files, reports), never weights."""
    heavy = [p for p in (REPO / "results" / name).rglob("*") if p.suffix in {".safetensors", ".bin", ".pt"}]
    assert heavy == []


@pytest.mark.parametrize(
    ("loss", "fine", "coarse", "row"),
    [
        ("bt", "0.657", "1.000", "| BT | 0.657 | 1.000 |"),
        ("normbt", "0.691", "1.000", "| NormBT | **0.691** | **1.000** |"),
    ],
)
def test_the_trl_seed_1_figures_as_results_md_states(loss, fine, coarse, row):
    """Issue 39.4's figures (HumanEval fine kinds pooled by their pair counts, and coarse), recomputed from
    the committed TRL records as docs/results.md's table states them."""
    record = json.loads(
        (REPO / "results" / "trl-evidence" / f"rm-{loss}-seed1" / "eval-humaneval.json").read_text()
    )
    accuracy, sizes = record["per_subset"], record["subset_sizes"]
    pooled = sum(accuracy[k] * sizes[k] for k in FINE_KINDS) / sum(sizes[k] for k in FINE_KINDS)
    assert (f"{pooled:.3f}", f"{accuracy['coarse']:.3f}") == (fine, coarse)
    assert row in RESULTS_MD, row
