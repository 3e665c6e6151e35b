"""Whether a job runs on GPUs or on the CPU: decided once, in the process that starts the job.

A process cannot tell by asking ``torch.cuda.is_available()`` itself: Ray gives an actor that holds
no GPU ``CUDA_VISIBLE_DEVICES=""`` (OpenRLHF's rollout actors when vLLM's tensor parallel size is
above 1), so it sees no GPU inside a GPU job, and CPU-only patches (fp32 engines, no sleep mode)
would break the job. The driver decides from what it sees and writes the answer to
``NORMBT_PLUGIN_DEVICE``, which every rank, Ray worker and vLLM process inherits (Ray's
``runtime_env`` carries every ``NORMBT_PLUGIN_*`` variable); everyone else reads it.
"""

from __future__ import annotations

import os
from typing import Literal

ENV = "NORMBT_PLUGIN_DEVICE"
DeviceMode = Literal["cpu", "gpu"]
MODES: tuple[DeviceMode, ...] = ("cpu", "gpu")


def job_device() -> DeviceMode:
    """The job's mode: the driver's decision if one was made, else what this process sees."""
    value = os.environ.get(ENV)
    if value:
        if value not in MODES:
            raise ValueError(f"{ENV}={value!r}: set it to one of {', '.join(MODES)} (or unset it)")
        return value  # type: ignore[return-value]
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def decide_job_device() -> DeviceMode:
    """In the process that starts a job: decide once and hand the decision to every child."""
    mode = job_device()
    os.environ[ENV] = mode
    return mode


def cpu_job() -> bool:
    return job_device() == "cpu"
