"""normbt eval-policy: win rates with ties, the exact best-of-N estimator, KL, bad input, and the
downstream section of normbt compare on data with a known answer."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_plot

from normbt_plugin.policy_studies.eval_policy import (
    best_of_n,
    bon_kl,
    load_prompts,
    parse_named,
    sequence_logprobs,
    win_rate,
)
from normbt_plugin.policy_studies.report import downstream_section
from normbt_plugin.rm_evaluation.pairs import EvalInputError
from normbt_plugin.runs import files
from normbt_plugin.runs.generations import Generation, Sample, read_generations
from normbt_plugin.runs.policy_eval import BestOfN, Curve, PerPrompt, PolicyEval, PolicyResult, Wins

BIN = Path(sys.executable).parent


def test_win_rate_counts_ties_as_half():
    a = np.array([[2.0, 1.0], [0.0, 5.0], [3.0, 3.0]])
    b = np.array([[1.0, 2.0], [0.0, 5.0], [3.0, 2.9999]])
    a_text = [["x", "y"], ["p", "same"], ["u", "v"]]
    b_text = [["z", "w"], ["q", "same"], ["u2", "v2"]]
    # prompt 0: win, loss; prompt 1: equal rewards, then identical text; prompt 2: equal, win
    assert win_rate(a, b, a_text, b_text).tolist() == [0.5, 0.5, 0.75]
    # within tie_tol counts as a tie too
    assert win_rate(a, b, a_text, b_text, tie_tol=1e-3).tolist() == [0.5, 0.5, 0.5]
    # identical text ties even where a reward model scored the copies differently (batch noise)
    assert win_rate(np.array([[1.0]]), np.array([[0.9]]), [["t"]], [["t"]]).tolist() == [0.5]
    # antisymmetric: a vs b + b vs a = 1
    assert (win_rate(a, b, a_text, b_text) + win_rate(b, a, b_text, a_text)).tolist() == [1.0] * 3
    with pytest.raises(ValueError, match="same prompts and samples"):
        win_rate(a[:2], b, a_text[:2], b_text)


def test_best_of_n_is_exact_over_all_subsets():
    rng = np.random.default_rng(0)
    proxy, gold = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    ns = [1, 2, 3, 4, 7]
    exact = best_of_n(proxy, gold, ns)
    for p in range(5):
        for j, n in enumerate(ns):
            picks = [
                gold[p, list(s)][np.argmax(proxy[p, list(s)])] for s in itertools.combinations(range(7), n)
            ]
            assert exact[p, j] == pytest.approx(np.mean(picks), abs=1e-12)
    assert exact[:, 0] == pytest.approx(gold.mean(axis=1))  # N=1: a random sample
    assert exact[:, -1] == pytest.approx(gold[np.arange(5), proxy.argmax(axis=1)])  # N=K: the argmax
    oracle = best_of_n(gold, gold, ns)
    assert (np.diff(oracle, axis=1) >= -1e-12).all()  # the gold as its own proxy only gains
    anti = best_of_n(-gold, gold, ns)
    assert (np.diff(anti, axis=1) <= 1e-12).all()  # an inverted proxy only loses
    with pytest.raises(ValueError, match="1 <= N <= 7"):
        best_of_n(proxy, gold, [8])


def test_bon_kl():
    assert bon_kl(1) == 0.0
    assert bon_kl(64) == pytest.approx(np.log(64) - 63 / 64)


def test_sequence_logprobs_padding_and_self_kl(tiny):
    """Batched right-padded log-probs equal one sequence at a time; a policy's KL to itself is 0."""
    import torch
    from transformers import AutoModelForCausalLM

    def row(prompt_ids: list[int], *responses: list[int]) -> Generation:
        return Generation("p", prompt_ids, [Sample(ids, "t", 0.0, False) for ids in responses])

    rows = [row([5, 6, 7], [8, 9], [10, 11, 12, 13]), row([20, 21, 22, 23, 24], [30], [31, 32, 33])]
    batched, again = sequence_logprobs(str(tiny["model"]), [rows, rows[:1]], batch_size=4)
    model = AutoModelForCausalLM.from_pretrained(tiny["model"], dtype=torch.float32).eval()
    for i, generation in enumerate(rows):
        for j, sample in enumerate(generation.samples):
            ids = torch.tensor([generation.prompt_ids + sample.ids])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0, :-1], -1)
            n = len(generation.prompt_ids)
            want = sum(logp[n - 1 + t, tok].item() for t, tok in enumerate(sample.ids))
            assert batched[i, j] == pytest.approx(want, abs=1e-4)
    assert (batched < 0).all() and np.allclose(again, batched[:1], atol=1e-5)
    (hot,) = sequence_logprobs(str(tiny["model"]), [rows], temperature=0.5, batch_size=1)
    assert not np.allclose(hot, batched)  # the temperature is applied


