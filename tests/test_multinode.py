"""Several nodes and faults on one machine: two DeepSpeed node launchers (``recipes/rm.sh`` without
ssh, one CPU rank each, real TCP between them), a rank SIGKILLed mid-training, a half-written
checkpoint, and the resume. Every wait is bounded; every process started is killed by its group."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil
import pytest
import torch
from conftest import BIN, REPO, free_port

from normbt_plugin.patches import patch_module
from normbt_plugin.runs import rm as rm_run

pytestmark = pytest.mark.slow

ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "TOKENIZERS_PARALLELISM": "false"}
KILL_TO_EXIT_S = 60  # a dead peer closes its sockets: the other node stops in seconds (about 5 s here)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


@contextmanager
def started(cmds: list[tuple[list[str], dict, Path]]) -> Iterator[list[subprocess.Popen]]:
    """Start each command in its own process group; kill every group at the end, also on failure."""
    procs = []
    try:
        for cmd, env, log in cmds:
            procs.append(
                subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                 start_new_session=True)
            )  # fmt: skip
        yield procs
    finally:
        for proc in procs:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


class TwoNodes:
    """``recipes/rm.sh`` once per node: HOSTFILE + NODE_RANK + MASTER_ADDR, as the recipe documents."""

    def __init__(self, tiny: dict, root: Path, zero: int) -> None:
        self.root, self.out = root, root / "rm"
        root.mkdir(parents=True, exist_ok=True)
        (root / "hostfile").write_text("node0 slots=1\nnode1 slots=1\n")
        self.env = {
            **ENV, "MODEL": str(tiny["model"]), "DATASET": str(tiny["train"]),
            "EVAL_DATASET": str(tiny["test"]), "OUT": str(self.out),
            "ZERO": str(zero), "LR": "2e-3", "MAX_LEN": "64", "EPOCHS": "2",
            "HOSTFILE": str(root / "hostfile"), "MASTER_ADDR": "127.0.0.1",
        }  # fmt: skip
        self.flags = ["--lr_warmup_ratio", "0", "--ckpt.save_steps", "4", "--ckpt.max_num", "1"]

    def commands(self, name: str, *extra: str) -> list[tuple[list[str], dict, Path]]:
        port = str(free_port())
        return [
            (["bash", "recipes/rm.sh", *self.flags, *extra],
             {**self.env, "NODE_RANK": str(node), "MASTER_PORT": port}, self.root / f"{name}-node{node}.log")
            for node in (0, 1)
        ]  # fmt: skip

    def log(self, name: str, node: int) -> str:
        return (self.root / f"{name}-node{node}.log").read_text()

    def steps(self, rank: int) -> list[dict]:
        return rm_run.read_steps(self.out / "metrics", rank)

    @property
    def ckpt(self) -> Path:
        return self.out / "ckpt"


def rank_process(launcher: subprocess.Popen, rank: int) -> psutil.Process:
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "normbt_plugin.train_rm" in child.cmdline():
                return child
        except psutil.NoSuchProcess:
            continue
    raise AssertionError(f"no rank {rank} under launcher {launcher.pid}")


def saved_loss_states(ckpt_dir: Path) -> list[dict]:
    """The plugin's loss state in every model-states file of one checkpoint (one per rank in ZeRO-3)."""
    files = sorted(ckpt_dir.glob("*model_states.pt"))
    assert files, list(ckpt_dir.iterdir())
    loaded = [torch.load(f, map_location="cpu", weights_only=False) for f in files]
    return [states["normbt_plugin_loss"]["state"] for states in loaded]


