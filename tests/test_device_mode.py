"""CPU or GPU mode is the job's, decided once by its driver: a Ray actor that holds no GPU (Ray
gives it ``CUDA_VISIBLE_DEVICES=""``) in a GPU job gets no CPU patch, though it sees no GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from normbt_plugin.common import device_mode

# The driver of a job on a node with one GPU (Ray is told of it): its decision, handed to the
# actors through the job's runtime_env as train_ppo builds it; one actor holding no GPU imports
# OpenRLHF (the autopatch hook applies the PPO patches there) and reports what it sees.
ACTOR_OF_A_JOB = """
import json, os, sys
import ray
from normbt_plugin.common.device_mode import decide_job_device
from normbt_plugin.train_ppo import job_env

os.environ["NORMBT_PLUGIN_DEVICE"] = sys.argv[1]
decide_job_device()
ray.init(num_cpus=1, num_gpus=1, include_dashboard=False, runtime_env={"env_vars": job_env()})

@ray.remote(num_gpus=0)
def zero_gpu_actor():
    import openrlhf  # noqa: F401  (the hook applies the patches right after this import)
    from normbt_plugin.patches import _active
    return {"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "active": list(_active)}

print("RESULT", json.dumps(ray.get(zero_gpu_actor.remote(), timeout=600)))
ray.shutdown()
"""
CPU_PATCHES = {"cpu_gloo", "cpu_fp32", "cpu_ppo", "vllm_cpu"}


def actor_report(mode: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", ACTOR_OF_A_JOB, mode],
        cwd=REPO, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


@pytest.mark.slow
def test_a_zero_gpu_actor_of_a_gpu_job_gets_no_cpu_patch():
    gpu_job = actor_report("gpu")
    assert gpu_job["visible"] == ""  # Ray hid every GPU from it: its own torch sees none
    assert "registered_loss" not in gpu_job["active"] and "reward_norm" in gpu_job["active"]  # PPO's
    assert not CPU_PATCHES & set(gpu_job["active"]), gpu_job
    cpu_job = actor_report("cpu")  # the same actor in a CPU job: the CPU patches reach it
    assert CPU_PATCHES <= set(cpu_job["active"]), cpu_job


def test_the_mode_is_read_from_the_job_and_a_bad_value_is_refused(monkeypatch):
    monkeypatch.setenv(device_mode.ENV, "gpu")
    assert device_mode.job_device() == "gpu" and not device_mode.cpu_job()  # no GPU here: the job's word
    monkeypatch.delenv(device_mode.ENV)
    assert device_mode.decide_job_device() == "cpu"  # this machine has none
    assert device_mode.job_device() == "cpu"
    monkeypatch.setenv(device_mode.ENV, "cuda")
    with pytest.raises(ValueError, match="one of cpu, gpu"):
        device_mode.job_device()


APPLY_RM_PATCHES = "from normbt_plugin.patches import apply_openrlhf_patches; apply_openrlhf_patches()"


@pytest.mark.parametrize("mode", ["gpu", "cpu"])
def test_a_gpu_job_without_flash_attn_says_so_at_the_start(mode):
    from normbt_plugin.patches.openrlhf_0_11_2.flash_attn_standin import GPU_WARNING

    proc = subprocess.run([sys.executable, "-c", APPLY_RM_PATCHES], capture_output=True, text=True,
                          timeout=300, check=False, env={**os.environ, device_mode.ENV: mode})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (GPU_WARNING[:60] in proc.stderr) == (mode == "gpu")  # on CPU the stand-in is the plan
