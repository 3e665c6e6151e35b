"""``policy_eval.json``: what ``normbt eval-policy --out`` writes (``policy_studies.eval_policy``)
and ``normbt compare --policy_eval`` and ``normbt bon-study`` read: every policy's samples judged by
the gold (and the true reward where the task has one), its KL to the reference, win rates, and the
best-of-N curves of the proxy reward models on the reference's samples."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from normbt_plugin.runs import files

POLICY_EVAL = "policy_eval.json"


@dataclass(kw_only=True)
class PerPrompt:
    """Per prompt, mean over its samples."""

    gold: list[float]
    kl: list[float]
    length: list[float]
    true: list[float] | None = None  # with --gold_fn


@dataclass
class Wins:
    win_rate: float
    per_prompt: list[float]  # 1 / 0 / 0.5: this policy's samples above / below / tied with the other's


@dataclass(kw_only=True)
class PolicyResult:
    path: str
    gold_mean: float
    kl: float  # mean over prompts of log pi - log pi_ref on the policy's own samples
    length: float
    truncated: float  # share of samples cut at max_new
    engine_logprob_gap: float | None  # vLLM's log-probs vs transformers' (temperature 1 only)
    per_prompt: PerPrompt
    gold_per_sample: list[list[float]]
    texts: list[list[str]]
    true_mean: float | None = None
    wins: dict[str, Wins]  # against each other policy ({} while it is filled in)


@dataclass(kw_only=True)
class RewardScale:
    """A proxy RM's rewards on the reference's samples, raw and as PPO normalises them."""

    mean: float
    std: float
    saved_mean: float | None  # what the RM's config holds (None: nothing saved)
    saved_std: float | None
    normalised_mean: float | None
    normalised_std: float | None


@dataclass
class Curve:
    mean: list[float]  # per N
    per_prompt: list[list[float]]  # [prompts, N]


@dataclass(kw_only=True)
class BestOfN:
    n: list[int]
    kl: list[float]  # the analytic KL bound of best-of-N per N
    prompts: int
    samples: int
    curves: dict[str, Curve]  # "oracle (gold)", each proxy, and "(true)" twins judged by the true reward
    gold_scores: list[list[float]]  # every sample's gold reward [prompts, samples]
    proxy_scores: dict[str, list[list[float]]]


@dataclass(kw_only=True)
class PolicyEval:
    reference: str
    gold: str  # the gold RM's path, or fn:<gold_fn> when the true reward is the gold
    gold_fn: str | None
    prompts: int
    samples: int
    max_new: int
    temperature: float
    seed: int
    tie_tol: float
    policies: dict[str, PolicyResult]
    proxy_scale: dict[str, RewardScale] = field(default_factory=dict)
    best_of_n: BestOfN | None = None

    @property
    def has_true(self) -> bool:
        return all(p.per_prompt.true is not None for p in self.policies.values())

    def write(self, folder: str | Path) -> Path:
        return files.write(self, Path(folder) / POLICY_EVAL, indent=None)

    @classmethod
    def read(cls, path: str | Path) -> PolicyEval:
        return files.read(cls, path, f"normbt eval-policy --out {Path(path).parent}")
