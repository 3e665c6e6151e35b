"""The downstream chain: recipes' commands against the pinned OpenRLHF's parsers, the PPO launcher's
checks before Ray starts, and the tiny CPU chain end to end (real OpenRLHF Ray PPO, real vLLM CPU
engine, real DeepSpeed and Ray) with the weight sync and the rewards PPO used checked."""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import RECIPE_ENV as ENV
from conftest import REPO, assert_plot

# compare.sh's configs (code-bon-study.sh's own: tests/test_code_bon_study.py)
CONFIGS = sorted(p for p in (REPO / "recipes" / "configs").glob("*.env") if not p.stem.startswith("code-bon"))


# ------------------------------------------------------------------ recipe commands


@pytest.fixture(scope="module")
def parsers(openrlhf_patched):
    from normbt_plugin.patches import apply_openrlhf_patches, capture_parser

    apply_openrlhf_patches(ppo=True)  # as the PPO launcher does

    modules = ("train_rm", "train_sft", "train_ppo_ray")
    return {module: capture_parser(f"openrlhf.cli.{module}") for module in modules}


def dry_run(config: Path, tmp_path: Path, **env: str) -> list[list[str]]:
    """Every command ``recipes/compare.sh`` would run for ``config`` (DRY_RUN=1)."""
    proc = subprocess.run(
        ["bash", "recipes/compare.sh"],
        cwd=REPO,
        env={**ENV, "DRY_RUN": "1", "CONFIG": str(config), "RUN_DIR": str(tmp_path / "run"),
             "LOSSES": "bt normbt", "SEEDS": "1 2", **env},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [shlex.split(line) for line in proc.stdout.splitlines() if not line.startswith("compare.sh")]


def openrlhf_args(cmd: list[str]) -> tuple[str, list[str]] | None:
    """(CLI name, its flags) for a launcher command line; None for the plugin's own commands."""
    for module in ("train_rm", "train_sft", "train_ppo"):
        target = f"normbt_plugin.{module}"
        if target in cmd:
            return ("train_ppo_ray" if module == "train_ppo" else module), cmd[cmd.index(target) + 1 :]
    return None


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_recipe_command_parses_with_the_pinned_openrlhf(config, parsers, tmp_path, capsys):
    from normbt_plugin.cli import main as normbt_main
    from normbt_plugin.patches import gpus_required

    commands = dry_run(config, tmp_path)
    env = dict(line.split("=", 1) for line in _exports(config))
    seen = set()
    for cmd in commands:
        found = openrlhf_args(cmd)
        if found is None:
            data = ("normbt_plugin.common.tiny", "normbt_plugin.rm_evaluation.evidence")
            assert cmd[0] == "normbt" or any(m in cmd for m in data), cmd
            if cmd[0] == "normbt":  # our own CLI: its subcommand's --help lists every flag used
                capsys.readouterr()
                with pytest.raises(SystemExit) as done:
                    normbt_main([cmd[1], "--help"])
                assert done.value.code == 0
                usage = capsys.readouterr().out
                assert all(f in usage for f in cmd if f.startswith("--")), (cmd, usage)
            continue
        name, flags = found
        seen.add(name)
        args = parsers[name].parse_args(flags)  # a stale or misspelt flag exits here
        if name == "train_ppo_ray":
            # the layout asks for what the config's node/GPU settings say
            per_node = int(env.get("GPUS_PER_NODE", 8)) * int(env.get("NODES", 1))
            assert gpus_required(args) == per_node, (config.name, gpus_required(args))
    assert "train_rm" in seen and ("train_ppo_ray" in seen) == (env.get("PPO") == "1"), seen


def _exports(config: Path) -> list[str]:
    proc = subprocess.run(
        ["bash", "-c", f"set -a; source {shlex.quote(str(config))}; env"],
        cwd=REPO, env={**ENV, "RUN_DIR": "/tmp"}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [line for line in proc.stdout.splitlines() if "=" in line]


def test_a_stale_flag_fails_the_parse(parsers):
    """Flags were renamed in OpenRLHF 0.10.2: the old flat names must fail here, not on a GPU job."""
    with pytest.raises(SystemExit):
        parsers["train_ppo_ray"].parse_args(["--pretrain", "some/model"])
    with pytest.raises(SystemExit):
        parsers["train_rm"].parse_args(["--model.model_name_or_path", "m", "--micro_train_batch_size", "4"])


# ------------------------------------------------------------------ checks before Ray starts


def launch_ppo(*flags: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "normbt_plugin.train_ppo", *flags],
        env=ENV, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def cpu_flags(policy: Path, rm: Path, prompts: Path) -> list[str]:
    return [
        "--actor.model_name_or_path", str(policy), "--reward.model_name_or_path", str(rm),
        "--data.prompt_dataset", str(prompts), "--ds.param_dtype", "fp32", "--ds.attn_implementation", "sdpa",
        "--vllm.sync_backend", "gloo", "--vllm.num_engines", "1", "--train.colocate_all",
        *[f for role in ("actor", "ref", "critic", "reward") for f in (f"--{role}.num_gpus_per_node", "1")],
    ]  # fmt: skip


@pytest.fixture(scope="module")
def other_tokenizer_model(tmp_path_factory):
    """A tiny model whose tokenizer was trained on other text."""
    from normbt_plugin.common.tiny import build_model, build_tokenizer

    out = tmp_path_factory.mktemp("other") / "model"
    tokenizer = build_tokenizer(["zebra quartz " * 50, "lorem ipsum dolor " * 50], out, vocab_size=300)
    build_model(out, len(tokenizer), tokenizer=tokenizer)
    return out


def assert_stopped_before_ray(proc: subprocess.CompletedProcess, message: str) -> None:
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert message in output, output[-3000:]
    assert "Started a local Ray instance" not in output and "Connecting to existing Ray" not in output


def test_bad_input_stops_before_ray_starts(tiny, other_tokenizer_model, tmp_path):
    flags = cpu_flags(tiny["model"], tiny["model"], tiny["train"])
    missing = tmp_path / "no-such-model"
    spread = [f for f in flags if f != "--train.colocate_all"] + ["--actor.num_gpus_per_node", "8"]
    cases = {  # each launch's message; the four launches run side by side (each imports the stack)
        f"--reward.model_name_or_path {missing}: no such file or directory": [
            *flags, "--reward.model_name_or_path", str(missing)],
        "have different tokenizers": [*flags, "--reward.model_name_or_path", str(other_tokenizer_model)],
        "GPUs but this machine (no GPU: one pretend GPU": spread,
        "without a GPU, PPO needs --vllm.sync_backend gloo": [f if f != "gloo" else "nccl" for f in flags],
    }  # fmt: skip
    with ThreadPoolExecutor(len(cases)) as pool:
        launched = {message: pool.submit(launch_ppo, *args) for message, args in cases.items()}
    for message, bad in launched.items():
        assert_stopped_before_ray(bad.result(), message)


# the master ports a PPO job picks: each actor group's rank 0, made as OpenRLHF's launcher makes it,
# and the weight-sync group's, picked as ppo_actor._init_vllm_sync_group picks it
MASTER_PORTS = """
import json, os
from normbt_plugin.patches import apply_openrlhf_patches
apply_openrlhf_patches(ppo=True)
from openrlhf.trainer.ray import ppo_actor
from openrlhf.trainer.ray.launcher import BaseDistributedActor
groups, sync = [], []
for _ in range(32):
    BaseDistributedActor(1, 0, None, None)
    groups.append(int(os.environ["MASTER_PORT"]))
    with ppo_actor.socket.socket() as sock:
        sock.bind(("", 0))
        sync.append(sock.getsockname()[1])
print(json.dumps({"groups": groups, "sync": sync}))
"""


def test_ppo_master_ports_are_ones_no_other_connection_can_take():
    """``free_port``: every master port of a PPO job (actor groups, weight sync) lies below the
    kernel's ephemeral range (only an explicit bind can take it before the master binds it);
    upstream's (the patch switched off) lie in the range every outgoing connection of Ray and vLLM
    draws from (EADDRINUSE, upstream #674)."""
    from normbt_plugin.common.ports import LOWEST, ephemeral_start

    start = ephemeral_start()
    if start <= LOWEST:
        pytest.skip(f"the ephemeral range starts at {start}: no room below it (upstream's choice kept)")

    def ports(**env: str) -> dict[str, list[int]]:
        proc = subprocess.run([sys.executable, "-c", MASTER_PORTS], env={**ENV, **env}, capture_output=True,
                              text=True, timeout=300, check=False)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.splitlines()[-1])

    with ThreadPoolExecutor(2) as pool:
        patched, upstream = pool.map(lambda env: ports(**env), [{}, {"NORMBT_PLUGIN_DISABLE": "free_port"}])
    for kind in ("groups", "sync"):
        assert all(LOWEST <= p < start for p in patched[kind]) and len(set(patched[kind])) > 16, patched
        assert all(p >= start for p in upstream[kind]), upstream


# ------------------------------------------------------------------ the tiny chain, end to end


def load_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v.float() for k, v in load_file(model_dir / "model.safetensors").items()}


