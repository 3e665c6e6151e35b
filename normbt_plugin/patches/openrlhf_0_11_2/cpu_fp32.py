"""Train in float32 where there is no GPU: ``--ds.param_dtype fp32``, and the CPU default.

Why: OpenRLHF's parsers accept only bf16/fp16 for ``--ds.param_dtype`` and
``convert_to_torch_dtype`` knows only those, so every CPU run trained in bf16. On CPUs without
native bf16 (AVX2 only, e.g. AMD EPYC) a bf16 ``Linear(384, 1536)`` forward+backward took 7.03 s
against 0.094 s in float32 (75x), the MiniLM RM stage 55 s a step against 2.4 s; vLLM's CPU
engine must run float32 anyway (``vllm_cpu``) and the weight sync asserts equal dtypes. Without a
GPU, the parsers (through the launchers' parser hook, ``cli_options.cpu_param_dtype``) take
``fp32`` and default to it, and DeepSpeed then runs with bf16/fp16 off. An explicit bf16 stays
bf16 (warned about on CPUs without native bf16). GPU runs are unchanged.
Upstreamable as: ``fp32`` in ``convert_to_torch_dtype`` and the ``--ds.param_dtype`` choices.
"""

from __future__ import annotations

import importlib

import torch

from normbt_plugin.common.device_mode import cpu_job
from normbt_plugin.patches.openrlhf_0_11_2 import is_patched, mark_patched

FP32 = ("fp32", "float32")


def needed() -> bool:
    return cpu_job()  # the job's mode, not this process's view (a zero-GPU Ray actor sees none)


def apply() -> None:
    utils = importlib.import_module("openrlhf.utils.utils")
    convert = utils.convert_to_torch_dtype
    if is_patched(convert, "cpu_fp32"):
        return

    def convert_to_torch_dtype(param_dtype: str) -> torch.dtype:
        return torch.float32 if param_dtype in FP32 else convert(param_dtype)

    mark_patched(convert_to_torch_dtype, "cpu_fp32")
    utils.convert_to_torch_dtype = convert_to_torch_dtype
