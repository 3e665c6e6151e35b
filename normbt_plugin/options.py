"""Every option the plugin declares, declared one way: a dataclass whose fields carry the default
and the help (``option()``, as TRL's config classes do). The ``normbt`` commands' options, train_rm's
and train_ppo's ``--plugin.*`` flags and each registered loss's ``--<loss>.*`` options (``losses.py``)
are such classes. ``add_options`` builds the flags of a class into a parser (under a prefix for the
trainers' dotted flags), ``from_args`` hands the function the filled-in object, and Python callers
build the same object by name. Standard library only: core (``losses.py``) imports it, and
``normbt --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import MISSING, dataclass, field
from typing import Any

DTYPES = ("float32", "bfloat16", "float16")
BASELINE = "bt"  # the loss the reports compare the others with, unless told otherwise


def option(default: Any = MISSING, help: str = "", **argparse_kwargs: Any) -> Any:
    """A command option: no default = required. ``argparse_kwargs`` go to ``add_argument``
    (``action="append"``, ``choices``, ``metavar``, ``nargs``), plus ``positional=True`` and
    ``exclusive=GROUP`` (a required one-of group)."""
    return field(default=default, metadata={"help": help, "argparse": argparse_kwargs})


def str2bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    prefix: str = "",
    bool_values: bool = False,
) -> None:
    """One argument per field of ``cls``, ``--{prefix}{field}``: the type from its annotation
    (``X | None`` as ``X``, ``list[X]`` as repeated ``X``), a bool as a switch or, with
    ``bool_values``, as ``--flag true|false`` (for flags whose default may be true)."""
    hints = typing.get_type_hints(cls)
    groups: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        kwargs = dict(f.metadata["argparse"])
        positional, exclusive = kwargs.pop("positional", False), kwargs.pop("exclusive", None)
        target = parser
        if exclusive:
            if exclusive not in groups:
                groups[exclusive] = parser.add_mutually_exclusive_group(required=True)
            target = groups[exclusive]
        shown = not any(f.default is nothing for nothing in (MISSING, None, False))
        kwargs["help"] = " ".join(
            filter(None, [f.metadata["help"], f"(default: {f.default})" if shown else ""])
        )
        kind = hints[f.name]
        if isinstance(kind, types.UnionType):  # X | None
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if kind is bool and bool_values:
            kwargs.setdefault("metavar", "{true,false}")
            kwargs["type"] = str2bool
        elif kind is bool:
            kwargs["action"] = "store_true"
        elif typing.get_origin(kind) is list:
            kwargs["type"] = typing.get_args(kind)[0]
        else:
            kwargs["type"] = kind
        if positional:
            parser.add_argument(f.name, **kwargs)
            continue
        if f.default is MISSING and not exclusive:
            kwargs["required"] = True
        else:
            kwargs["default"] = None if f.default is MISSING else f.default
        if prefix and "type" in kwargs and "metavar" not in kwargs and "choices" not in kwargs:
            kwargs["metavar"] = getattr(kwargs["type"], "__name__", "VALUE").upper()
        target.add_argument(f"--{prefix}{f.name}", **kwargs)


def from_args(cls: type, args: Any, prefix: str = "") -> Any:
    """The ``cls`` object of what ``add_options(..., cls, prefix=prefix)`` parsed into ``args``: the
    parser's flat namespace (``"normbt.beta"``) or the nested one OpenRLHF makes of it (``.normbt.beta``);
    a field the namespace lacks keeps its default."""

    def lookup(name: str) -> Any:
        if hasattr(args, name):
            return getattr(args, name)
        node = args
        for part in name.split("."):
            node = getattr(node, part)
        return node

    values = {}
    for f in dataclasses.fields(cls):
        try:
            values[f.name] = lookup(f"{prefix}{f.name}")
        except AttributeError:
            if f.default is MISSING:
                raise
    return cls(**values)


def check_choices(obj: Any) -> None:
    """Refuse a field value outside its ``choices`` (what argparse checks, for Python callers)."""
    for f in dataclasses.fields(obj):
        choices = f.metadata.get("argparse", {}).get("choices")
        value = getattr(obj, f.name)
        if choices is not None and value is not None and value not in choices:
            name = type(obj).__name__.removesuffix("Options").lower() or type(obj).__name__
            raise ValueError(f"{name} {f.name} must be one of {', '.join(map(str, choices))}, got {value!r}")


# ---------------------------------------------------------------- reward models on pairs


@dataclass(kw_only=True)
class EvalRmOptions:
    """score a reward model on preference data"""

    model: str = option(help="OpenRLHF RM checkpoint or HF seq-cls RM")
    data: str = option(help="local .jsonl/.json/.parquet or a dataset name")
    format: str = option(
        "auto", "auto: by the columns (docs/evaluation.md)",
        choices=["auto", "pairs", "rewardbench", "rewardbench2", "rmbench", "candidates"],
    )  # fmt: skip
    split: str = option("train", "dataset split (for dataset names)")
    prompt_key: str = option("prompt")
    chosen_key: str = option("chosen")
    rejected_key: str = option("rejected")
    subset_key: str | None = option(None, "group accuracy by this column")
    loader: str = option("auto", choices=["auto", "openrlhf", "hf"])
    batch_size: int = option(16)
    max_len: int = option(1024)
    dtype: str = option("float32", choices=DTYPES)
    apply_chat_template: bool = option(False)
    input_template: str | None = option(None, "as train_rm's --data.input_template, e.g. '[CLS]{}'")
    bins: int = option(5, "distance quantile bins (0: off)")
    out: str | None = option(None, "write the full result (per-pair scores included) as JSON")


@dataclass(kw_only=True)
class DiagnoseOptions:
    """per-pair gradient norm vs distance, BT and NormBT"""

    model: str = option()
    data: str = option()
    out: str = option()
    pairs: int = option(128)
    mu: float | None = option(None, "NormBT's mu (default: mean distance)")
    input_template: str | None = option(None)
    max_len: int = option(512)


# ---------------------------------------------------------------- sampling policies


@dataclass(kw_only=True)
class SamplingOptions:
    """What every command that samples a policy with vLLM and scores the samples shares."""

    prompts: str = option(help="prompts: .jsonl/.json/.parquet or a dataset name")
    prompt_key: str = option("input")
    split: str = option("train", "dataset split (for dataset names)")
    n_prompts: int | None = option(None, "use the first N prompts")
    samples: int = option(1, "responses per prompt")
    max_new: int = option(256, "new tokens per response at most")
    temperature: float = option(1.0)
    seed: int = option(0, "sampling seed")
    apply_chat_template: bool = option(False)
    input_template: str | None = option(None, "prompt template of the policy")
    rm_input_template: str | None = option(None, "prompt template of the reward models")
    max_len: int | None = option(None, "prompt + response tokens (default: the policy's context length)")
    tensor_parallel_size: int = option(1, "GPUs per vLLM engine (engines: the GPUs / this)")
    batch_size: int = option(16, "texts per reward-model forward")
    dtype: str = option("float32", "reward models' (and the KL passes') dtype", choices=DTYPES)


@dataclass(kw_only=True)
class EvalPolicyOptions(SamplingOptions):
    """sample policies with vLLM, score them with a gold RM"""

    policy: list[str] = option(
        help="a policy NAME=PATH (repeat); the first is the reference unless --reference",
        action="append", metavar="NAME=PATH",
    )  # fmt: skip
    gold: str | None = option(None, "the gold reward model (OpenRLHF or HF seq-cls)")
    gold_fn: str | None = option(
        None,
        "the task's true reward, module:function or file.py:function taking (prompt, response): "
        "beside --gold, or alone as the gold (e.g. normbt_plugin.common.tasks:gold_reward)",
    )
    proxy: list[str] | None = option(None, "a proxy RM for best-of-N", action="append", metavar="NAME=PATH")
    reference: str | None = option(None, "policy name for win rates and KL")
    bon_samples: int = option(0, "best-of-N: K samples (0: off)")
    bon_prompts: int | None = option(None, "best-of-N on the first N prompts")
    tie_tol: float = option(0.0, "gold rewards this close tie")
    out: str = option(help="folder: policy_eval.json, generations/")


@dataclass(kw_only=True)
class LabelPairsOptions(SamplingOptions):
    """on-policy pairs: a policy's samples ranked by a gold"""

    policy: str = option(help="the policy that samples (an SFT model folder or name)")
    samples: int = option(8, "K responses per prompt")
    gold: str | None = option(None, "the gold reward model (OpenRLHF or HF seq-cls)", exclusive="judge")
    gold_fn: str | None = option(
        None, "a true reward f(prompt, response): module:fn or file.py:fn", exclusive="judge"
    )
    pairs_per_prompt: int = option(4, "at most this many pairs a prompt")
    min_gap: float = option(0.0, "gold rewards this close tie (dropped)")
    out: str = option(help="pairs .jsonl (with .summary.json, cached samples beside)")


