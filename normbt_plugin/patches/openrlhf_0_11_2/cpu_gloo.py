"""Run OpenRLHF 0.11.2's DeepSpeed strategy on a machine without a GPU (gloo, CPU tensors).

Why: ``DeepspeedStrategy`` calls ``torch.cuda.set_device``, ``init_device_mesh("cuda", ...)``,
``torch.cuda.current_device()`` (all_reduce / all_gather) and ``torch.cuda.synchronize()``
(barrier), which all fail without CUDA. DeepSpeed itself also JIT-compiles two ops at start-up
(``deepspeed_shm_comm`` and ``fused_adam``, about 110 s on a cold cache) that plain torch replaces.
Upstreamable as: a ``device`` attribute on the strategy instead of hard-coded "cuda".
Applied only in CPU jobs (``common.device_mode``); never changes a GPU run.
"""

from __future__ import annotations

import importlib
import os

import torch

from normbt_plugin.common.device_mode import cpu_job


def needed() -> bool:
    return cpu_job()  # the job's mode, not this process's view (a zero-GPU Ray actor sees none)


def apply() -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # torch.cuda stand-ins for the few calls OpenRLHF's strategy makes; "cpu" is a valid device
    # for .to() and torch.zeros_like(...).to(...), which is all current_device() feeds.
    torch.cuda.set_device = lambda device: None
    torch.cuda.current_device = lambda: "cpu"
    torch.cuda.synchronize = lambda device=None: None
    torch.cuda.empty_cache = lambda: None

    from torch.distributed.device_mesh import init_device_mesh

    def init_cpu_device_mesh(device_type: str, *args, **kwargs):
        return init_device_mesh("cpu" if device_type == "cuda" else device_type, *args, **kwargs)

    ds_strategy = importlib.import_module("openrlhf.utils.deepspeed.deepspeed")
    ds_strategy.init_device_mesh = init_cpu_device_mesh

    # No on-the-fly op builds: the shared-memory collective is an optimisation only, and
    # "torch_adam" makes DeepSpeed use torch.optim.AdamW instead of compiling FusedAdam.
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    original = ds_strategy.DeepspeedStrategy.get_ds_train_config

    def get_ds_train_config(self, optim_dict=None, *, max_norm=None):
        config = original(self, optim_dict, max_norm=max_norm)
        optimizer = config.get("optimizer")
        if optimizer and optimizer.get("type") == "AdamW" and not self.adam_offload:
            optimizer.setdefault("params", {})["torch_adam"] = True
        return config

    ds_strategy.DeepspeedStrategy.get_ds_train_config = get_ds_train_config