@pytest.mark.slow
def test_tiny_chain_trains_both_policies(chain):
    policy = load_weights(chain / "policy")
    for label in ("bt", "normbt"):
        actor = load_weights(chain / f"ppo-{label}-seed1" / "model")
        assert actor.keys() == policy.keys()
        assert all(torch.isfinite(t).all() for t in actor.values()), label
        changed = max((actor[k] - policy[k]).abs().max().item() for k in policy)
        assert changed > 1e-4, (label, changed)
    report = (chain / "report" / "report.md").read_text()
    assert "| normbt |" in report and "| bt |" in report


NEGATED_REWARD = """
from normbt_plugin.common.tasks import reward_func as true_reward


def reward_func(queries, prompts, labels):  # the task's reward, sign flipped
    out = true_reward(queries, prompts, labels)
    return {**out, "rewards": -out["rewards"], "scores": -out["scores"]}
"""


def ppo_on_the_true_reward(chain: Path, out: Path, reward_file: Path) -> dict[int, list[float]]:
    """recipes/ppo.sh with the tiny config on the chain's SFT policy, a rule-based reward as PPO's
    (no reward model, REINFORCE++: actor, reference and a vLLM engine): 24 steps of 8 prompts x 8
    samples at actor lr 5e-4. Returns each step's rewards as PPO was given them."""
    from normbt_plugin.runs.ppo import read_rollouts

    settings = {"POLICY": chain / "policy", "PROMPTS": chain / "tiny" / "prompts.jsonl", "OUT": out,
                "REWARD_URL": reward_file, "ACTOR_LR": "5e-4", "N_SAMPLES": 8, "ROLLOUT_BS": 8,
                "TRAIN_BS": 64, "MAX_SAMPLES": 192}  # fmt: skip
    exports = " ".join(f"export {k}={shlex.quote(str(v))};" for k, v in settings.items())
    command = f"set -a; source recipes/configs/tiny-cpu.env; set +a; {exports} bash recipes/ppo.sh"
    proc = subprocess.run(["bash", "-c", command], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=900, check=False)  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    steps: dict[int, list[float]] = {}
    for row in read_rollouts(out / "rollouts"):
        steps.setdefault(row.step, []).append(row.reward)
    return dict(sorted(steps.items()))


