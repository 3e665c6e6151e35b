"""Each GPU config's RM and PPO stages run end to end on CPU, with tiny stand-ins shaped like the
config's real data (chosen/rejected whole conversations without a prompt column, prompts as message
lists, a tokenizer with a chat template). Parsing the command lines cannot catch a recipe that
turns an empty ``PROMPT_KEY=`` into ``--data.prompt_key prompt``; running them does.

Every variable of the config is kept except those listed below, each with the reason."""

from __future__ import annotations

import json
import re
import shlex
import subprocess

import pytest
from conftest import RECIPE_ENV, REPO

from normbt_plugin.common.gpu_memory import config_values

# multinode-llama3-8b is llama3-8b-8gpu plus the several-node variables that GPU_ONLY blanks here (run,
# it would repeat llama3-8b-8gpu); tests/test_multinode.py and tests/test_ray_cluster.py run those paths.
GPU_CONFIGS = ["llama3-8b-8gpu", "paper-gemma2b"]
ONPOLICY = re.compile(r"^ONPOLICY=\$\{ONPOLICY:-1\}", re.M)  # configs whose RMs train on on-policy pairs

# Only a GPU (or a real cluster) can honour these.
GPU_ONLY = {
    "NPROC": "1",  # 8 GPUs -> one CPU rank
    "HOSTFILE": "",  # multinode: DeepSpeed over ssh to other hosts
    "RAY_DASHBOARD": "",  # multinode: `ray job submit` to a running cluster (a local Ray here)
    "NODES": "1",
    "GPUS_PER_NODE": "1",  # one pretend GPU for Ray's accounting
    "VLLM_ENGINES": "1",
    "PPO_PARAM_DTYPE": "fp32",  # vLLM's CPU engine runs float32 (its bf16 path needs AMX)
    "PPO_ATTN": "sdpa",  # PPO on CPU: no flash-attn kernels (the RM stage keeps flash_attention_2: stand-in)
    "SYNC_BACKEND": "gloo",  # NCCL is CUDA-only
    "PPO_PACKING": "0",  # packed PPO batches need flash-attn's kernels (the CPU preflight refuses them)
}
# Sizes scaled to the stand-ins (same flags, smaller numbers): 64 pairs, a 512-position model.
SIZES = {
    "BS": "8",
    "ROLLOUT_BS": "4",
    "TRAIN_BS": "4",
    "ROLLOUT_MICRO_BS": "2",
    "MICRO_BS": "2",
    "PPO_MICRO_BS": "2",
    "MAX_SAMPLES": "4",
    "MAX_NEW": "16",
    "PPO_MAX_LEN": "128",
    "MAX_LEN": "256",
}


@pytest.fixture(scope="module")
def chat_standins(tmp_path_factory):
    from normbt_plugin.common.tiny import build_chat_setup

    return build_chat_setup(tmp_path_factory.mktemp("chat"), n_train=64, n_test=32)


