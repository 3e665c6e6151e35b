"""The step benchmark runs: it builds OpenRLHF's upstream trainer and the plugin's from their
internals, so a change in either breaks it silently unless it is run."""

from __future__ import annotations

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
    assert ratio and all(float(x) > 0 for x in ratio.groups()), proc.stdout


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
