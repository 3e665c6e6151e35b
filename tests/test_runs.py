"""The typed run files (``normbt_plugin.runs``): what a stage writes reads back as the same object,
and a file that is not what its owner says stops the reader with the file and the field named."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from normbt_plugin.runs import files
from normbt_plugin.runs.generations import Generation, Sample, read_generations, write_generations
from normbt_plugin.runs.policy_eval import PerPrompt, PolicyEval, PolicyResult, Wins
from normbt_plugin.runs.rm import EvalRecord, RunRecorder, read_evals
from normbt_plugin.runs.rm_eval import CandidateScores, PairScores, RmEval
from normbt_plugin.stats import distance_bins

BIN = Path(sys.executable).parent


def pair_eval(n: int = 8, subset: list[str] | None = None) -> RmEval:
    rng = np.random.default_rng(0)
    chosen, rejected, distance = rng.normal(size=n), rng.normal(size=n), rng.random(n)
    correct = (chosen > rejected).astype(float)
    return RmEval(
        format="pairs", pairs=n, loader="openrlhf", accuracy=float(correct.mean()), ties=0,
        distance_bins=distance_bins(distance, correct, 2),
        per_pair=PairScores(chosen=chosen.tolist(), rejected=rejected.tolist(), correct=correct.tolist(),
                            distance=distance.tolist(), subset=subset or []),
    )  # fmt: skip


def test_eval_json_round_trips_both_per_pair_shapes(tmp_path):
    two_way = pair_eval(subset=["a", "b"] * 4)
    two_way.per_subset, two_way.subset_sizes = {"a": 0.5, "b": 1.0}, {"a": 4, "b": 4}
    assert RmEval.read(two_way.write(tmp_path / "pairs.json")) == two_way
    n_way = RmEval(
        format="candidates", pairs=2, loader="openrlhf", accuracy=0.75, ties=1, pairwise_accuracy=0.8,
        candidates=6, distance_bins=[],
        per_pair=CandidateScores(scores=[[1.0, 0.0, 0.5], [0.2, 0.2, 0.1]], num_correct=[1, 1], subset=[],
                                 correct=[1.0, 0.5], pairwise=[1.0, 0.75], distance=[0.1, 0.2], id=[]),
    )  # fmt: skip
    again = RmEval.read(n_way.write(tmp_path / "candidates.json"))
    assert again == n_way and again.n_way and not two_way.n_way
    # optional fields left at their default stay out of the file
    assert "rewardbench" not in json.loads((tmp_path / "pairs.json").read_text())


def test_a_file_that_is_not_its_owner_names_the_file_and_the_field(tmp_path):
    path = pair_eval().write(tmp_path / "eval.json")
    data = json.loads(path.read_text())
    del data["accuracy"]
    data["per_pair"]["correct"] = "yes"
    path.write_text(json.dumps(data))
    with pytest.raises(
        files.RunFileError, match=r"eval\.json is not a RmEval file \(accuracy: Field required"
    ):
        RmEval.read(path)
    with pytest.raises(files.RunFileError, match="does not exist .normbt eval-rm --out"):
        RmEval.read(tmp_path / "missing.json")


def test_compare_stops_on_a_broken_eval_json_with_the_field_named(tmp_path):
    """Through the command: exit 2 and a one-line reason, no traceback."""
    for loss in ("bt", "normbt"):
        run = tmp_path / f"rm-{loss}-seed1"
        (run / "metrics").mkdir(parents=True)
        (run / "metrics" / "meta.json").write_text(json.dumps({"loss": loss, "seed": 1}))
        pair_eval().write(run / "eval.json")
    broken = json.loads((tmp_path / "rm-normbt-seed1" / "eval.json").read_text())
    del broken["per_pair"]
    (tmp_path / "rm-normbt-seed1" / "eval.json").write_text(json.dumps(broken))
    proc = subprocess.run(
        [str(BIN / "normbt"), "compare", str(tmp_path / "rm-bt-seed1"), str(tmp_path / "rm-normbt-seed1"),
         "--out", str(tmp_path / "report")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "rm-normbt-seed1/eval.json is not a RmEval file (per_pair: Field required" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_generations_and_policy_eval_round_trip(tmp_path):
    rows = [
        Generation(
            "sort: 2 1 ->", [1, 2], [Sample([3, 4], " 1 2", -1.5, False), Sample([5], " x", -0.5, True)]
        )
    ]
    assert read_generations(write_generations(rows, tmp_path / "g.jsonl")) == rows
    policy = PolicyResult(
        path="p", gold_mean=0.5, kl=0.0, length=2.0, truncated=0.5, engine_logprob_gap=None,
        per_prompt=PerPrompt(gold=[0.5], kl=[0.0], length=[2.0]), gold_per_sample=[[1.0, 0.0]],
        texts=[[" 1 2", " x"]], wins={"q": Wins(1.0, [1.0])},
    )  # fmt: skip
    result = PolicyEval(reference="p", gold="fn:f", gold_fn="f", prompts=1, samples=2, max_new=8,
                        temperature=1.0, seed=0, tie_tol=0.0, policies={"p": policy})  # fmt: skip
    again = PolicyEval.read(result.write(tmp_path))
    assert again == result and not again.has_true and again.best_of_n is None
    # null fields without a default are written: the file says the gap was not measured
    assert (
        json.loads((tmp_path / "policy_eval.json").read_text())["policies"]["p"]["engine_logprob_gap"] is None
    )


def test_the_trainers_eval_records_read_back_typed(tmp_path):
    bins = distance_bins(np.arange(10.0), (np.arange(10) >= 5).astype(float), 2)
    RunRecorder(str(tmp_path), rank=0).eval(8, bins)
    RunRecorder(str(tmp_path), rank=1).eval(8, bins)  # not rank 0: writes nothing
    (record,) = read_evals(tmp_path)
    assert record == EvalRecord(8, 0.5, bins) and math.isclose(record.distance_bins[1].acc, 1.0)