def stage(
    config: str, script: str, overrides: dict[str, str], log, *flags: str
) -> subprocess.CompletedProcess:
    """``source`` the config as compare.sh does, then set the overrides, then run the stage with ``flags``."""
    assignments = " ".join(f"export {k}={shlex.quote(v)};" for k, v in overrides.items())
    command = (
        f"set -a; source recipes/configs/{config}.env; set +a; {assignments} "
        f"bash recipes/{script} {shlex.join(flags)}"
    )
    env = dict(RECIPE_ENV)
    for name in ("MODEL", "DATASET", "POLICY", "PROMPTS", "EVAL_DATASET", "RM", "OUT"):
        env.pop(name, None)
    proc = subprocess.run(["bash", "-c", command], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900, check=False)  # fmt: skip
    log.write_text(proc.stdout + proc.stderr)
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("config", GPU_CONFIGS)
def test_gpu_config_rm_and_ppo_stages_run_on_chat_standins(config, chat_standins, tmp_path):
    data = chat_standins
    out = tmp_path / "rm"
    rm_vars = {**GPU_ONLY, **SIZES, "MODEL": str(data["model"]), "DATASET": str(data["train"]),
               "EVAL_DATASET": str(data["test"]), "OUT": str(out), "LOSS": "normbt"}  # fmt: skip
    dry = stage(config, "rm.sh", {**rm_vars, "DRY_RUN": "1"}, tmp_path / "rm-dry.log")
    assert dry.returncode == 0, dry.stderr
    assert "--data.prompt_key" not in dry.stdout and "--data.apply_chat_template" in dry.stdout, dry.stdout

    rm = stage(config, "rm.sh", rm_vars, tmp_path / "rm.log")
    assert rm.returncode == 0, rm.stdout[-3000:] + rm.stderr[-3000:]
    assert (out / "model" / "config.json").exists() and (out / "metrics" / "train_rank0.jsonl").exists()

    ppo_out = tmp_path / "ppo"
    ppo = stage(config, "ppo.sh", {**GPU_ONLY, **SIZES, "POLICY": str(data["model"]),
                                   "RM": str(out / "model"), "PROMPTS": str(data["prompts"]),
                                   "OUT": str(ppo_out)}, tmp_path / "ppo.log",
                "--actor.lr_warmup_ratio", "0")  # fmt: skip
    assert ppo.returncode == 0, ppo.stdout[-3000:] + ppo.stderr[-3000:]
    # one PPO step at the config's learning rate (no warm-up, whose first step has lr 0): the actor moved
    from safetensors.torch import load_file

    before = load_file(data["model"] / "model.safetensors")
    after = load_file(ppo_out / "model" / "model.safetensors")
    assert before.keys() == after.keys()
    moved = max((after[k].float() - before[k].float()).abs().max().item() for k in before)
    assert moved > 0, "the PPO step left the actor unchanged"

    if not ONPOLICY.search((REPO / "recipes" / "configs" / f"{config}.env").read_text()):
        return
    # the on-policy stage (ONPOLICY=1): the SFT stand-in samples the prompts, the RM just trained
    # stands in for GOLD_RM; the RM stage then trains on those pairs in OpenRLHF's chat form
    pairs = tmp_path / "onpolicy" / "pairs.jsonl"
    onpolicy = {
        **GPU_ONLY,
        **SIZES,
        "POLICY": str(data["model"]),
        "GOLD_RM": str(out / "model"),
        "ONPOLICY_PROMPTS": str(data["prompts"]),
        "ONPOLICY_N_PROMPTS": "8",
        "OUT": str(pairs),
        "ONPOLICY_DTYPE": "float32",
    }  # fmt: skip  (bf16 scoring: the GPU nodes' dtype)
    labelled = stage(config, "onpolicy-pairs.sh", onpolicy, tmp_path / "onpolicy.log")
    assert labelled.returncode == 0, labelled.stdout[-3000:] + labelled.stderr[-3000:]
    rows = [json.loads(line) for line in pairs.open()]
    from normbt_plugin.common.tiny import CHAT_PREAMBLE

    # the whole conversation the prompt set holds (system message, earlier turn, the task), as PPO sees it
    assert rows and all(
        r["prompt"][:3] == CHAT_PREAMBLE and r["prompt"][3]["role"] == "user" and len(r["prompt"]) == 4
        and r["chosen"][0]["role"] == "assistant" for r in rows
    )  # fmt: skip
    assert all(r["chosen_gold"] > r["rejected_gold"] for r in rows)
    onpolicy_rm = tmp_path / "rm-onpolicy"
    trained = stage(config, "rm.sh", {**rm_vars, "DATASET": str(pairs), "EVAL_DATASET": str(pairs),
                                      "PROMPT_KEY": "prompt", "OUT": str(onpolicy_rm)},
                    tmp_path / "rm-onpolicy.log")  # fmt: skip
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    steps = [json.loads(line) for line in (onpolicy_rm / "metrics" / "train_rank0.jsonl").open()]
    assert steps and (onpolicy_rm / "model" / "config.json").exists()


# ------------------------------------------------------------------ memory per GPU, by arithmetic


@pytest.mark.parametrize("config", [*GPU_CONFIGS, "multinode-llama3-8b"])
def test_every_stage_of_every_gpu_config_fits_an_80_gb_gpu(config):
    from normbt_plugin.common.gpu_memory import GPU_GIB, estimates, format_table

    found = estimates(config_values(REPO / "recipes" / "configs" / f"{config}.env"))
    assert {e.stage.split()[0] for e in found} >= {"RM", "PPO", "gold"}
    assert all(e.fits() for e in found), format_table(config, found)
    assert max(e.total for e in found) < GPU_GIB


def test_the_arithmetic_catches_an_8b_rm_at_8192_tokens_without_gradient_checkpointing():
    from normbt_plugin.common.gpu_memory import rm_stage

    values = config_values(REPO / "recipes" / "configs" / "llama3-8b-8gpu.env", GRAD_CKPT="0")
    assert not rm_stage(values).fits()  # what the config shipped before: 96 GiB of activations
    assert rm_stage({**values, "GRAD_CKPT": "1"}).fits()


def test_a_missing_hostfile_stops_the_multinode_recipe_before_anything_starts(tmp_path):
    env = {
        **RECIPE_ENV,
        "CONFIG": "recipes/configs/multinode-llama3-8b.env",
        "RUN_DIR": str(tmp_path / "run"),
    }
    proc = subprocess.run(["bash", "recipes/compare.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert proc.returncode == 1 and "HOSTFILE=recipes/configs/hostfile does not exist" in proc.stderr, (
        proc.stderr
    )
    assert not (tmp_path / "run").exists()  # nothing started, nothing written
