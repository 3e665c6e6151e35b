"""Shared fixtures: the tiny offline setup and a runner for the real launcher."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from normbt_plugin.common.ports import free_port
from normbt_plugin.runs import rm as rm_run

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Every process this session starts inherits this mark (and so does whatever those processes start:
# DeepSpeed ranks, Ray's raylet, GCS and workers, vLLM's EngineCore), so a leftover is found by it.
SESSION_MARK = "NORMBT_TEST_SESSION"
os.environ[SESSION_MARK] = str(os.getpid())
LEFTOVER_GRACE_S = 30  # a driver's Ray or a launcher's ranks may take a few seconds to exit


def session_processes() -> list[psutil.Process]:
    """Processes started by this test session (any depth, orphans too), other than pytest itself."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == os.getpid():
            continue
        try:
            if proc.environ().get(SESSION_MARK) == os.environ[SESSION_MARK]:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.fixture(scope="module", autouse=True)
def no_leftover_processes(request):
    """After each test module (its fixtures torn down first): every process it started has ended.
    Leftovers (a raylet, GCS, ``ray::`` worker, vLLM EngineCore, DeepSpeed rank) are killed and
    the module fails, naming them: they would hold memory and cores through the rest of the suite."""
    yield
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while (left := session_processes()) and time.monotonic() < deadline:
        time.sleep(1)
    if not left:
        return
    names = []
    for proc in left:
        with contextlib.suppress(psutil.Error):
            names.append(f"{proc.pid} {' '.join(proc.cmdline())[:160]}")
            proc.kill()
    psutil.wait_procs(left, timeout=30)
    pytest.fail(
        f"{request.module.__name__} left {len(left)} process(es) running (killed now):\n" + "\n".join(names)
    )


def assert_plot(path: Path, min_width: int = 300, min_height: int = 200) -> None:
    """A PNG that shows data: at least ``min_width`` x ``min_height`` pixels, and coloured marks on it
    (matplotlib draws axes, ticks and text in black and grey, data in colour: a figure whose data
    never arrived has no coloured pixel)."""
    import matplotlib.image as mpimg

    image = mpimg.imread(path)
    height, width = image.shape[:2]
    assert width >= min_width and height >= min_height, (path, width, height)
    rgb = image[..., :3].reshape(-1, 3)
    coloured = (rgb.max(axis=1) - rgb.min(axis=1) > 0.25).mean()
    assert coloured > 0.002, f"{path}: {coloured:.4%} coloured pixels, no data drawn"


@pytest.fixture(scope="session")
def openrlhf_patched():
    from normbt_plugin.patches import apply_openrlhf_patches

    return apply_openrlhf_patches()


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Tiny Llama + BPE tokenizer + sorted-list preference pairs, built offline once."""
    from normbt_plugin.common.tiny import build_tiny_setup

    return build_tiny_setup(tmp_path_factory.mktemp("tiny"), n_train=256, n_test=96)


@dataclass
class Run:
    returncode: int
    output: str
    metrics_dir: Path
    out_dir: Path

    def records(self, rank: int = 0) -> list[dict]:
        assert (self.metrics_dir / rm_run.train_file(rank)).exists(), self.output[-3000:]
        return rm_run.read_steps(self.metrics_dir, rank)

    def evals(self) -> list[rm_run.EvalRecord]:
        assert (self.metrics_dir / rm_run.EVAL_LOG).exists(), self.output[-3000:]
        return rm_run.read_evals(self.metrics_dir)


def launcher(nproc: int) -> list[str]:
    """What goes before ``-m module``, as recipes/rm.sh launches on one node: ``python`` for one
    process, ``torchrun --nproc-per-node N`` on a free master port for more."""
    if nproc == 1:
        return [sys.executable]
    return [str(BIN / "torchrun"), "--nnodes", "1", "--nproc-per-node", str(nproc), "--master-port",
            str(free_port())]  # fmt: skip


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
    """Run ``normbt_plugin.train_rm`` as recipes/rm.sh does on one node: ``torchrun
    --nproc-per-node N -m`` (N > 1) or ``python -m`` (one process)."""
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
    cmd = [*launcher(nproc), "-m", "normbt_plugin.train_rm", *args]
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


RECIPE_ENV = {
    **os.environ,
    "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
}


@pytest.fixture(scope="session")
def chain(tmp_path_factory) -> Path:
    """The README's main command, run once for the whole session: ``bash recipes/compare.sh`` on its
    tiny CPU default. Many tests assert on what it leaves: the SFT policy, the BT and NormBT reward
    models (two ranks, ZeRO-2) with their eval-rm results, PPO on each, eval-policy and the report."""
    run_dir = tmp_path_factory.mktemp("chain")
    proc = subprocess.run(
        ["bash", "recipes/compare.sh"], cwd=REPO, env={**RECIPE_ENV, "RUN_DIR": str(run_dir)},
        capture_output=True, text=True, timeout=1500, check=False,
    )  # fmt: skip
    (run_dir / "compare.out").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return run_dir


@pytest.fixture(scope="session")
def trained_pair(chain) -> dict[str, Path]:
    """The chain's two reward models, BT and NormBT, as run folders: ``model/``, ``metrics/``,
    ``tensorboard/`` and eval-rm's ``eval.json`` on the held-out pairs."""
    return {loss: chain / f"rm-{loss}-seed1" for loss in ("bt", "normbt")}