RISE = 0.02  # the least rise of (1): half the smallest of 6 runs, above every sign-flipped one


def rise(steps: dict[int, list[float]], first: int = 4, last: int = 8) -> float:
    """How far the reward PPO was given rose over the run: the mean of the last ``last`` steps' mean
    rewards minus that of the first ``first`` (the policy before PPO had moved it much)."""
    means = [np.mean(v) for v in steps.values()]
    return float(np.mean(means[-last:]) - np.mean(means[:first]))


def last_steps(steps: dict[int, list[float]], sign: float, n: int = 8) -> tuple[float, float]:
    """Mean true reward over the last ``n`` steps and its standard error (over those steps' means)."""
    means = [sign * np.mean(v) for v in list(steps.values())[-n:]]
    return float(np.mean(means)), float(np.std(means, ddof=1) / np.sqrt(n))


@pytest.mark.slow
def test_ppo_moves_the_true_reward_the_way_its_reward_points(chain, tmp_path):
    """PPO's job, checked on the task's true reward: (1) the reward PPO is given rises over the run by
    more than RISE; (2) given the true reward, PPO ends with more true reward than given its negation,
    by more than 3 standard errors. A PPO whose advantage had the wrong sign descends the reward it is
    given: it fails (1), and (2) reverses.
    (1) is checked on the negated run: on the tiny policy the true reward is hard to raise (a response
    with any word in it scores 0; the SFT policy averages 0.07) and easy to lower. The negated reward
    rises in about 5 steps and then stays flat, so (1) compares the run's first steps with its last,
    not a line's slope (whose standard error counts the plateau as noise: 1.9 to 5.5 SE over 7 runs).
    RISE is set from repeated runs (docs/tests.md): the negated reward rose +0.039 to +0.050 in 6 runs;
    a sign-flipped PPO given it ascends the true reward, and PPO given the true reward moved the negated
    reward by -0.022 to +0.003 in 3 runs."""
    negated = tmp_path / "negated.py"
    negated.write_text(NEGATED_REWARD)
    given_true = ppo_on_the_true_reward(chain, tmp_path / "true", REPO / "recipes" / "rewards" / "sort.py")
    given_negated = ppo_on_the_true_reward(chain, tmp_path / "negated", negated)
    rose = rise(given_negated)
    assert rose > RISE, rose
    (ours, ours_se), (theirs, theirs_se) = last_steps(given_true, 1.0), last_steps(given_negated, -1.0)
    assert ours - theirs > 3 * np.hypot(ours_se, theirs_se), (ours, ours_se, theirs, theirs_se)


