"""NormBT vs BT: training-step time and peak memory, measured side by side in one run.

Both arms run OpenRLHF 0.11.2's real reward-model step on one random-initialised Llama-style
model inside a real DeepSpeed engine (ZeRO-2; bf16 on a GPU, fp32 on CPU by default): the upstream
``RewardModelTrainer.concatenated_forward`` + ``PairWiseLoss`` (BT, what OpenRLHF does without
the plugin) against the plugin's ``concatenated_forward`` + NormBT adapter (EOS hidden states,
distance, EMA, metrics). Steps alternate A B B A so drift hits both arms alike; the ratio of
median step times is reported. Peak memory is the peak resident set of one child process per
arm (interleaved, same steps), on CPU; on CUDA, ``torch.cuda.max_memory_allocated`` per arm.

    python benchmarks/step_overhead.py --model tiny
    python benchmarks/step_overhead.py --model 100m --steps 20
    python benchmarks/step_overhead.py --model 1b --steps 30      # GPU node
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from types import SimpleNamespace

SIZES = {  # hidden, layers, heads, intermediate, vocab
    "tiny": (64, 2, 4, 256, 320),
    "100m": (768, 12, 12, 2048, 32000),
    "1b": (2048, 16, 16, 5632, 32000),
}


def build(args):
    import deepspeed
    import torch
    from transformers import LlamaConfig, LlamaModel, LlamaPreTrainedModel

    from normbt_plugin.launchers.launch import single_process_env
    from normbt_plugin.patches import apply_openrlhf_patches

    single_process_env()
    apply_openrlhf_patches()
    from openrlhf.models.loss import PairWiseLoss
    from openrlhf.models.model import _get_reward_model

    from normbt_plugin.losses import build_loss
    from normbt_plugin.patches import patch_module
    from normbt_plugin.runs.rm import RunMeta, RunRecorder

    plugin = patch_module("registered_loss")

    hidden, layers, heads, inter, vocab = SIZES[args.model]
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=heads, intermediate_size=inter, max_position_embeddings=4096,
        tie_word_embeddings=False, pad_token_id=0,
    )  # fmt: skip
    config.normalize_reward = False
    config._attn_implementation = "sdpa" if args.device == "cpu" else args.attn
    torch.manual_seed(0)
    model = _get_reward_model(LlamaPreTrainedModel, LlamaModel, "score")(config)
    n_params = sum(p.numel() for p in model.parameters())
    ds_config = {
        "train_micro_batch_size_per_gpu": args.pairs,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": args.zero},
        "bf16": {"enabled": args.dtype == "bf16"},
        "gradient_clipping": 1.0,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-5, "torch_adam": True}},
    }
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)

    strategy = SimpleNamespace(ring_attn_group=None, _unwrap_model=lambda m: m.module)
    tokenizer = SimpleNamespace(pad_token_id=0)

    def trainer(cls, loss_fn):
        t = object.__new__(cls)  # the methods under test, without wandb/dataloader set-up
        t.strategy, t.tokenizer, t.model, t.packing_samples = strategy, tokenizer, engine, False
        t.loss_fn = loss_fn
        return t

    bt = trainer(plugin._UpstreamTrainer, PairWiseLoss())  # OpenRLHF's own, unpatched
    normbt = trainer(plugin.PluginRewardModelTrainer, None)
    normbt.plugin_loss, normbt._hidden = build_loss("normbt"), (None, None)
    normbt._metric_values, normbt._normed_head = defaultdict(list), None
    normbt.run_meta, normbt.recorder = RunMeta(loss="normbt", seed=0), RunRecorder(None, 0)  # records nothing
    normbt.loss_fn = plugin._LossAdapter(normbt)

    gen = torch.Generator().manual_seed(0)
    device = engine.device

    def batch():
        length = args.seq_len
        ids = torch.randint(3, vocab, (2, args.pairs, length), generator=gen)
        mask = torch.ones_like(ids)
        pad = torch.randint(0, length // 4, (2, args.pairs), generator=gen)  # left padding
        for s in range(2):
            for i in range(args.pairs):
                mask[s, i, : pad[s, i]] = 0
                ids[s, i, : pad[s, i]] = 0
        return [t.to(device) for t in (ids[0], mask[0], ids[1], mask[1])]

    def step(t) -> None:
        chosen, reject, _ = t.concatenated_forward(engine, *batch())
        loss = t.loss_fn(chosen.float(), reject.float(), None)
        engine.backward(loss)
        engine.step()
        loss.item()  # both arms read the loss, as OpenRLHF's logging does after the step
        if isinstance(t, plugin.PluginRewardModelTrainer):
            t._reduced_metrics()  # and the plugin's metrics, as its save_logs_and_checkpoints does

    return {"bt": bt, "normbt": normbt}, step, n_params, torch


def child(args) -> None:
    """One arm alone: report its peak memory."""
    arms, step, n_params, torch = build(args)
    for _ in range(args.steps):
        step(arms[args.arm])
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"arm": args.arm, "peak_bytes": peak}))


def main() -> None:
    gpu = __import__("torch").cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=SIZES, default="tiny")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per arm")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=4, help="pairs per step (2x rows)")
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--zero", type=int, default=2)
    parser.add_argument(
        "--dtype",
        choices=["bf16", "fp32"],
        default="bf16" if gpu else "fp32",
        help="default: bf16 on a GPU, fp32 without (bf16 is emulated on CPUs without AVX512-BF16/AMX)",
    )
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--memory_repeats", type=int, default=2, help="child processes per arm")
    parser.add_argument("--arm", choices=["bt", "normbt"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.device = "cuda" if gpu else "cpu"
    if args.arm:
        return child(args)

    from tqdm import tqdm

    arms, step, n_params, torch = build(args)
    for _ in range(args.warmup):
        step(arms["bt"]), step(arms["normbt"])
    times = {"bt": [], "normbt": []}
    for i in tqdm(range(args.steps), desc=f"{args.model}: timed steps (A B B A)"):
        for name in ("bt", "normbt") if i % 2 == 0 else ("normbt", "bt"):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            step(arms[name])
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)

    peaks = {"bt": [], "normbt": []}
    mem_steps = max(3, min(args.steps, 5))
    for r in tqdm(range(args.memory_repeats), desc="peak memory (child per arm)"):
        for name in ("bt", "normbt") if r % 2 == 0 else ("normbt", "bt"):
            cmd = [sys.executable, __file__, *sys.argv[1:], "--arm", name, "--steps", str(mem_steps)]
            env = {**os.environ, "MASTER_PORT": "", "RANK": ""}
            env = {k: v for k, v in env.items() if v}
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
            peaks[name].append(json.loads(out.strip().splitlines()[-1])["peak_bytes"])

    med = {k: statistics.median(v) for k, v in times.items()}
    q = {k: statistics.quantiles(v, n=4) for k, v in times.items()}
    peak = {k: max(v) for k, v in peaks.items()}
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU x{os.cpu_count()}"
    print(
        f"\nmodel {args.model} ({n_params / 1e6:.1f}M params), {args.pairs} pairs x {args.seq_len} "
        f"tokens, ZeRO-{args.zero} {args.dtype}, {device}, {args.steps} interleaved steps per arm"
    )
    print(f"{'arm':<8} {'median step s':>14} {'IQR':>21} {'peak memory MiB':>16}")
    for k in ("bt", "normbt"):
        print(f"{k:<8} {med[k]:>14.4f} {q[k][0]:>10.4f}-{q[k][2]:<10.4f} {peak[k] / 2**20:>16.1f}")
    print(
        f"normbt / bt: step time x{med['normbt'] / med['bt']:.4f}, "
        f"peak memory x{peak['normbt'] / peak['bt']:.4f}"
    )


if __name__ == "__main__":
    main()
