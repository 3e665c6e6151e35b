"""Collectives on the device the process group serves, and nowhere else but ``collectives``.

On GPUs DeepSpeed's default group is NCCL, which serves ``cuda`` tensors only; the CPU tests' gloo
serves the host too, and so hid a collective on a host tensor (every multi-GPU RM run's first
logging step). ``cuda:gloo`` is a gloo group that, like NCCL, serves only ``cuda``: on this CPU a
host tensor handed to it raises the very error an NCCL group raises.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from normbt_plugin import collectives
from normbt_plugin.common.ports import free_port

PACKAGE = Path(__file__).resolve().parents[1] / "normbt_plugin"
HOST_TENSOR_ERROR = "No backend type associated with device type cpu"


def _rank(rank: int, world: int, port: int, backend: str, out: Path) -> None:
    from normbt_plugin.losses import NormBTLoss
    from normbt_plugin.rank_metrics import gather_distance_bins, reduce_metrics

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(backend, rank=rank, world_size=world)
    result: dict = {"device": str(collectives.served_device())}
    local = {"loss": [1.0 + rank, 3.0 + rank], "acc_min": [0.5 - rank], "acc_max": [0.5 + rank]}
    try:
        result["metrics"] = reduce_metrics(local)
    except Exception as exc:  # what a GPU run meets at its first logging step
        result["error"] = f"{type(exc).__name__}: {exc}"
    if "error" not in result:
        distances = torch.arange(4, dtype=torch.float64) + 4 * rank
        bins = gather_distance_bins([(distances, distances % 2 == 0)], n_bins=2)
        result["bins"] = [(b.n, b.acc) for b in bins]
        result["gathered"] = collectives.all_gather_into_tensor(torch.full((2, 3), float(rank))).tolist()
        loss = NormBTLoss()
        hidden = torch.zeros(2, 4)
        chosen = hidden.clone()
        chosen[:, 0] = 1.0 + 2 * rank  # distances 1 (rank 0) and 3 (rank 1): the mean over both is 2
        loss(torch.zeros(2), torch.zeros(2), chosen, hidden)
        result["mu"] = loss.mu
    out.write_text(json.dumps(result))
    dist.destroy_process_group()


def run_ranks(tmp_path: Path, backend: str, world: int = 2) -> list[dict]:
    port, outs = free_port("127.0.0.1"), [tmp_path / f"rank{r}.json" for r in range(world)]
    ranks = [
        subprocess.Popen([sys.executable, __file__, str(r), str(world), str(port), backend, str(outs[r])])
        for r in range(world)
    ]
    assert [p.wait(timeout=300) for p in ranks] == [0] * world
    return [json.loads(out.read_text()) for out in outs]


def test_a_group_that_serves_only_the_accelerator_gets_no_host_tensor(tmp_path):
    """The reason every multi-GPU RM run stopped: a host tensor on a group serving ``cuda`` only.
    With the plugin's metrics built on the host and reduced as they were, this raises the backend
    error; through ``collectives`` they go to the group's device (here no CUDA exists, so the move
    itself is what fails, after the device was chosen right)."""
    for result in run_ranks(tmp_path, "cuda:gloo"):
        assert result["device"].startswith("cuda")
        assert HOST_TENSOR_ERROR not in result["error"]
        assert "CUDA" in result["error"]  # the move to the served device: no CUDA on this machine


def test_collectives_on_a_group_that_serves_the_host_give_every_ranks_values(tmp_path):
    for result in run_ranks(tmp_path, "gloo"):
        assert result["device"] == "cpu"
        assert result["metrics"] == {"loss": 2.5, "acc_min": -0.5, "acc_max": 1.5}
        assert result["bins"] == [[4, 0.5], [4, 0.5]]  # 8 distances from two ranks
        assert result["gathered"] == [[0.0] * 3] * 2 + [[1.0] * 3] * 2
        assert result["mu"] == pytest.approx(2.0)  # NormBT's EMA starts at the mean over both ranks


COLLECTIVES = {
    name
    for name in dir(dist)
    if any(k in name for k in ("reduce", "gather", "broadcast", "scatter", "barrier", "send", "recv"))
}


def _direct_collective_calls(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    aliases = {"torch.distributed"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname or a.name for a in node.names if a.name == "torch.distributed"}
        elif isinstance(node, ast.ImportFrom):
            if node.module == "torch" and any(a.name == "distributed" for a in node.names):
                aliases |= {a.asname or a.name for a in node.names if a.name == "distributed"}
            if node.module == "torch.distributed":
                aliases |= {f"<{a.name}>" for a in node.names if a.name in COLLECTIVES}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in COLLECTIVES:
            if ast.unparse(node.value) in aliases:
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {ast.unparse(node)}")
    found += [f"{path.relative_to(PACKAGE)}: imports {a}" for a in aliases if a.startswith("<")]
    return found


def test_no_module_but_collectives_calls_a_collective():
    offenders = [
        call
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "collectives.py"
        for call in _direct_collective_calls(path)
    ]
    assert not offenders, f"call these through normbt_plugin.collectives: {offenders}"
    assert _direct_collective_calls(PACKAGE / "collectives.py")  # the rule sees a direct call


if __name__ == "__main__":  # one rank of run_ranks
    rank, world, port, backend, out = sys.argv[1:]
    _rank(int(rank), int(world), int(port), backend, Path(out))
