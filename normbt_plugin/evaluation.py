"""Reward-model evaluation on preference pairs: accuracy per subset, RewardBench sections, the
RM-Bench style matrix, and accuracy by representation-distance quantile bin (the metrics and their
table; the pairs are read by ``pairs``, the texts scored by ``scoring``).

    normbt eval-rm --model ckpt/rm-normbt --data pairs.jsonl --out eval.json
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np
import torch

from normbt_plugin.pairs import Pairs
from normbt_plugin.scoring import RewardScorer
from normbt_plugin.stats import distance_bins, pair_distance

# RewardBench (allenai/reward-bench, rewardbench/constants.py): subsets per section, and the
# example counts used to weight them. math-prm has 447 pairs but counts 984, the six code
# subsets together, so that math and code weigh the same in Reasoning.
REWARDBENCH_SECTIONS = {
    "Chat": ["alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"],
    "Chat Hard": [
        "mt-bench-hard",
        "llmbar-natural",
        "llmbar-adver-neighbor",
        "llmbar-adver-GPTInst",
        "llmbar-adver-GPTOut",
        "llmbar-adver-manual",
    ],
    "Safety": [
        "refusals-dangerous",
        "refusals-offensive",
        "xstest-should-refuse",
        "xstest-should-respond",
        "donotanswer",
    ],
    "Reasoning": ["math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"],
}
REWARDBENCH_COUNTS = {
    "alpacaeval-easy": 100,
    "alpacaeval-length": 95,
    "alpacaeval-hard": 95,
    "mt-bench-easy": 28,
    "mt-bench-med": 40,
    "mt-bench-hard": 37,
    "math-prm": 984,
    "refusals-dangerous": 100,
    "refusals-offensive": 100,
    "llmbar-natural": 100,
    "llmbar-adver-neighbor": 134,
    "llmbar-adver-GPTInst": 92,
    "llmbar-adver-GPTOut": 47,
    "llmbar-adver-manual": 46,
    "xstest-should-refuse": 154,
    "xstest-should-respond": 250,
    "donotanswer": 136,
    "hep-cpp": 164,
    "hep-go": 164,
    "hep-java": 164,
    "hep-js": 164,
    "hep-python": 164,
    "hep-rust": 164,
}
RMBENCH_STYLES = ("concise", "detailed", "detailed_markdown")


def accuracy(chosen: np.ndarray, rejected: np.ndarray) -> np.ndarray:
    """Per-pair correctness: 1 if chosen scores higher, 0.5 for a tie, else 0."""
    return np.where(chosen > rejected, 1.0, np.where(chosen == rejected, 0.5, 0.0))


def rewardbench_sections(per_subset: dict[str, float]) -> dict[str, Any]:
    """RewardBench section scores (count-weighted subset accuracies) and their mean."""
    sections, missing = {}, []
    for section, subsets in REWARDBENCH_SECTIONS.items():
        present = [s for s in subsets if s in per_subset]
        missing += [s for s in subsets if s not in per_subset]
        if present:
            total = sum(REWARDBENCH_COUNTS[s] for s in present)
            sections[section] = sum(per_subset[s] * REWARDBENCH_COUNTS[s] for s in present) / total
    overall = sum(sections.values()) / len(sections) if sections else math.nan
    return {"sections": sections, "overall": overall, "missing_subsets": missing}


def rmbench_matrix(chosen: np.ndarray, rejected: np.ndarray) -> dict[str, Any]:
    """RM-Bench: acc[i][j] = P(chosen in style i beats rejected in style j), styles concise,
    detailed, detailed+markdown; hard = above the diagonal (chosen plainer), normal = diagonal,
    easy = below."""
    matrix = accuracy(chosen[:, :, None], rejected[:, None, :]).mean(axis=0)
    upper = matrix[np.triu_indices(3, 1)].mean()
    lower = matrix[np.tril_indices(3, -1)].mean()
    return {
        "matrix": matrix.tolist(),
        "hard": float(upper),
        "normal": float(np.diag(matrix).mean()),
        "easy": float(lower),
        "average": float(matrix.mean()),
    }


def evaluate_pairs(scorer: RewardScorer, pairs: Pairs, n_bins: int = 5, progress: bool = True) -> dict:
    """Score every response once; report accuracy overall, per subset, per section/style, per bin."""
    if pairs.format == "rmbench":
        chosen_texts = [
            scorer.format(p, c) for p, cs in zip(pairs.prompts, pairs.chosen, strict=True) for c in cs
        ]
        rejected_texts = [
            scorer.format(p, r) for p, rs in zip(pairs.prompts, pairs.rejected, strict=True) for r in rs
        ]
    else:
        chosen_texts = [scorer.format(p, c) for p, c in zip(pairs.prompts, pairs.chosen, strict=True)]
        rejected_texts = [scorer.format(p, r) for p, r in zip(pairs.prompts, pairs.rejected, strict=True)]
    label = "scoring chosen" if progress else None
    c_score, c_hidden = scorer.score(chosen_texts, label)
    r_score, r_hidden = scorer.score(rejected_texts, label and "scoring rejected")
    distance = pair_distance(torch.from_numpy(c_hidden), torch.from_numpy(r_hidden)).numpy()  # L2: see stats

    result: dict[str, Any] = {"format": pairs.format, "pairs": len(pairs), "loader": scorer.loader}
    if pairs.format == "rmbench":
        c3, r3 = c_score.reshape(-1, 3), r_score.reshape(-1, 3)
        correct = accuracy(c3, r3).mean(axis=1)  # same-style comparisons per prompt
        distance = distance.reshape(-1, 3).mean(axis=1)
        result["rmbench"] = rmbench_matrix(c3, r3)
        result["rmbench_by_domain"] = {
            d: rmbench_matrix(c3[mask], r3[mask])
            for d in sorted(set(pairs.subsets))
            if (mask := np.array(pairs.subsets) == d).any()
        }
        chosen_scores, rejected_scores = c3.tolist(), r3.tolist()
    else:
        correct = accuracy(c_score, r_score)
        chosen_scores, rejected_scores = c_score.tolist(), r_score.tolist()
    result["accuracy"] = float(correct.mean())
    result["ties"] = int((np.asarray(c_score) == np.asarray(r_score)).sum())
    if pairs.subsets:
        groups: dict[str, list[float]] = defaultdict(list)
        for s, ok in zip(pairs.subsets, correct, strict=True):
            groups[s].append(ok)
        result["per_subset"] = {s: float(np.mean(v)) for s, v in sorted(groups.items())}
        result["subset_sizes"] = {s: len(v) for s, v in sorted(groups.items())}
        if pairs.format == "rewardbench":
            result["rewardbench"] = rewardbench_sections(result["per_subset"])
    result["distance_bins"] = distance_bins(distance, correct, n_bins)
    result["per_pair"] = {
        "chosen": chosen_scores,
        "rejected": rejected_scores,
        "correct": correct.tolist(),
        "distance": distance.tolist(),
        "subset": pairs.subsets,
    }
    return result


def format_report(result: dict) -> str:
    """A readable table of an ``evaluate_pairs`` result."""
    lines = [f"pairs: {result['pairs']} ({result['format']}), accuracy {result['accuracy']:.4f}"]
    if result.get("ties"):
        lines[0] += f", ties {result['ties']} (counted as 0.5)"
    if "rewardbench" in result:
        rb = result["rewardbench"]
        for section, score in rb["sections"].items():
            lines.append(f"  {section:<10} {score:.4f}")
        lines.append(f"  {'overall':<10} {rb['overall']:.4f}")
        if rb["missing_subsets"]:
            lines.append(f"  (subsets not in the data: {', '.join(rb['missing_subsets'])})")
    if "rmbench" in result:
        rm = result["rmbench"]
        lines.append(f"  RM-Bench easy {rm['easy']:.4f}  normal {rm['normal']:.4f}  hard {rm['hard']:.4f}")
    for subset, acc in result.get("per_subset", {}).items():
        lines.append(f"  subset {subset:<28} {acc:.4f}  (n={result['subset_sizes'][subset]})")
    if result["distance_bins"]:
        lines.append("  accuracy by representation-distance quantile bin (closest first):")
        for i, b in enumerate(result["distance_bins"]):
            lines.append(f"    bin {i}  {b['lo']:>10.4g}-{b['hi']:<10.4g} n={b['n']:<6} acc {b['acc']:.4f}")
    return "\n".join(lines)
