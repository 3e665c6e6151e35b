"""OpenRLHF's Ray PPO (``openrlhf.cli.train_ppo_ray``) with the plugin's patches in every process.

    python -m normbt_plugin.train_ppo <any openrlhf.cli.train_ppo_ray flag>

Runs the stock CLI (its parser, its ``train()``). Before Ray starts it checks what would
otherwise fail minutes later inside an actor: model paths, the policy's and the reward models'
tokenizers, and the GPUs the layout asks for against those there are; on a cluster
(``RAY_ADDRESS``) also that the head answers and every node matches the driver
(``normbt_plugin.launchers.cluster``). While training, a watch ends the job when one of its actors dies.
The patches reach Ray's workers and vLLM's engine processes through ``normbt_plugin/autopatch``
(see its docstring).
On a machine without a GPU, Ray is told of one pretend GPU for its resource accounting; all
models then share it (``--train.colocate_all``, one of each, one vLLM engine).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import traceback

from normbt_plugin.common.device_mode import cpu_job, decide_job_device
from normbt_plugin.launchers.cluster import ActorWatch, NodeMismatchError, check_nodes, patched_environment
from normbt_plugin.launchers.launch import run_openrlhf_cli


class PreflightError(SystemExit):
    def __init__(self, message: str) -> None:
        super().__init__(f"normbt-plugin: {message}")


def _get(args: argparse.Namespace, key: str, default=None):
    return getattr(args, key, default)


def _looks_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or os.path.exists(path) or path.count("/") != 1


def check_paths(args: argparse.Namespace) -> None:
    """Local model and data paths must exist (hub names are left to the hub)."""
    named = [("--actor.model_name_or_path", _get(args, "actor.model_name_or_path"))]
    for flag in ("reward.model_name_or_path", "critic.model_name_or_path"):
        for path in (_get(args, flag) or "").split(","):
            if path:
                named.append((f"--{flag}", path))
    for path in (_get(args, "data.prompt_dataset") or "").split(","):
        if path:
            named.append(("--data.prompt_dataset", path))
    if not named[0][1]:
        raise PreflightError("--actor.model_name_or_path is required (the initial policy)")
    for flag, path in named:
        if _looks_local(path) and not os.path.exists(os.path.expanduser(path)):
            raise PreflightError(f"{flag} {path}: no such file or directory")


def check_tokenizers(args: argparse.Namespace) -> None:
    """The reward model scores the policy's token ids decoded and re-encoded by its own tokenizer:
    OpenRLHF assumes both tokenizers are the same, and a mismatch silently scores garbage."""
    from transformers import AutoTokenizer

    actor = _get(args, "actor.model_name_or_path")
    rewards = [p for p in (_get(args, "reward.model_name_or_path") or "").split(",") if p]
    if not rewards or _get(args, "reward.remote_url"):
        return
    policy_vocab = AutoTokenizer.from_pretrained(actor, trust_remote_code=True).get_vocab()
    for path in rewards:
        vocab = AutoTokenizer.from_pretrained(path, trust_remote_code=True).get_vocab()
        if vocab != policy_vocab:
            differ = len(set(vocab.items()) ^ set(policy_vocab.items()))
            raise PreflightError(
                f"the reward model {path} and the policy {actor} have different tokenizers "
                f"({len(vocab)} vs {len(policy_vocab)} tokens, {differ} entries differ): PPO scores "
                "the policy's tokens with the reward model, so train the reward model from the "
                "policy's base model (or one with the same tokenizer)"
            )


def job_env() -> dict[str, str]:
    """The environment of every process of the job, on every node (Ray's runtime_env)."""
    env = {
        **patched_environment(),
        "TOKENIZERS_PARALLELISM": "true",
        "RAY_ENABLE_ZERO_COPY_TORCH_TENSORS": "1",
    }
    if cpu_job():  # vLLM's CPU engine: a small KV cache, the worker in-process
        from normbt_plugin.common.environment import VLLM_CPU_ENV

        env.update({k: os.environ.get(k, v) for k, v in VLLM_CPU_ENV.items()})
    return env


def connect_ray() -> None:
    """Join the cluster at RAY_ADDRESS (``ray job submit`` sets it), or start a local Ray."""
    import ray

    runtime_env = {"env_vars": job_env()}
    if address := os.environ.get("RAY_ADDRESS"):
        check_answers(address)
        ray.init(address=address, runtime_env=runtime_env)
    elif not cpu_job():
        ray.init(runtime_env=runtime_env)
    else:  # no GPU: one pretend GPU for Ray's accounting, no dashboard competing for the cores
        ray.init(num_cpus=os.cpu_count(), num_gpus=1, include_dashboard=False, runtime_env=runtime_env)


def gpus_available() -> tuple[int, str]:
    """The GPUs the layout may use, and where they are (the cluster's: Ray is connected to it)."""
    import torch

    if address := os.environ.get("RAY_ADDRESS"):
        import ray

        return int(ray.cluster_resources().get("GPU", 0)), f"the Ray cluster at {address}"
    if not cpu_job():
        return torch.cuda.device_count(), "this machine"
    return 1, "this machine (no GPU: one pretend GPU for Ray's accounting)"


def check_answers(address: str, timeout_s: float = 5.0) -> None:
    """A head that does not answer is named in seconds (``ray.init`` would retry for a minute)."""
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as exc:
        raise PreflightError(
            f"no Ray head answers at RAY_ADDRESS={address} ({exc}): start it with "
            "`ray start --head --port=6379` or set RAY_ADDRESS to its host:port"
        ) from None


def check_gpus(args: argparse.Namespace) -> int:
    from normbt_plugin.patches import gpus_required

    need = gpus_required(args)
    have, where = gpus_available()
    if need > have:
        raise PreflightError(
            f"this layout needs {need} GPUs but {where} has {have}: lower the "
            "--{actor,ref,critic,reward}.num_gpus_per_node / num_nodes and --vllm.num_engines, "
            "or colocate (--train.colocate_all)"
        )
    return have


def check_cpu_flags(args: argparse.Namespace) -> None:
    if not cpu_job():
        return
    wrong = []
    if _get(args, "vllm.sync_backend") != "gloo":
        wrong.append("--vllm.sync_backend gloo")
    if _get(args, "ds.param_dtype") != "fp32":
        wrong.append("--ds.param_dtype fp32")
    if _get(args, "ds.attn_implementation") not in ("sdpa", "eager"):
        wrong.append("--ds.attn_implementation sdpa")
    if _get(args, "ds.packing_samples"):
        wrong.append("no --ds.packing_samples")
    if wrong:
        raise PreflightError(
            f"without a GPU, PPO needs {', '.join(wrong)} (see recipes/configs/tiny-cpu.env)"
        )


def preflight(args: argparse.Namespace) -> None:
    """Everything checkable before a model loads; Ray is up (local, or the cluster) afterwards."""
    check_paths(args)
    check_cpu_flags(args)
    check_tokenizers(args)
    if not os.environ.get("RAY_ADDRESS"):
        check_gpus(args)  # before a local Ray starts
        connect_ray()
        return
    connect_ray()
    check_gpus(args)
    try:
        check_nodes()
    except NodeMismatchError as exc:
        raise PreflightError(str(exc)) from None


def checked_parser() -> contextlib.AbstractContextManager[None]:
    """train_ppo_ray's parser, with fp32 allowed on CPU and the preflight checks after parsing."""
    from normbt_plugin.patches import ppo_parser

    def check_then_start_ray(parser: argparse.ArgumentParser, parsed: argparse.Namespace) -> None:
        if "--actor.model_name_or_path" in parser._option_string_actions:
            preflight(parsed)
            _watching.append(ActorWatch(getattr(parsed, "ckpt.path", None)))

    return ppo_parser(after=check_then_start_ray)


_watching: list = []  # the actor watch of this driver, stopped when training returns


def main() -> None:
    decide_job_device()  # before the environment every process of the job inherits
    os.environ.update(patched_environment())  # a local Ray and its workers inherit it
    try:
        run_openrlhf_cli("openrlhf.cli.train_ppo_ray", ppo=True, parser=checked_parser)
    except Exception:
        # an actor's death that reached the driver first (Ray's ActorDiedError): said plainly
        message = next((m for m in (w.report() for w in _watching) if m), None)
        if message is None:
            raise
        traceback.print_exc()
        sys.exit(message)
    finally:
        for watch in _watching:
            watch.stop()


if __name__ == "__main__":
    main()
