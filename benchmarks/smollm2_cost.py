"""What a SmolLM2-135M reward-model step costs here: full fine-tuning vs LoRA, float32 vs bf16,
by sequence length, measured side by side in one run (the arms take turns, step by step).

Each arm is OpenRLHF 0.11.2's reward model (``get_llm_for_sequence_regression``, the plugin's
patches applied: a LoRA arm trains the value head in full) built on SmolLM2-135M-Instruct from
``normbt models get``; a step is a forward and backward of ``--pairs`` pairs (2x that many
sequences of ``--len`` tokens, the RM stage's concatenated forward) and a torch AdamW step. No
DeepSpeed engine: one process, whose ZeRO-2 bookkeeping is small next to the model. bf16 arms run
only where the CPU has native bf16 (AVX512-BF16 or AMX; on AVX2 it is about 75x slower) or on CUDA.
Prints the median seconds per step and per pair, each arm's ratio to the first, and what an
RM run of ``--plan`` pairs x 2 epochs would take.

    python benchmarks/smollm2_cost.py                          # lengths 128 256, 4 pairs a step
    python benchmarks/smollm2_cost.py --len 64 128 256 --steps 6
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import torch


def native_bf16() -> bool:
    if torch.cuda.is_available():
        return True
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags


def build(folder: str, lora: bool, dtype: str) -> torch.nn.Module:
    from normbt_plugin.patches import apply_openrlhf_patches

    apply_openrlhf_patches()
    from openrlhf.models import get_llm_for_sequence_regression

    model = get_llm_for_sequence_regression(
        folder, "reward", attn_implementation="sdpa", param_dtype=dtype, init_value_head=True,
        lora_rank=16 if lora else 0, lora_alpha=32, target_modules="all-linear",
    )  # fmt: skip
    return model.train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--len", type=int, nargs="+", default=[128, 256], help="tokens per sequence")
    parser.add_argument("--pairs", type=int, default=4, help="pairs per step (2x sequences)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per arm (after one warm-up)")
    parser.add_argument("--plan", type=int, default=1000, help="pairs of the RM run to project")
    parser.add_argument("--model_dir", default=None, help="SmolLM2 folder (default: built in a temp dir)")
    args = parser.parse_args()

    from normbt_plugin.common.models import get_model

    folder = args.model_dir or get_model("smollm2-135m-instruct", Path(tempfile.mkdtemp()) / "smollm2")
    dtypes = ["fp32", "bf16"] if native_bf16() else ["fp32"]
    arms = {}
    for lora, dtype in itertools.product((False, True), dtypes):
        model = build(str(folder), lora, dtype)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
        arms[f"{'lora' if lora else 'full'} {dtype}"] = (model, optimizer)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, native bf16: {native_bf16()}")
    print("| arm | tokens | s / step | s / pair | vs first | a run of", args.plan, "pairs x 2 epochs |")
    print("|---|---:|---:|---:|---:|---:|")
    for length in args.len:
        ids = torch.randint(100, 40000, (2 * args.pairs, length))
        mask = torch.ones_like(ids)
        times: dict[str, list[float]] = {name: [] for name in arms}
        for step in range(args.steps + 1):
            for name, (model, optimizer) in arms.items():
                start = time.perf_counter()
                rewards = model(ids, attention_mask=mask)
                chosen, rejected = rewards[: args.pairs], rewards[args.pairs :]
                loss = -torch.nn.functional.logsigmoid((chosen - rejected).float()).mean()
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if step:  # the first step of each arm is a warm-up
                    times[name].append(time.perf_counter() - start)
        first = statistics.median(next(iter(times.values())))
        for name, values in times.items():
            step_s = statistics.median(values)
            run_h = step_s / args.pairs * args.plan * 2 / 3600
            print(f"| {name} | {length} | {step_s:.2f} | {step_s / args.pairs:.2f} | {step_s / first:.2f} | "
                  f"{run_h:.2f} h |")  # fmt: skip


if __name__ == "__main__":
    main()
