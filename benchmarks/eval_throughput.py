"""eval-rm throughput (pairs per second) against a plain HF pipeline loop, same pairs, one run.

Builds the tiny offline setup, trains nothing (a random value head scores as fast as a trained
one), saves it as an OpenRLHF-style reward model, then alternates the two scorers over the same
pairs (A B A B) and reports the median pairs per second of each. ``normbt eval-rm`` also returns
the EOS hidden states (for the distance bins); the pipeline loop does not.

    python benchmarks/eval_throughput.py --pairs 256 --repeats 3
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
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from normbt_plugin.pairs import load_pairs
    from normbt_plugin.scoring import RewardScorer
    from normbt_plugin.tiny import build_tiny_setup

    tmp = Path(tempfile.mkdtemp())
    paths = build_tiny_setup(tmp, n_train=64, n_test=args.pairs)
    rm_dir = tmp / "rm"
    model = AutoModelForSequenceClassification.from_pretrained(paths["model"], num_labels=1)
    torch.manual_seed(0)
    model.score.weight.data.normal_(std=0.1)
    model.save_pretrained(rm_dir)
    AutoTokenizer.from_pretrained(paths["model"]).save_pretrained(rm_dir)

    pairs = load_pairs(str(paths["test"]))
    scorer = RewardScorer(str(rm_dir), loader="hf", batch_size=args.batch_size)
    chosen = [scorer.format(p, c) for p, c in zip(pairs.prompts, pairs.chosen, strict=True)]
    rejected = [scorer.format(p, r) for p, r in zip(pairs.prompts, pairs.rejected, strict=True)]

    tokenizer = AutoTokenizer.from_pretrained(rm_dir)
    pipe = pipeline(
        "text-classification",
        model=str(rm_dir),
        tokenizer=tokenizer,
        function_to_apply="none",
        device=-1,
    )

    def ours() -> None:
        scorer.score(chosen)
        scorer.score(rejected)

    def plain_loop() -> None:  # one text at a time, as a plain pipeline loop does
        for text in chosen + rejected:
            pipe(text)

    rates = {"eval-rm": [], "hf pipeline loop": []}
    for _ in range(args.repeats):
        for name, fn in (("eval-rm", ours), ("hf pipeline loop", plain_loop)):
            start = time.perf_counter()
            fn()
            rates[name].append(len(pairs) / (time.perf_counter() - start))
    print(f"{len(pairs)} pairs, tiny Llama, CPU, {args.repeats} alternating repeats")
    for name, values in rates.items():
        print(f"{name:<18} {statistics.median(values):10.1f} pairs/s")
    ratio = statistics.median(rates["eval-rm"]) / statistics.median(rates["hf pipeline loop"])
    print(f"eval-rm / hf pipeline loop: x{ratio:.2f}")


if __name__ == "__main__":
    main()
