"""The step benchmark runs: it builds OpenRLHF's upstream trainer and the plugin's from their
internals, so a change in either breaks it silently unless it is run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_step_overhead_benchmark_prints_its_ratios():
    proc = subprocess.run(
        [sys.executable, "benchmarks/step_overhead.py", "--model", "tiny", "--steps", "2", "--warmup", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    ratio = re.search(r"normbt / bt: step time x([0-9.]+), peak memory x([0-9.]+)", proc.stdout)
    rows = re.findall(r"^(bt|normbt) +([0-9.]+) +\S+ +([0-9.]+)$", proc.stdout, re.M)
    arms = {name: (float(t), float(mib)) for name, t, mib in rows}
    assert ratio and set(arms) == {"bt", "normbt"}, proc.stdout
    # the ratios are those of the medians and peaks it printed, up to their printed rounding

    def rounding(a: float, b: float, half_unit: float) -> float:  # error of a/b from a, b rounded
        return half_unit / b + half_unit * a / b**2 + 5e-5

    (t_bt, m_bt), (t_nb, m_nb) = arms["bt"], arms["normbt"]
    assert abs(float(ratio.group(1)) - t_nb / t_bt) <= rounding(t_nb, t_bt, 5e-5), proc.stdout
    assert abs(float(ratio.group(2)) - m_nb / m_bt) <= rounding(m_nb, m_bt, 0.05), proc.stdout


@pytest.mark.slow
def test_eval_throughput_benchmark_times_rewardbench_on_equal_scores():
    proc = subprocess.run(
        [sys.executable, "benchmarks/eval_throughput.py", "--pairs", "32", "--repeats", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert re.search(r"eval-rm / rewardbench: x[0-9.]+", proc.stdout), proc.stdout
    gap = re.search(r"max \|eval-rm - rewardbench\| ([0-9.e+-]+); same pair verdict 1\.0000", proc.stdout)
    assert gap and float(gap.group(1)) <= 1e-4, proc.stdout


@pytest.mark.slow
def test_the_gpu_check_runs_on_cpu_and_its_ratio_is_the_one_it_prints(tmp_path):
    """benchmarks/gpu_rm_check.py (what scripts/gpu-check.sh runs on a lent GPU) on CPU: the RM stage
    with BT, NormBT and BT again, each run's own step times read back from its step records."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_rm_check.py"), "--size", "tiny", "--steps", "5",
         "--warmup", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_rm_check.json").read_text())
    assert [a["loss"] for a in result["arms"]] == ["bt", "normbt", "bt"]
    assert all(a["steps"] == 5 and a["median_step_s"] > 0 for a in result["arms"])
    bt = (result["arms"][0]["median_step_s"] + result["arms"][2]["median_step_s"]) / 2
    assert result["ratio"] == pytest.approx(result["arms"][1]["median_step_s"] / bt)
    assert f"normbt / bt step time: {result['ratio']:.3f}" in proc.stdout
    assert result["nccl"] == {"nccl": "skipped (no GPU)"}
