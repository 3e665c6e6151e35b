"""OpenRLHF's reward-model stage with normbt-plugin's losses.

    deepspeed --module normbt_plugin.train_rm <any openrlhf.cli.train_rm flag> \\
        --model.loss_type normbt --normbt.beta 0.9
    python -m normbt_plugin.train_rm ...            # one process

Runs the stock ``openrlhf.cli.train_rm`` (its parser, its ``train()``) after applying the
patches for the installed OpenRLHF in this process; every DeepSpeed rank runs this module.
"""

from __future__ import annotations

import os
import runpy
import socket
import sys


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


def main() -> None:
    single_process_env()
    from normbt_plugin.patches import UnsupportedOpenRLHFError, apply_openrlhf_patches

    try:
        apply_openrlhf_patches()
    except UnsupportedOpenRLHFError as exc:
        sys.exit(f"normbt-plugin: {exc}")
    from normbt_plugin.patches.openrlhf_0_11_2.cli_options import extended_parser

    with extended_parser():
        runpy.run_module("openrlhf.cli.train_rm", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