@dataclass(kw_only=True)
class StandardizeOptions(SamplingOptions):
    """a reward on one scale for PPO: mean 0, std 1 on the policy's samples"""

    policy: str = option(help="the policy PPO starts from (an SFT model folder or name)")
    label_key: str | None = option(None, "--reward_fn's labels column (OpenRLHF's --data.label_key)")
    n_prompts: int | None = option(256, "use the first N prompts")
    samples: int = option(4, "responses per prompt")
    rm: str | None = option(
        None, "a reward model: its config gets mean/std (--reward.normalize_enable)", exclusive="reward"
    )
    reward_fn: str | None = option(
        None, "a rule-based reward file (--reward.remote_url): wrapped at --out", exclusive="reward"
    )
    out: str | None = option(None, "the standardised RM folder (default: in place) or reward file")
    samples_file: str | None = option(None, "where the samples are cached (share it between RMs)")


# ---------------------------------------------------------------- reports


@dataclass(kw_only=True)
class CompareOptions:
    """runs (losses x seeds) into a Markdown report with plots"""

    runs: list[str] = option(
        help="run folders (metrics/, tensorboard/, eval.json)", positional=True, nargs="+"
    )
    out: str = option(help="report folder (report.md, PNGs, summary.json)")
    baseline: str = option(BASELINE, "loss the others are compared with")
    eval_name: str | None = option(None, "eval-rm result file in each run (default: the recipes' eval.json)")
    policy_eval: str | None = option(None, "normbt eval-policy's policy_eval.json: downstream section")
    note: str | None = option(None, "one line at the top of the downstream section (what the run can show)")
    pool: list[str] | None = option(
        None,
        "a pooled subset NAME=SUBSET,SUBSET,... beside the subsets (repeat)",
        action="append",
        metavar="NAME=A,B",
    )


