"""GPU memory per stage of a recipe config, by arithmetic, against an 80 GB GPU.

    python -m normbt_plugin.common.gpu_memory                       # every GPU config
    python -m normbt_plugin.common.gpu_memory recipes/configs/x.env --no-grad-ckpt   # what-if

An estimate, not a measurement (no GPU has run these configs): the terms are the standard ones
(Rajbhandari et al. 2020, ZeRO; Korthikanti et al. 2022, activations) with the assumptions named
where they are made, so a config that cannot fit is caught before a node is booked for it. Per GPU:
- model states in bf16 mixed precision: parameters 2 bytes, gradients 2, and the optimizer's fp32
  master weights, Adam moments and fp32 gradient partition 16 bytes a parameter, each divided over
  the data-parallel GPUs by the ZeRO stage (1: optimizer; 2: + gradients; 3: + parameters);
- activations of one micro-batch (flash-attn: no seq x seq scores): without gradient checkpointing
  2 (10 h + 4 i) bytes a token a layer (norm, attention and SwiGLU inputs and outputs kept for
  backward); with it 2 h a token a layer (the layer inputs) plus one layer's full set (recompute);
- the policy's logits while training (bf16 logits, fp32 log-softmax and its gradient: 10 bytes a
  token a vocabulary entry); the reward model's head reads one hidden state a sequence (nothing);
- vLLM's engine: the fraction of the GPU it is given (``gpu_memory_utilization``); colocated with
  sleep mode, the engine and the DeepSpeed models take turns, so the peak is the larger phase;
- 4 GiB for the CUDA context, NCCL buffers and allocator fragmentation.
Model shapes are the models' published config.json values (hub names cannot be read here).
"""

from __future__ import annotations

import argparse
import subprocess
from dataclasses import dataclass
from pathlib import Path

GIB = 2**30
GPU_GIB = 79.0  # an 80 GB H100/A100 as torch sees it (79.2 GiB)
OVERHEAD_GIB = 4.0
REPO = Path(__file__).resolve().parents[2]
GPU_CONFIGS = ("llama3-8b-8gpu", "paper-gemma2b", "multinode-llama3-8b")


@dataclass(frozen=True)
class Shape:
    params: float
    layers: int
    hidden: int
    intermediate: int
    vocab: int


LLAMA3_8B = Shape(8.03e9, 32, 4096, 14336, 128256)  # Llama-3(.1)-8B config.json
SHAPES = {
    "OpenRLHF/Llama-3-8b-sft-mixture": LLAMA3_8B,
    "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2": LLAMA3_8B,
    "google/gemma-2b-it": Shape(2.51e9, 18, 2048, 16384, 256000),
}


@dataclass(frozen=True)
class Estimate:
    stage: str
    parts: dict[str, float]  # GiB per GPU

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def fits(self, budget: float = GPU_GIB) -> bool:
        return self.total <= budget


def states_gib(shape: Shape, zero: int, gpus: int, train: bool = True) -> dict[str, float]:
    p = shape.params
    params = 2 * p / (gpus if zero >= 3 else 1)
    if not train:
        return {"params": params / GIB}
    grads = 2 * p / (gpus if zero >= 2 else 1)
    optim = 16 * p / (gpus if zero >= 1 else 1)
    return {"params": params / GIB, "grads": grads / GIB, "optimizer": optim / GIB}


def activations_gib(shape: Shape, tokens: int, grad_ckpt: bool) -> float:
    full_layer = 2 * (10 * shape.hidden + 4 * shape.intermediate) * tokens
    if grad_ckpt:
        return (2 * shape.hidden * tokens * shape.layers + full_layer) / GIB
    return full_layer * shape.layers / GIB


def _on(values: dict[str, str], key: str, default: str = "0") -> bool:
    return values.get(key, default) == "1"


def rm_stage(v: dict[str, str]) -> Estimate:
    shape = SHAPES[v["MODEL"]]
    gpus = int(v.get("NPROC", "1")) * int(v.get("NODES", "1"))
    tokens = int(v["MICRO_BS"]) * 2 * int(v["MAX_LEN"])  # chosen and rejected of each pair, full length
    parts = states_gib(shape, int(v["ZERO"]), gpus)
    parts["activations"] = activations_gib(shape, tokens, _on(v, "GRAD_CKPT"))
    return Estimate("RM stage", {**parts, "overhead": OVERHEAD_GIB})


