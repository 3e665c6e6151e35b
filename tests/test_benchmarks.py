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
