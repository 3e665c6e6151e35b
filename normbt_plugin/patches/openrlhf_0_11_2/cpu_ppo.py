"""Run OpenRLHF 0.11.2's Ray PPO (DeepSpeed models, vLLM rollouts, weight sync) without a GPU.

Why, each a hard-coded CUDA or bf16 assumption upstream (on top of ``cpu_gloo``):
- ``NaiveReplayBuffer`` targets ``torch.device(f"cuda:{current_device()}")``: CPU instead;
- ``torch.cuda.current_stream()`` is passed to the weight broadcast: a stand-in;
- the actor -> vLLM weight sync builds a PyNccl group and receives into ``device="cuda"``: a gloo
  group from vLLM's stateless helper, broadcasting from the group-local root, received on CPU.
float32 training (vLLM's CPU engine needs it: its bf16 path wants AMX state that Ray's
``OMP_NUM_THREADS=1`` actors lack) is ``cpu_fp32``; the vLLM side (engine dtype, packed weights)
is ``vllm_cpu``. Applied only in CPU jobs (``common.device_mode``) and only in PPO jobs
(``apply_openrlhf_patches(ppo=True)``).
Upstreamable as: a ``device`` on the strategy.
"""

from __future__ import annotations

import importlib

import torch

from normbt_plugin import collectives
from normbt_plugin.common.device_mode import cpu_job
from normbt_plugin.patches.openrlhf_0_11_2 import is_patched, mark_patched


def needed() -> bool:
    return cpu_job()  # the job's mode, not this process's view (a zero-GPU Ray actor sees none)


class GlooBroadcaster:
    """The slice of PyNcclCommunicator that OpenRLHF's weight sync uses, over a gloo group."""

    def __init__(self, group) -> None:
        self.group = group

    def broadcast(self, tensor: torch.Tensor, src: int, stream=None) -> None:
        collectives.broadcast_in(self.group, tensor, src)


def stateless_gloo_group(master_address, master_port, rank, world_size, device=None):
    from vllm.distributed.utils import stateless_init_torch_distributed_process_group

    group = stateless_init_torch_distributed_process_group(
        master_address, master_port, rank, world_size, backend="gloo"
    )
    return GlooBroadcaster(group)


def apply() -> None:
    torch.cuda.current_stream = lambda device=None: None

    buffers = importlib.import_module("openrlhf.trainer.ppo_utils.replay_buffer")
    init = buffers.NaiveReplayBuffer.__init__
    if not is_patched(init, "cpu_ppo"):

        def __init__(self, *args, **kwargs) -> None:
            current = torch.cuda.current_device
            torch.cuda.current_device = lambda: 0  # "cuda:0" is a valid name, never used
            try:
                init(self, *args, **kwargs)
            finally:
                torch.cuda.current_device = current
            self.target_device = torch.device("cpu")

        mark_patched(__init__, "cpu_ppo")
        buffers.NaiveReplayBuffer.__init__ = __init__

    # imported by name into ppo_actor; the vLLM worker imports it from distributed_util on use
    importlib.import_module(
        "openrlhf.utils.distributed_util"
    ).stateless_init_process_group = stateless_gloo_group
    importlib.import_module(
        "openrlhf.trainer.ray.ppo_actor"
    ).stateless_init_process_group = stateless_gloo_group
