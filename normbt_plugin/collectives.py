"""Every torch.distributed collective the plugin calls, on the device its process group serves (core).

A process group serves some device types only: gloo serves the host (and CUDA), NCCL serves
``cuda`` only. DeepSpeed 0.19.6 on GPUs makes the default group ``nccl``, so a collective on a host
tensor (a metric built with ``torch.tensor(...)``) raises ``No backend type associated with device
type cpu`` there, while the CPU tests' gloo groups accept it. Here a tensor goes to the group's
device first (the host when the group serves it, else the current accelerator) and comes back on
the device it came from. ``tests/test_collectives.py`` holds the rule that no other module of the
plugin calls a collective directly.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.distributed as dist

Op = Literal["sum", "max", "min"]
_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN"}


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size(group: Any = None) -> int:
    """Ranks in ``group`` (the default group when None); 1 without torch.distributed."""
    return dist.get_world_size(group) if initialized() else 1


def served_device(group: Any = None) -> torch.device:
    """The device a collective of ``group`` takes tensors on: the host if the group serves it,
    else the current device of the accelerator it serves (``cuda`` for NCCL)."""
    types = dist.distributed_c10d._device_capability(group)
    if "cpu" in types or not types:
        return torch.device("cpu")
    kind = types[0]
    module = getattr(torch, kind, None)
    usable = module is not None and hasattr(module, "current_device") and module.is_available()
    return torch.device(kind, module.current_device() if usable else None)


def all_reduce(tensor: torch.Tensor, op: Op = "sum", group: Any = None) -> torch.Tensor:
    """``tensor`` reduced over ``group``, on ``tensor``'s own device (a new tensor when moved)."""
    if world_size(group) == 1:
        return tensor
    device = served_device(group)
    work = tensor.to(device)
    dist.all_reduce(work, op=getattr(dist.ReduceOp, _OPS[op]), group=group)
    return work.to(tensor.device)


def all_gather_object(obj: Any, group: Any = None) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order."""
    if world_size(group) == 1:
        return [obj]
    out: list[Any] = [None] * world_size(group)
    dist.all_gather_object(out, obj, group=group)  # torch moves the pickles to the group's device
    return out


def all_gather_into_tensor(tensor: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along dim 0 (same shape on every rank)."""
    size = world_size(group)
    if size == 1:
        return tensor
    work = tensor.to(served_device(group)).contiguous()
    out = torch.empty((size * work.shape[0], *work.shape[1:]), dtype=work.dtype, device=work.device)
    dist.all_gather_single(out, work, group=group)
    return out.to(tensor.device)


def broadcast_in(group: Any, tensor: torch.Tensor, src: int) -> None:
    """Broadcast ``tensor`` in place from ``src`` (a rank of ``group``) over a process group that
    torch.distributed does not know (vLLM's stateless groups: PPO's weight sync without NCCL)."""
    opts = dist.BroadcastOptions()
    opts.rootRank, opts.rootTensor = src, 0  # rank within this group, not the world
    group.broadcast([tensor], opts).wait()
