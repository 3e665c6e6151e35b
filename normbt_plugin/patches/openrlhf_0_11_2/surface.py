"""Not a patch: what the rest of normbt_plugin needs from OpenRLHF 0.11.2, behind the version-neutral
functions of ``normbt_plugin.patches`` (the adapter). A new OpenRLHF version brings a folder of its
own with a ``surface`` module of the same names; nothing outside ``normbt_plugin/patches`` changes.
"""

from __future__ import annotations

import argparse
from typing import Any

from normbt_plugin.patches.openrlhf_0_11_2.cli_options import (
    capture_parser,
    cpu_dtype_parser,
    extended_parser,
    ppo_parser,
)
from normbt_plugin.patches.openrlhf_0_11_2.cpu_ppo import stateless_gloo_group
from normbt_plugin.patches.openrlhf_0_11_2.value_head_norm import normed_head

__all__ = [
    "capture_parser",
    "gpus_required",
    "load_reward_model",
    "normed_head",
    "policy_prompt",
    "ppo_parser",
    "reward_text",
    "rm_parser",
    "sft_parser",
    "stateless_gloo_group",
]

rm_parser = extended_parser  # train_rm: the registered losses' flags, checked at parse time
sft_parser = cpu_dtype_parser  # train_sft: fp32 on CPU


def reward_text(
    tokenizer: Any,
    prompt: Any,
    response: Any,
    *,
    input_template: str | None = None,
    apply_chat_template: bool = False,
) -> str:
    """The text OpenRLHF's RewardDataset scores for one response: its ``preprocess_data`` (template
    or chat template), then, as its ``__getitem__``, trailing newlines stripped and EOS appended."""
    from openrlhf.datasets.reward_dataset import preprocess_data

    if apply_chat_template:
        as_chat = (lambda x: [{"role": "user", "content": x}]) if isinstance(prompt, str) else list
        reply = [{"role": "assistant", "content": response}] if isinstance(response, str) else response
        row = {"prompt": as_chat(prompt), "chosen": reply, "rejected": reply}
        template = tokenizer.apply_chat_template
    else:
        row = {"prompt": prompt, "chosen": response, "rejected": response}
        template = None
    head, tail, _, _ = preprocess_data(row, input_template, "prompt", "chosen", "rejected", template)
    text = (head + tail).rstrip("\n")
    eos = tokenizer.eos_token
    return text if text.endswith(eos) else f"{text} {eos}"


def policy_prompt(
    tokenizer: Any, prompt: Any, *, input_template: str | None = None, apply_chat_template: bool = False
) -> str:
    """The text PPO's PromptDataset gives the policy for one prompt: OpenRLHF's own
    ``preprocess_data`` (every message of a chat prompt, system and earlier turns included)."""
    from openrlhf.datasets.prompts_dataset import preprocess_data

    template = tokenizer.apply_chat_template if apply_chat_template else None
    text, _ = preprocess_data({"input": prompt}, input_template, "input", None, template)
    return text


def load_reward_model(path: str, *, param_dtype: str, value_head_prefix: str = "score") -> Any:
    """OpenRLHF's reward model (``get_llm_for_sequence_regression``) at ``param_dtype``
    ('fp32', 'bf16', 'fp16'; its default bf16 would round float32 checkpoints)."""
    from openrlhf.models import get_llm_for_sequence_regression

    return get_llm_for_sequence_regression(
        path,
        "reward",
        attn_implementation="sdpa",
        value_head_prefix=value_head_prefix,
        param_dtype=param_dtype,
    )


def gpus_required(args: argparse.Namespace) -> int:
    """GPUs the layout asks for, as train_ppo_ray 0.11.2 places its actors and engines."""

    def get(key: str, default: Any = None) -> Any:
        return getattr(args, key, default)

    def n(role: str) -> int:
        return get(f"{role}.num_nodes", 1) * get(f"{role}.num_gpus_per_node", 8)

    engines = (get("vllm.num_engines") or 0) * get("vllm.tensor_parallel_size", 1)
    if get("train.colocate_all"):
        return max(n("actor"), engines)
    total = n("actor") + engines
    if get("algo.kl.init_coef", 0.0) > 0 and not get("train.colocate_actor_ref"):
        total += n("ref")
    has_critic = get("algo.advantage.estimator", "gae") == "gae"
    has_reward = not get("reward.remote_url")
    if get("train.colocate_critic_reward"):
        total += n("critic") if (has_critic or has_reward) else 0
    else:
        total += (n("critic") if has_critic else 0) + (n("reward") if has_reward else 0)
    return total
