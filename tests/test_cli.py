"""Console commands and recipes, run as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def run(*cmd: str, cwd: Path = REPO, env: dict | None = None, timeout: int = 300):
    return subprocess.run(
        list(cmd), cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_launcher_help_lists_loss_options_beside_openrlhf_flags():
    proc = run(sys.executable, "-m", "normbt_plugin.train_rm", "--help")
    assert proc.returncode == 0, proc.stderr
    for flag in ("--model.loss_type", "--ds.zero_stage", "--normbt.beta", "--normbt.weight_cap",
                 "--label_smoothing.epsilon", "--center.coef", "--bsr.coef", "--normbt.bsr_coef",
                 "--plugin.eval_distance_bins"):  # fmt: skip
        assert flag in proc.stdout
    help_text = " ".join(proc.stdout.split())  # argparse wraps lines
    assert "registry: bsr, bt, center, label_smoothing, logexp, margin, normbt, sigmoid" in help_text


def test_doctor_reports_versions_and_patches():
    proc = run(str(BIN / "normbt"), "doctor")
    assert proc.returncode == 0, proc.stderr
    rows = {line[:18].strip(): line[18:].strip() for line in proc.stdout.splitlines()}
    assert rows["openrlhf"] == "0.11.2 (supported: 0.11.2)" and rows["vLLM"] == "yes"
    assert rows["bytecode"] == "compiled (torch, transformers, deepspeed, openrlhf, vllm, ray)"
    assert rows["patches, RM stage"].endswith("registered_loss, value_head_norm")
    assert rows["patches, PPO stage"].endswith("cpu_ppo, vllm_cpu, value_head_norm, reward_norm")
    assert rows["lock"].startswith("every distribution as in") and rows["lock"].endswith(
        "requirements-cpu.lock"
    )


def test_losses_command_lists_options():
    proc = run(str(BIN / "normbt"), "losses")
    assert proc.returncode == 0 and "--normbt.beta (default 0.9)" in proc.stdout


def test_compare_without_metrics_is_a_clear_error(tmp_path):
    proc = run(str(BIN / "normbt"), "compare", str(tmp_path), "--out", str(tmp_path / "report"))
    assert proc.returncode == 2 and "--plugin.metrics_dir" in proc.stderr


@pytest.mark.parametrize("script", ["rm.sh", "compare.sh"])
def test_recipes_have_help(script):
    proc = run("bash", f"recipes/{script}", "--help")
    assert proc.returncode == 0 and "Environment" in proc.stdout


@pytest.mark.slow
def test_compare_recipe_tiny_default_end_to_end(tmp_path):
    """The README's main command, shortened to its RM part (PPO=0; tests/test_ppo.py runs the whole
    chain, NormBT included): BT and a NormBT variant, evaluated, in one report."""
    env = {**ENV, "RUN_DIR": str(tmp_path / "compare"), "EPOCHS": "1", "N_TRAIN": "128", "N_TEST": "64",
           "PPO": "0", "LOSSES": "bt noema=normbt:--normbt.use_ema=false"}  # fmt: skip
    proc = run("bash", "recipes/compare.sh", env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "| bt | 1 |" in proc.stdout and "| noema | 1 |" in proc.stdout
    meta = json.loads((tmp_path / "compare" / "rm-noema-seed1" / "metrics" / "meta.json").read_text())
    assert meta["loss"] == "normbt" and meta["options"]["use_ema"] is False
    assert "Accuracy by representation-distance quantile bin" in proc.stdout
    assert "| fine |" in proc.stdout and "| coarse |" in proc.stdout  # SUBSET_KEY=kind
    report = tmp_path / "compare" / "report"
    assert (report / "report.md").exists() and (report / "accuracy_by_distance.png").stat().st_size > 0
    assert (tmp_path / "compare" / "rm-noema-seed1" / "model" / "config.json").exists()
