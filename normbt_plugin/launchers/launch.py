"""What the three launchers (train_rm, train_sft, train_ppo) share: a one-rank world for ``python -m``,
running a stock OpenRLHF CLI module after this process's patches, inside a parser hook, and one
clear message when another rank of a DeepSpeed job dies."""

from __future__ import annotations

import contextlib
import os
import runpy
import sys
from collections.abc import Callable

from normbt_plugin.common.device_mode import decide_job_device
from normbt_plugin.common.ports import free_port


def single_process_env() -> None:
    """``python -m`` without a launcher: a one-rank world on a free local port (not MPI)."""
    if "RANK" in os.environ or "OMPI_COMM_WORLD_RANK" in os.environ:
        return
    port = free_port("127.0.0.1")
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"})
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(port))


def run_openrlhf_cli(
    module: str,
    *,
    ppo: bool = False,
    parser: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> None:
    """Apply the patches for this stage, then run an OpenRLHF CLI module as ``__main__``
    (inside ``parser()``, which may extend or check its argument parser)."""
    from normbt_plugin.patches import UnsupportedOpenRLHFError, apply_openrlhf_patches

    decide_job_device()  # once: every rank, Ray worker and vLLM process reads this decision
    try:
        apply_openrlhf_patches(ppo=ppo)
    except UnsupportedOpenRLHFError as exc:
        sys.exit(f"normbt-plugin: {exc}")
    with stop_clearly_on_a_lost_rank(), parser() if parser is not None else contextlib.nullcontext():
        runpy.run_module(module, run_name="__main__", alter_sys=True)


# What torch's gloo/NCCL collectives raise when a peer process is gone (killed, crashed, node lost)
LOST_PEER = (
    "Connection reset by peer",
    "Connection closed by peer",
    "Connection refused",
    "Broken pipe",
    "NCCL communicator was aborted",
)


def _flag(name: str) -> str | None:
    argv = sys.argv
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


@contextlib.contextmanager
def stop_clearly_on_a_lost_rank():
    """A collective that fails because another rank died ends this rank with what happened and
    how to resume, instead of a gloo/NCCL traceback (a dead peer closes its sockets: seconds; a
    hung one is waited out by the process group's timeout, OpenRLHF's 60 minutes)."""
    try:
        yield
    except RuntimeError as exc:
        if not any(s in str(exc) for s in LOST_PEER):
            raise
        ckpt = _flag("--ckpt.path") or "./ckpt"
        sys.exit(
            f"normbt-plugin: rank {os.environ.get('RANK', '?')} lost another rank of this job "
            f"({str(exc).splitlines()[0][:200]}): a rank or node died or was killed, and the job "
            f"stops. To resume, run the same command on every node with --ckpt.load_enable: it "
            f"continues from the newest complete checkpoint in {ckpt} (saved every --ckpt.save_steps)."
        )
