"""A PPO run's records, in its output folder.

    rollouts/rollouts.jsonl  a Rollout per sample PPO trained on (the ``rollout_log`` patch writes
                             through ``append_rollouts``; ``normbt curves`` reads ``read_rollouts``)
    run.json                 RunRecord: which reward the run optimised (the study recipes write it with
                             ``python -m normbt_plugin.policy_studies.curves record``; ``normbt curves``
                             reads it)

Standard library only: the PPO actor imports this.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

ROLLOUTS = "rollouts.jsonl"


@dataclass
class Rollout:
    """One sample PPO trained on, as its experience maker returned it."""

    step: int
    prompt: str | None
    sequence: list[int]  # prompt and response token ids
    attention_mask: list[int]
    response_ids: list[int]
    response_start: int | None  # where the response starts in ``sequence`` (None: empty response)
    reward: float  # what PPO was given for it
    kl: float | None  # sum over response tokens of log pi - log pi_ref (None without a reference)
    logprobs: list[float] | None  # the actor's, per response token
    vllm_logprob_gap: float | None  # largest |engine - actor| log-prob of a response token


def append_rollouts(folder: str | Path, rows: list[Rollout]) -> None:
    path = Path(folder) / ROLLOUTS
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.writelines(json.dumps(dataclasses.asdict(r)) + "\n" for r in rows)


def read_rollouts(folder: str | Path) -> list[Rollout]:
    """The rollouts under ``folder`` ([] if none)."""
    path = Path(folder) / ROLLOUTS
    return [Rollout(**json.loads(line)) for line in path.read_text().splitlines()] if path.exists() else []


@dataclass
class RunRecord:
    """``run.json`` in a PPO run folder: which reward it optimised."""

    label: str
    rm_seed: int | None = None  # None: no RM (the true reward, the ceiling)
    ppo_seed: int | None = None

    def write(self, folder: str | Path) -> None:
        (Path(folder) / "run.json").write_text(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def read(cls, folder: str | Path) -> RunRecord:
        """The record, or one named after the folder when there is none."""
        path = Path(folder) / "run.json"
        return cls(**json.loads(path.read_text())) if path.exists() else cls(label=Path(folder).name)
