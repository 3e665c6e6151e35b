"""``generations/<policy>.jsonl``: a policy's sampled responses, a ``Generation`` per prompt. The
vLLM child (``policy_studies.generation``) writes them; eval-policy, label-pairs and standardize
read them back (``read_generations``), and a finished file is reused when its spec is unchanged."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from normbt_plugin.runs import files


@dataclass
class Sample:
    ids: list[int]  # response token ids
    text: str  # decoded without special tokens
    engine_logprob: float  # the engine's sum of log-probs over the response tokens
    truncated: bool  # stopped at max_new, not at EOS


# A prompt as a prompt set holds it: plain text, or chat messages (system, user and assistant turns)
Prompt = str | list[dict[str, Any]]


def prompt_task(prompt: Prompt) -> str:
    """What a task's own reward reads of a prompt: the text, or the last user turn's content."""
    if isinstance(prompt, str):
        return prompt
    return next(m["content"] for m in reversed(prompt) if m.get("role") == "user")


@dataclass
class Generation:
    prompt: Prompt  # as the prompt set has it
    prompt_ids: list[int]
    samples: list[Sample]


def write_generations(rows: list[Generation], path: str | Path) -> Path:
    return files.write_lines(rows, path)


def read_generations(path: str | Path) -> list[Generation]:
    return files.read_lines(Generation, path, "normbt eval-policy / label-pairs (vLLM sampling)")