def ppo_stage(v: dict[str, str]) -> list[Estimate]:
    """Colocated PPO: the training phase (actor and critic trained, ref and reward resident) and the
    generation phase (vLLM awake, the DeepSpeed models asleep)."""
    policy, reward = SHAPES[v["POLICY"]], SHAPES[v["MODEL"]]
    gpus, zero = int(v["NODES"]) * int(v["GPUS_PER_NODE"]), int(v["PPO_ZERO"])
    tokens, ckpt = int(v["PPO_MICRO_BS"]) * int(v["PPO_MAX_LEN"]), _on(v, "PPO_GRAD_CKPT")
    actor = sum(states_gib(policy, zero, gpus).values())
    critic = sum(states_gib(policy, zero, gpus).values())  # OpenRLHF's critic starts from the policy
    frozen = (states_gib(policy, zero, gpus, train=False)["params"]
              + states_gib(reward, zero, gpus, train=False)["params"])  # fmt: skip
    logits = 10 * tokens * policy.vocab / GIB
    activations = activations_gib(policy, tokens, ckpt) + logits
    train = {"actor": actor, "critic": critic, "ref + reward": frozen, "activations": activations,
             "overhead": OVERHEAD_GIB}  # fmt: skip
    engine = float(v["VLLM_MEM"]) * GPU_GIB
    weights = 2 * policy.params / int(v["VLLM_TP"]) / GIB
    if weights > 0.9 * engine:
        raise ValueError(f"vLLM's weights ({weights:.1f} GiB) leave no KV cache in VLLM_MEM={v['VLLM_MEM']}")
    colocated = _on(v, "COLOCATE")
    generate = {"vLLM engine": engine, "overhead": OVERHEAD_GIB}
    if not colocated:
        return [Estimate("PPO train", train), Estimate("PPO generate (own GPUs)", generate)]
    return [Estimate("PPO train (vLLM asleep)", train), Estimate("PPO generate (DeepSpeed asleep)", generate)]


def judge_stage(v: dict[str, str]) -> Estimate:
    """eval-policy's and labelling's gold RM scoring batches on one GPU (inference: one layer live)."""
    gold = SHAPES[v["GOLD_RM"]]
    tokens = 16 * int(v.get("PPO_MAX_LEN", "2048"))  # eval-policy's --batch_size 16
    return Estimate("gold RM scoring", {"params": 2 * gold.params / GIB,
                                        "activations": activations_gib(gold, tokens, False) / gold.layers,
                                        "overhead": OVERHEAD_GIB})  # fmt: skip


def estimates(v: dict[str, str]) -> list[Estimate]:
    out = [rm_stage(v)]
    if _on(v, "PPO"):
        out += ppo_stage(v)
    if v.get("GOLD_RM"):
        out.append(judge_stage(v))
    return out


def config_values(config: str | Path, **overrides: str) -> dict[str, str]:
    """The variables a recipe config sets, read by bash as compare.sh sources it."""
    script = f'set -a; source "{config}"; set +a; env -0'
    env = {"PATH": "/usr/bin:/bin", **overrides}
    out = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, check=True, env=env, cwd=REPO
    )
    return dict(item.split("=", 1) for item in out.stdout.split("\0") if "=" in item)


def format_table(name: str, found: list[Estimate]) -> str:
    lines = [f"{name}: GiB per GPU (budget {GPU_GIB:.0f})"]
    for e in found:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in e.parts.items())
        lines.append(f"  {e.stage:<32} {e.total:>6.1f}  {'fits' if e.fits() else 'OUT OF MEMORY'}  ({parts})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", help="recipe configs (default: every GPU config)")
    parser.add_argument("--no-grad-ckpt", action="store_true", help="as if gradient checkpointing were off")
    args = parser.parse_args(argv)
    paths = args.configs or [f"recipes/configs/{c}.env" for c in GPU_CONFIGS]
    overrides = {"GRAD_CKPT": "0", "PPO_GRAD_CKPT": "0"} if args.no_grad_ckpt else {}
    status = 0
    for path in paths:
        found = estimates(config_values(path, **overrides))
        print(format_table(Path(path).stem, found))
        status |= not all(e.fits() for e in found)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
