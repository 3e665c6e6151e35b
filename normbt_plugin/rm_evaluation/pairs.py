"""Preference pairs for evaluation: the formats eval-rm reads, loaded into one ``Pairs``.

Formats (``--format auto`` picks by the columns):
- ``pairs``: prompt (optional), chosen, rejected strings;
- ``rewardbench``: prompt, chosen, rejected, subset (RewardBench's own layout);
- ``rmbench``: prompt, chosen and rejected as three responses each (concise, detailed,
  detailed with markdown), domain;
- ``rewardbench2``: RewardBench 2's layout (``allenai/reward-bench-2``): id, prompt, chosen and
  rejected as lists, num_correct, subset (Factuality, Precise IF, Math, Safety, Focus, Ties);
- ``candidates``: prompt, one chosen string, rejected as a list of strings (best-of-N), optional
  subset column (``--subset_key``).
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
    chosen: list[Any]  # str; a list of 3 str for rmbench; a list of str for the N-way formats
    rejected: list[Any]
    subsets: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)  # rewardbench2: its Ties subset pairs rows by id

    def __len__(self) -> int:
        return len(self.chosen)

    @property
    def n_way(self) -> bool:
        """One prompt, several candidates (best-of-N): rewardbench2, candidates."""
        return self.format in N_WAY

    def is_ties(self, i: int) -> bool:
        """Row ``i`` belongs to RewardBench 2's Ties subset (scored by its own formula)."""
        return self.format == "rewardbench2" and self.subsets[i].lower() == "ties"


N_WAY = ("rewardbench2", "candidates")


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
        first, first_rejected = rows[0][chosen_key], rows[0][rejected_key]
        if "num_correct" in columns and isinstance(first, list):
            format = "rewardbench2"
        elif isinstance(first, list) and len(first) == 3 and all(isinstance(x, str) for x in first):
            format = "rmbench"
        elif isinstance(first, str) and isinstance(first_rejected, list):
            format = "candidates"
        elif "subset" in columns:
            format = "rewardbench"
        else:
            format = "pairs"
    subset_key = subset_key or {"rewardbench": "subset", "rewardbench2": "subset", "rmbench": "domain"}.get(
        format
    )
    if subset_key and subset_key not in columns:
        raise EvalInputError(f"{format} data needs a {subset_key!r} column; columns: {columns}")
    pairs = Pairs(
        format=format,
        prompts=[str(r.get(prompt_key) or "") for r in rows],
        chosen=[r[chosen_key] for r in rows],
        rejected=[r[rejected_key] for r in rows],
        subsets=[str(r[subset_key]) for r in rows] if subset_key else [],
        ids=[str(r.get("id", i)) for i, r in enumerate(rows)],
    )
    if format in N_WAY:
        _check_candidates(pairs, source)
    if format == "rmbench":
        bad = [
            i
            for i, (c, r) in enumerate(zip(pairs.chosen, pairs.rejected, strict=True))
            if len(c) != 3 or len(r) != 3
        ]
        if bad:
            raise EvalInputError(f"rmbench rows need 3 chosen and 3 rejected responses; row {bad[0]}")
    return pairs


def _check_candidates(pairs: Pairs, source: str) -> None:
    """N-way rows as lists (a candidates row's chosen string becomes a list of one); every row has a
    chosen and at least one rejected response; RewardBench 2's Ties rows name their prompt."""
    for i, (chosen, rejected) in enumerate(zip(pairs.chosen, pairs.rejected, strict=True)):
        row = f"{source} row {i} (id {pairs.ids[i]})"
        if pairs.format == "candidates" and not isinstance(chosen, str):
            raise EvalInputError(f"{row}: a candidates row has one chosen response (a string): {chosen!r}")
        chosen = [chosen] if isinstance(chosen, str) else chosen
        if not isinstance(rejected, list) or not all(isinstance(x, str) for x in [*chosen, *rejected]):
            raise EvalInputError(f"{row}: chosen and rejected must be strings / lists of strings")
        if not chosen:
            raise EvalInputError(f"{row} has no chosen response")
        if not rejected:
            raise EvalInputError(
                f"{row} has no rejected response: best-of-N needs a chosen response and at least one "
                f"rejected one ({len(chosen)} response(s) in this candidate set). Drop the row or add "
                "rejected responses."
            )
        pairs.chosen[i] = chosen
        if pairs.is_ties(i):
            kind, _, number = pairs.ids[i].partition(":")
            if kind not in ("ref", "tied") or not number.isdigit():
                raise EvalInputError(
                    f"{row}: RewardBench 2's Ties rows need an id 'ref:<n>' (the reference prompt, one "
                    "correct answer) or 'tied:<n>' (its tied twin, several correct answers), as in "
                    f"allenai/reward-bench-2; got {pairs.ids[i]!r}"
                )
            if kind == "tied" and len(chosen) < 2:
                raise EvalInputError(f"{row}: a 'tied' Ties row needs at least 2 correct (chosen) answers")
        elif pairs.format == "rewardbench2" and len(chosen) != 1:
            raise EvalInputError(
                f"{row}: RewardBench 2's subsets other than Ties have one chosen response, got {len(chosen)}"
            )
