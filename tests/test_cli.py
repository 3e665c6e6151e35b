"""Console commands and recipes, run as a user runs them."""

from __future__ import annotations

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
                 "--label_smoothing.epsilon", "--center.coef", "--bsr.coef", "--normbt.base",
                 "--normbt_partial.alpha", "--normbt_floor.floor",
                 "--plugin.eval_distance_bins"):  # fmt: skip
        assert flag in proc.stdout
    help_text = " ".join(proc.stdout.split())  # argparse wraps lines
    registry = (
        "bsr, bt, center, label_smoothing, logexp, margin, normbt, normbt_floor, normbt_partial, sigmoid"
    )
    assert f"registry: {registry}" in help_text


def test_doctor_reports_versions_and_patches():
    proc = run(str(BIN / "normbt"), "doctor")
    assert proc.returncode == 0, proc.stderr
    rows = {line[:18].strip(): line[18:].strip() for line in proc.stdout.splitlines()}
    assert rows["openrlhf"] == "0.11.2 (supported: 0.11.2)" and rows["vLLM"] == "yes"
    assert rows["trl"] == "1.16.0 (normbt_plugin.trl_adapter)"
    assert rows["bytecode"] == "compiled (torch, transformers, deepspeed, openrlhf, vllm, ray)"
    assert rows["patches, RM stage"].endswith("registered_loss, value_head_norm, lora_value_head")
    ppo_patches = "cpu_ppo, vllm_cpu, free_port, value_head_norm, lora_value_head, reward_norm"
    assert rows["patches, PPO stage"].endswith(ppo_patches)
    assert rows["lock"].startswith("every distribution as in") and rows["lock"].endswith(
        "requirements-cpu.lock"
    )


def test_losses_command_lists_options():
    proc = run(str(BIN / "normbt"), "losses")
    assert proc.returncode == 0 and "--normbt.beta (default 0.9)" in proc.stdout


def test_compare_without_metrics_is_a_clear_error(tmp_path):
    proc = run(str(BIN / "normbt"), "compare", str(tmp_path), "--out", str(tmp_path / "report"))
    assert proc.returncode == 2 and "--plugin.metrics_dir" in proc.stderr


SOURCED = ("stage-times.sh", "run-files.sh")  # sourced by the recipes, not run
RECIPES = sorted(p.name for p in (REPO / "recipes").glob("*.sh") if p.name not in SOURCED)


@pytest.mark.parametrize("script", RECIPES)
def test_every_recipe_prints_help_and_starts_nothing(script, tmp_path):
    env = {**ENV, "RUN_DIR": str(tmp_path / "run"), "OUT": str(tmp_path / "out"), "POLICY": "p", "RM": "r",
           "PROMPTS": "x", "MODEL": "m", "DATASET": "d"}  # fmt: skip
    proc = run("bash", f"recipes/{script}", "--help", env=env, timeout=10)
    assert proc.returncode == 0 and "Environment" in proc.stdout, proc.stdout + proc.stderr
    assert not any(tmp_path.iterdir())  # nothing was run
