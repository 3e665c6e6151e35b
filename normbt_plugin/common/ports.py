"""Local ports for torch.distributed masters and Ray that no outgoing connection can take first.

The usual way to find a free port (bind port 0, read it, close the socket, hand it on) leaves a
window before the real owner binds it; the kernel hands ports from ``ip_local_port_range`` to every
outgoing connection meanwhile (vLLM, Ray and gloo open many), and when one lands on it the owner
fails with ``EADDRINUSE`` (OpenRLHF issues #674, #779; once in this project's CI). A port below that
range can be taken only by an explicit bind, so ``free_port`` picks one there.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 20000  # Ray's worker processes take 10002-19999 by default
PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_start() -> int:
    """The first port the kernel assigns by itself (Linux's default where it cannot be read)."""
    try:
        return int(PORT_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def bind_below_ephemeral(sock: socket.socket, host: str = "", tries: int = 64) -> None:
    """Bind ``sock`` to a random port in [``LOWEST``, start of the ephemeral range) on ``host``; where
    that range is empty or nothing in it binds, to one the kernel picks (the usual way)."""
    rng = random.SystemRandom()  # independent of any seeded global generator
    high = ephemeral_start()
    for _ in range(tries if high > LOWEST else 0):
        try:
            sock.bind((host, rng.randrange(LOWEST, high)))
        except OSError:
            continue
        return
    socket.socket.bind(sock, (host, 0))  # not a subclass's bind: BelowEphemeralSocket's would come back here


def free_port(host: str = "") -> int:
    """A port for a master that binds it later: below the ephemeral range, free now."""
    with socket.socket() as sock:
        bind_below_ephemeral(sock, host)
        return sock.getsockname()[1]


class BelowEphemeralSocket(socket.socket):
    """A socket whose ``bind((host, 0))`` takes a port below the ephemeral range instead."""

    def bind(self, address) -> None:
        if isinstance(address, tuple) and len(address) == 2 and address[1] == 0:
            bind_below_ephemeral(self, address[0])
        else:
            super().bind(address)
