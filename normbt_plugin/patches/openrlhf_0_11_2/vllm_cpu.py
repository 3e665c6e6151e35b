"""vLLM's CPU build as OpenRLHF 0.11.2's rollout engine: float32, no sleep mode, real weight sync.

Why:
- ``create_vllm_engines`` hard-codes ``dtype="bfloat16"``; vLLM CPU's bf16 attention dies with
  SIGILL in Ray actors (``OMP_NUM_THREADS=1`` without AMX set up) and the weight sync asserts
  the trainer's dtype: the engine runs float32. vLLM CPU refuses ``enable_sleep_mode``: off.
- On CPU, vLLM packs each linear weight into a private copy after loading and drops
  ``layer.weight`` (``dispatch_cpu_unquantized_gemm(remove_weight=True)``), so OpenRLHF's
  ``load_weights`` during a sync either fails or changes nothing that generation reads. The
  weights are kept, and after the last tensor of a sync the packing is redone.
- ``WorkerWrap.update_weight`` receives into ``device="cuda"``: the worker's own device.
Applied only in CPU jobs (``common.device_mode``) and only in PPO jobs.
Upstreamable as: a device-agnostic ``update_weight`` that calls ``process_weights_after_loading``.
"""

from __future__ import annotations

import importlib

import torch

from normbt_plugin.common.device_mode import cpu_job
from normbt_plugin.common.vllm_weights import keep_cpu_weights, repack_weights
from normbt_plugin.patches.openrlhf_0_11_2 import is_patched, mark_patched


def needed() -> bool:
    return cpu_job()  # the job's mode, not this process's view (a zero-GPU Ray actor sees none)


def update_weight(self, name, dtype, shape, empty_cache=False):
    """``WorkerWrap.update_weight`` on the worker's device; repacks after the last tensor."""
    assert dtype == self.model_config.dtype, f"mismatch dtype: src {dtype}, dst {self.model_config.dtype}"
    weight = torch.empty(shape, dtype=dtype, device=self.device)
    if self._model_update_with_ray:
        import ray.util.collective as collective

        collective.broadcast(weight, 0, group_name=self._model_update_group)
    else:
        self._model_update_group.broadcast(weight, src=0)
    model = self.model_runner.model
    model.load_weights(weights=[(name, weight)])
    if empty_cache:  # OpenRLHF sets it on the last parameter of a sync
        repack_weights(model)


def apply() -> None:
    import vllm

    keep_cpu_weights()  # syncs load into layer.weight

    engine_args = vllm.AsyncEngineArgs
    if not is_patched(engine_args, "vllm_cpu"):

        def cpu_engine_args(*args, **kwargs):
            kwargs["dtype"] = "float32"
            kwargs["enable_sleep_mode"] = False
            return engine_args(*args, **kwargs)

        mark_patched(cpu_engine_args, "vllm_cpu")
        vllm.AsyncEngineArgs = cpu_engine_args

    wrap = importlib.import_module("openrlhf.trainer.ray.vllm_worker_wrap")
    wrap.WorkerWrap.update_weight = update_weight
