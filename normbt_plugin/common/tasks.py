"""Ground truth for the tiny task: a response is right when it lists the prompt's numbers in order.

    prompt   "sort: 57 12 33 ->"      response " 12 33 57"

``sort_score`` gives two numbers: ``exact`` (1 when the response is the sorted list, else 0) and
``graded``: the F1 overlap of the response's numbers with the prompt's (as multisets) times the
share of the response's adjacent pairs in order, so a policy that gets closer is seen getting
closer (copying the numbers is half of the task, ordering them the other half; a response with
anything but numbers scores 0). The true reward is ``gold_reward = (exact + graded) / 2``, in
[0, 1]. It is usable in three places:

- ``normbt eval-policy --gold_fn normbt_plugin.common.tasks:gold_reward`` (beside or instead of a gold RM;
  also for best-of-N),
- OpenRLHF's PPO through its rule-based reward: ``--reward.remote_url recipes/rewards/sort.py``
  (that file re-exports ``reward_func(queries, prompts, labels)`` below),
- and directly from Python.
"""

from __future__ import annotations

import re
from collections import Counter

import torch

PROMPT = re.compile(r"sort:((?:\s+\d+)+)\s*->")
NUMBER = re.compile(r"-?\d+")
SPECIAL = re.compile(r"</?s>|<pad>")


def prompt_numbers(prompt: str) -> list[int]:
    """The numbers a prompt asks to sort (the last ``sort: ... ->`` in it)."""
    found = PROMPT.findall(prompt)
    if not found:
        raise ValueError(f"not a sorting prompt (expected 'sort: <numbers> ->'): {prompt!r}")
    return [int(n) for n in found[-1].split()]


def response_numbers(response: str) -> list[int] | None:
    """The numbers of a response, or None when it holds anything else (words, punctuation)."""
    tokens = SPECIAL.sub(" ", response).split()
    if not all(NUMBER.fullmatch(t) for t in tokens):
        return None
    return [int(t) for t in tokens]


def multiset_f1(got: list[int], want: list[int]) -> float:
    overlap = sum((Counter(got) & Counter(want)).values())
    return 2 * overlap / (len(got) + len(want)) if overlap else 0.0


def sort_score(prompt: str, response: str) -> dict[str, float]:
    """``exact``: the response is the prompt's numbers sorted; ``graded``: multiset F1 of the
    numbers times the share of adjacent pairs in order (0 for a response that is not numbers)."""
    want = sorted(prompt_numbers(prompt))
    got = response_numbers(response)
    if not got:
        return {"exact": 0.0, "graded": 0.0}
    in_order = (
        sum(a <= b for a, b in zip(got, got[1:], strict=False)) / (len(got) - 1) if len(got) > 1 else 1.0
    )
    return {"exact": float(got == want), "graded": multiset_f1(got, want) * in_order}


def exact(prompt: str, response: str) -> float:
    """1.0 when the response is the prompt's numbers sorted, else 0.0."""
    return sort_score(prompt, response)["exact"]


def true_reward(score: dict[str, float]) -> float:
    """The true reward of a ``sort_score``: the mean of ``exact`` and ``graded``, in [0, 1]."""
    return (score["exact"] + score["graded"]) / 2


def gold_reward(prompt: str, response: str) -> float:
    """The task's true reward for one response (``true_reward`` of its ``sort_score``)."""
    return true_reward(sort_score(prompt, response))


def split_query(query: str, prompt: str) -> str:
    """The response part of OpenRLHF's ``query`` (prompt and response decoded with special tokens)."""
    text = SPECIAL.sub("", query)
    stem = SPECIAL.sub("", prompt)
    if not text.startswith(stem):
        raise ValueError(f"the query does not start with its prompt: {query!r} vs {prompt!r}")
    return text[len(stem) :]


def reward_func(queries: list[str], prompts: list[str], labels: list[str]) -> dict:
    """OpenRLHF's rule-based reward (``--reward.remote_url <file>.py``): the true reward per query."""
    rewards = torch.tensor([gold_reward(p, split_query(q, p)) for q, p in zip(queries, prompts, strict=True)])
    exact = torch.tensor(
        [sort_score(p, split_query(q, p))["exact"] for q, p in zip(queries, prompts, strict=True)]
    )
    return {"rewards": rewards, "scores": rewards, "extra_logs": {"exact": exact}}