def test_named_entries_and_prompt_files(tmp_path):
    assert parse_named(["a=x", "b=y=z"], "policy") == {"a": "x", "b": "y=z"}
    with pytest.raises(EvalInputError, match="name=path"):
        parse_named(["just/a/path"], "policy")
    with pytest.raises(EvalInputError, match="given twice"):
        parse_named(["a=x", "a=y"], "proxy")
    good = tmp_path / "p.jsonl"
    good.write_text('{"input": "one"}\n{"input": "two"}\n{"input": "three"}\n')
    assert load_prompts(str(good), limit=2) == ["one", "two"]
    with pytest.raises(EvalInputError, match="no 'question' column"):
        load_prompts(str(good), key="question")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(EvalInputError, match="empty"):
        load_prompts(str(empty))
    with pytest.raises(EvalInputError, match="does not exist"):
        load_prompts(str(tmp_path / "missing.jsonl"))


def test_policies_of_one_architecture_share_an_engine(tmp_path):
    from normbt_plugin.policy_studies.generation import GenerationSpec, engine_groups

    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
              "num_hidden_layers": 2, "vocab_size": 300, "eos_token_id": 2}  # fmt: skip
    shapes = {
        "sft": config,
        "ppo": {**config, "transformers_version": "x"},
        "wide": {**config, "hidden_size": 128},
    }
    specs = []
    for name, cfg in shapes.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(cfg))
        specs.append(
            GenerationSpec(
                model=str(tmp_path / name), prompts=["p"], out=str(tmp_path / f"{name}.jsonl"), max_new=16
            )
        )
    groups = engine_groups(specs, swap=True)
    assert [[s.model for s in g] for g in groups] == [[specs[0].model, specs[1].model], [specs[2].model]]
    assert len(engine_groups(specs, swap=False)) == 3  # GPUs: an engine per policy
    other = GenerationSpec(**{**specs[1].__dict__, "max_new": 8})  # another engine length
    assert len(engine_groups([specs[0], other], swap=True)) == 2


def test_on_gpus_engines_times_tensor_parallel_size_use_every_gpu(tmp_path):
    """label-pairs and eval-policy on an 8-GPU node: 8 / TP engines, each its own GPUs and a slice
    of the prompts; together the prompts in order. On CPU one engine."""
    from normbt_plugin.policy_studies.generation import GenerationSpec, shards

    prompts = [f"p{i}" for i in range(10)]
    spec = GenerationSpec(model="m", prompts=prompts, samples=list(range(10)), out=str(tmp_path / "o.jsonl"),
                          max_new=8, tensor_parallel_size=2)  # fmt: skip
    gpus = [str(i) for i in range(8)]
    engines = shards([spec], gpus)
    assert [g for _, g in engines] == [["0", "1"], ["2", "3"], ["4", "5"], ["6", "7"]]
    parts = [part for specs, _ in engines for part in specs]
    assert [p for part in parts for p in part.prompts] == prompts
    assert [n for part in parts for n in part.samples] == list(range(10))  # per-prompt counts follow
    assert len({part.out for part in parts}) == 4
    assert shards([spec], None) == [([spec], None)]  # CPU: one engine
    assert len(shards([spec], gpus[:3])) == 1  # 3 GPUs, TP 2: one engine (on GPUs 0-1)
    with pytest.raises(EvalInputError, match="needs 2 GPUs; 1 visible"):
        shards([spec], ["0"])


def test_max_len_defaults_to_the_models_context_and_a_larger_one_is_refused(tiny):
    from normbt_plugin.options import LabelPairsOptions
    from normbt_plugin.policy_studies.generation import checked_max_len

    opts = LabelPairsOptions(prompts="x", policy=str(tiny["model"]), gold_fn="m:f", out="o", max_new=64)
    assert checked_max_len(opts, str(tiny["model"])) == 512  # its max_position_embeddings
    with pytest.raises(EvalInputError, match="pass --max_len 512 or less"):
        checked_max_len(LabelPairsOptions(**{**opts.__dict__, "max_len": 2048}), str(tiny["model"]))
    with pytest.raises(EvalInputError, match="no room for a prompt"):
        checked_max_len(LabelPairsOptions(**{**opts.__dict__, "max_len": 64}), str(tiny["model"]))


