"""The files a training run writes for a later stage to read: one owner each, one writer, one reader.

A reward-model run, under ``--plugin.metrics_dir``:

    meta.json            RunMeta: which loss, options, seed and data made the run
    train_rank<r>.jsonl  a line per optimizer step and rank: step, rank, the step metrics, loss_state
    eval.jsonl           a line per evaluation: step, acc, distance_bins (accuracy by distance bin)

The trainer (the ``registered_loss`` patch) writes them through ``RunRecorder``; ``normbt compare``
and the tests read them back with the functions here.

A PPO run, in its output folder:

    rollouts/rollouts.jsonl  one Rollout per sample PPO trained on (the ``rollout_log`` patch writes,
                             ``normbt curves`` reads: ``read_rollouts``)
    run.json                 RunRecord: which reward the run optimised (the study recipes write it
                             with ``python -m normbt_plugin.curves record``; ``normbt curves`` reads it)

Standard library only.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

META = "meta.json"
EVAL = "eval.jsonl"


def train_file(rank: int) -> str:
    return f"train_rank{rank}.jsonl"


@dataclass
class RunMeta:
    loss: str
    seed: int
    label: str = ""  # the variant's name in reports (--plugin.label); the loss name when empty
    options: dict[str, Any] = field(default_factory=dict)
    max_norm: float | None = None
    disable_dropout: bool = False
    model: str | None = None
    dataset: str | None = None
    # what the trained module really was, read off it (not off the flags): trainable LoRA tensors,
    # gradient checkpointing on, the first training forward packed (one row of concatenated pairs)
    lora_tensors: int = 0
    gradient_checkpointing: bool = False
    packed_forward: bool | None = None  # None: no training forward yet

    @property
    def name(self) -> str:
        return self.label or self.loss

    def write(self, folder: str | Path) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / META).write_text(json.dumps(dataclasses.asdict(self), indent=1, default=str))

    @classmethod
    def read(cls, folder: str | Path) -> RunMeta:
        data = json.loads((Path(folder) / META).read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def read_steps(folder: str | Path, rank: int = 0) -> list[dict[str, Any]]:
    """The step records of ``rank`` (``step``, ``rank``, metric names, ``loss_state``); [] if none.
    A run resumed after a crash appends the steps after its checkpoint again: the later record wins."""
    path = Path(folder) / train_file(rank)
    if not path.exists():
        return []
    by_step = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        by_step[record["step"]] = record
    return sorted(by_step.values(), key=lambda r: r["step"])


def read_evals(folder: str | Path) -> list[dict[str, Any]]:
    """The eval records (``step``, ``acc``, ``distance_bins``); [] if none."""
    path = Path(folder) / EVAL
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class RunRecorder:
    """Writes a run's records into ``folder`` (None: records nothing). Every rank writes its own
    step file; the meta and eval records come from rank 0 only."""

    def __init__(self, folder: str | None, rank: int) -> None:
        self.folder, self.rank = (Path(folder) if folder else None), rank

    def _append(self, name: str, record: dict[str, Any]) -> None:
        assert self.folder is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / name, "a") as f:
            f.write(json.dumps(record) + "\n")

    def meta(self, meta: RunMeta) -> None:
        if self.folder is not None and self.rank == 0:
            meta.write(self.folder)

    def step(self, step: int, metrics: dict[str, float], loss_state: dict[str, Any]) -> None:
        if self.folder is not None:
            self._append(
                train_file(self.rank), {"step": step, "rank": self.rank, **metrics, "loss_state": loss_state}
            )

    def eval(self, step: int, bins: list[dict[str, float]]) -> None:
        if self.folder is not None and self.rank == 0:
            acc = sum(b["acc"] * b["n"] for b in bins if b["n"]) / sum(b["n"] for b in bins)
            self._append(EVAL, {"step": step, "acc": acc, "distance_bins": bins})


# ------------------------------------------------------------------ a PPO run

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
