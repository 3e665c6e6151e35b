"""A reward-model run's records, under ``--plugin.metrics_dir`` (the recipes: ``<run>/metrics``).

    meta.json            RunMeta: which loss, options, seed and data made the run
    train_rank<r>.jsonl  a line per optimizer step and rank: step, rank, the step metrics, loss_state
    eval.jsonl           an EvalRecord per evaluation: step, acc, distance_bins

The trainer (the ``registered_loss`` patch) writes them through ``RunRecorder``; ``normbt compare``
and the tests read them with ``RunMeta.read``, ``read_steps`` and ``read_evals``. A step record
stays a dict: its metric names are the loss's own (``losses``), open-ended by design.

Standard library and core only: every training rank imports this (pydantic loads only when a reader runs).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from normbt_plugin.runs import files
from normbt_plugin.stats import DistanceBin

META = "meta.json"
EVAL_LOG = "eval.jsonl"  # the trainer's evals, one line each (not eval-rm's eval.json: runs/rm_eval.py)


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


@dataclass
class EvalRecord:
    """One evaluation during training: accuracy on the eval pairs, and by distance bin."""

    step: int
    acc: float
    distance_bins: list[DistanceBin]


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


def read_evals(folder: str | Path) -> list[EvalRecord]:
    """The evaluations during training, in order; [] if none."""
    path = Path(folder) / EVAL_LOG
    return files.read_lines(EvalRecord, path, "the RM stage") if path.exists() else []


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

    def eval(self, step: int, bins: list[DistanceBin]) -> None:
        if self.folder is not None and self.rank == 0:
            acc = sum(b.acc * b.n for b in bins if b.n) / sum(b.n for b in bins)
            self._append(EVAL_LOG, dataclasses.asdict(EvalRecord(step, acc, bins)))
