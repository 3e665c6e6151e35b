"""Reward-model evaluation on preference data: accuracy per subset, RewardBench sections, RewardBench 2,
the RM-Bench style matrix, best-of-N over candidate sets, and accuracy by representation-distance
quantile bin (the result and its table; the benchmarks' formulas are in ``benchmark_scores``, the
data read by ``pairs``, the texts scored by ``scoring``).

    normbt eval-rm --model ckpt/rm-normbt --data pairs.jsonl --out eval.json
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from normbt_plugin.rm_evaluation.benchmark_scores import (
    chosen_on_top,
    pair_accuracy,
    prompt_stats,
    rewardbench2_score,
    rewardbench2_ties,
    rewardbench_sections,
    rmbench_matrix,
)
from normbt_plugin.rm_evaluation.pairs import Pairs
from normbt_plugin.rm_evaluation.scoring import RewardScorer
from normbt_plugin.runs.rm_eval import CandidateScores, PairScores, RmEval
from normbt_plugin.stats import distance_bins, pair_distance


def accuracy(chosen: np.ndarray, rejected: np.ndarray) -> np.ndarray:
    """Per-pair correctness as this plugin counts it: 1 if chosen scores higher, 0.5 for a tie, else 0."""
    return pair_accuracy(chosen, rejected, "half")


def evaluate_pairs(scorer: RewardScorer, pairs: Pairs, n_bins: int = 5, progress: bool = True) -> RmEval:
    """Score every response once; report accuracy overall, per subset, per section/style, per bin."""
    if pairs.n_way:
        return evaluate_candidates(scorer, pairs, n_bins, progress)
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

    if pairs.format == "rmbench":
        c3, r3 = c_score.reshape(-1, 3), r_score.reshape(-1, 3)
        correct = accuracy(c3, r3).mean(axis=1)  # same-style comparisons per prompt
        distance = distance.reshape(-1, 3).mean(axis=1)
        chosen_scores, rejected_scores = c3.tolist(), r3.tolist()
    else:
        correct = accuracy(c_score, r_score)
        chosen_scores, rejected_scores = c_score.tolist(), r_score.tolist()
    result = RmEval(
        format=pairs.format,
        pairs=len(pairs),
        loader=scorer.loader,
        accuracy=float(correct.mean()),
        ties=int((np.asarray(c_score) == np.asarray(r_score)).sum()),
        distance_bins=distance_bins(distance, correct, n_bins),
        per_pair=PairScores(
            chosen=chosen_scores,
            rejected=rejected_scores,
            correct=correct.tolist(),
            distance=distance.tolist(),
            subset=pairs.subsets,
        ),
    )
    if pairs.format == "rmbench":
        result.rmbench = rmbench_matrix(c3, r3)  # RM-Bench's convention: a tie is wrong
        if (c3[:, :, None] == r3[:, None, :]).any():
            result.rmbench_ties_half = rmbench_matrix(c3, r3, ties="half")
        result.rmbench_by_domain = {
            d: rmbench_matrix(c3[mask], r3[mask])
            for d in sorted(set(pairs.subsets))
            if (mask := np.array(pairs.subsets) == d).any()
        }
    if pairs.subsets:
        groups: dict[str, list[float]] = defaultdict(list)
        for s, ok in zip(pairs.subsets, correct, strict=True):
            groups[s].append(ok)
        result.per_subset = {s: float(np.mean(v)) for s, v in sorted(groups.items())}
        result.subset_sizes = {s: len(v) for s, v in sorted(groups.items())}
        if pairs.format == "rewardbench":  # RewardBench's convention (headline): a tie is wrong
            strict = pair_accuracy(c_score, r_score, "wrong")
            subsets = np.array(pairs.subsets)
            result.rewardbench = rewardbench_sections(
                {s: float(strict[subsets == s].mean()) for s in result.per_subset}
            )
            if result.ties:
                result.rewardbench_ties_half = rewardbench_sections(result.per_subset)
    return result


def evaluate_candidates(scorer: RewardScorer, pairs: Pairs, n_bins: int = 5, progress: bool = True) -> RmEval:
    """Best-of-N over candidate sets (``rewardbench2``, ``candidates``): every response scored once;
    per prompt RewardBench 2's result (1/k for a k-way tie at the top, 0 below it; for its Ties rows,
    whether every correct answer beats every incorrect one), the share of (chosen, rejected) pairs won
    (ties 1/2), and the distance from the chosen response to its closest rejected one for the bins."""
    texts, starts = [], [0]
    for prompt, chosen, rejected in zip(pairs.prompts, pairs.chosen, pairs.rejected, strict=True):
        texts += [scorer.format(prompt, r) for r in [*chosen, *rejected]]
        starts.append(len(texts))
    score, hidden = scorer.score(texts, "scoring candidates" if progress else None)
    groups = [score[a:b] for a, b in zip(starts, starts[1:], strict=False)]
    n_chosen = [len(c) for c in pairs.chosen]
    ties = np.array([pairs.is_ties(i) for i in range(len(pairs))], dtype=bool)
    correct = chosen_on_top(groups)
    for i in np.flatnonzero(ties):  # the Ties accuracy term: every correct answer above every incorrect
        correct[i] = float(prompt_stats(groups[i][: n_chosen[i]], groups[i][n_chosen[i] :])[0])
    h = torch.from_numpy(hidden)
    distance, pairwise = np.empty(len(pairs)), np.empty(len(pairs))
    for i, (a, k) in enumerate(zip(starts, n_chosen, strict=False)):
        b = starts[i + 1]
        distance[i] = pair_distance(h[a : a + 1].expand(b - a - k, -1), h[a + k : b]).min().item()
        pairwise[i] = accuracy(groups[i][:1], groups[i][k:]).mean()

    keep = ~ties  # Ties prompts have several correct answers: out of the bins
    result = RmEval(
        format=pairs.format,
        pairs=len(pairs),
        loader=scorer.loader,
        accuracy=float(correct.mean()),  # best-of-N, ties split as RewardBench 2 splits them
        pairwise_accuracy=float(pairwise.mean()),
        candidates=int(starts[-1]),
        ties=int(sum(np.sum(g == g.max()) > 1 for g in groups)),  # prompts with a tie at the top
        distance_bins=distance_bins(distance[keep], correct[keep], n_bins),
        per_pair=CandidateScores(
            scores=[g.tolist() for g in groups],
            num_correct=n_chosen,
            correct=correct.tolist(),
            pairwise=pairwise.tolist(),
            distance=distance.tolist(),
            subset=pairs.subsets,
            id=pairs.ids,
        ),
    )
    if pairs.subsets:
        subsets = np.array(pairs.subsets)
        names = sorted(set(pairs.subsets))
        result.per_subset = {s: float(correct[subsets == s].mean()) for s in names}
        result.subset_sizes = {s: int((subsets == s).sum()) for s in names}
        if pairs.format == "rewardbench2":
            per_subset = dict(result.per_subset)
            if ties.any():
                t = np.flatnonzero(ties)
                result.rewardbench2_ties = rewardbench2_ties(
                    [pairs.ids[i] for i in t], [n_chosen[i] for i in t], [groups[i] for i in t]
                )
                per_subset[pairs.subsets[t[0]]] = result.rewardbench2_ties["score"]
            result.rewardbench2 = rewardbench2_score(per_subset)
    return result


def format_report(result: RmEval) -> str:
    """A readable table of an ``evaluate_pairs`` result."""
    n_way = result.n_way
    unit = "prompts" if n_way else "pairs"
    lines = [f"{unit}: {result.pairs} ({result.format}), accuracy {result.accuracy:.4f}"]
    if n_way:
        lines[0] = lines[0].replace("accuracy", "best-of-N accuracy")
        lines[0] += f" ({result.candidates} responses; pairwise {result.pairwise_accuracy:.4f})"
    if result.ties:
        tie = "split as RewardBench 2 splits them" if n_way else "counted as 0.5"
        lines[0] += f", ties {result.ties} ({tie})"
    if result.rewardbench:
        rb, half = result.rewardbench, result.rewardbench_ties_half
        note = "; ties as 0.5 in ()" if half else ""
        lines.append(f"  RewardBench (its convention: a tie is wrong){note}")
        for section, score in [*rb["sections"].items(), ("overall", rb["overall"])]:
            value = half["sections"].get(section, half["overall"]) if half else None
            lines.append(f"  {section:<10} {score:.4f}" + (f"  ({value:.4f})" if half else ""))
        if rb["missing_subsets"]:
            lines.append(f"  (subsets not in the data: {', '.join(rb['missing_subsets'])})")
    if result.rewardbench2:
        rb2 = result.rewardbench2
        lines.append(f"  RewardBench 2 score {rb2['score']:.4f} (mean of the subsets below; Ties weighted)")
        lines += [f"  {name:<10} {score:.4f}" for name, score in rb2["subsets"].items()]
        if rb2["missing_subsets"]:
            lines.append(f"  (subsets not in the data: {', '.join(rb2['missing_subsets'])})")
    if result.rmbench:
        rm, half = result.rmbench, result.rmbench_ties_half
        for name, m in (("RM-Bench (a tie is wrong)", rm), ("RM-Bench (ties as 0.5)", half)):
            if m:
                lines.append(f"  {name} easy {m['easy']:.4f}  normal {m['normal']:.4f}  hard {m['hard']:.4f}")
    for subset, acc in result.per_subset.items():
        lines.append(f"  subset {subset:<28} {acc:.4f}  (n={result.subset_sizes[subset]})")
    if result.distance_bins:
        closest = " (N-way: chosen to its closest rejected)" if n_way else ""
        lines.append(f"  accuracy by representation-distance quantile bin (closest first){closest}:")
        for i, b in enumerate(result.distance_bins):
            lines.append(f"    bin {i}  {b.lo:>10.4g}-{b.hi:<10.4g} n={b.n:<6} acc {b.acc:.4f}")
    return "\n".join(lines)
