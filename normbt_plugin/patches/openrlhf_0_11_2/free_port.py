"""Give every torch.distributed master a PPO job starts a port no outgoing connection can take first.

Why: OpenRLHF 0.11.2 picks each master port the racy way, binding port 0 and closing the socket,
and the master binds it only later: each Ray actor group's (``BaseDistributedActor._get_free_port``,
bound in ``init_model_from_pretrained`` after the vLLM engines and Ray workers have opened many
connections) and the actor -> vLLM weight-sync group's (inline in
``PolicyModelActor._init_vllm_sync_group``, bound after the engines were asked to join). When an
outgoing connection takes the port first, start-up fails with ``EADDRINUSE`` (upstream #674, #779;
once in this project's CI, 2026-12-03, the critic's group).
What changes: both take a port below the kernel's ephemeral range (``normbt_plugin.common.ports``):
``_get_free_port`` is replaced; ``ppo_actor``, which uses ``socket`` only to pick that port, sees a
``socket`` whose ``bind((host, 0))`` does so.
Upstreamable as: ``free_port`` in ``openrlhf.utils`` used at both places.
"""

from __future__ import annotations

import importlib
import types

from normbt_plugin.common.ports import BelowEphemeralSocket, free_port
from normbt_plugin.patches.openrlhf_0_11_2 import is_patched, mark_patched


def needed() -> bool:
    return True


def apply() -> None:
    actor = importlib.import_module("openrlhf.trainer.ray.launcher").BaseDistributedActor
    if not is_patched(actor.__dict__["_get_free_port"].__func__, "free_port"):
        actor._get_free_port = staticmethod(mark_patched(lambda: free_port(), "free_port"))

    ppo_actor = importlib.import_module("openrlhf.trainer.ray.ppo_actor")
    if not is_patched(ppo_actor.socket, "free_port"):
        ppo_actor.socket = mark_patched(types.SimpleNamespace(socket=BelowEphemeralSocket), "free_port")