def make_half_written(ckpt: Path, complete: str, tag: str) -> None:
    """What DeepSpeed leaves when rank 1 dies while writing its ZeRO shard: rank 0's files and
    ``latest`` written (rank 0 does not wait for the others before it writes ``latest``), rank 1's
    shard cut short, and no completion mark."""
    guard = patch_module("checkpoint_guard")
    shutil.copytree(ckpt / complete, ckpt / tag)
    (ckpt / tag / guard.COMPLETE).unlink()
    shard = next((ckpt / tag).glob("*rank_1_mp_rank_00_optim_states.pt"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    guard.saving_mark(ckpt, tag).write_text(tag)
    (ckpt / "latest").write_text(tag)


@pytest.mark.parametrize("zero", [2, 3])
def test_two_nodes_survive_a_killed_rank_and_resume(tiny, tmp_path, zero):
    nodes = TwoNodes(tiny, tmp_path, zero)
    with started(nodes.commands("first")) as (node0, node1):
        wait_for(lambda: len(nodes.steps(1)) >= 10 or node0.poll() is not None, 300, "step 10 on rank 1")
        assert node0.poll() is None, nodes.log("first", 0)[-3000:]
        victim = rank_process(node1, rank=1)
        victim.send_signal(signal.SIGKILL)  # not a clean stop
        killed_at = time.monotonic()
        for launcher in (node0, node1):
            launcher.wait(timeout=KILL_TO_EXIT_S)
        stopped_in = time.monotonic() - killed_at
    assert node0.returncode != 0 and node1.returncode != 0
    log0 = nodes.log("first", 0)
    assert "normbt-plugin: rank 0 lost another rank of this job" in log0, log0[-3000:]
    assert f"--ckpt.load_enable: it continues from the newest complete checkpoint in {nodes.ckpt}" in log0
    print(f"ZeRO-{zero}: rank 1 killed at step {len(nodes.steps(1))}; nodes stopped in {stopped_in:.1f} s")

    # the checkpoint on disk: --ckpt.max_num 1 kept exactly the newest whole one
    guard = patch_module("checkpoint_guard")
    tags = sorted(d.name for d in nodes.ckpt.iterdir() if d.is_dir())
    assert len(tags) == 1 and guard.is_complete(nodes.ckpt / tags[0]), tags
    complete = tags[0]
    step = int(complete.removeprefix("global_step"))
    before = nodes.steps(0)
    # the loss state: one value (ZeRO-3 writes a model-states file per rank: every copy equal),
    # the state rank 0 recorded at that step; mu is bit-identical on both ranks of both nodes
    saved = saved_loss_states(nodes.ckpt / complete)
    assert len(saved) == (2 if zero == 3 else 1)
    assert all(s == before[step - 1]["loss_state"] for s in saved), (saved, before[step - 1])
    assert [r["loss_state"] for r in before] == [r["loss_state"] for r in nodes.steps(1)][: len(before)]

    # killed during the next save: resume must skip it and use the complete one
    half = f"global_step{step + 4}"
    make_half_written(nodes.ckpt, complete, half)
    with started(nodes.commands("resume", "--ckpt.load_enable")) as launchers:
        for launcher in launchers:
            launcher.wait(timeout=600)
    log0 = nodes.log("resume", 0)
    assert [p.returncode for p in launchers] == [0, 0], log0[-3000:]
    assert f"{nodes.ckpt / half} was not completely written" in log0
    assert f"resuming from {nodes.ckpt / complete}, the newest complete checkpoint" in log0
    restored = re.search(r"restored normbt state (\{.*\})", log0).group(1)
    assert restored == str(saved[0])
    ranks = [nodes.steps(0), nodes.steps(1)]
    assert [r["step"] for r in ranks[0]] == list(range(1, 33))  # 256 pairs / 16 a step x 2 epochs
    assert [r["loss_state"] for r in ranks[0]] == [r["loss_state"] for r in ranks[1]]  # both restored
    after = ranks[0][step]["loss_state"]  # the first step after the checkpoint, on both ranks
    assert after["steps"] == saved[0]["steps"] + 1  # one update a step (16 pairs: 2 micro-batches x 2 ranks)
    assert after["mu"] != saved[0]["mu"] and ranks[0][step - 1]["loss_state"] == saved[0]
    # the half-written folder was rewritten by the resumed run's own save at that step, then rotated
    final = sorted(d.name for d in nodes.ckpt.iterdir() if d.is_dir())
    assert final == ["global_step32"] and guard.is_complete(nodes.ckpt / final[0]), final


def test_resume_picks_a_complete_checkpoint_or_says_what_to_remove(tmp_path):
    guard = patch_module("checkpoint_guard")

    def folder(tag: str, complete: bool, saving: bool = False) -> None:
        (tmp_path / tag).mkdir()
        if complete:
            (tmp_path / tag / guard.COMPLETE).write_text("{}")
        if saving:
            guard.saving_mark(tmp_path, tag).write_text(tag)

    assert guard.choose_tag(tmp_path) == (None, None)  # nothing saved: DeepSpeed starts fresh
    folder("global_step4", complete=True)
    folder("global_step8", complete=False, saving=True)
    (tmp_path / "latest").write_text("global_step4")
    assert guard.choose_tag(tmp_path) == ("global_step4", None)
    (tmp_path / "latest").write_text("global_step8")
    tag, message = guard.choose_tag(tmp_path)
    assert tag == "global_step4" and "global_step8 was not completely written" in message
    shutil.rmtree(tmp_path / "global_step4")
    with pytest.raises(SystemExit, match=r"remove .*global_step8 and .*latest to start this run fresh"):
        guard.choose_tag(tmp_path)
    guard.saving_mark(tmp_path, "global_step8").unlink()  # no marks at all: saved without the plugin
    assert guard.choose_tag(tmp_path)[0] == "global_step8"
    (tmp_path / "latest").write_text("global_step12")
    with pytest.raises(SystemExit, match="names global_step12, which is not in"):
        guard.choose_tag(tmp_path)
