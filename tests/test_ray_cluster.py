"""PPO on a two-node Ray cluster on one machine: ``ray start --head`` plus ``ray start --address``
(separate raylets and temp dirs, one pretend GPU each), the recipe's ``ray job submit`` path, actors
and vLLM engines placed on both nodes, a dying engine or reward model, and bad cluster input.
Every wait is bounded; every Ray process started here is killed by its id at the end."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from conftest import BIN, RECIPE_ENV, REPO, free_port, train_rm
from test_multinode import started, wait_for
from test_ppo import rm_scores

pytestmark = pytest.mark.slow

ENV = {**RECIPE_ENV, "RAY_USAGE_STATS_ENABLED": "0"}
# REINFORCE++ advantages: OpenRLHF builds no critic (two fewer processes on this cluster)
NO_CRITIC = {"ESTIMATOR": "reinforce"}
FAIL_FAST_S = 90  # from a killed actor to the job's exit (the plugin's watch looks every 2 s)


@dataclass
class Cluster:
    root: Path
    gcs: str = ""
    dashboard: str = ""
    temp_dirs: list[Path] = field(default_factory=list)

    def start_node(self, name: str, *flags: str, python: Path | None = None, gpus: int = 1) -> None:
        temp = self.root / name
        self.temp_dirs.append(temp)
        ray = [str(python), "-m", "ray.scripts.scripts"] if python else [str(BIN / "ray")]
        ports = ["--node-manager-port", str(free_port()), "--object-manager-port", str(free_port())]
        cmd = [*ray, "start", *flags, *ports, "--num-cpus", "2", f"--num-gpus={gpus}",
               f"--resources={json.dumps({name: 1})}", "--temp-dir", str(temp),
               "--disable-usage-stats"]  # fmt: skip
        proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def start(self) -> None:
        port, dash = free_port(), free_port()
        self.gcs, self.dashboard = f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}"
        self.start_node("node_a", "--head", "--port", str(port), "--dashboard-host", "127.0.0.1",
                        "--dashboard-port", str(dash), "--include-dashboard", "true",
                        "--ray-client-server-port", str(free_port()))  # fmt: skip
        self.start_node("node_b", "--address", self.gcs)
        wait_for(lambda: len(self.alive_nodes()) == 2, 60, "both nodes in the cluster")

    def alive_nodes(self) -> dict[str, str]:
        """node id -> its name (node_a, node_b, ...), from Ray's state API."""
        from ray.util.state import list_nodes

        try:
            nodes = list_nodes(address=self.dashboard, detail=True, raise_on_missing_output=False)
        except Exception:
            return {}
        names = {}
        for n in nodes:
            if n.state == "ALIVE":
                names[n.node_id] = next(k for k in n.resources_total if k.startswith("node_"))
        return names

    def processes(self, temp: Path) -> list[psutil.Process]:
        """The processes of one node: those naming its temp dir, everything they started, and the
        orphans of its workers (vLLM's EngineCore outlives a killed engine actor), which carry
        the node's raylet pid in their environment."""
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            if any(str(temp) in part for part in proc.info["cmdline"] or ()):
                found.append(proc)
        raylets = {str(p.pid) for p in found if "raylet" in " ".join(p.info["cmdline"] or ())}
        for proc in psutil.process_iter():
            try:
                if proc.environ().get("RAY_RAYLET_PID") in raylets:
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        for proc in list(found):
            try:
                found.extend(proc.children(recursive=True))
            except psutil.NoSuchProcess:
                continue
        return list(set(found))

    def stop_node(self, temp: Path) -> None:
        procs = self.processes(temp)
        for proc in procs:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                continue
        psutil.wait_procs(procs, timeout=30)

    def stop(self) -> None:
        for temp in reversed(self.temp_dirs):
            self.stop_node(temp)
        # what names neither temp dir nor raylet: the head's Ray client server proxy, which only
        # names the cluster's GCS address (found left running by the suite's leftover check)
        port = self.gcs.rsplit(":", 1)[-1]
        rest = [p for p in psutil.process_iter(["cmdline"]) if _names_gcs(p.info["cmdline"] or (), port)]
        for proc in rest:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(rest, timeout=30)

    def actors(self) -> list:
        from ray.util.state import list_actors

        return list_actors(address=self.dashboard, detail=True, limit=1000, raise_on_missing_output=False)


