"""What the three launchers (train_rm, train_sft, train_ppo) share: a one-rank world for ``python -m``,
and running a stock OpenRLHF CLI module after this process's patches, inside a parser hook."""

from __future__ import annotations

import contextlib
import os
import runpy
import socket
import sys
from collections.abc import Callable


def single_process_env() -> None:
    """``python -m`` without a launcher: a one-rank world on a free local port (not MPI)."""
    if "RANK" in os.environ or "OMPI_COMM_WORLD_RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
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

    try:
        apply_openrlhf_patches(ppo=ppo)
    except UnsupportedOpenRLHFError as exc:
        sys.exit(f"normbt-plugin: {exc}")
    with parser() if parser is not None else contextlib.nullcontext():
        runpy.run_module(module, run_name="__main__", alter_sys=True)
