"""Evidence material: stdlib preference pairs and the MiniLM backbone through the real RM stage."""

from __future__ import annotations

import ast
import difflib
import io
import json
import tokenize

import pytest
import torch

from normbt_plugin.rm_evaluation.evidence import build_stdlib_pairs, prepare_minilm


def tokens(source: str) -> list[str]:
    return [t.string for t in tokenize.generate_tokens(io.StringIO(source).readline)]


@pytest.fixture(scope="module")
def stdlib_pairs(tmp_path_factory):
    out = tmp_path_factory.mktemp("stdlib")
    card = build_stdlib_pairs(out, n_train=300, n_test=120, seed=0)
    rows = {
        s: [json.loads(x) for x in (out / f"{s}.jsonl").read_text().splitlines()] for s in ("train", "test")
    }
    return out, card, rows


def test_pairs_split_by_module_and_known_answers(stdlib_pairs):
    out, card, rows = stdlib_pairs
    assert card["counts"]["train"]["pairs"] == 300 and card["counts"]["test"]["pairs"] == 120
    assert not {r["module"] for r in rows["train"]} & {r["module"] for r in rows["test"]}
    assert not {r["chosen"] for r in rows["train"]} & {r["chosen"] for r in rows["test"]}  # duplicates too
    for row in rows["train"] + rows["test"]:
        ast.parse(row["chosen"])  # the original, unparsed: valid Python
        assert row["chosen"] != row["rejected"]
        a, b = tokens(row["chosen"]), tokens(row["rejected"])
        if row["kind"] == "fine":  # one operator or constant changed: one edit of <= 2 tokens
            edits = [op for op in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes()
                     if op[0] != "equal"]  # fmt: skip
            assert len(edits) == 1 and max(edits[0][2] - edits[0][1], edits[0][4] - edits[0][3]) <= 2
        else:  # same statements, reordered
            assert sorted(a) == sorted(b) and a != b
    assert {r["kind"] for r in rows["train"]} == {"fine", "coarse"}
    again = build_stdlib_pairs(out / "again", n_train=300, n_test=120, seed=0)
    assert again == card and (out / "again" / "train.jsonl").read_text() == (out / "train.jsonl").read_text()


def test_unrelated_coarse_pairs_stay_inside_their_split(tmp_path):
    card = build_stdlib_pairs(tmp_path, n_train=200, n_test=80, seed=0, coarse="unrelated")
    assert card["coarse"] == "unrelated"
    sources = {}
    for split in ("train", "test"):
        rows = [json.loads(x) for x in (tmp_path / f"{split}.jsonl").read_text().splitlines()]
        coarse = [r for r in rows if r["kind"] == "coarse"]
        assert coarse and all(r["rejected"] != r["chosen"] for r in coarse)
        sources[split] = {r["chosen"] for r in rows} | {r["rejected"] for r in rows}
        names = {r["function"] for r in coarse}
        assert all(r["prompt"] == f"{r['module']}.{r['function']}:\n" for r in rows)  # what is asked
        # the rejected function is another one: its name differs, or it is another module's copy
        assert sum(ast.parse(r["rejected"]).body[0].name != r["function"] for r in coarse) > 0.8 * len(coarse)
        assert names
    assert not sources["train"] & sources["test"]  # no code on both sides of the split
    with pytest.raises(ValueError, match="'shuffle' or 'unrelated'"):
        build_stdlib_pairs(tmp_path / "bad", coarse="random")


@pytest.mark.slow
def test_minilm_trains_through_the_rm_stage_two_steps(stdlib_pairs, tiny, tmp_path):
    """The CI smoke run of the evidence study: the pretrained encoder, two NormBT steps; with
    BERT's own dropout (0.1) NormBT warns and its distances are dropout noise, and
    ``--plugin.disable_dropout`` brings back the pairs' own distances."""
    from conftest import train_rm

    from normbt_plugin.rm_evaluation.scoring import RewardScorer

    out, _, _ = stdlib_pairs
    model = prepare_minilm(tmp_path / "minilm", dropout=0.1)

    def run(*flag: str):
        return train_rm(
            {**tiny, "test": out / "test.jsonl"}, tmp_path / f"run{len(flag)}", "--data.max_samples", "32",
            "--data.input_template", "[CLS]{}", "--data.max_len", "128", "--adam.lr", "5e-5", *flag,
            dataset=out / "train.jsonl", model=model,
        )  # fmt: skip

    runs = {flag: run(*flag) for flag in ((), ("--plugin.disable_dropout",))}
    for r in runs.values():
        assert r.returncode == 0, r.output[-3000:]
        records = r.records()
        assert len(records) == 2 and all(r["normbt_mu"] > 0 for r in records)
    noisy, clean = runs[()], runs[("--plugin.disable_dropout",)]
    assert "WARNING: the model trains with dropout" in noisy.output
    assert "dropout off (" in clean.output and "WARNING: the model trains" not in clean.output
    # the closest of 16 pairs at step 1: pretrained distances are below 1.2 (90th percentile of
    # shuffled bodies), the same text twice under dropout about 3.6 apart
    assert noisy.records()[0]["normbt_dist_min"] > 2.0
    assert clean.records()[0]["normbt_dist_min"] < 1.0
    assert "score.weight" in clean.output and "bert." not in clean.output.split("LOAD REPORT")[-1][:600]
    scorer = RewardScorer(str(clean.out_dir), loader="openrlhf", batch_size=8, max_len=128)
    rewards, hidden = scorer.score([scorer.format("[CLS]", "def f(x):\n    return x")])
    assert hidden.shape == (1, 384)


def test_dropout_found_and_disabled():
    """Both kinds of dropout: nn.Dropout modules (BERT) and Llama's attention_dropout float."""
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel

    from normbt_plugin.hidden import active_dropout, disable_dropout

    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, vocab_size=100))  # fmt: skip
    llama = LlamaModel(LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, vocab_size=100, attention_dropout=0.1))  # fmt: skip
    assert active_dropout(llama) and all(k.endswith("attention_dropout") for k in active_dropout(llama))
    ids = torch.tensor([[5, 6, 7, 8]])
    for model in (bert, llama):
        model.train()
        n = len(active_dropout(model))
        assert n and not torch.equal(model(ids).last_hidden_state, model(ids).last_hidden_state)
        assert disable_dropout(model) == n
        assert not active_dropout(model) and disable_dropout(model) == 0
        # training mode, yet deterministic
        assert torch.equal(model(ids).last_hidden_state, model(ids).last_hidden_state)
