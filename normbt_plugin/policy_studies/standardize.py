"""Put a reward on one scale for PPO: mean 0 and std 1 on the policy's own samples.

    normbt standardize --policy runs/sft --prompts prompts.jsonl --rm runs/rm-normbt/model --out runs/rm-std
    normbt standardize --policy runs/sft --prompts prompts.jsonl --reward_fn rewards/sort.py --out true.py

PPO's ``--reward.normalize_enable`` divides the reward model's output by the ``mean``/``std`` its
config holds; OpenRLHF's RM stage stores those of its *eval pairs*, so two RMs whose rewards spread
differently on the policy's samples push PPO with different force at one KL coefficient (the
off-policy study: 0.001 vs 0.8 after normalising). This command samples the policy (vLLM, cached
beside ``--out``), scores the samples, and writes their mean and std:

- ``--rm``: into a copy of the RM at ``--out`` (or in place without ``--out``), in ``config.json``'s
  ``mean``/``std`` where ``--reward.normalize_enable`` reads them; the RM stage's values stay under
  ``normbt_eval_mean``/``normbt_eval_std``, the provenance under ``normbt_standardized``.
- ``--reward_fn``: a rule-based reward file (``--reward.remote_url``) wrapped into a new file at
  ``--out`` whose ``reward_func`` returns ``(reward - mean) / std``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from normbt_plugin.options import StandardizeOptions
from normbt_plugin.policy_studies.generation import format_prompt, generate_all, sampling_spec
from normbt_plugin.rm_evaluation.pairs import EvalInputError


@dataclass
class Standardization:
    """What ``standardize`` measured (also stored with the reward it wrote)."""

    reward: str  # the RM folder or reward file it was measured on
    policy: str
    prompts: int
    samples: int
    mean: float
    std: float


def _load_reward_fn(path: str):
    import importlib.util

    if not Path(path).exists():
        raise EvalInputError(f"--reward_fn {path} does not exist")
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "reward_func", None)):
        raise EvalInputError(f"--reward_fn {path} has no reward_func(queries, prompts, labels)")
    return module.reward_func


WRAPPER = '''"""Written by ``normbt standardize``: {source}'s reward standardised on {policy}'s samples
({prompts} prompts x {samples}): (reward - {mean!r}) / {std!r}."""

import importlib.util

MEAN, STD = {mean!r}, {std!r}
_spec = importlib.util.spec_from_file_location("_standardized_source", {source_abs!r})
_source = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_source)


def reward_func(queries, prompts, labels):
    out = _source.reward_func(queries, prompts, labels)
    return {{**out, "rewards": (out["rewards"] - MEAN) / STD}}
'''


def standardize(opts: StandardizeOptions) -> Standardization:
    """Sample the policy, score the samples with the reward, and write the reward back on one scale:
    an RM's config gets their mean/std, a reward file a wrapper (``--out``)."""
    from normbt_plugin.policy_studies.eval_policy import check_policy, prompt_of, prompt_rows
    from normbt_plugin.rm_evaluation.scoring import RewardScorer, check_reward_model

    policy, rm, reward_fn, out, samples = opts.policy, opts.rm, opts.reward_fn, opts.out, opts.samples
    if (rm is None) == (reward_fn is None):
        raise EvalInputError("name one reward: --rm (a reward model) or --reward_fn (a reward file)")
    if reward_fn is not None and out is None:
        raise EvalInputError("--reward_fn needs --out: the standardised reward file to write")
    prompt_data = prompt_rows(opts.prompts, opts.prompt_key, opts.split, opts.n_prompts)
    prompts = [prompt_of(r, opts.prompt_key, opts.apply_chat_template) for r in prompt_data]
    labels = None
    if opts.label_key:
        if opts.label_key not in prompt_data[0]:
            raise EvalInputError(f"{opts.prompts} has no {opts.label_key!r} column: pass --label_key")
        labels = [str(r[opts.label_key]) for r in prompt_data]
    check_policy("--policy", policy)
    fn = _load_reward_fn(reward_fn) if reward_fn else None
    if rm is not None:
        check_reward_model(rm)
    target = Path(out) if out else Path(rm)
    cache = Path(opts.samples_file) if opts.samples_file else target.parent / f"{target.name}.samples.jsonl"
    spec = sampling_spec(opts, policy, prompts, cache, samples)
    print(f"standardize: sampling {policy} ({len(prompts)} prompts x {samples})", flush=True)
    rows = generate_all([spec], log=cache.with_suffix(".vllm.log"))[0]
    if fn is not None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(policy)
        texts = [format_prompt(tok, r.prompt, opts.apply_chat_template, opts.input_template) for r in rows]
        queries = [t + s.text for t, r in zip(texts, rows, strict=True) for s in r.samples]
        asked = [t for t, r in zip(texts, rows, strict=True) for _ in r.samples]
        given = [lab for lab, r in zip(labels or [""] * len(rows), rows, strict=True) for _ in r.samples]
        scores = np.asarray(fn(queries, asked, given)["rewards"], dtype=np.float64)
    else:
        scorer = RewardScorer.for_samples(rm, opts)
        scores, _ = scorer.score([scorer.format(r.prompt, s.text) for r in rows for s in r.samples],
                                 progress="reward")  # fmt: skip
    if not np.isfinite(scores).all():
        raise FloatingPointError(f"{rm or reward_fn} gave a non-finite reward on the policy's samples")
    std = float(scores.std())
    if std == 0:
        raise EvalInputError(
            f"{rm or reward_fn} gives every sample of {policy} the same reward ({scores[0]:.4g}): it cannot "
            "be standardised, and PPO would get no signal from it"
        )
    result = Standardization(reward=rm or reward_fn, policy=policy, prompts=len(prompts), samples=samples,
                             mean=float(scores.mean()), std=std)  # fmt: skip
    if fn is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(WRAPPER.format(source=reward_fn, source_abs=str(Path(reward_fn).resolve()),
                                         **dataclasses.asdict(result) | {"reward": None}))  # fmt: skip
        return result
    folder = target
    if out is not None and Path(out).resolve() != Path(rm).resolve():  # a copy, whole or absent
        folder = target.with_name(target.name + ".part")
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(rm, folder)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    if "normbt_standardized" not in config:  # the RM stage's own values, kept once
        config["normbt_eval_mean"], config["normbt_eval_std"] = config.get("mean"), config.get("std")
    config.update(mean=result.mean, std=result.std, normbt_standardized=dataclasses.asdict(result))
    tmp = config_path.with_suffix(".json.part")
    tmp.write_text(json.dumps(config, indent=2))
    tmp.rename(config_path)
    if folder != target:
        shutil.rmtree(target, ignore_errors=True)
        folder.rename(target)
    return result
