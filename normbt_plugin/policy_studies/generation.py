"""Sampling policies with vLLM in a child process (its engine and memory go with it).

    python -m normbt_plugin.policy_studies.generation specs.json     # what ``generate_all()`` runs

Without a GPU, the policies that share an architecture (an SFT policy and what PPO made of it) are
sampled by one engine in one child process, each policy's weights loaded into it in turn
(``vllm_weights``): the imports and the engine start are paid once, not once a policy. On GPUs each
policy gets its own child process.

The child writes one JSON line per prompt: the prompt as given, its token ids, and per sample the
response token ids, its text, vLLM's log-probability of each token and whether it hit
``max_new``. Prompts are formatted as OpenRLHF's PPO formats them: the policy's chat template
(``apply_chat_template``) or ``input_template``, tokenized without special tokens.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from normbt_plugin.common.device_mode import cpu_job, decide_job_device
from normbt_plugin.runs.generations import Generation, Prompt, Sample, read_generations, write_generations

if TYPE_CHECKING:
    from normbt_plugin.options import SamplingOptions


@dataclass(kw_only=True)
class GenerationSpec:
    model: str
    prompts: list[Prompt]
    out: str
    samples: int | list[int] = 1  # per prompt when a list
    max_new: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    dtype: str = "auto"  # float32 on CPU
    max_prompt_len: int = 1024
    apply_chat_template: bool = False
    input_template: str | None = None
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.8
    stop: list[str] = field(default_factory=list)  # strings that end a response (not kept in it)
    extra: dict = field(default_factory=dict)  # recorded, not used (e.g. the policy's name)


CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def context_length(model: str) -> int | None:
    """The positions ``model`` has (its config's ``max_position_embeddings`` or equivalent)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model, trust_remote_code=True)
    config = getattr(config, "text_config", None) or config
    return next((int(v) for k in CONTEXT_FIELDS if (v := getattr(config, k, None))), None)


def checked_max_len(opts: SamplingOptions, model: str) -> int:
    """``--max_len``, or the model's context length when not given; refused before vLLM starts
    when it is larger than the model's, or leaves no room for a prompt."""
    from normbt_plugin.rm_evaluation.pairs import EvalInputError

    limit = context_length(model)
    max_len = opts.max_len or limit
    if max_len is None:
        raise EvalInputError(f"{model}'s config names no context length: pass --max_len (prompt + response)")
    if limit is not None and max_len > limit:
        raise EvalInputError(
            f"--max_len {max_len} is more than {model} has positions ({limit}, its config): pass "
            f"--max_len {limit} or less (or leave it out: it defaults to the model's)"
        )
    if opts.max_new >= max_len:
        raise EvalInputError(f"--max_new {opts.max_new} leaves no room for a prompt in --max_len {max_len}")
    return max_len


def sampling_spec(
    opts: SamplingOptions, model: str, prompts: list[Prompt], out: str | Path, samples: int | list[int],
    **extra: Any,
) -> GenerationSpec:  # fmt: skip
    """The generation job of a command's sampling options (``normbt_plugin.options``)."""
    max_len = checked_max_len(opts, model)
    return GenerationSpec(
        model=model, prompts=prompts, out=str(out), samples=samples, max_new=opts.max_new,
        temperature=opts.temperature, seed=opts.seed, max_prompt_len=max_len - opts.max_new,
        apply_chat_template=opts.apply_chat_template, input_template=opts.input_template,
        tensor_parallel_size=opts.tensor_parallel_size, extra=extra,
    )  # fmt: skip


def format_prompt(tokenizer, prompt: Prompt, apply_chat_template: bool, input_template: str | None) -> str:
    """The policy's input text, built by OpenRLHF's PPO prompt builder (``patches.policy_prompt``)."""
    from normbt_plugin.patches import policy_prompt

    return policy_prompt(
        tokenizer, prompt, input_template=input_template, apply_chat_template=apply_chat_template
    )


# what must be equal for one engine to serve two models by swapping their weights
ENGINE_FIELDS = ("architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size",
                 "max_position_embeddings", "rope_theta", "rope_scaling", "tie_word_embeddings",
                 "eos_token_id")  # fmt: skip


def _spec_path(spec: GenerationSpec) -> Path:
    return Path(spec.out).with_suffix(".spec.json")


def _cached(spec: GenerationSpec) -> bool:
    """Its output exists and was made by this very spec."""
    path = _spec_path(spec)
    return Path(spec.out).exists() and path.exists() and json.loads(path.read_text()) == asdict(spec)


def engine_key(spec: GenerationSpec) -> str:
    """Specs with equal keys can be sampled by one engine, loading each one's weights in turn."""
    config = json.loads((Path(spec.model) / "config.json").read_text())
    shape = {k: config.get(k) for k in ENGINE_FIELDS}
    engine = {k: getattr(spec, k) for k in ("dtype", "max_prompt_len", "max_new", "tensor_parallel_size",
                                            "gpu_memory_utilization", "seed")}  # fmt: skip
    return json.dumps([shape, engine], sort_keys=True)


def engine_groups(specs: list[GenerationSpec], swap: bool) -> list[list[GenerationSpec]]:
    """The specs in groups sampled by one engine each (in order of first appearance); ``swap``
    False (GPUs): one spec a group."""
    if not swap:
        return [[s] for s in specs]
    groups: dict[str, list[GenerationSpec]] = {}
    for spec in specs:
        groups.setdefault(engine_key(spec), []).append(spec)
    return list(groups.values())


def visible_gpus() -> list[str]:
    """The GPUs this process may hand to engines: ``CUDA_VISIBLE_DEVICES``, else every device."""
    if (env := os.environ.get("CUDA_VISIBLE_DEVICES")) is not None:
        return [g.strip() for g in env.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


Shard = tuple[list[GenerationSpec], list[str] | None]  # one engine's specs and its GPUs (None: CPU)


def shards(group: list[GenerationSpec], gpus: list[str] | None) -> list[Shard]:
    """The engines that sample ``group``. On CPU (``gpus`` None): one. On GPUs (one spec a group):
    engines x tensor parallel size = the GPUs, each engine a contiguous slice of the prompts and
    GPUs of its own; vLLM seeds every request, so a prompt's samples do not depend on the split."""
    if gpus is None:
        return [(group, None)]
    (spec,) = group
    tp = spec.tensor_parallel_size
    engines = min(len(gpus) // tp, len(spec.prompts))
    if engines < 1:
        from normbt_plugin.rm_evaluation.pairs import EvalInputError

        raise EvalInputError(f"--tensor_parallel_size {tp} needs {tp} GPUs; {len(gpus)} visible ({gpus})")
    if engines == 1:
        return [(group, gpus[:tp])]
    cuts = [len(spec.prompts) * i // engines for i in range(engines + 1)]
    out: list[Shard] = []
    for i, (lo, hi) in enumerate(itertools.pairwise(cuts)):
        samples = spec.samples[lo:hi] if isinstance(spec.samples, list) else spec.samples
        part = replace(spec, prompts=spec.prompts[lo:hi], samples=samples, out=f"{spec.out}.shard{i}")
        out.append(([part], gpus[i * tp : (i + 1) * tp]))
    return out


def _start(shard: Shard, env: dict[str, str], log: Path | None) -> subprocess.Popen:
    specs, gpus = shard
    batch = Path(specs[0].out).with_suffix(".batch.json")
    batch.write_text(json.dumps([asdict(s) for s in specs]))
    if gpus is not None:
        env = {**env, "CUDA_VISIBLE_DEVICES": ",".join(gpus)}
    with open(log, "a") if log else open(os.devnull, "w") as sink:  # the child keeps its own handle
        return subprocess.Popen(
            [sys.executable, "-m", "normbt_plugin.policy_studies.generation", str(batch)],
            env=env, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip


def generate_all(specs: list[GenerationSpec], log: Path | None = None) -> list[list[Generation]]:
    """Sample every spec's model (its rows, in order); a spec whose output was made by the same spec
    before is read back, not sampled again. On GPUs each spec's prompts are split over the node's
    GPUs (``shards``), its engines running side by side."""

    from normbt_plugin.common.environment import VLLM_CPU_ENV

    todo = [s for s in specs if not _cached(s)]
    swap = decide_job_device() == "cpu"  # the engine processes below inherit the decision
    gpus = None if swap else visible_gpus()
    env = dict(os.environ)
    if swap:
        env = {**VLLM_CPU_ENV, **env}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if log and todo:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        Path(log).write_text("")  # this call's engines, appended below
    for group in engine_groups(todo, swap):
        for spec in group:
            Path(spec.out).parent.mkdir(parents=True, exist_ok=True)
            _spec_path(spec).write_text(json.dumps(asdict(spec)))
            Path(spec.out).unlink(missing_ok=True)
        engines = shards(group, gpus)
        codes = [proc.wait() for proc in [_start(shard, env, log) for shard in engines]]
        parts = [s for shard_specs, _ in engines for s in shard_specs]
        missing = [s.model for s in parts if not Path(s.out).exists()]
        if any(codes) or missing:
            tail = Path(log).read_text()[-3000:] if log else ""
            raise RuntimeError(
                f"vLLM generation with {', '.join(missing) or group[0].model} failed (exit {max(codes)})"
                f"{tail and ':'}\n{tail}"
            )
        if len(engines) > 1:  # one spec, its prompts in order
            rows = [row for part in parts for row in read_generations(part.out)]
            write_generations(rows, group[0].out + ".part").rename(group[0].out)
            for part in parts:
                Path(part.out).unlink()
    return [read_generations(s.out) for s in specs]


def _run(specs: list[GenerationSpec]) -> None:
    """One engine for all ``specs``: built with the first one's model, the others' weights loaded
    into it in turn (the prefix cache reset: it holds the previous weights' keys and values)."""
    from vllm import LLM

    from normbt_plugin.common.vllm_weights import keep_cpu_weights, load_checkpoint

    first = specs[0]
    dtype = first.dtype
    if cpu_job():
        keep_cpu_weights()  # so other policies' weights can be loaded into the engine
        if dtype == "auto":
            dtype = "float32"  # vLLM CPU: bf16 needs AVX512-BF16; float32 matches the HF log-probs
    # vLLM CPU: a seeded request whose prefill is split over steps crashes the engine ("CPU Generator
    # does not use offset"): prompts are prefilled whole there (every request is seeded, so what is
    # sampled does not depend on how prefills are scheduled)
    chunking = {"enable_chunked_prefill": False} if cpu_job() else {}
    llm = LLM(
        model=first.model, dtype=dtype, seed=first.seed, enforce_eager=cpu_job(),
        max_model_len=first.max_prompt_len + first.max_new, tensor_parallel_size=first.tensor_parallel_size,
        gpu_memory_utilization=first.gpu_memory_utilization, **chunking,
    )  # fmt: skip
    for i, spec in enumerate(specs):
        if i:
            tensors = llm.apply_model(functools.partial(load_checkpoint, folder=spec.model))
            llm.reset_prefix_cache()
            print(f"generation: {spec.model}: {tensors[0]} tensors loaded into the engine", flush=True)
        _sample(llm, spec)


def _sample(llm, spec: GenerationSpec) -> None:
    from transformers import AutoTokenizer
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    tokenizer = AutoTokenizer.from_pretrained(spec.model)
    texts = [format_prompt(tokenizer, p, spec.apply_chat_template, spec.input_template) for p in spec.prompts]
    prompt_ids = [tokenizer(t, add_special_tokens=False)["input_ids"][-spec.max_prompt_len :] for t in texts]
    counts = spec.samples if isinstance(spec.samples, list) else [spec.samples] * len(prompt_ids)
    sampling = [
        SamplingParams(
            n=n,
            temperature=spec.temperature,
            top_p=spec.top_p,
            max_tokens=spec.max_new,
            seed=spec.seed,
            logprobs=0,
            stop=spec.stop or None,
        )  # fmt: skip
        for n in counts
    ]
    outputs = llm.generate(
        [TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids], sampling, use_tqdm=True
    )
    rows = []
    for prompt, ids, result in zip(spec.prompts, prompt_ids, outputs, strict=True):
        samples = []
        for o in result.outputs:
            tokens = list(o.token_ids)
            logps = [step[t].logprob for t, step in zip(tokens, o.logprobs, strict=True)]
            samples.append(
                Sample(
                    ids=tokens,
                    # at a stop string the engine's text ends before it; its token ids may run past it
                    text=o.text if spec.stop else tokenizer.decode(tokens, skip_special_tokens=True),
                    engine_logprob=float(sum(logps)),
                    truncated=o.finish_reason == "length",
                )
            )
        rows.append(Generation(prompt=prompt, prompt_ids=ids, samples=samples))
    # whole or absent: a killed child leaves no half file to reuse
    write_generations(rows, spec.out + ".part").rename(spec.out)


def main() -> None:
    specs = [GenerationSpec(**s) for s in json.loads(Path(sys.argv[1]).read_text())]
    _run(specs)


if __name__ == "__main__":
    main()
