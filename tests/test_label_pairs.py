"""``normbt label-pairs`` and ``normbt standardize`` through the real vLLM CPU engine and the chain's
SFT policy and reward model: what they write is what the gold and the RM say of the policy's own
samples; bad input is refused before anything is sampled."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import RECIPE_ENV, REPO

from normbt_plugin.common.tasks import gold_reward
from normbt_plugin.policy_studies.label_pairs import read_pairs, read_summary
from normbt_plugin.runs.generations import read_generations


def normbt(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "normbt_plugin.cli", *args], cwd=REPO, env=RECIPE_ENV,
                          capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip


def test_bad_input_is_refused_before_sampling(tiny, tmp_path, capsys):
    from normbt_plugin.cli import main

    policy, prompts = tiny["model"], tiny["eval_prompts"]
    out = tmp_path / "pairs.jsonl"
    common = ["label-pairs", "--policy", str(policy), "--prompts", str(prompts), "--out", str(out)]
    cases = [
        (
            ["--gold_fn", "normbt_plugin.common.tasks:gold_reward", "--prompt_key", "question"],
            "no 'question' column",
        ),
        (["--gold", str(policy)], "not a reward model"),  # a causal LM as the gold
        (["--gold_fn", "normbt_plugin.nothing:f"], "cannot import normbt_plugin.nothing"),
        (["--gold_fn", "normbt_plugin.common.tasks:gold_reward", "--samples", "1"], "at least 2"),
    ]
    for flags, message in cases:
        with pytest.raises(SystemExit) as stop:
            main([*common, *flags])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and message in err, (flags, err[-2000:])
        assert not list(tmp_path.iterdir())  # nothing sampled or written


@pytest.mark.slow
def test_label_pairs_are_the_policys_samples_ranked_by_the_gold_and_cached(chain, tmp_path):
    out = tmp_path / "pairs.jsonl"
    prompts = str(chain / "tiny" / "eval_prompts.jsonl")
    args = ["label-pairs", "--policy", str(chain / "policy"), "--prompts", prompts,
            "--n_prompts", "24", "--samples", "6", "--pairs_per_prompt", "3", "--max_new", "24",
            "--gold_fn", "normbt_plugin.common.tasks:gold_reward", "--max_len", "64",
            "--out", str(out)]  # fmt: skip
    first = normbt(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    pairs, summary = read_pairs(out), read_summary(out)
    samples = read_generations(out.with_suffix(".samples.jsonl"))
    assert len(samples) == 24 and all(len(r.samples) == 6 for r in samples)
    texts = {(r.prompt, s.text) for r in samples for s in r.samples}
    assert summary.pairs == len(pairs) > 0 and summary.prompts == 24 and summary.samples == 6
    per_prompt: dict[str, int] = {}
    for p in pairs:  # the policy's own responses, ordered and labelled by the gold, no ties
        assert (p.prompt, p.chosen) in texts and (p.prompt, p.rejected) in texts
        assert p.chosen_gold == pytest.approx(gold_reward(p.prompt, p.chosen))
        assert p.rejected_gold == pytest.approx(gold_reward(p.prompt, p.rejected))
        assert p.chosen_gold > p.rejected_gold and p.chosen != p.rejected
        per_prompt[p.prompt] = per_prompt.get(p.prompt, 0) + 1
    assert max(per_prompt.values()) <= 3
    # a rerun reads the samples back (no vLLM engine started) and draws the same pairs
    before, sampled = out.read_text(), out.with_suffix(".samples.jsonl").stat().st_mtime_ns
    again = normbt(*args)
    assert again.returncode == 0 and out.read_text() == before
    assert out.with_suffix(".samples.jsonl").stat().st_mtime_ns == sampled


@pytest.mark.slow
def test_standardize_puts_the_rm_and_the_rule_reward_at_mean_0_std_1_on_the_policys_samples(chain, tmp_path):
    from normbt_plugin.rm_evaluation.scoring import RewardScorer

    rm, std_rm = chain / "rm-normbt-seed1" / "model", tmp_path / "rm-std"
    samples = tmp_path / "sft-samples.jsonl"
    prompts = str(chain / "tiny" / "prompts.jsonl")
    common = ["standardize", "--policy", str(chain / "policy"), "--prompts", prompts,
              "--n_prompts", "32", "--samples", "4", "--max_new", "24", "--max_len", "64",
              "--samples_file", str(samples)]  # fmt: skip
    proc = normbt(*common, "--rm", str(rm), "--out", str(std_rm))
    assert proc.returncode == 0, proc.stderr[-3000:]
    original, config = (
        json.loads((rm / "config.json").read_text()),
        json.loads((std_rm / "config.json").read_text()),
    )
    assert config["normbt_eval_mean"] == original["mean"] and config["normbt_eval_std"] == original["std"]
    rows = read_generations(samples)
    scorer = RewardScorer(str(std_rm), max_len=64)  # raw rewards, as PPO's RM computes them
    raw, _ = scorer.score([scorer.format(r.prompt, s.text) for r in rows for s in r.samples])
    normed = (raw - config["mean"]) / config["std"]  # what --reward.normalize_enable feeds PPO
    assert normed.mean() == pytest.approx(0, abs=1e-4) and normed.std() == pytest.approx(1, abs=1e-4)
    assert (std_rm / "model.safetensors").read_bytes() == (rm / "model.safetensors").read_bytes()

    wrapped = tmp_path / "true.py"
    proc = normbt(
        *common, "--reward_fn", str(REPO / "recipes" / "rewards" / "sort.py"), "--out", str(wrapped)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import importlib.util

    spec = importlib.util.spec_from_file_location("true_std", wrapped)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    queries = [r.prompt + s.text for r in rows for s in r.samples]
    prompts = [r.prompt for r in rows for _ in r.samples]
    rewards = module.reward_func(queries, prompts, [""] * len(queries))["rewards"].numpy()
    truth = np.array([gold_reward(p, q[len(p) :]) for p, q in zip(prompts, queries, strict=True)])
    assert rewards.mean() == pytest.approx(0, abs=1e-5) and rewards.std() == pytest.approx(1, abs=1e-4)
    assert np.corrcoef(rewards, truth)[0, 1] == pytest.approx(1.0)  # the same reward, rescaled
