"""One prompt builder: eval-policy, label-pairs and standardize show the policy what OpenRLHF's PPO
shows it (its PromptDataset), whole conversations included: a system message and two user turns."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from normbt_plugin.common.tiny import CHAT_PREAMBLE, CHAT_TEMPLATE, build_tokenizer
from normbt_plugin.policy_studies.eval_policy import load_prompts
from normbt_plugin.policy_studies.generation import format_prompt
from normbt_plugin.policy_studies.label_pairs import LabelledPair, read_pairs, write_pairs
from normbt_plugin.rm_evaluation.pairs import EvalInputError
from normbt_plugin.runs.generations import prompt_task

TASK = "sort 3 1 2"


@pytest.fixture(scope="module")
def prompt_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompts")
    tokenizer = build_tokenizer(["you sort numbers ready yes sort 3 1 2 plain"], root / "tok")
    tokenizer.chat_template = CHAT_TEMPLATE
    rows = [{"input": [*CHAT_PREAMBLE, {"role": "user", "content": TASK}]}, {"input": "plain"}]
    path = root / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tokenizer, path, rows


def test_the_policy_sees_what_ppo_shows_it_every_turn_included(prompt_set, openrlhf_patched):
    from openrlhf.datasets.prompts_dataset import PromptDataset

    tokenizer, path, rows = prompt_set
    data = SimpleNamespace(input_key="input", label_key=None, apply_chat_template=True, image_key="images")
    strategy = SimpleNamespace(args=SimpleNamespace(data=data), is_rank_0=lambda: True)
    ppo = PromptDataset(rows, tokenizer, strategy).prompts  # what PPO's actors generate from

    prompts = load_prompts(str(path), apply_chat_template=True)
    ours = [format_prompt(tokenizer, p, apply_chat_template=True, input_template=None) for p in prompts]
    assert ours == ppo
    conversation = ours[0]
    for turn in [*CHAT_PREAMBLE, {"role": "user", "content": TASK}]:  # the system message, both turns
        assert f"{turn['role']}: {turn['content']}</s>" in conversation
    assert conversation.endswith("assistant:")
    assert prompt_task(prompts[0]) == TASK  # what a task's own reward reads: the last user turn


def test_chat_prompts_without_the_chat_template_are_refused(prompt_set):
    _, path, _ = prompt_set
    with pytest.raises(EvalInputError, match="pass --apply_chat_template"):
        load_prompts(str(path))


def test_label_pairs_write_the_whole_conversation_for_the_rm_stage(prompt_set, tmp_path):
    _, path, _ = prompt_set
    conversation, plain = load_prompts(str(path), apply_chat_template=True)
    pairs = [LabelledPair(conversation, "1 2 3", "3 2 1", 1.0, 0.0), LabelledPair(plain, "a", "b", 1.0, 0.5)]
    out = write_pairs(pairs, tmp_path / "pairs.jsonl", chat=True)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert (
        written[0]["prompt"] == conversation
    )  # system message and both turns, for --data.apply_chat_template
    assert written[0]["chosen"] == [{"role": "assistant", "content": "1 2 3"}]
    assert written[1]["prompt"] == [{"role": "user", "content": "plain"}]
    assert read_pairs(out) == pairs