@pytest.mark.slow
def test_tiny_chain_reward_models_learn_on_two_ranks_and_are_reported(chain):
    """The RM stage of the chain (two CPU ranks, ZeRO-2): both losses learn, held out and on every
    rank; eval-rm and compare report them by subset and distance bin."""
    from normbt_plugin.runs import rm as rm_run
    from normbt_plugin.runs.rm_eval import RmEval

    for loss in ("bt", "normbt"):
        run = chain / f"rm-{loss}-seed1"
        for rank in (0, 1):
            steps = rm_run.read_steps(run / "metrics", rank)
            assert len(steps) == 96  # 512 pairs / 16 per step x 3 epochs
            late = [r["acc_mean"] for r in steps[-8:]]
            assert sum(late) / len(late) > 0.75, (loss, rank, late)
        result = RmEval.read(run / "eval.json")
        assert result.accuracy > 0.7, (loss, result.accuracy)  # 256 held-out pairs, chance 0.5
    out = (chain / "compare.out").read_text()
    assert "| bt | 1 |" in out and "| normbt | 1 |" in out
    assert "Accuracy by representation-distance quantile bin" in out
    assert "| fine |" in out and "| coarse |" in out  # SUBSET_KEY=kind
    assert_plot(chain / "report" / "accuracy_by_distance.png")
    assert "wall time by stage" in out


