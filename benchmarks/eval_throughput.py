"""eval-rm throughput (pairs per second) against RewardBench's own scoring loop, same model, same
pairs, one run, and the per-pair scores of the two compared.

RewardBench's loop, transcribed from allenai/reward-bench ``scripts/run_rm.py`` (the default
sequence-classifier path, "Run inference [1/2]"): a ``transformers.pipeline("text-classification")``
called on all chosen texts, then all rejected texts, with ``batch_size``, ``truncation=True``,
``padding=True``, ``max_length``, ``function_to_apply="none"``, ``return_token_type_ids=False``; the
score is each result's ``"score"``. Both get the same texts (OpenRLHF's RM text: prompt + response +
EOS, tokenised without special tokens, so the pipeline is given ``add_special_tokens=False``) and the
same batch size. Builds the tiny offline setup with a random value head (it scores as fast as a
trained one), alternates the two (A B A B) and reports the median pairs per second of each.
``normbt eval-rm`` also returns the EOS hidden states (for the distance bins); RewardBench does not.

    python benchmarks/eval_throughput.py --pairs 512 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_len", type=int, default=1024)
    args = parser.parse_args()

    import numpy as np
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from normbt_plugin.common.tiny import build_tiny_setup
    from normbt_plugin.rm_evaluation.pairs import load_pairs
    from normbt_plugin.rm_evaluation.scoring import RewardScorer

    tmp = Path(tempfile.mkdtemp())
    paths = build_tiny_setup(tmp, n_train=64, n_test=args.pairs)
    rm_dir = tmp / "rm"
    model = AutoModelForSequenceClassification.from_pretrained(paths["model"], num_labels=1)
    torch.manual_seed(0)
    model.score.weight.data.normal_(std=0.1)
    model.save_pretrained(rm_dir)
    AutoTokenizer.from_pretrained(paths["model"]).save_pretrained(rm_dir)

    pairs = load_pairs(str(paths["test"]))
    scorer = RewardScorer(str(rm_dir), loader="hf", batch_size=args.batch_size, max_len=args.max_len)
    chosen = [scorer.format(p, c) for p, c in zip(pairs.prompts, pairs.chosen, strict=True)]
    rejected = [scorer.format(p, r) for p, r in zip(pairs.prompts, pairs.rejected, strict=True)]

    tokenizer = AutoTokenizer.from_pretrained(rm_dir)
    pipe = pipeline("text-classification", model=str(rm_dir), tokenizer=tokenizer, device=-1)
    if pipe.tokenizer.pad_token_id is None:  # as run_rm.py sets it
        pipe.model.config.pad_token_id = pipe.tokenizer.pad_token_id = pipe.tokenizer.eos_token_id
    pipeline_kwargs = {"batch_size": args.batch_size, "truncation": True, "padding": True,
                       "max_length": args.max_len, "function_to_apply": "none",
                       "return_token_type_ids": False, "add_special_tokens": False}  # fmt: skip
    scores: dict[str, tuple] = {}

    def ours() -> None:
        scores["eval-rm"] = (scorer.score(chosen)[0], scorer.score(rejected)[0])

    def rewardbench_loop() -> None:
        results_rej = pipe(rejected, **pipeline_kwargs)
        results_cho = pipe(chosen, **pipeline_kwargs)
        scores["rewardbench"] = (
            np.array([r["score"] for r in results_cho]),
            np.array([r["score"] for r in results_rej]),
        )

    rates: dict[str, list[float]] = {"eval-rm": [], "rewardbench": []}
    for _ in tqdm(range(args.repeats), desc="alternating repeats"):
        for name, fn in (("eval-rm", ours), ("rewardbench", rewardbench_loop)):
            start = time.perf_counter()
            fn()
            rates[name].append(len(pairs) / (time.perf_counter() - start))
    gap = max(
        float(np.abs(a - b).max()) for a, b in zip(scores["eval-rm"], scores["rewardbench"], strict=True)
    )
    agree = np.mean(
        (scores["eval-rm"][0] > scores["eval-rm"][1]) == (scores["rewardbench"][0] > scores["rewardbench"][1])
    )
    print(f"{len(pairs)} pairs, tiny Llama, CPU, float32, batch {args.batch_size}, {args.repeats} repeats")
    for name, values in rates.items():
        print(f"{name:<12} {statistics.median(values):10.1f} pairs/s")
    ratio = statistics.median(rates["eval-rm"]) / statistics.median(rates["rewardbench"])
    print(f"eval-rm / rewardbench: x{ratio:.2f}")
    print(f"per-response scores: max |eval-rm - rewardbench| {gap:.2e}; same pair verdict {agree:.4f}")
    if gap > 1e-4:
        raise SystemExit(
            f"eval-rm and RewardBench's loop score the same texts differently (max gap {gap:.2e})"
        )


if __name__ == "__main__":
    main()