def _names_gcs(cmdline: tuple[str, ...] | list[str], port: str) -> bool:
    """A Ray process pointed at the GCS on ``port`` (``--address=HOST:PORT`` or ``--gcs-address``)."""
    flags = ("--address=", "--gcs-address=", "--gcs_address=")
    return any(arg.startswith(flags) and arg.endswith(f":{port}") for arg in cmdline)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # a short root: Ray's sockets live under <temp-dir>/session_<date>_<time>_<us>_<pid>/sockets/, and an
    # AF_UNIX path may not exceed 107 bytes (pytest's numbered folders broke it at pytest-107, pid 27750)
    root = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    c = Cluster(root)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ppo-tiny") / "tiny"
    proc = subprocess.run(
        [sys.executable, "-m", "normbt_plugin.common.tiny", "--out", str(out), "--n_train", "64",
         "--n_test", "32", "--heads", "2"], env=ENV, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def lora_rm(models, tmp_path_factory) -> Path:
    """A LoRA reward model (rank 4, ZeRO-2, NormBT) on the tiny pairs: what the RM stage saves for it
    (merged, the value head trained in full) is what PPO's reward actors load."""
    tiny = {"model": models / "model", "train": models / "train.jsonl", "test": models / "test.jsonl"}
    run = train_rm(tiny, tmp_path_factory.mktemp("lora-rm"), "--ds.zero_stage", "2", "--ds.lora.rank", "4",
                   "--ds.lora.alpha", "8")  # fmt: skip
    assert run.returncode == 0, run.output[-3000:]
    return run.out_dir


def ppo_command(cluster: Cluster, models: Path, out: Path, *flags: str, **overrides: str):
    """``recipes/ppo.sh`` with the tiny CPU config, sent to the cluster with ``ray job submit``:
    two nodes x one pretend GPU, every model on both (colocated), one vLLM engine per node."""
    config = REPO / "recipes" / "configs" / "tiny-cpu.env"
    settings = {
        "NODES": "2", "GPUS_PER_NODE": "1", "VLLM_ENGINES": "2", "RAY_DASHBOARD": cluster.dashboard,
        "POLICY": str(models / "model"), "RM": str(models / "model"),
        "PROMPTS": str(models / "prompts.jsonl"),
        "OUT": str(out), "NORMALIZE_REWARD": "0", **overrides,
    }  # fmt: skip
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in settings.items())
    script = f'set -a; source {config}; set +a; export {exports}; exec bash recipes/ppo.sh "$@"'
    return ["bash", "-c", script, "ppo", *flags]


def run_ppo(cluster: Cluster, models: Path, out: Path, *flags: str, timeout: int = 600, **overrides: str):
    cmd = ppo_command(cluster, models, out, *flags, **overrides)
    proc = subprocess.run(
        cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout, check=False
    )
    return proc.returncode, proc.stdout + proc.stderr


def initial_policy_gap(model_dir: Path, row: dict) -> float:
    """The largest |log-prob under the initial policy - the actor's| over a sample's response tokens."""
    import torch

    model = _load_policy(str(model_dir))
    ids = torch.tensor([row["sequence"]])
    mask = torch.tensor([row["attention_mask"]])
    with torch.no_grad():
        logits = model(ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    logprobs = torch.log_softmax(logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])[:, 0]
    start, n = row["response_start"], len(row["logprobs"])  # logprobs[j] scores sequence[j + 1]
    assert row["sequence"][start : start + n] == row["response_ids"]
    return float((logprobs[start - 1 : start - 1 + n] - torch.tensor(row["logprobs"])).abs().max())


