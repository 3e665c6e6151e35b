"""Evidence material: stdlib preference pairs and the MiniLM backbone through the real RM stage."""

from __future__ import annotations

import ast
import difflib
import io
import json
import tokenize

import pytest

from normbt_plugin.evidence import build_stdlib_pairs, prepare_minilm


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
    """The CI smoke run of the evidence study: the pretrained encoder, two NormBT steps."""
    from conftest import train_rm

    from normbt_plugin.evaluation import RewardScorer

    out, _, _ = stdlib_pairs
    model = prepare_minilm(tmp_path / "minilm")
    run = train_rm(
        {**tiny, "test": out / "test.jsonl"}, tmp_path / "run", "--data.max_samples", "32",
        "--data.input_template", "[CLS]{}", "--data.max_len", "128", "--adam.lr", "5e-5",
        dataset=out / "train.jsonl", model=model,
    )  # fmt: skip
    assert run.returncode == 0, run.output[-3000:]
    records = run.records()
    assert len(records) == 2 and all(r["normbt_mu"] > 0 for r in records)
    assert "score.weight" in run.output and "bert." not in run.output.split("LOAD REPORT")[-1][:600]
    scorer = RewardScorer(str(run.out_dir), loader="openrlhf", batch_size=8, max_len=128)
    rewards, hidden = scorer.score([scorer.format("[CLS]", "def f(x):\n    return x")])
    assert hidden.shape == (1, 384)
