"""Give each Ray actor group's torch.distributed master a port the kernel never hands out by itself.

Why: OpenRLHF 0.11.2's ``BaseDistributedActor._get_free_port`` binds port 0, closes the socket and
returns that port; the group's master binds it only later, in ``init_model_from_pretrained``, after
the vLLM engines and Ray workers have opened many connections, each of which takes a local port
from the same ephemeral range. When one takes it first, start-up fails with ``DistNetworkError ...
EADDRINUSE`` (upstream issues #674 and #779: frequent with many actors on one node; once in this
project's CI, 2026-12-03, the critic's group). The kernel assigns ports only from
``ip_local_port_range``, so a port below it can be taken only by an explicit bind.
What changes: a random port in [20000, start of ``ip_local_port_range``) (above Ray's default worker
ports, 10002-19999) that binds now; upstream's choice where that range is empty or nothing binds.
Upstreamable as: the same function in ``launcher.py``.
"""

from __future__ import annotations

import functools
import importlib
import random
import socket
from pathlib import Path

from normbt_plugin.patches.openrlhf_0_11_2 import is_patched, mark_patched

LOWEST = 20000  # Ray's worker processes take 10002-19999 by default
PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def needed() -> bool:
    return True


def ephemeral_start() -> int:
    """The first port the kernel assigns by itself (Linux's default where it cannot be read)."""
    try:
        return int(PORT_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(tries: int = 64) -> int | None:
    """A port below the ephemeral range that binds now; None where there is no room or none binds."""
    rng = random.SystemRandom()  # independent of any seeded global generator
    high = ephemeral_start()
    for _ in range(tries if high > LOWEST else 0):
        port = rng.randrange(LOWEST, high)
        with socket.socket() as sock:
            try:
                sock.bind(("", port))
            except OSError:
                continue
            return port
    return None


def apply() -> None:
    launcher = importlib.import_module("openrlhf.trainer.ray.launcher")
    original = launcher.BaseDistributedActor.__dict__["_get_free_port"].__func__
    if is_patched(original, "free_port"):
        return

    @functools.wraps(original)
    def _get_free_port() -> int:
        return free_port() or original()  # upstream's choice where there is no room below the range

    launcher.BaseDistributedActor._get_free_port = staticmethod(mark_patched(_get_free_port, "free_port"))
