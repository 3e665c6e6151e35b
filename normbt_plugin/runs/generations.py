"""``generations/<policy>.jsonl``: a policy's sampled responses, a ``Generation`` per prompt. The
vLLM child (``policy_studies.generation``) writes them; eval-policy, label-pairs and standardize
read them back (``read_generations``), and a finished file is reused when its spec is unchanged."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from normbt_plugin.runs import files


@dataclass
class Sample:
    ids: list[int]  # response token ids
    text: str  # decoded without special tokens
    engine_logprob: float  # the engine's sum of log-probs over the response tokens
    truncated: bool  # stopped at max_new, not at EOS


@dataclass
class Generation:
    prompt: str
    prompt_ids: list[int]
    samples: list[Sample]


def write_generations(rows: list[Generation], path: str | Path) -> Path:
    return files.write_lines(rows, path)


def read_generations(path: str | Path) -> list[Generation]:
    return files.read_lines(Generation, path, "normbt eval-policy / label-pairs (vLLM sampling)")
