"""Check that OpenRLHF's actor -> vLLM weight sync really changes what the engine generates.

    python -m normbt_plugin.launchers.sync_check --base runs/compare/policy \\
        --updated runs/compare/ppo-normbt-seed1/model --prompts runs/compare/tiny/prompts.jsonl

Starts a vLLM engine (CPU build, float32) on ``--base`` with OpenRLHF's worker extension, then
sends ``--updated``'s weights through the same path PPO uses (``WorkerWrap.init_process_group``
+ ``update_weight`` over a gloo group, as patched by ``vllm_cpu``/``cpu_ppo``) and compares
greedy generations with ``transformers``' greedy ``generate``, and the engine's log-probabilities
of its tokens with each HF model's (these move with any weight change, even where greedy tokens
do not):
  1. before the sync the engine computes what the base model does;
  2. after all tensors arrive but before vLLM's CPU weight packing is redone, it computes
     neither model (linear layers use the packed copy of the old weights, embeddings and
     norms the new ones): the failure the repack fixes;
  3. after the repack that ``update_weight`` runs on the last tensor, it computes what the
     updated model does.
Prints one JSON line (starting ``{"prompts"``) with the token match rates and log-prob errors.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor

from normbt_plugin.common.ports import free_port


def load_hf(model_dir: str):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def greedy_hf(model, prompts: list[list[int]], max_new: int, eos: int) -> list[list[int]]:
    import torch

    out = []
    with torch.no_grad():
        for ids in prompts:
            gen = model.generate(
                torch.tensor([ids]), do_sample=False, max_new_tokens=max_new, eos_token_id=eos,
                pad_token_id=eos, attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            )  # fmt: skip
            out.append(gen[0, len(ids) :].tolist())
    return out


def token_logprobs(model, prompts: list[list[int]], outputs: list[list[int]]) -> list[list[float]]:
    """log p(token) of each generated token under ``model`` (teacher forcing)."""
    import torch

    out = []
    with torch.no_grad():
        for ids, gen in zip(prompts, outputs, strict=True):
            logits = model(torch.tensor([ids + gen])).logits[0, len(ids) - 1 : -1]
            out.append(torch.log_softmax(logits, -1).gather(1, torch.tensor(gen)[:, None])[:, 0].tolist())
    return out


def max_gap(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the model the engine starts from")
    parser.add_argument("--updated", required=True, help="the model whose weights are synced in")
    parser.add_argument("--prompts", required=True, help="JSONL with an 'input' key per line")
    parser.add_argument("--n", type=int, default=16, help="prompts to compare")
    parser.add_argument("--max_new", type=int, default=16)
    args = parser.parse_args()

    from normbt_plugin.launchers.cluster import patched_environment

    os.environ.update(patched_environment())  # vLLM's engine-core subprocess inherits it
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # dtypes in RPC args, as OpenRLHF sets it
    from normbt_plugin.patches import apply_openrlhf_patches

    apply_openrlhf_patches(ppo=True)
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from normbt_plugin.patches import stateless_gloo_group

    tokenizer = AutoTokenizer.from_pretrained(args.base)
    with open(args.prompts) as f:
        texts = [json.loads(line)["input"] for line in f][: args.n]
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    eos = tokenizer.eos_token_id
    llm = LLM(
        model=args.base, dtype="float32", enforce_eager=True, max_model_len=128, seed=0,
        worker_extension_cls="openrlhf.trainer.ray.vllm_worker_wrap.WorkerWrap",
    )  # fmt: skip
    sampling = SamplingParams(temperature=0.0, max_tokens=args.max_new, logprobs=0)

    def generate() -> tuple[list[list[int]], list[list[float]]]:
        """Greedy token ids, and the engine's log-probability of each."""
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], sampling, use_tqdm=False)
        ids = [list(o.outputs[0].token_ids) for o in outs]
        logps = [
            [step[t].logprob for t, step in zip(seq, o.outputs[0].logprobs, strict=True)]
            for seq, o in zip(ids, outs, strict=True)
        ]
        return ids, logps

    def match(a: list[list[int]], b: list[list[int]]) -> float:
        return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)

    base_model, updated_model = load_hf(args.base), load_hf(args.updated)
    hf_base = greedy_hf(base_model, prompts, args.max_new, eos)
    hf_updated = greedy_hf(updated_model, prompts, args.max_new, eos)
    before = generate()

    port = free_port("127.0.0.1")
    pool = ThreadPoolExecutor(1)  # the engine side of each collective runs beside ours

    def engine_side(method: str, *rpc_args) -> Future:
        future = pool.submit(llm.collective_rpc, method, args=rpc_args)
        time.sleep(0.01)
        if future.done():  # failed at once: say why instead of waiting in the collective
            future.result()
        return future

    rpc = engine_side("init_process_group", "127.0.0.1", port, 1, 2, "openrlhf", "gloo", False)
    group = stateless_gloo_group("127.0.0.1", port, 0, 2)
    rpc.result()

    weights = load_file(os.path.join(args.updated, "model.safetensors"))
    names = sorted(weights)

    def send(name: str, last: bool) -> None:
        tensor = weights[name].to(torch.float32).contiguous()
        call = engine_side("update_weight", name, torch.float32, tuple(tensor.shape), last)
        group.broadcast(tensor, src=0)
        call.result()

    for name in names:  # every tensor, no repack yet
        send(name, last=False)
    stale = generate()
    send(names[-1], last=True)  # the last tensor again: update_weight repacks
    after = generate()

    def compare(stage: tuple[list[list[int]], list[list[float]]]) -> dict[str, float]:
        """Greedy tokens vs each HF model, and the engine's log-probs of its own tokens vs each
        HF model's log-probs of the same tokens (sensitive to any weight change)."""
        ids, logps = stage
        return {
            "tokens_eq_base": match(ids, hf_base),
            "tokens_eq_updated": match(ids, hf_updated),
            "logprob_err_vs_base": max_gap(logps, token_logprobs(base_model, prompts, ids)),
            "logprob_err_vs_updated": max_gap(logps, token_logprobs(updated_model, prompts, ids)),
        }

    result = {
        "prompts": len(prompts),
        "hf_tokens_base_eq_updated": match(hf_base, hf_updated),
        "hf_logprob_gap_base_vs_updated": max_gap(
            token_logprobs(base_model, prompts, hf_base), token_logprobs(updated_model, prompts, hf_base)
        ),
        "before_sync": compare(before),
        "synced_not_repacked": compare(stale),
        "after_sync": compare(after),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