@dataclass(kw_only=True)
class CurvesOptions:
    """true and proxy reward vs KL along PPO runs, at matched KL"""

    runs: list[str] = option(
        help="PPO run folders (rollouts/rollouts.jsonl, run.json)", positional=True, nargs="+"
    )
    tokenizer: str = option(help="the policy's tokenizer (decodes the rollouts)")
    gold_fn: str = option(help="true reward: module:function or file.py:function")
    exact_fn: str | None = option(
        None, "success indicator (same form), e.g. normbt_plugin.common.tasks:exact"
    )
    baseline: str = option(BASELINE, "label the others are compared with")
    window: int = option(4, "PPO steps per curve point")
    grid: int = option(6, "matched-KL points (0 .. smallest max KL)")
    out: str = option()


@dataclass(kw_only=True)
class BonStudyOptions:
    """best-of-N with proxy RMs, losses paired by seed (on-policy study)"""

    policy_eval: str = option(
        help="eval-policy's policy_eval.json (with --bon_samples and --proxy)", positional=True
    )
    runs: list[str] = option(
        help="RM folders rm-<arm>-<loss>-seed<k> (their eval.json)", positional=True, nargs="+"
    )
    also: list[str] | None = option(
        None, "another eval-policy run's policy_eval.json on the same samples: its proxies join (more seeds)",
        action="append", metavar="POLICY_EVAL",
    )  # fmt: skip
    baseline: str = option(BASELINE, "loss the others are compared with")
    n: int = option(16, "the primary metric's N")
    margin: float = option(0.03, "equivalence margin of the decision rule")
    pairs: str | None = option(None, "the held-out pairs eval-rm scored (label-pairs output)")
    out: str = option()


@dataclass(kw_only=True)
class ModelsGetOptions:
    """build a packaged model's folder (reused when already built)"""

    name: str = option(help="a name from `normbt models list`", positional=True)
    out: str = option(help="the folder to write")
    dropout: float | None = option(None, "dropout to set (MiniLM: 0 unless given)")


# ---------------------------------------------------------------- the trainers' --plugin.* flags


@dataclass(kw_only=True)
class RmPluginOptions:
    """normbt-plugin's flags of train_rm (``--plugin.<field>``)"""

    eval_distance_bins: int = option(
        5, "eval accuracy by representation-distance quantile bin: number of bins (0: off)"
    )
    metrics_dir: str | None = option(
        None, "also write each step's metrics per rank as JSON lines into this folder"
    )
    label: str | None = option(None, "name of this run's variant in reports (default: the loss name)")
    stop_after_steps: int = option(
        0,
        "end the run after this many optimizer steps, as a preemption would (no final save; checkpoint "
        "with --ckpt.save_steps, resume with --ckpt.load_enable); 0: off",
    )
    value_head_layernorm: bool = option(
        False,
        "a parameter-free LayerNorm before the value head (a comparator for NormBT); saved in the model's "
        "config and rebuilt by every OpenRLHF load (patch value_head_norm)",
    )
    disable_dropout: bool = option(
        False,
        "set the model's dropout rates to 0 for training (dropout noise enters the pair distance NormBT "
        "divides by; Llama-style models have none, BERT-style 0.1)",
    )


@dataclass(kw_only=True)
class PpoPluginOptions:
    """normbt-plugin's flags of train_ppo_ray (``--plugin.<field>``)"""

    rollout_log: str | None = option(
        None,
        "append every rollout sample's prompt, token ids, reward and KL to the reference to "
        "DIR/rollouts.jsonl (patch rollout_log, in the PPO controller)",
        metavar="DIR",
    )


PLUGIN_PREFIX = "plugin."