@functools.cache
def _load_policy(path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


def test_ppo_job_runs_on_both_nodes_and_syncs_the_remote_engine(cluster, models, lora_rm, tmp_path):
    out = tmp_path / "ppo"
    # vLLM's own log-probs come back with the samples (IS correction on): a stale engine shows
    # 3 steps: the first update has lr 0 (OpenRLHF's warm-up), so step 3 is the first after a change.
    # The reward model is a LoRA one, as saved by the RM stage
    code, log = run_ppo(
        cluster, models, out, "--algo.advantage.is_correction_level", "token", MAX_SAMPLES="24",
        RM=str(lora_rm), **NO_CRITIC,
    )  # fmt: skip
    assert code == 0, log[-4000:]
    assert "normbt-plugin: 2 Ray nodes match the driver and load the patches" in log
    names = cluster.alive_nodes()
    placed: dict[str, set[str]] = {}
    for actor in cluster.actors():
        placed.setdefault(actor.class_name, set()).add(names.get(actor.node_id, actor.node_id))
    # every role's two ranks and the two vLLM engines: one on each node (the head and the worker)
    for role in ("PolicyModelActor", "RewardModelActor", "RolloutRayActor"):
        assert placed.get(role) == {"node_a", "node_b"}, placed
    # the engine on node_b runs only with the patches (vLLM CPU, fp32, gloo sync): they reached it
    rows = [json.loads(line) for line in (out / "rollouts" / "rollouts.jsonl").open()]
    assert {r["step"] for r in rows} == {1, 2, 3} and len(rows) == 24
    # after step 2's update and sync, both engines generate with the updated actor: vLLM's log-prob
    # of every sampled token stays as close to the actor's as before any update, while the actor
    # has moved away from the initial policy (scored here with HF) by far more than that gap
    gap = {step: max(r["vllm_logprob_gap"] for r in rows if r["step"] == step) for step in (1, 3)}
    moved = max(initial_policy_gap(models / "model", r) for r in rows if r["step"] == 3)
    print(f"vLLM vs actor log-prob gap: step 1 {gap[1]:.2e}, step 3 {gap[3]:.2e}; actor moved {moved:.2e}")
    assert gap[3] < 2 * gap[1] + 1e-4 and gap[3] < 1e-2, gap
    assert moved > 10 * gap[3], (moved, gap)
    assert (out / "model" / "model.safetensors").exists()
    # PPO loaded the LoRA RM whole: its rewards are the saved model's scores (trained head, not a
    # random one; normalisation off here)
    scored = rm_scores(lora_rm, rows, fixed=True, normalize=False)["scores"]
    assert [r["reward"] for r in rows] == pytest.approx(scored, abs=1e-4)
    assert len({round(x, 4) for x in scored}) > 1


def alive_actors(cluster: Cluster) -> list:
    return [a for a in cluster.actors() if a.state == "ALIVE"]


@pytest.mark.parametrize(
    "victim", ["RolloutRayActor", "RewardModelActor"], ids=["vllm-engine", "reward-model"]
)
def test_a_dying_actor_ends_the_job_fast_and_says_how_to_resume(cluster, models, tmp_path, victim):
    out = tmp_path / "ppo"
    # 8 steps, killed after the first; only the actor, the reward model and the engines (no critic, no
    # reference): the test is about an engine or the reward model dying, and each actor is a process
    cmd = ppo_command(cluster, models, out, MAX_SAMPLES="64", **NO_CRITIC, KL="0")
    with started([(cmd, ENV, tmp_path / "ppo.log")]) as (job,):
        wait_for(lambda: (out / "rollouts" / "rollouts.jsonl").exists() or job.poll() is not None, 400,
                 "the first PPO step")  # fmt: skip
        assert job.poll() is None, (tmp_path / "ppo.log").read_text()[-3000:]
        names = cluster.alive_nodes()
        target = next(
            a for a in alive_actors(cluster) if a.class_name == victim and names[a.node_id] == "node_b"
        )
        orphans = psutil.Process(target.pid).children(recursive=True)  # vLLM's EngineCore
        os.kill(target.pid, signal.SIGKILL)  # on the worker node
        killed_at = time.monotonic()
        job.wait(timeout=FAIL_FAST_S)
        stopped_in = time.monotonic() - killed_at
    log = (tmp_path / "ppo.log").read_text()
    assert job.returncode != 0
    assert f"normbt-plugin: a Ray actor of this PPO job died: {victim} (pid {target.pid}" in log, log[-4000:]
    assert f"--ckpt.load_enable (OpenRLHF's PPO checkpoints in {out / 'ckpt'}" in log
    print(f"{victim} killed: the job ended in {stopped_in:.1f} s")
    # the job's other actors go with its driver: the cluster is free for the next job. The killed
    # engine's own subprocess is no actor and outlives it (as it would on a user's node)
    wait_for(lambda: not alive_actors(cluster), 60, "the job's actors to be stopped")
    for proc in orphans:
        if proc.is_running():
            proc.kill()


def fake_other_install(root: Path) -> Path:
    """A second Python environment: the same packages, but normbt-plugin 0.0.0 listed first, as on
    a node where another version of the plugin was installed."""
    venv = root / "venv-c"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.check_output([str(venv / "bin" / "python"), "-c", where], text=True).strip())
    (site / "shared.pth").write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    meta = site / "normbt_plugin-0.0.0.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: normbt-plugin\nVersion: 0.0.0\n")
    return venv / "bin" / "python"