def eval_policy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "normbt"), "eval-policy", *args], capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.slow
def test_eval_policy_refuses_bad_models_before_sampling(tiny, trained_pair, tmp_path):
    rm = str(trained_pair["normbt"] / "model")
    prompts = str(tiny["prompts"])
    # a reward model given as a policy
    proc = eval_policy(
        "--policy", f"initial={rm}", "--gold", rm, "--prompts", prompts, "--out", str(tmp_path)
    )
    assert proc.returncode == 2 and "is not a causal LM" in proc.stderr, proc.stderr[-2000:]
    # a causal LM given as the gold reward model
    model = str(tiny["model"])
    proc = eval_policy(
        "--policy", f"initial={model}", "--gold", model, "--prompts", prompts, "--out", str(tmp_path)
    )
    assert proc.returncode == 2 and "is not a reward model" in proc.stderr, proc.stderr[-2000:]
    # a policy path that does not exist
    proc = eval_policy(
        "--policy", "p=/nowhere/model", "--gold", rm, "--prompts", prompts, "--out", str(tmp_path)
    )
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert not (tmp_path / "generations").exists()  # nothing was sampled


@pytest.mark.slow
def test_eval_policy_with_a_gold_reward_model(chain, tmp_path):
    """A reward model as the judge (what the GPU configs' GOLD_RM does): the gold rewards it logs are
    its scores of the sampled texts; best-of-N with the gold as its own proxy is the oracle."""
    from normbt_plugin.rm_evaluation.scoring import RewardScorer

    gold = str(chain / "rm-bt-seed1" / "model")  # any trained RM will do as a judge here
    proc = eval_policy(
        "--policy", f"initial={chain / 'policy'}", "--proxy", f"bt-seed1={gold}", "--gold", gold,
        "--prompts", str(chain / "tiny" / "eval_prompts.jsonl"), "--n_prompts", "8", "--samples", "2",
        "--bon_samples", "4", "--max_new", "24", "--max_len", "64", "--out", str(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = PolicyEval.read(tmp_path / "policy_eval.json")
    assert result.gold == gold and result.prompts == 8
    rows = read_generations(tmp_path / "generations" / "initial.jsonl")
    scorer = RewardScorer(gold)
    texts = [scorer.format(r.prompt, s.text) for r in rows for s in r.samples[:2]]
    logged = np.ravel(result.policies["initial"].gold_per_sample)
    np.testing.assert_allclose(scorer.score(texts)[0], logged, atol=1e-4)
    curves = result.best_of_n.curves
    np.testing.assert_allclose(curves["bt-seed1"].mean, curves["oracle (gold)"].mean, atol=1e-9)


def synthetic_policy_eval(path: Path, effect: float, seeds=(1, 2, 3), prompts: int = 200) -> Path:
    """A policy_eval.json whose 'normbt' policies beat the 'bt' ones by ``effect`` gold reward."""
    rng = np.random.default_rng(0)
    difficulty = rng.normal(size=prompts)  # shared by all policies: the pairing matters
    golds = {"initial": difficulty}
    for seed in seeds:
        golds[f"bt-seed{seed}"] = difficulty + 0.5 + rng.normal(0, 0.5, prompts)
        golds[f"normbt-seed{seed}"] = difficulty + 0.5 + effect + rng.normal(0, 0.5, prompts)
    result = PolicyEval(reference="initial", gold="gold-rm", gold_fn=None, prompts=prompts, samples=1,
                        max_new=8, temperature=1.0, seed=0, tie_tol=0.0, policies={})  # fmt: skip
    for name, gold in golds.items():
        kl = 0.0 if name == "initial" else 1.0
        result.policies[name] = PolicyResult(
            path=name, gold_mean=float(gold.mean()), kl=kl, length=8.0, truncated=0.0,
            engine_logprob_gap=None,
            per_prompt=PerPrompt(gold=gold.tolist(), kl=[kl] * prompts, length=[8.0] * prompts),
            gold_per_sample=gold[:, None].tolist(), texts=[["x"]] * prompts,
            wins={other: Wins(float((gold > q).mean()), np.where(gold > q, 1.0, 0.0).tolist())
                  for other, q in golds.items() if other != name},
        )  # fmt: skip
    gold = rng.normal(size=(50, 8))
    proxies = {
        f"{label}-seed{s}": gold + rng.normal(0, 1, gold.shape) for label in ("bt", "normbt") for s in seeds
    }
    curves = {"oracle (gold)": best_of_n(gold, gold, [1, 2, 4, 8])}
    curves |= {name: best_of_n(scores, gold, [1, 2, 4, 8]) for name, scores in proxies.items()}
    result.best_of_n = BestOfN(
        n=[1, 2, 4, 8], kl=[bon_kl(n) for n in (1, 2, 4, 8)], prompts=50, samples=8,
        curves={k: Curve(v.mean(axis=0).tolist(), v.tolist()) for k, v in curves.items()},
        gold_scores=gold.tolist(), proxy_scores={k: v.tolist() for k, v in proxies.items()},
    )  # fmt: skip
    return files.write(result, path, indent=None)


def test_downstream_section_finds_a_known_effect(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    section = downstream_section(str(synthetic_policy_eval(tmp_path / "pe.json", 0.3)), "bt")
    summary = section.summary
    normbt = summary["policies"]["normbt"]
    d = normbt["gold_vs_baseline"]
    assert d["low"] < 0.3 < d["high"] and d["p_permutation"] < 0.01
    assert normbt["t_test"]["seeds"] == [1, 2, 3] and normbt["t_test"]["p"] < 0.05
    assert summary["policies"]["initial"]["kl"]["mean"] == 0.0
    assert 0.5 < normbt["head_to_head"]["bt"]["mean"] < 1.0
    assert (
        normbt["head_to_head"]["bt"]["mean"] + summary["policies"]["bt"]["head_to_head"]["normbt"]["mean"]
        <= 1
    )
    text = "\n".join(section.lines)
    assert "## Downstream policies" in text and "Best-of-N" in text and "| normbt | 3 |" in text
    oracle = summary["best_of_n"]["curves"]["oracle (gold)"]
    assert [p["mean"] for p in oracle] == sorted(p["mean"] for p in oracle)
    for name, fig in section.figures:
        fig.savefig(tmp_path / name)
        assert_plot(tmp_path / name)

    # no effect: the interval covers 0 and the test does not reject
    null = downstream_section(str(synthetic_policy_eval(tmp_path / "null.json", 0.0)), "bt").summary
    d = null["policies"]["normbt"]["gold_vs_baseline"]
    assert d["low"] < 0 < d["high"]


def test_downstream_marks_policies_at_kls_more_than_2x_apart(tmp_path):
    import matplotlib

    from normbt_plugin.policy_studies.report import kl_note

    matplotlib.use("Agg")
    assert kl_note(4.6, 18.3) == "not comparable: KL 4.60 vs 18.30 (> 2x)" and kl_note(4.0, 7.9) == ""
    path = synthetic_policy_eval(tmp_path / "pe.json", 0.3)
    result = PolicyEval.read(path)
    for name, policy in result.policies.items():
        policy.kl = 12.0 if name.startswith("normbt") else 3.0
    files.write(result, path)
    section = downstream_section(str(path), "bt", note="2 PPO steps: shows the chain, not the answer")
    text = "\n".join(section.lines)
    assert section.summary["policies"]["normbt"]["comparable"] is False
    assert "(KL 12.00 vs 3.00); **not comparable: KL 12.00 vs 3.00 (> 2x)**" in text
    assert "**2 PPO steps: shows the chain, not the answer**" in text and "KL bound (nats)" in text


def test_reward_scale_raw_and_as_ppo_normalises_it(tmp_path):
    from normbt_plugin.policy_studies.eval_policy import reward_scale

    (tmp_path / "config.json").write_text(json.dumps({"mean": 1.0, "std": 2.0}))
    scale = reward_scale(np.array([[1.0, 3.0], [5.0, 7.0]]), str(tmp_path))
    assert scale.mean == 4.0 and scale.std == pytest.approx(np.sqrt(5.0))
    assert scale.normalised_mean == 1.5 and scale.normalised_std == pytest.approx(np.sqrt(5.0) / 2)
    assert reward_scale(np.array([[1.0]]), str(tmp_path / "none")).normalised_mean is None