def rm_scores(rm_dir: Path, rows: list[dict], fixed: bool, normalize: bool = True) -> dict:
    """The reward model scored directly by OpenRLHF's own model class (as PPO's reward actor loads
    it), normalisation on (with or without the reward_norm patch) or off; also returns the mean/std
    it would normalise with."""
    out = subprocess.run(
        [sys.executable, "-c", SCORE_SCRIPT, str(rm_dir), json.dumps(rows), str(int(fixed)),
         str(int(normalize))],
        env=ENV, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


SCORE_SCRIPT = """
import json, sys, torch
from normbt_plugin.patches import apply_openrlhf_patches
apply_openrlhf_patches(ppo=True, reward_norm=sys.argv[3] == "1")
from openrlhf.models import get_llm_for_sequence_regression
model = get_llm_for_sequence_regression(sys.argv[1], "reward", normalize_reward=sys.argv[4] == "1",
    attn_implementation="sdpa", param_dtype="fp32").eval()
rows = json.loads(sys.argv[2])
with torch.no_grad():
    scores = [model(torch.tensor([r["sequence"]]), attention_mask=torch.tensor([r["attention_mask"]]))
              .item() for r in rows]
print(json.dumps({"scores": scores, "mean": model.mean.item(), "std": model.std.item()}))
"""


@pytest.mark.slow
def test_rewards_ppo_used_equal_scoring_its_samples_with_the_given_rm(chain):
    for label in ("bt", "normbt"):
        rm_dir = chain / f"rm-{label}-seed1" / "model"
        config = json.loads((rm_dir / "config.json").read_text())
        rows = [json.loads(x) for x in (chain / f"ppo-{label}-seed1" / "rollouts" / "rollouts.jsonl").open()]
        assert len(rows) >= 16 and len({r["step"] for r in rows}) >= 2
        fixed = rm_scores(rm_dir, rows, fixed=True)
        assert fixed["mean"] == pytest.approx(config["mean"]) and fixed["std"] == pytest.approx(config["std"])
        logged = [r["reward"] for r in rows]
        assert fixed["scores"] == pytest.approx(logged, abs=1e-4), label
        # the same samples by hand: raw score, normalised with the statistics the RM stage saved
        assert len(set(round(x, 4) for x in logged)) > 1  # not a constant (the unfixed buffers gave one)


@pytest.mark.slow
def test_reward_normalisation_needs_the_fix(chain):
    """Without the reward_norm patch, OpenRLHF 0.11.2 + transformers 5.15 loads garbage mean/std."""
    rm_dir = chain / "rm-normbt-seed1" / "model"
    config = json.loads((rm_dir / "config.json").read_text())
    upstream = rm_scores(rm_dir, [], fixed=False)
    fixed = rm_scores(rm_dir, [], fixed=True)
    assert fixed["mean"] == pytest.approx(config["mean"]) and fixed["std"] == pytest.approx(config["std"])
    same = math.isclose(upstream["mean"], config["mean"]) and math.isclose(upstream["std"], config["std"])
    assert not same, upstream


@pytest.mark.slow
def test_weight_sync_reaches_the_vllm_engine(chain):
    """After PPO, syncing the actor into a vLLM engine makes it generate what HF generates."""
    proc = subprocess.run(
        [sys.executable, "-m", "normbt_plugin.launchers.sync_check", "--base", str(chain / "policy"),
         "--updated", str(chain / "ppo-normbt-seed1" / "model"),
         "--prompts", str(chain / "tiny" / "prompts.jsonl"), "--n", "64"],
        env=ENV, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    result = json.loads([x for x in proc.stdout.splitlines() if x.startswith('{"prompts"')][-1])
    tol = 1e-4  # float32, two implementations of the same model
    assert result["hf_logprob_gap_base_vs_updated"] > 100 * tol, result  # PPO changed the policy
    assert result["before_sync"]["tokens_eq_base"] == 1.0, result
    assert result["before_sync"]["logprob_err_vs_base"] < tol, result
    # weights loaded but vLLM CPU's packed copies not rebuilt: not the updated model
    assert result["synced_not_repacked"]["logprob_err_vs_updated"] > 100 * tol, result
    assert result["after_sync"]["tokens_eq_updated"] == 1.0, result
    assert result["after_sync"]["logprob_err_vs_updated"] < tol, result


# ------------------------------------------------------------------ eval-policy on the chain


@pytest.mark.slow
def test_policies_judged_by_the_true_reward(chain):
    from transformers import AutoTokenizer

    from normbt_plugin.common.tasks import gold_reward
    from normbt_plugin.runs.generations import read_generations
    from normbt_plugin.runs.policy_eval import PolicyEval

    result = PolicyEval.read(chain / "policy-eval" / "policy_eval.json")
    assert set(result.policies) == {"initial", "bt-seed1", "normbt-seed1"}
    assert result.gold == "fn:normbt_plugin.common.tasks:gold_reward"
    assert result.policies["initial"].kl == 0.0  # the reference against itself
    for name, policy in result.policies.items():
        assert np.isfinite(policy.gold_per_sample).all()
        assert len(policy.gold_per_sample) == result.prompts == 64
        # vLLM sampled the model that transformers scores (float32): the sampler is the policy
        assert policy.engine_logprob_gap < 1e-3, (name, policy.engine_logprob_gap)
        for other, wins in policy.wins.items():
            mirror = result.policies[other].wins[name].per_prompt
            assert np.allclose(np.add(wins.per_prompt, mirror), 1.0)  # ties counted once, as 1/2
    for name in ("bt-seed1", "normbt-seed1"):
        assert abs(result.policies[name].kl) > 1e-3, name  # PPO moved the policy

    # the logged gold rewards are the task's reward of the sampled token ids, decoded again here
    tokenizer = AutoTokenizer.from_pretrained(chain / "policy")
    rows = read_generations(chain / "policy-eval" / "generations" / "normbt-seed1.jsonl")
    texts = [(r.prompt, tokenizer.decode(s.ids, skip_special_tokens=True)) for r in rows for s in r.samples]
    again = [gold_reward(prompt, text) for prompt, text in texts]
    np.testing.assert_allclose(again, np.ravel(result.policies["normbt-seed1"].gold_per_sample), atol=1e-9)
    assert len(set(again)) > 1  # the samples differ in quality: best-of-N has something to pick

    bon = result.best_of_n
    assert bon.n == [1, 2, 4, 8, 16, 32] and bon.samples == 32
    curves = {k: np.asarray(v.mean) for k, v in bon.curves.items()}
    assert set(curves) == {"oracle (gold)", "bt-seed1", "normbt-seed1"}
    oracle = curves.pop("oracle (gold)")
    assert (np.diff(oracle) > 0).all()  # picking by the gold itself can only gain
    for name, curve in curves.items():
        assert curve[0] == pytest.approx(oracle[0]), name  # best of 1: a random sample
        assert (curve <= oracle + 1e-9).all(), name  # no proxy picks better than the gold

    report = (chain / "report" / "report.md").read_text()
    assert "## Downstream policies" in report and "| normbt | 1 |" in report and "Best-of-N" in report
    for png in ("downstream_policies.png", "best_of_n.png"):
        assert_plot(chain / "report" / png)


def recipe_commands(script: str, parsers, capsys, **env: str) -> list[tuple[str, argparse.Namespace]]:
    """``DRY_RUN=1 bash recipes/<script>``: every OpenRLHF command parsed by the pinned parsers
    (returned as (CLI, namespace)); every ``normbt`` command's flags found in its ``--help``."""
    from normbt_plugin.cli import main as normbt_main

    proc = subprocess.run(
        ["bash", f"recipes/{script}"], cwd=REPO, env={**ENV, "DRY_RUN": "1", **env},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    parsed = []
    for line in proc.stdout.splitlines():
        if not line or line.startswith(("compare.sh", "rm.sh", "ppo.sh")):
            continue
        cmd = shlex.split(line)
        found = openrlhf_args(cmd)
        if found is not None:
            parsed.append((found[0], parsers[found[0]].parse_args(found[1])))
        elif cmd[0] == "normbt":
            capsys.readouterr()
            sub = cmd[1:3] if cmd[1] == "models" else cmd[1:2]  # `normbt models get NAME`
            with pytest.raises(SystemExit):
                normbt_main([*sub, "--help"])
            usage = capsys.readouterr().out
            assert all(f in usage for f in cmd if f.startswith("--")), cmd
    return parsed


def test_compare_variants_reach_the_rm_stage(parsers, tmp_path, capsys):
    """A LOSSES entry ``label=loss:--flag=value,...`` becomes that RM run's loss, label and flags."""
    commands = recipe_commands("compare.sh", parsers, capsys, RUN_DIR=str(tmp_path / "c"), PPO="0",
                               LOSSES="bt noema=normbt:--normbt.use_ema=false,--normbt.beta=0.5")  # fmt: skip
    rms = {getattr(args, "plugin.label"): args for name, args in commands if name == "train_rm"}
    assert sorted(rms) == ["bt", "noema"]
    noema = rms["noema"]
    assert getattr(noema, "model.loss_type") == "normbt" and getattr(noema, "normbt.use_ema") is False
    assert getattr(noema, "normbt.beta") == 0.5 and getattr(rms["bt"], "normbt.use_ema") is True
    assert not any(name == "train_ppo_ray" for name, _ in commands)  # PPO=0: the RM part only


def test_smollm2_evidence_study_commands_parse(parsers, tmp_path, capsys):
    """``recipes/smollm2-evidence-study.sh``: BT and NormBT at 5 seeds and the comparators at 3, all
    SmolLM2 RMs that the pinned OpenRLHF parses (the revised configuration: full fine-tuning, lr 5e-5,
    2 epochs; LORA_RANK gives LoRA RMs), each scored on the stdlib and HumanEval pairs."""
    commands = recipe_commands("smollm2-evidence-study.sh", parsers, capsys, OUT=str(tmp_path / "study"))
    rms = [args for name, args in commands if name == "train_rm"]
    losses = [getattr(args, "model.loss_type") for args in rms]
    assert losses.count("bt") == losses.count("normbt") == 5
    assert losses.count("label_smoothing") == losses.count("bsr") == 3
    assert all("smollm2" in getattr(a, "model.model_name_or_path") for a in rms)
    setting = {
        (getattr(a, "ds.lora.rank"), getattr(a, "adam.lr"), getattr(a, "train.max_epochs")) for a in rms
    }
    assert setting == {(0, 5e-5, 2)}
    # a session that stops mid-RM loses at most 16 steps: rm.sh checkpoints, keeping one (its own test)
    assert {(getattr(a, "ckpt.save_steps"), getattr(a, "ckpt.max_num")) for a in rms} == {(16, 1)}
    env = {"OUT": str(tmp_path / "lora"), "LORA_RANK": "16", "MAIN_SEEDS": "1", "OTHERS": ""}
    lora = [
        a for n, a in recipe_commands("smollm2-evidence-study.sh", parsers, capsys, **env) if n == "train_rm"
    ]
    assert {(getattr(a, "ds.lora.rank"), getattr(a, "ds.lora.alpha")) for a in lora} == {(16, 32)}


def test_evidence_study_commands_parse(parsers, tmp_path, capsys):
    """``recipes/evidence-study.sh``: every RM command parses with the pinned OpenRLHF, every
    ``normbt`` flag exists, and the variants are all there."""
    commands = recipe_commands("evidence-study.sh", parsers, capsys, RUN_DIR=str(tmp_path / "study"))
    labels = [getattr(args, "plugin.label") for _, args in commands]
    assert labels.count("bt") == labels.count("normbt") == 5
    for variant in ("noema", "ls", "center", "bsr", "clip0.1", "ln"):
        assert labels.count(variant) == 3, (variant, labels)


# ------------------------------------------------------------------ the downstream studies


def test_downstream_study_commands_parse(parsers, tmp_path, capsys):
    """``recipes/downstream-study.sh`` (on-policy): every SFT, RM and PPO command parses with the pinned
    OpenRLHF and every ``normbt`` flag exists; the RMs start from the SFT policy, BT and NormBT train
    on the same draw per seed, each seed its own draw, in both arms of the 2x2; PPO: the same settings
    for every reward, each reward standardised on the SFT policy's samples (the ceiling's too). The
    stages themselves run in the chain's fixture (tests here and in test_label_pairs, test_bon_study)."""
    out = tmp_path / "study"
    proc = subprocess.run(["bash", "recipes/downstream-study.sh"], cwd=REPO, capture_output=True, text=True,
                          env={**ENV, "DRY_RUN": "1", "OUT": str(out)}, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    commands = [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]
    names = {c[1] for c in commands if c[0] == "normbt"}
    assert {"label-pairs", "eval-rm", "eval-policy", "bon-study", "standardize", "curves"} <= names, names
    seen: dict[str, list] = {"train_rm": [], "train_sft": [], "train_ppo_ray": []}
    for name, args in recipe_commands("downstream-study.sh", parsers, capsys, OUT=str(out)):
        seen[name].append(args)
    rms = seen["train_rm"]
    assert len(rms) == 2 * 8 * 2 and {getattr(a, "model.model_name_or_path") for a in rms} == {
        f"{out}/policy"
    }
    data = {(getattr(a, "plugin.label"), getattr(a, "train.seed")): getattr(a, "data.dataset") for a in rms}
    for arm in ("onpolicy", "perturb"):
        draws = [data[(f"{arm}-bt", s)] for s in range(1, 9)]
        assert draws == [data[(f"{arm}-normbt", s)] for s in range(1, 9)]  # paired by seed
        assert len(set(draws)) == 8  # each seed its own draw
    tune, ppo = seen["train_ppo_ray"][:3], seen["train_ppo_ray"][3:]
    assert [getattr(a, "actor.adam.lr") for a in tune] == [1e-4, 2e-4, 5e-4]  # tuned on the ceiling first
    assert len(ppo) == 1 + 2 * 4  # the ceiling, BT and NormBT on RM seeds 1-4
    rewards = [getattr(a, "reward.remote_url") or getattr(a, "reward.model_name_or_path") for a in tune + ppo]
    assert all("/ppo-rewards/" in r for r in rewards), rewards  # every reward standardised first
    assert all(getattr(a, "reward.normalize_enable") for a in ppo if getattr(a, "reward.model_name_or_path"))
    keys = ("actor.adam.lr", "algo.kl.init_coef", "algo.advantage.estimator", "rollout.batch_size",
            "rollout.n_samples_per_prompt", "data.max_samples")  # fmt: skip
    assert len({tuple(getattr(a, k) for k in keys) for a in ppo}) == 1  # the same for every reward


def documented_command(*markers: str) -> str:
    """The bash block of docs/results.md that holds every marker: the command a result came from."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "docs" / "results.md").read_text(), re.S)
    (block,) = [b for b in blocks if all(m in b for m in markers)]
    return block.replace("\\\n", " ").strip()


def test_downstream_study_with_a_smollm2_policy_parses(parsers, tmp_path, capsys):
    """The best-of-N arm with a SmolLM2 policy, by the very command docs/results.md says produced
    results/downstream-smollm2 (only OUT moved): SFT from SmolLM2 at lr 1e-4 for 1 epoch, 8 RMs (BT
    and NormBT, 4 seeds) fully fine-tuned from the SFT policy on 768 pairs for 1 epoch, 16 samples for
    best-of-N, and nothing after it."""
    out = tmp_path / "study"
    command = documented_command("OUT=runs/downstream-smollm2 ", "N_PAIRS=768", 'RM_SEEDS="1 2 3 4"')
    assert "OUT=runs/downstream-smollm2 " in command
    env = dict(re.findall(r'([A-Z_]+)=("[^"]*"|\S+)', command.split("bash recipes/downstream-study.sh")[0]))
    env = {k: v.strip('"') for k, v in env.items()} | {"OUT": str(out)}
    commands = recipe_commands("downstream-study.sh", parsers, capsys, **env)
    (sft,) = [a for name, a in commands if name == "train_sft"]
    assert getattr(sft, "model.model_name_or_path") == f"{out}/base" and getattr(sft, "adam.lr") == 1e-4
    assert getattr(sft, "train.max_epochs") == 1
    rms = [a for name, a in commands if name == "train_rm"]
    assert len(rms) == 8 and {getattr(a, "model.loss_type") for a in rms} == {"bt", "normbt"}
    assert all(getattr(a, "ds.lora.rank") == 0 and getattr(a, "adam.lr") == 5e-5 for a in rms)
    assert all(getattr(a, "train.max_epochs") == 1 for a in rms)
    assert {getattr(a, "model.model_name_or_path") for a in rms} == {f"{out}/policy"}
    assert not [name for name, _ in commands if name == "train_ppo_ray"]
    proc = subprocess.run(["bash", "recipes/downstream-study.sh"], cwd=REPO, capture_output=True, text=True,
                          env={**ENV, "DRY_RUN": "1", **env}, timeout=120, check=False)  # fmt: skip
    lines = [shlex.split(c) for c in proc.stdout.splitlines() if c]
    assert f"normbt models get smollm2-135m-instruct --out {out}/base" in proc.stdout
    from normbt_plugin.policy_studies.label_pairs import build_parser

    module = ["python", "-m", "normbt_plugin.policy_studies.label_pairs"]
    subsamples = [build_parser().parse_args(c[3:]) for c in lines if c[:3] == module]
    per_seed = [(a.seed, a.n) for a in subsamples if "-seed" in a.out]  # per arm and RM seed
    assert sorted(per_seed) == [(seed, 768) for seed in (1, 2, 3, 4)]  # N_PAIRS, the on-policy arm only
    (scored,) = [c for c in lines if c[:2] == ["normbt", "eval-policy"]]
    assert scored[scored.index("--bon_samples") + 1] == "16"
    # seeds added later: their own best-of-N folder, pooled with the one run before by bon-study
    (out / "bon").mkdir(parents=True)
    (out / "bon" / "policy_eval.json").write_text("{}")
    more = subprocess.run(["bash", "recipes/downstream-study.sh"], cwd=REPO, capture_output=True, text=True,
                          env={**ENV, "DRY_RUN": "1", **env, "RM_SEEDS": "5 6", "BON_DIR": "bon-5-6"},
                          timeout=120, check=False)  # fmt: skip
    lines = {c[1]: c for c in map(shlex.split, more.stdout.splitlines()) if c and c[0] == "normbt"}
    scored = lines["eval-policy"]
    assert scored[-1] == f"{out}/bon-5-6" and f"onpolicy-bt-seed5={out}/rm-onpolicy-bt-seed5/model" in scored
    assert not any("seed1" in a for a in scored)  # only the new seeds are scored
    study = lines["bon-study"]
    assert study[2] == f"{out}/bon-5-6/policy_eval.json"
    assert study[study.index("--also") + 1] == f"{out}/bon/policy_eval.json"


def test_offpolicy_study_commands_parse(parsers, tmp_path, capsys):
    """``recipes/downstream-offpolicy.sh`` (the superseded design, kept reproducible): every command
    parses, the same PPO settings for every reward, the ceiling on the rule-based reward."""
    seen: dict[str, list] = {"train_rm": [], "train_sft": [], "train_ppo_ray": []}
    for name, args in recipe_commands(
        "downstream-offpolicy.sh", parsers, capsys, OUT=str(tmp_path / "study")
    ):
        seen[name].append(args)
    losses = [getattr(a, "model.loss_type") for a in seen["train_rm"]]
    assert losses.count("bt") == losses.count("normbt") == 3 and losses.count("label_smoothing") == 1
    ppo = seen["train_ppo_ray"]
    ceiling = [getattr(a, "reward.remote_url") for a in ppo if getattr(a, "reward.remote_url")]
    assert len(ceiling) == 2 and all(url.endswith("recipes/rewards/sort.py") for url in ceiling)
    assert len(ppo) == 2 + 2 * 6 + 1  # the ceiling, BT and NormBT 3 RM x 2 PPO seeds, the comparator
    keys = ("actor.adam.lr", "algo.kl.init_coef", "algo.advantage.estimator", "rollout.batch_size",
            "rollout.n_samples_per_prompt", "data.max_samples")  # fmt: skip
    assert len({tuple(getattr(a, k) for k in keys) for a in ppo}) == 1


def test_gpu_config_rms_train_on_the_policys_own_samples(parsers, tmp_path):
    """With ONPOLICY=1 (the Llama-3-8B configs), compare.sh first has the SFT model's samples of the
    prompt set ranked by GOLD_RM (label-pairs), then trains every RM on those pairs, not DATASET."""
    config = REPO / "recipes" / "configs" / "llama3-8b-8gpu.env"
    commands = dry_run(config, tmp_path)
    label = next(c for c in commands if c[:2] == ["normbt", "label-pairs"])
    flag = {label[i]: label[i + 1] for i in range(2, len(label) - 1) if label[i].startswith("--")}
    env = dict(line.split("=", 1) for line in _exports(config))
    assert (
        flag["--policy"] == env["POLICY"]
        and flag["--gold"] == env["GOLD_RM"]
        and "--apply_chat_template" in label
    )
    rms = [parsers["train_rm"].parse_args(openrlhf_args(c)[1]) for c in commands if openrlhf_args(c)
           and openrlhf_args(c)[0] == "train_rm"]  # fmt: skip
    assert rms and all(getattr(a, "data.dataset") == flag["--out"] for a in rms)
    assert all(
        getattr(a, "data.prompt_key") == "prompt" and getattr(a, "data.apply_chat_template") for a in rms
    )
    assert commands.index(label) < min(i for i, c in enumerate(commands) if openrlhf_args(c))
    off = dry_run(config, tmp_path, ONPOLICY="0")
    assert not any(c[:2] == ["normbt", "label-pairs"] for c in off)
