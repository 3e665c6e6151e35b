"""The tiny task's ground truth on hand-made outputs with known answers."""

from __future__ import annotations

import pytest

from normbt_plugin.common.tasks import gold_reward, prompt_numbers, reward_func, sort_score, split_query

P = "sort: 57 12 33 90 ->"


@pytest.mark.parametrize(
    ("response", "exact", "graded"),
    [
        (" 12 33 57 90", 1.0, 1.0),  # right
        (" 12 33 57 90</s>", 1.0, 1.0),  # with EOS
        (" 12 57 33 90", 0.0, 2 / 3),  # one swap: 2 of 3 adjacent pairs in order
        (" 90 57 33 12", 0.0, 0.0),  # reversed
        (" 12 33 57", 0.0, 6 / 7),  # a number missing: F1 2*3/(3+4), in order
        (" 12 33 57 90 90", 0.0, 8 / 9),  # one too many: F1 2*4/(5+4), in order
        (" 12 33 57 91", 0.0, 0.75),  # a wrong number: F1 2*3/(4+4), in order
        (" 57 12 91", 0.0, 4 / 7 * 0.5),  # F1 2*2/(3+4), 1 of 2 pairs in order
        (" 12", 0.0, 2 / 5),  # one number: F1 2/(1+4), nothing out of order
        (" 12 33 apple 90", 0.0, 0.0),  # not numbers
        ("", 0.0, 0.0),
    ],
)
def test_sort_score_known_answers(response, exact, graded):
    assert sort_score(P, response) == {"exact": exact, "graded": pytest.approx(graded)}
    assert gold_reward(P, response) == pytest.approx((exact + graded) / 2)


def test_duplicates_and_prompt_parsing():
    assert sort_score("sort: 5 5 3 ->", " 3 5 5") == {"exact": 1.0, "graded": 1.0}
    assert prompt_numbers("User: sort: 1 2 ->\nAssistant:") == [1, 2]
    with pytest.raises(ValueError, match="not a sorting prompt"):
        prompt_numbers("hello")


def test_reward_func_reads_openrlhf_queries():
    prompt = "sort: 57 12 33 ->"
    queries = [f"<s>{prompt} 12 33 57</s>", f"{prompt} 33 12 57</s><pad>"]
    out = reward_func(queries, [prompt, prompt], ["", ""])
    assert out["rewards"].tolist() == pytest.approx([1.0, 0.25])  # (1 + 1) / 2, (0 + 1/2) / 2
    assert out["extra_logs"]["exact"].tolist() == [1.0, 0.0]
    assert split_query(queries[1], prompt) == " 33 12 57"
    with pytest.raises(ValueError, match="does not start with its prompt"):
        split_query("sort: 1 ->", prompt)
