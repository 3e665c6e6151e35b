"""Preference pairs for evaluation: the formats eval-rm reads, loaded into one ``Pairs``.

Formats (``--format auto`` picks by the columns):
- ``pairs``: prompt (optional), chosen, rejected strings;
- ``rewardbench``: prompt, chosen, rejected, subset (RewardBench's own layout);
- ``rmbench``: prompt, chosen and rejected as three responses each (concise, detailed,
  detailed with markdown), domain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class EvalInputError(ValueError):
    """Input that cannot be evaluated; the message says what to change."""


@dataclass
class Pairs:
    format: str
    prompts: list[str]
    chosen: list[Any]  # str, or a list of 3 str for rmbench
    rejected: list[Any]
    subsets: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.chosen)


def load_rows(source: str, split: str) -> list[dict]:
    from datasets import load_dataset

    path = Path(source)
    if path.exists():
        if path.is_file() and path.stat().st_size == 0:
            raise EvalInputError(f"{source} is empty: nothing to evaluate")
        kind = "parquet" if path.suffix == ".parquet" else "json"
        data = load_dataset(kind, data_files=str(path), split="train")
    else:  # a dataset name, loaded from the hub on users' nodes
        data = load_dataset(source, split=split)
    return [dict(row) for row in data]


def load_pairs(
    source: str,
    format: str = "auto",
    *,
    prompt_key: str = "prompt",
    chosen_key: str = "chosen",
    rejected_key: str = "rejected",
    subset_key: str | None = None,
    split: str = "train",
) -> Pairs:
    """Preference pairs from a local JSONL/JSON/Parquet file or a dataset name."""
    rows = load_rows(source, split)
    if not rows:
        raise EvalInputError(f"{source} holds no rows: no preference pairs to evaluate")
    columns = list(rows[0])
    for key, flag in ((chosen_key, "--chosen_key"), (rejected_key, "--rejected_key")):
        if key not in columns:
            raise EvalInputError(
                f"{source} has no column {key!r}; its columns are {columns}. Pass {flag} <column>."
            )
    if format == "auto":
        first = rows[0][chosen_key]
        if isinstance(first, list) and len(first) == 3 and all(isinstance(x, str) for x in first):
            format = "rmbench"
        elif "subset" in columns:
            format = "rewardbench"
        else:
            format = "pairs"
    subset_key = subset_key or {"rewardbench": "subset", "rmbench": "domain"}.get(format)
    if subset_key and subset_key not in columns:
        raise EvalInputError(f"{format} data needs a {subset_key!r} column; columns: {columns}")
    pairs = Pairs(
        format=format,
        prompts=[str(r.get(prompt_key) or "") for r in rows],
        chosen=[r[chosen_key] for r in rows],
        rejected=[r[rejected_key] for r in rows],
        subsets=[str(r[subset_key]) for r in rows] if subset_key else [],
    )
    if format == "rmbench":
        bad = [
            i
            for i, (c, r) in enumerate(zip(pairs.chosen, pairs.rejected, strict=True))
            if len(c) != 3 or len(r) != 3
        ]
        if bad:
            raise EvalInputError(f"rmbench rows need 3 chosen and 3 rejected responses; row {bad[0]}")
    return pairs
