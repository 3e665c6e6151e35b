"""The GPU path on one GPU, for when a GPU machine is at hand: NCCL's rule for host tensors, then
OpenRLHF 0.11.2's RM stage (``python -m normbt_plugin.train_rm``: DeepSpeed ZeRO-2 over NCCL, bf16)
with BT and with NormBT on the same random-initialised Llama and data, step time and peak GPU
memory side by side.

    bash scripts/gpu-check.sh --prepare      # here: the wheels a bare GPU machine lacks -> .gpu-wheels/
    bash scripts/gpu-check.sh                # there: installs them, runs this script (not yet timed on a GPU)
    python benchmarks/gpu_rm_check.py --size tiny --steps 6     # anywhere (CPU: fp32, gloo)

Step time: the median of each run's ``step_seconds`` after ``--warmup`` steps (the plugin's step
records; one optimizer step each); peak memory: the largest ``gpu_peak_mem_gib``
(``torch.cuda.max_memory_allocated``). The arms run one after the other (BT, NormBT, BT again: the
two BT runs show the drift). Never run by the tests on a GPU; the CPU run is tested.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

SIZES = {  # hidden, layers, heads, intermediate
    "tiny": (64, 2, 4, 256),
    "1b": (2048, 16, 16, 5632),
}
ARMS = ("bt", "normbt", "bt")


def nccl_rule() -> dict[str, str]:
    """On one GPU: a host tensor is refused by an NCCL group; the tensor on ``served_device`` is not."""
    import torch
    import torch.distributed as dist

    from normbt_plugin import collectives
    from normbt_plugin.common.ports import free_port

    if not torch.cuda.is_available():
        return {"nccl": "skipped (no GPU)"}
    torch.cuda.set_device(0)
    port = free_port("127.0.0.1")
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                            device_id=torch.device("cuda", 0))  # fmt: skip
    out = {"served_device": str(collectives.served_device())}
    try:
        dist.all_reduce(torch.ones(1))
        out["host tensor"] = "accepted"
    except RuntimeError as exc:
        out["host tensor"] = f"refused ({str(exc).splitlines()[0][:80]})"
    value = torch.ones(1).to(collectives.served_device())
    dist.all_reduce(value)
    out["served-device tensor"] = f"reduced to {value.item():g}"
    dist.destroy_process_group()
    return out


def build(root: Path, size: str, n_pairs: int) -> dict[str, Path]:
    from normbt_plugin.common.tiny import build_model, build_tokenizer, make_pairs, write_jsonl

    hidden, layers, heads, intermediate = SIZES[size]
    pairs = make_pairs(n_pairs, seed=0, lengths=(8, 24))
    texts = [p["prompt"] + p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    tokenizer = build_tokenizer(texts, root / "model")
    build_model(root / "model", len(tokenizer), hidden, layers, heads, intermediate, tokenizer=tokenizer)
    held_out = make_pairs(32, seed=1, lengths=(8, 24))
    return {"model": root / "model", "train": write_jsonl(pairs, root / "train.jsonl"),
            "test": write_jsonl(held_out, root / "test.jsonl")}  # fmt: skip


def run_arm(
    root: Path, data: dict[str, Path], loss: str, i: int, args: argparse.Namespace, gpu: bool
) -> dict:
    out = root / f"{i}-{loss}"
    cmd = [sys.executable, "-m", "normbt_plugin.train_rm",
           "--model.model_name_or_path", str(data["model"]), "--data.dataset", str(data["train"]),
           "--eval.dataset", str(data["test"]),
           "--data.prompt_key", "prompt", "--model.loss_type", loss, "--data.max_len", "256",
           "--ds.zero_stage", "2", "--ds.param_dtype", "bf16" if gpu else "fp32",
           "--ds.attn_implementation", "sdpa", "--train.micro_batch_size", str(args.micro_bs),
           "--train.batch_size", str(args.micro_bs), "--train.max_epochs", "1", "--adam.lr", "1e-5",
           "--ckpt.output_dir", str(out / "model"), "--ckpt.path", str(out / "ckpt"),
           "--plugin.metrics_dir", str(out / "metrics"),
           "--plugin.stop_after_steps", str(args.steps)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=root)
    (out / "log.txt").parent.mkdir(parents=True, exist_ok=True)
    (out / "log.txt").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(
            f"gpu_rm_check: {loss} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}"
        )
    from normbt_plugin.runs.rm import read_steps

    steps = read_steps(out / "metrics")
    timed = [s["step_seconds"] for s in steps[args.warmup :]]
    peak = max((s.get("gpu_peak_mem_gib", float("nan")) for s in steps), default=float("nan"))
    return {"loss": loss, "steps": len(steps), "median_step_s": statistics.median(timed), "peak_gib": peak,
            "last_loss": steps[-1]["loss_mean"] if "loss_mean" in steps[-1] else None}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="1b")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--micro_bs", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-check"))
    args = parser.parse_args(argv)
    import torch

    gpu = torch.cuda.is_available()
    facts = {"torch": torch.__version__, "cuda": torch.version.cuda,
             "device": torch.cuda.get_device_name(0) if gpu else "cpu"}  # fmt: skip
    print("gpu_rm_check:", json.dumps(facts))
    rule = nccl_rule()
    print("gpu_rm_check: NCCL:", json.dumps(rule))
    args.out.mkdir(parents=True, exist_ok=True)
    data = build(args.out.resolve(), args.size, n_pairs=args.steps * args.micro_bs)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    arms = [run_arm(args.out.resolve(), data, loss, i, args, gpu) for i, loss in enumerate(ARMS)]
    print(f"{'arm':<8} {'steps':>5} {'median step s':>14} {'peak GiB':>9}")
    for arm in arms:
        print(f"{arm['loss']:<8} {arm['steps']:>5} {arm['median_step_s']:>14.4f} {arm['peak_gib']:>9.2f}")
    bt = statistics.mean(a["median_step_s"] for a in arms if a["loss"] == "bt")
    ratio = arms[1]["median_step_s"] / bt
    drift = f"bt runs {arms[0]['median_step_s']:.4f} and {arms[2]['median_step_s']:.4f} s"
    print(f"normbt / bt step time: {ratio:.3f} ({drift})")
    (args.out / "gpu_rm_check.json").write_text(
        json.dumps({**facts, "nccl": rule, "arms": arms, "ratio": ratio})
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
