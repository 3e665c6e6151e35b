"""Sampling a policy with vLLM, one policy per child process (its engine and memory go with it).

    python -m normbt_plugin.generation spec.json     # what ``generate()`` runs

The child writes one JSON line per prompt: the prompt as given, its token ids, and per sample the
response token ids, its text, vLLM's log-probability of each token and whether it hit
``max_new``. Prompts are formatted as OpenRLHF's PPO formats them: the policy's chat template
(``apply_chat_template``) or ``input_template``, tokenized without special tokens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class GenerationSpec:
    model: str
    prompts: list[str]
    out: str
    samples: int | list[int] = 1  # per prompt when a list
    max_new: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    dtype: str = "auto"  # float32 on CPU
    max_prompt_len: int = 1024
    apply_chat_template: bool = False
    input_template: str | None = None
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.8
    extra: dict = field(default_factory=dict)  # recorded, not used (e.g. the policy's name)


def format_prompt(tokenizer, prompt: str, apply_chat_template: bool, input_template: str | None) -> str:
    if apply_chat_template:
        messages = [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return input_template.format(prompt) if input_template else prompt


def generate(spec: GenerationSpec, log: Path | None = None) -> list[dict]:
    """Sample ``spec.model`` in a child process; reuse ``spec.out`` if it was made by the same spec."""
    out = Path(spec.out)
    spec_path = out.with_suffix(".spec.json")
    if out.exists() and spec_path.exists() and json.loads(spec_path.read_text()) == asdict(spec):
        return [json.loads(line) for line in out.read_text().splitlines()]
    out.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(asdict(spec)))
    out.unlink(missing_ok=True)
    import torch

    from normbt_plugin.environment import VLLM_CPU_ENV

    env = dict(os.environ)
    if not torch.cuda.is_available():
        env = {**VLLM_CPU_ENV, **env}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    log_file = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 (closed below)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "normbt_plugin.generation", str(spec_path)],
            env=env, stdout=log_file, stderr=subprocess.STDOUT, check=False,
        )  # fmt: skip
    finally:
        if log:
            log_file.close()
    if proc.returncode != 0 or not out.exists():
        tail = Path(log).read_text()[-3000:] if log else ""
        raise RuntimeError(
            f"vLLM generation with {spec.model} failed (exit {proc.returncode}){tail and ':'}\n{tail}"
        )
    return [json.loads(line) for line in out.read_text().splitlines()]


def _run(spec: GenerationSpec) -> None:
    import torch
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    tokenizer = AutoTokenizer.from_pretrained(spec.model)
    texts = [format_prompt(tokenizer, p, spec.apply_chat_template, spec.input_template) for p in spec.prompts]
    prompt_ids = [tokenizer(t, add_special_tokens=False)["input_ids"][-spec.max_prompt_len :] for t in texts]
    dtype = spec.dtype
    if dtype == "auto" and not torch.cuda.is_available():
        dtype = "float32"  # vLLM CPU: bf16 needs AVX512-BF16; float32 matches the HF log-probs
    llm = LLM(
        model=spec.model, dtype=dtype, seed=spec.seed, enforce_eager=not torch.cuda.is_available(),
        max_model_len=spec.max_prompt_len + spec.max_new, tensor_parallel_size=spec.tensor_parallel_size,
        gpu_memory_utilization=spec.gpu_memory_utilization,
    )  # fmt: skip
    counts = spec.samples if isinstance(spec.samples, list) else [spec.samples] * len(prompt_ids)
    sampling = [
        SamplingParams(
            n=n,
            temperature=spec.temperature,
            top_p=spec.top_p,
            max_tokens=spec.max_new,
            seed=spec.seed,
            logprobs=0,
        )  # fmt: skip
        for n in counts
    ]
    outputs = llm.generate(
        [TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids], sampling, use_tqdm=True
    )
    tmp = Path(spec.out + ".part")
    with open(tmp, "w") as f:
        for prompt, ids, result in zip(spec.prompts, prompt_ids, outputs, strict=True):
            samples = []
            for o in result.outputs:
                tokens = list(o.token_ids)
                logps = [step[t].logprob for t, step in zip(tokens, o.logprobs, strict=True)]
                samples.append(
                    {
                        "ids": tokens,
                        "text": tokenizer.decode(tokens, skip_special_tokens=True),
                        "engine_logprob": float(sum(logps)),
                        "truncated": o.finish_reason == "length",
                    }
                )
            f.write(json.dumps({"prompt": prompt, "prompt_ids": ids, "samples": samples}) + "\n")
    tmp.rename(spec.out)  # whole or absent: a killed child leaves no half file to reuse


def main() -> None:
    spec = GenerationSpec(**json.loads(Path(sys.argv[1]).read_text()))
    _run(spec)


if __name__ == "__main__":
    main()
