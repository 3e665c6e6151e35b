"""Tiny, offline stand-ins for a reward-model run: a byte-level BPE tokenizer, a random Llama and
preference pairs with a known right answer, fine-grained and coarse.

The task: the chosen response lists the prompt's numbers sorted. A fine-grained rejected
response swaps two neighbours (one token pair changed); a coarse one is unrelated words.

    python -m normbt_plugin.common.tiny --out runs/tiny  # model/ and its pairs and prompts (.jsonl)
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

WORDS = (
    "apple river stone cloud green lamp paper window yellow horse silver music orange table "
    "forest bright candle garden winter copper"
).split()


def make_pairs(
    n: int, seed: int, fine_fraction: float = 0.5, lengths: tuple[int, int] = (4, 7)
) -> list[dict]:
    """``n`` preference pairs: prompt, chosen, rejected, kind ('fine' or 'coarse'), margin; each
    prompt lists ``lengths[0]`` to ``lengths[1]`` distinct numbers from 10 to 99."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        numbers = rng.sample(range(10, 100), rng.randint(*lengths))
        prompt = "sort: " + " ".join(map(str, numbers)) + " ->"
        ordered = sorted(numbers)
        chosen = " " + " ".join(map(str, ordered))
        if rng.random() < fine_fraction:
            i = rng.randrange(len(ordered) - 1)
            wrong = ordered[:]
            wrong[i], wrong[i + 1] = wrong[i + 1], wrong[i]
            rejected, kind, margin = " " + " ".join(map(str, wrong)), "fine", 0.5
        else:
            rejected = " " + " ".join(rng.choice(WORDS) for _ in range(len(ordered)))
            kind, margin = "coarse", 2.0
        rows.append(
            {
                "prompt": prompt,
                "chosen": chosen,
                "rejected": rejected,
                "kind": kind,
                "margin": margin,
            }
        )
    return rows


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def build_tokenizer(texts: list[str], out_dir: Path, vocab_size: int = 320):
    """A byte-level BPE trained on ``texts`` in a second, saved as a HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(out_dir)
    return fast


def build_model(
    out_dir: Path,
    vocab_size: int,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    intermediate_size: int | None = None,
    seed: int = 0,
    tokenizer=None,
) -> None:
    """A randomly initialised Llama saved in float32 (loadable by OpenRLHF's RM stage)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)


def build_tiny_setup(
    out: str | Path,
    n_train: int = 256,
    n_test: int = 128,
    seed: int = 0,
    lengths: tuple[int, int] = (4, 7),
    n_prompts: int | None = None,
    n_sft: int = 0,
    n_rm_prompts: int = 0,
    **model_kwargs,
) -> dict[str, Path]:
    """Write ``model/`` (tokenizer + tiny Llama), ``train.jsonl`` and ``test.jsonl`` under ``out``,
    and ``prompts.jsonl`` (PPO) and ``eval_prompts.jsonl`` (held out), ``n_prompts`` each; with
    ``n_sft``, also ``sft.jsonl``: that many demonstrations (prompt, chosen) apart from the pairs;
    with ``n_rm_prompts``, ``rm_prompts.jsonl`` and ``rm_test_prompts.jsonl``: prompts of their own
    for on-policy RM pairs (``normbt label-pairs``), to train on and held out."""
    out = Path(out)
    train = make_pairs(n_train, seed, lengths=lengths)
    test = make_pairs(n_test, seed + 10_000, lengths=lengths)
    texts = [r["prompt"] + r["chosen"] for r in train] + [r["rejected"] for r in train] + WORDS
    model_dir = out / "model"
    tokenizer = build_tokenizer(texts, model_dir)
    build_model(model_dir, len(tokenizer), seed=seed, tokenizer=tokenizer, **model_kwargs)
    n_prompts = n_prompts or n_test
    prompts = [{"input": r["prompt"]} for r in make_pairs(n_prompts, seed + 20_000, lengths=lengths)]  # PPO
    held_out = [{"input": r["prompt"]} for r in make_pairs(n_prompts, seed + 30_000, lengths=lengths)]
    paths = {
        "model": model_dir,
        "train": write_jsonl(train, out / "train.jsonl"),
        "test": write_jsonl(test, out / "test.jsonl"),
        "prompts": write_jsonl(prompts, out / "prompts.jsonl"),
        "eval_prompts": write_jsonl(held_out, out / "eval_prompts.jsonl"),
    }
    if n_rm_prompts:
        for name, offset in (("rm_prompts", 50_000), ("rm_test_prompts", 60_000)):
            rows = [{"input": r["prompt"]} for r in make_pairs(n_rm_prompts, seed + offset, lengths=lengths)]
            paths[name] = write_jsonl(rows, out / f"{name}.jsonl")
    if n_sft:
        demos = [
            {"prompt": r["prompt"], "chosen": r["chosen"]}
            for r in make_pairs(n_sft, seed + 40_000, lengths=lengths)
        ]
        paths["sft"] = write_jsonl(demos, out / "sft.jsonl")
    return paths


# A minimal chat template (plain-string or OpenAI-style content lists, as OpenRLHF's prompt
# dataset passes them), so the chat-format stand-ins go through apply_chat_template like real ones.
CHAT_TEMPLATE = (
    "{%- for m in messages -%}{{ m.role }}:"
    "{%- if m.content is string %} {{ m.content }}{%- else %}{%- for c in m.content %} {{ c.text }}"
    "{%- endfor %}{%- endif %}</s>{%- endfor -%}{%- if add_generation_prompt %}assistant:{%- endif %}"
)


def _chat(prompt: str, response: str | None = None) -> list[dict]:
    turns = [{"role": "user", "content": prompt}]
    return turns + ([{"role": "assistant", "content": response.strip()}] if response is not None else [])


# What a prompt set of chat messages holds besides the task: a system message and an earlier turn
# (the task stays the last user turn), so every stage must pass the whole conversation on.
CHAT_PREAMBLE = [
    {"role": "system", "content": "you sort numbers"},
    {"role": "user", "content": "ready"},
    {"role": "assistant", "content": "yes"},
]


def build_chat_setup(out: str | Path, n_train: int = 64, n_test: int = 32, seed: int = 0) -> dict[str, Path]:
    """Stand-ins shaped like the GPU configs' data: ``chosen``/``rejected`` whole conversations with
    no prompt column (Skywork-Reward-Preference, OpenRLHF's preference mixture), prompts as
    ``context_messages`` message lists (OpenRLHF's prompt collection: a system message, an earlier
    turn, then the task), and a tiny Llama whose
    tokenizer has a chat template. vLLM-sized heads (2: head size 32)."""
    out = Path(out)
    train, test = make_pairs(n_train, seed), make_pairs(n_test, seed + 10_000)

    def conversations(rows: list[dict]) -> list[dict]:
        return [{"chosen": _chat(r["prompt"], r["chosen"]), "rejected": _chat(r["prompt"], r["rejected"])}
                for r in rows]  # fmt: skip

    texts = [f"user: {r['prompt']}</s>assistant: {r['chosen']}</s>" for r in train]
    texts += [r["rejected"] for r in train] + WORDS
    model_dir = out / "model"
    tokenizer = build_tokenizer(texts, model_dir)
    tokenizer.chat_template = CHAT_TEMPLATE
    build_model(model_dir, len(tokenizer), heads=2, seed=seed, tokenizer=tokenizer)
    tasks = make_pairs(n_test, seed + 20_000)
    prompts = [{"context_messages": CHAT_PREAMBLE + _chat(r["prompt"])} for r in tasks]
    return {
        "model": model_dir,
        "train": write_jsonl(conversations(train), out / "train.jsonl"),
        "test": write_jsonl(conversations(test), out / "test.jsonl"),
        "prompts": write_jsonl(prompts, out / "prompts.jsonl"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--n_train", type=int, default=256)
    parser.add_argument("--n_test", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heads", type=int, default=4, help="attention heads (vLLM needs head size 32+: 2)")
    parser.add_argument("--lengths", default="4-7", help="how many numbers a prompt lists: MIN-MAX")
    parser.add_argument(
        "--n_prompts", type=int, default=None, help="PPO and held-out prompts (default n_test)"
    )
    parser.add_argument("--n_sft", type=int, default=0, help="SFT demonstrations apart from the pairs")
    parser.add_argument("--n_rm_prompts", type=int, default=0, help="on-policy RM prompts (each set)")
    parser.add_argument("--hidden", type=int, default=64, help="the model's hidden size")
    args = parser.parse_args()
    low, _, high = args.lengths.partition("-")
    paths = build_tiny_setup(
        args.out, args.n_train, args.n_test, args.seed, lengths=(int(low), int(high or low)),
        n_prompts=args.n_prompts, n_sft=args.n_sft, n_rm_prompts=args.n_rm_prompts, heads=args.heads,
        hidden_size=args.hidden,
    )  # fmt: skip
    print(json.dumps({k: str(v) for k, v in paths.items()}))


if __name__ == "__main__":
    main()
