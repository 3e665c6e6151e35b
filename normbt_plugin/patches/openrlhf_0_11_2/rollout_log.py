"""Record each PPO rollout's token ids and the reward OpenRLHF gave them (opt-in, for checks).

Why: OpenRLHF logs only the mean reward of a rollout, so nobody can check that PPO was trained
on what the reward model says about its samples. With ``--plugin.rollout_log <dir>`` (train_ppo's
launcher passes it to every Ray worker as ``NORMBT_PLUGIN_ROLLOUT_LOG``), the PPO controller
appends one JSON line per sample (step, prompt text, token ids, attention mask, the response's
ids and start, the actor's log-prob of each response token, the reward, and its KL to the
reference policy: the sum over response tokens of ``log pi - log pi_ref``, from the
training-side log-probs OpenRLHF computes anyway; and, when vLLM returns its log-probs
(``--algo.advantage.is_correction_level``), the largest gap between the engine's and the actor's
log-prob of a response token: a stale engine after a weight sync shows there) to
``<dir>/rollouts.jsonl`` as its experience maker returns them: the curves of ``normbt curves``
come from these.
Not applied (nothing in PPO's path changes) unless the flag is given.
"""

from __future__ import annotations

import functools
import importlib
import os

from normbt_plugin.patches.openrlhf_0_11_2 import is_patched, mark_patched
from normbt_plugin.runs.ppo import Rollout, append_rollouts

ENV = "NORMBT_PLUGIN_ROLLOUT_LOG"


def needed() -> bool:
    return bool(os.environ.get(ENV))


def write_rollouts(experiences, step: int) -> None:
    rows = []
    for exp in experiences:
        for i in range(len(exp.sequences)):
            # action_mask[j] marks sequences[j + 1]; response_length counts its ones
            actions = exp.action_mask[i].bool()
            length = int(actions.sum())
            diff = exp.info.get("logprobs_diff")  # per-token mean of log pi - log pi_ref
            rows.append(Rollout(
                step=step,
                prompt=exp.prompts[i] if exp.prompts else None,
                sequence=exp.sequences[i].tolist(),
                attention_mask=exp.attention_mask[i].tolist(),
                response_ids=exp.sequences[i][1:][actions].tolist(),
                response_start=int(actions.nonzero()[0, 0]) + 1 if length else None,
                reward=float(exp.info["reward"][i]),
                kl=float(diff[i]) * length if diff is not None else None,
                logprobs=_actor_logprobs(exp, i, actions),
                vllm_logprob_gap=_gap(exp, i, actions),
            ))  # fmt: skip
    append_rollouts(os.environ[ENV], rows)


def _actor_logprobs(exp, i: int, actions) -> list[float] | None:
    actor = getattr(exp, "action_log_probs", None)
    return actor[i].float()[actions].tolist() if actor is not None else None


def _gap(exp, i: int, actions) -> float | None:
    rollout, actor = getattr(exp, "rollout_log_probs", None), getattr(exp, "action_log_probs", None)
    if rollout is None or actor is None or not actions.any():
        return None
    return float((rollout[i].float() - actor[i].float())[actions].abs().max())


def apply() -> None:
    # The experience maker is built inside the PPO controller's own process (Ray ships the
    # controller class by value, so its methods are not patched; this class comes by import).
    maker = importlib.import_module("openrlhf.trainer.ppo_utils.experience_maker").RemoteExperienceMaker
    original = maker.make_experience_batch
    if is_patched(original, "rollout_log"):
        return

    @functools.wraps(original)
    def make_experience_batch(self, rollout_samples):
        experiences = original(self, rollout_samples)
        self._normbt_rollouts = getattr(self, "_normbt_rollouts", 0) + 1
        write_rollouts(experiences, self._normbt_rollouts)
        return experiences

    mark_patched(make_experience_batch, "rollout_log")
    maker.make_experience_batch = make_experience_batch
