"""Best-of-N on code, the reward models' side (issue 38's pre-registration, docs/results.md): each RM
scores the committed candidates (``score``), and the analysis compares the losses' picks (``analyze``).

    python -m normbt_plugin.policy_studies.code_bon_picks score --rm DIR --candidates results/code-bon --out F
    python -m normbt_plugin.policy_studies.code_bon_picks analyze --candidates results/code-bon F1 F2 ...

An RM's pick on a problem is its best-scored candidate among those that parse (ties to the lowest
sample); a problem with none parsed counts as a fail. Score files are named ``<arm>-<loss>-seed<k>``:
the primary pairs NormBT and BT of one arm by seed, on the test half of the split.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from normbt_plugin.common.intervals import nested_bootstrap, seeds_needed
from normbt_plugin.policy_studies.bon_study import decide
from normbt_plugin.policy_studies.code_bon import SPLIT, Candidate, pass_fail_pairs, read
from normbt_plugin.stats import distance_bins, pair_distance

MARGIN = 0.03  # "no difference": the 90% interval inside +-MARGIN (pre-registered)
NAME = re.compile(r"(?P<arm>[\w.]+)-(?P<loss>[\w.]+)-seed(?P<seed>\d+)$")


@dataclass
class Scores:
    """One RM's scores of every parsed candidate, and its pass-over-fail pairs within a problem."""

    rm: str
    scores: dict[str, dict[int, float]]  # task_id -> sample -> score
    pairs: list[tuple[str, int, int, float]]  # (task_id, passing sample, failing sample, distance)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def read(cls, path: Path) -> Scores:
        raw = json.loads(path.read_text())
        scores = {t: {int(k): v for k, v in s.items()} for t, s in raw["scores"].items()}
        return cls(raw["rm"], scores, [tuple(p) for p in raw["pairs"]])


def score(rm: str, candidates: list[Candidate], batch_size: int = 16, max_len: int = 512) -> Scores:
    """The RM's score of every parsed candidate, read as the HumanEval pairs are (the problem's
    ``rm_prompt``, the function without its docstring), and every pass-over-fail pair within a problem
    with its final-layer distance."""
    from normbt_plugin.rm_evaluation.humaneval import problems
    from normbt_plugin.rm_evaluation.scoring import RewardScorer

    problem = {p.task_id: p for p in problems()}
    scorer = RewardScorer(rm, batch_size=batch_size, max_len=max_len)
    parsed = [c for c in candidates if c.response is not None]
    texts = [scorer.format(problem[c.task_id].rm_prompt, c.response) for c in parsed]
    reward, hidden = scorer.score(texts, "scoring the candidates")
    scores: dict[str, dict[int, float]] = {}
    for c, r in zip(parsed, reward, strict=True):
        scores.setdefault(c.task_id, {})[c.sample] = float(r)
    index = pass_fail_pairs(parsed)
    good, bad = (torch.from_numpy(hidden[[pair[k] for pair in index]]) for k in (0, 1))
    distance = pair_distance(good, bad).tolist()
    pairs = [(parsed[i].task_id, parsed[i].sample, parsed[j].sample, d)
             for (i, j), d in zip(index, distance, strict=True)]  # fmt: skip
    return Scores(rm, scores, pairs)


def picks(s: Scores, candidates: list[Candidate], tasks: list[str]) -> np.ndarray:
    """1 where the RM's pick passes, per task (the best score among parsed candidates, ties to the
    lowest sample; none parsed: 0)."""
    passed = {(c.task_id, c.sample): c.passed for c in candidates}
    out = np.zeros(len(tasks))
    for i, task in enumerate(tasks):
        scored = s.scores.get(task, {})
        if scored:
            best = min(scored, key=lambda k: (-scored[k], k))
            out[i] = passed[(task, best)]
    return out


def pairwise(s: Scores, tasks: set[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per pass-over-fail pair of ``tasks``: 1 if the passing program scores higher (ties 1/2), and the
    pair's representation distance."""
    rows = [p for p in s.pairs if p[0] in tasks]
    correct = np.array([np.sign(s.scores[t][g] - s.scores[t][b]) / 2 + 0.5 for t, g, b, _ in rows])
    return correct, np.array([p[3] for p in rows])


def analyze(candidates: list[Candidate], split: dict[str, list[str]], files: list[Path]) -> dict:
    tasks = split["test"]
    runs: dict[tuple[str, str, int], Scores] = {}
    for f in files:
        match = NAME.match(f.name.removesuffix(".json"))
        if not match:
            raise SystemExit(f"{f}: name score files <arm>-<loss>-seed<k>.json")
        runs[(match["arm"], match["loss"], int(match["seed"]))] = Scores.read(f)
    picked = {run: picks(s, candidates, tasks) for run, s in runs.items()}
    out: dict = {"rms": {}, "effects": {}}
    for (arm, loss, seed), s in sorted(runs.items()):
        correct, distance = pairwise(s, set(tasks))
        out["rms"][f"{arm}-{loss}-seed{seed}"] = {
            "pick": float(picked[(arm, loss, seed)].mean()), "pairwise": float(correct.mean()),
            "by_distance": [asdict(b) for b in distance_bins(distance, correct, 5)],
        }  # fmt: skip
    for arm in sorted({a for a, _, _ in runs}):
        seeds = sorted(k for a, loss, k in runs if a == arm and loss == "normbt" and (a, "bt", k) in runs)
        if not seeds:
            continue
        diffs = np.array([picked[(arm, "normbt", k)] - picked[(arm, "bt", k)] for k in seeds])
        per_seed = diffs.mean(axis=1)
        boot = nested_bootstrap(diffs)
        sd = float(per_seed.std(ddof=1)) if len(seeds) > 1 else float("nan")
        effect = {"seeds": seeds, "mean": float(per_seed.mean()), "per_seed": per_seed.tolist(),
                  "ci95": boot[0.95], "ci90": boot[0.90]}  # fmt: skip
        effect["decision"] = decide(effect["mean"], boot[0.95], boot[0.90], MARGIN)
        if effect["decision"] == "inconclusive":
            effect["seeds_to_detect"] = seeds_needed(sd, abs(effect["mean"]))
        out["effects"][arm] = effect
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("score", help="one RM's scores of the candidates and its pass-over-fail pairs")
    s.add_argument("--rm", required=True)
    s.add_argument("--candidates", required=True, help="the candidates' folder (results/code-bon)")
    s.add_argument("--out", required=True, help="<arm>-<loss>-seed<k>.json")
    s.add_argument("--batch_size", type=int, default=16)
    s.add_argument("--max_len", type=int, default=512, help="tokens; 512 scores every candidate whole")
    a = sub.add_parser("analyze", help="picks, pairwise accuracy and the primary, NormBT minus BT")
    a.add_argument("--candidates", required=True)
    a.add_argument("--out", help="also write the analysis here (JSON)")
    a.add_argument("scores", nargs="+", help="score files, or folders of them")
    args = parser.parse_args()
    folder = Path(args.candidates)
    candidates = read(folder)
    if args.command == "score":
        score(args.rm, candidates, args.batch_size, args.max_len).write(Path(args.out))
        return print(f"wrote {args.out}")
    split = json.loads((folder / SPLIT).read_text())
    files = [f for a in map(Path, args.scores) for f in (sorted(a.glob("*.json")) if a.is_dir() else [a])]
    text = json.dumps(analyze(candidates, split, files), indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
