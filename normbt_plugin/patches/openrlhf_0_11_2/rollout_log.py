"""Record each PPO rollout's token ids and the reward OpenRLHF gave them (opt-in, for checks).

Why: OpenRLHF logs only the mean reward of a rollout, so nobody can check that PPO was trained
on what the reward model says about its samples. With ``NORMBT_PLUGIN_ROLLOUT_LOG=<dir>`` in the
job's environment, the PPO controller appends one JSON line per sample (step, token ids,
attention mask, reward) to ``<dir>/rollouts.jsonl`` when it computes its rollout statistics.
Not applied (nothing in PPO's path changes) unless the variable is set.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

NAME = "rollout_log"
ENV = "NORMBT_PLUGIN_ROLLOUT_LOG"
_original = None
_step = 0


def needed() -> bool:
    return bool(os.environ.get(ENV))


def compute_rollout_stats(self, experiences):
    global _step
    _step += 1
    path = Path(os.environ[ENV]) / "rollouts.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        for exp in experiences:
            for i in range(len(exp.sequences)):
                row = {
                    "step": _step,
                    "sequence": exp.sequences[i].tolist(),
                    "attention_mask": exp.attention_mask[i].tolist(),
                    "reward": float(exp.info["reward"][i]),
                }
                f.write(json.dumps(row) + "\n")
    return _original(self, experiences)


def apply() -> None:
    global _original
    trainer = importlib.import_module("openrlhf.trainer.ppo_trainer").BasePPOTrainer
    if trainer._compute_rollout_stats is not compute_rollout_stats:
        _original = trainer._compute_rollout_stats
        trainer._compute_rollout_stats = compute_rollout_stats
