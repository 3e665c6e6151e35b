"""Shared fixtures: the tiny offline setup and a runner for the real launcher."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from normbt_plugin import records

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def openrlhf_patched():
    from normbt_plugin.patches import apply_openrlhf_patches

    return apply_openrlhf_patches()


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Tiny Llama + BPE tokenizer + sorted-list preference pairs, built offline once."""
    from normbt_plugin.tiny import build_tiny_setup

    return build_tiny_setup(tmp_path_factory.mktemp("tiny"), n_train=256, n_test=96)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Run:
    returncode: int
    output: str
    metrics_dir: Path
    out_dir: Path

    def records(self, rank: int = 0) -> list[dict]:
        assert (self.metrics_dir / records.train_file(rank)).exists(), self.output[-3000:]
        return records.read_steps(self.metrics_dir, rank)

    def eval_bins(self) -> list[dict]:
        assert (self.metrics_dir / records.EVAL).exists(), self.output[-3000:]
        return records.read_evals(self.metrics_dir)


def train_rm(
    tiny: dict,
    workdir: Path,
    *flags: str,
    nproc: int = 1,
    loss: str = "normbt",
    timeout: int = 600,
    dataset: Path | None = None,
    model: Path | None = None,
) -> Run:
    """Run ``normbt_plugin.train_rm`` as users do: ``deepspeed --num_gpus N --module`` (N > 1) or
    ``python -m`` (one process)."""
    workdir.mkdir(parents=True, exist_ok=True)
    args = [
        "--model.model_name_or_path", str(model or tiny["model"]),
        "--data.dataset", str(dataset or tiny["train"]),
        "--eval.dataset", str(tiny["test"]),
        "--data.prompt_key", "prompt",
        "--model.loss_type", loss,
        "--ds.attn_implementation", "sdpa",
        "--train.micro_batch_size", "4",
        "--train.batch_size", "16",
        "--train.max_epochs", "1",
        "--adam.lr", "2e-3",
        "--lr_warmup_ratio", "0",
        "--data.max_len", "64",
        "--ckpt.output_dir", str(workdir / "out"),
        "--ckpt.path", str(workdir / "ckpt"),
        "--plugin.metrics_dir", str(workdir / "metrics"),
        *flags,
    ]  # fmt: skip
    if nproc > 1:
        cmd = [str(BIN / "deepspeed"), "--num_gpus", str(nproc), "--master_port", str(free_port()),
               "--module", "normbt_plugin.train_rm", *args]  # fmt: skip
    else:
        cmd = [sys.executable, "-m", "normbt_plugin.train_rm", *args]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    output = proc.stdout + proc.stderr
    (workdir / "log.txt").write_text(output)
    return Run(proc.returncode, output, workdir / "metrics", workdir / "out")


@pytest.fixture
def run_train_rm(tiny, tmp_path):
    def run(*flags: str, name: str = "run", **kwargs) -> Run:
        return train_rm(tiny, tmp_path / name, *flags, **kwargs)

    return run


@pytest.fixture(scope="session")
def trained_pair(tiny, tmp_path_factory):
    """Two small real runs (bt, normbt), each evaluated with ``normbt eval-rm``."""
    root = tmp_path_factory.mktemp("trained")
    runs = {}
    for loss in ("bt", "normbt"):
        run = train_rm(
            tiny, root / f"rm-{loss}", "--ds.zero_stage", "2", "--logger.tensorboard_dir",
            str(root / f"rm-{loss}" / "tensorboard"), loss=loss,
        )  # fmt: skip
        assert run.returncode == 0, run.output[-3000:]
        proc = subprocess.run(
            [str(BIN / "normbt"), "eval-rm", "--model", str(run.out_dir), "--data", str(tiny["test"]),
             "--subset_key", "kind", "--out", str(root / f"rm-{loss}" / "eval.json")],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[loss] = root / f"rm-{loss}"
    return runs