def test_bad_cluster_input_is_named_before_a_model_loads(cluster, models, tmp_path):
    from importlib.metadata import version

    # a layout asking for more GPUs than the cluster has
    code, log = run_ppo(cluster, models, tmp_path / "big", GPUS_PER_NODE="2", timeout=300)
    assert code != 0 and "this layout needs 4 GPUs but the Ray cluster at" in log and "has 2" in log, log[
        -3000:
    ]
    assert "PolicyModelActor pid" not in log  # stopped before any model actor
    # a head that does not answer: the recipe's dashboard address, and the launcher's RAY_ADDRESS
    code, log = run_ppo(cluster, models, tmp_path / "x", RAY_DASHBOARD=f"http://127.0.0.1:{free_port()}")
    assert code != 0 and "ppo.sh: no Ray dashboard answers at RAY_DASHBOARD=" in log, log[-3000:]
    port = free_port()
    proc = subprocess.run(
        [sys.executable, "-m", "normbt_plugin.train_ppo", "--actor.model_name_or_path", str(models / "model"),
         "--reward.model_name_or_path", str(models / "model"), "--data.prompt_dataset",
         str(models / "prompts.jsonl"), "--ds.param_dtype", "fp32", "--ds.attn_implementation", "sdpa",
         "--vllm.sync_backend", "gloo"],
        env={**ENV, "RAY_ADDRESS": f"127.0.0.1:{port}"}, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert proc.returncode != 0 and f"no Ray head answers at RAY_ADDRESS=127.0.0.1:{port}" in proc.stderr
    # a node whose installed plugin differs from the driver's
    cluster.start_node("node_c", "--address", cluster.gcs, python=fake_other_install(tmp_path), gpus=0)
    try:
        wait_for(lambda: len(cluster.alive_nodes()) == 3, 60, "node_c in the cluster")
        code, log = run_ppo(cluster, models, tmp_path / "mixed", timeout=300)
        mine = version("normbt-plugin")
        assert code != 0 and "runs other versions than the driver" in log, log[-3000:]
        assert f"normbt-plugin {mine} here vs 0.0.0" in log
    finally:
        cluster.stop_node(cluster.temp_dirs[-1])
