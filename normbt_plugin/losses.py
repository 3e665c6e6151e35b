"""Pairwise reward-model losses and their registry. Depends on torch only.

Every loss is called as ``loss(chosen_reward, reject_reward, chosen_hidden, reject_hidden,
margin=None)`` with rewards ``[B]`` and the hidden states the value head reads ``[B, H]``, and
returns ``(scalar_loss, metrics)`` where ``metrics`` maps names to floats for logging.

Registry (after verl's ``register_policy_loss``)::

    @register_loss("my_loss", options=MyOptions)
    class MyLoss(PairwiseLoss): ...

    loss = build_loss("normbt", beta=0.95)

Third-party packages register losses under the ``normbt_plugin.losses`` entry-point group
(``name = "pkg.module:LossClass"``); they are loaded on the first lookup.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

ENTRY_POINT_GROUP = "normbt_plugin.losses"


@dataclass
class LossSpec:
    name: str
    factory: Callable[..., PairwiseLoss]
    options: type | None  # a dataclass whose fields are the loss's options (CLI: --<name>.<field>)
    doc: str


def option(default: Any, help: str) -> Any:
    """A loss option: a dataclass field whose help text shows in the launcher's --help."""
    return field(default=default, metadata={"help": help})


_REGISTRY: dict[str, LossSpec] = {}
_ALIASES: dict[str, str] = {}
_entry_points_loaded = False


def register_loss(
    name: str, *, options: type | None = None, aliases: tuple[str, ...] = ()
) -> Callable[[Callable[..., PairwiseLoss]], Callable[..., PairwiseLoss]]:
    """Class decorator: make a loss buildable by ``name`` (and by each alias)."""

    def decorator(factory: Callable[..., PairwiseLoss]) -> Callable[..., PairwiseLoss]:
        if name in _REGISTRY or name in _ALIASES:
            raise ValueError(f"loss {name!r} is already registered")
        if options is not None and not dataclasses.is_dataclass(options):
            raise TypeError(f"options of loss {name!r} must be a dataclass, got {options!r}")
        doc = (factory.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = LossSpec(name, factory, options, doc[0] if doc else "")
        for alias in aliases:
            _ALIASES[alias] = name
        return factory

    return decorator


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY or ep.name in _ALIASES:
            continue  # the module registered itself with the decorator, or a duplicate name
        try:
            target = ep.load()
        except Exception as exc:  # a broken third-party plugin must not hide the others
            raise ImportError(
                f"loss entry point {ep.name!r} ({ep.value}) in group {ENTRY_POINT_GROUP!r} "
                f"failed to import: {exc}"
            ) from exc
        if ep.name not in _REGISTRY:  # importing may have registered it already
            register_loss(ep.name, options=getattr(target, "Options", None))(target)


def available_losses() -> list[str]:
    """Registered loss names (aliases included), sorted."""
    _load_entry_points()
    return sorted([*_REGISTRY, *_ALIASES])


def resolve_loss_name(name: str) -> str:
    """Canonical name of ``name``; a clear ``KeyError`` listing the registered names if unknown."""
    _load_entry_points()
    canonical = _ALIASES.get(name, name)
    if canonical not in _REGISTRY:
        raise KeyError(
            f"unknown reward-model loss {name!r}; registered losses: "
            f"{', '.join(available_losses())}. Third-party losses register under the "
            f"{ENTRY_POINT_GROUP!r} entry-point group."
        )
    return canonical


def loss_spec(name: str) -> LossSpec:
    return _REGISTRY[resolve_loss_name(name)]


def build_loss(name: str, **options: Any) -> PairwiseLoss:
    """Build the loss registered as ``name`` with keyword options (see each loss's Options)."""
    spec = loss_spec(name)
    return spec.factory(**options)


# --------------------------------------------------------------------------------------------
# Base class and the per-pair losses
# --------------------------------------------------------------------------------------------


def _check_inputs(chosen: Tensor, reject: Tensor) -> None:
    if chosen.shape != reject.shape or chosen.dim() != 1:
        raise ValueError(
            f"rewards must be two [B] tensors of one shape, got {tuple(chosen.shape)} and "
            f"{tuple(reject.shape)}"
        )
    finite = torch.isfinite(chosen).all() & torch.isfinite(reject).all()
    if not bool(finite):
        raise FloatingPointError(
            "non-finite reward (NaN or inf) in the batch: the model has diverged or overflowed. "
            "Lower --adam.lr, check the data, or use --model.compute_fp32_loss_enable; "
            "resume from the last checkpoint with --ckpt.load_enable."
        )


class PairwiseLoss:
    """Base class: subclasses implement ``per_pair`` (unreduced loss, ``[B]``)."""

    #: whether the loss reads hidden states (the trainer may skip collecting them otherwise)
    needs_hidden: bool = False
    #: whether the loss uses the dataset's margin column
    uses_margin: bool = False

    def __init__(self) -> None:
        self.training = True

    def train(self, mode: bool = True) -> PairwiseLoss:
        """In eval mode stateful losses read their state but do not update it."""
        self.training = mode
        return self

    def per_pair(self, chosen: Tensor, reject: Tensor, margin: Tensor | None) -> Tensor:
        raise NotImplementedError

    def __call__(
        self,
        chosen_reward: Tensor,
        reject_reward: Tensor,
        chosen_hidden: Tensor | None = None,
        reject_hidden: Tensor | None = None,
        margin: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        _check_inputs(chosen_reward, reject_reward)
        return self.per_pair(chosen_reward, reject_reward, margin).mean(), {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} is stateless, got state {sorted(state)}")


@register_loss("bt", aliases=("sigmoid",))
class BTLoss(PairwiseLoss):
    """Bradley-Terry: -log sigmoid(r_c - r_r [- margin]); OpenRLHF's ``sigmoid`` (PairWiseLoss).

    As OpenRLHF's PairWiseLoss, a margin is subtracted when the trainer passes one (that is,
    with ``--model.margin_loss_enable``).
    """

    def per_pair(self, chosen: Tensor, reject: Tensor, margin: Tensor | None) -> Tensor:
        d = chosen - reject
        if margin is not None:
            d = d - margin
        return -F.logsigmoid(d)


@register_loss("logexp")
class LogExpLoss(BTLoss):
    """OpenRLHF's LogExpLoss: log(1 + exp(r_r - r_c)), the BT loss that ignores any margin."""

    def per_pair(self, chosen: Tensor, reject: Tensor, margin: Tensor | None) -> Tensor:
        return -F.logsigmoid(chosen - reject)


@register_loss("margin")
class MarginLoss(BTLoss):
    """Llama-2 margin BT: -log sigmoid(r_c - r_r - m), m from the dataset's ``margin`` column."""

    uses_margin = True

    def per_pair(self, chosen: Tensor, reject: Tensor, margin: Tensor | None) -> Tensor:
        if margin is None:
            raise ValueError(
                "the margin loss needs a margin per pair: add a 'margin' column to the data and "
                "pass --model.margin_loss_enable"
            )
        return super().per_pair(chosen, reject, margin.to(chosen.dtype))


@dataclass
class LabelSmoothingOptions:
    epsilon: float = option(0.1, "probability that a label is flipped (conservative BT)")


@register_loss("label_smoothing", options=LabelSmoothingOptions)
class LabelSmoothingLoss(PairwiseLoss):
    """Conservative BT: -(1-e) log sigmoid(d) - e log sigmoid(-d)."""

    def __init__(self, epsilon: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= epsilon < 0.5:
            raise ValueError(f"label_smoothing epsilon must be in [0, 0.5), got {epsilon}")
        self.epsilon = epsilon

    def per_pair(self, chosen: Tensor, reject: Tensor, margin: Tensor | None) -> Tensor:
        d = chosen - reject
        return -(1 - self.epsilon) * F.logsigmoid(d) - self.epsilon * F.logsigmoid(-d)


@dataclass
class CenterOptions:
    coef: float = option(
        0.01, "weight of the centering term mean((r_c + r_r)^2), TRL's center_rewards_coefficient"
    )


@register_loss("center", options=CenterOptions)
class CenterLoss(BTLoss):
    """BT plus reward centering: + coef * (r_c + r_r)^2 per pair (TRL, Eisenstein et al.)."""

    def __init__(self, coef: float = 0.01) -> None:
        super().__init__()
        self.coef = coef

    def per_pair(self, chosen: Tensor, reject: Tensor, margin: Tensor | None) -> Tensor:
        return super().per_pair(chosen, reject, margin) + self.coef * (chosen + reject) ** 2


# --------------------------------------------------------------------------------------------
# NormBT
# --------------------------------------------------------------------------------------------


def pair_distance(chosen_hidden: Tensor, reject_hidden: Tensor, kind: str = "l2") -> Tensor:
    """Detached per-pair representation distance in float32, ``[B]``: 'l2' or 'cosine'."""
    hc, hr = chosen_hidden.detach().float(), reject_hidden.detach().float()
    if kind == "l2":
        return torch.linalg.vector_norm(hc - hr, dim=-1)
    return 1.0 - F.cosine_similarity(hc, hr, dim=-1, eps=1e-12)


_NORMBT_BASES = ("bt", "margin", "label_smoothing", "center")


@dataclass
class NormBTOptions:
    beta: float = option(0.9, "EMA decay of the mean pair distance mu")
    eps: float = option(1e-6, "stabiliser relative to mu: w = mu / (dist + eps * mu)")
    init: str = option("first_batch", "EMA start: 'first_batch' (mu_0 = its mean) or a number")
    update: str = option(
        "before", "'before': weight a batch with the mu it just updated; 'after': the previous mu"
    )
    distance: str = option("l2", "'l2' (the paper) or 'cosine' (1 - cos(h_c, h_r))")
    weight_cap: float = option(0.0, "cap on each pair's weight; 0 disables (the paper's setting)")
    use_ema: bool = option(True, "false: w = batch mean / dist (the paper's no-EMA ablation)")
    base: str = option("bt", "per-pair loss that is weighted: bt, margin, label_smoothing, center")
    label_smoothing_epsilon: float = option(0.1, "epsilon when base is label_smoothing")
    center_coef: float = option(0.01, "coef when base is center")
    sync: bool = option(True, "average distances over data-parallel ranks (same mu everywhere)")
    identical_tol: float = option(
        1e-3, "pairs with dist <= tol * mu count as identical: weight 1, not in the mean"
    )


@register_loss("normbt", options=NormBTOptions)
class NormBTLoss(PairwiseLoss):
    """NormBT: each pair's loss divided by its representation distance, rescaled by an EMA of the mean.

    dist_i = ||h_c,i - h_r,i|| (detached); mu_t = beta mu_{t-1} + (1 - beta) mean(dist);
    w_i = mu_t / (dist_i + eps mu_t); L = mean_i w_i * base_loss_i.
    Pairs with (near) identical representations (dist <= identical_tol * mu, e.g. chosen ==
    rejected up to padding noise) have no real gradient to rescale: dividing by their distance
    would amplify numerical noise. They get weight 1 and stay out of the mean distance.
    """

    needs_hidden = True

    def __init__(
        self,
        beta: float = 0.9,
        eps: float = 1e-6,
        init: str | float = "first_batch",
        update: str = "before",
        distance: str = "l2",
        weight_cap: float = 0.0,
        use_ema: bool = True,
        base: str = "bt",
        label_smoothing_epsilon: float = 0.1,
        center_coef: float = 0.01,
        sync: bool = True,
        identical_tol: float = 1e-3,
        process_group: Any = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"normbt beta must be in [0, 1), got {beta}")
        if eps <= 0:
            raise ValueError(f"normbt eps must be > 0, got {eps}")
        if update not in ("before", "after"):
            raise ValueError(f"normbt update must be 'before' or 'after', got {update!r}")
        if distance not in ("l2", "cosine"):
            raise ValueError(f"normbt distance must be 'l2' or 'cosine', got {distance!r}")
        if identical_tol < 0:
            raise ValueError(f"normbt identical_tol must be >= 0, got {identical_tol}")
        if weight_cap < 0:
            raise ValueError(f"normbt weight_cap must be >= 0 (0 disables), got {weight_cap}")
        if base not in _NORMBT_BASES:
            raise ValueError(f"normbt base must be one of {', '.join(_NORMBT_BASES)}, got {base!r}")
        self.init_mu: float | None = None
        if init != "first_batch":
            try:
                self.init_mu = float(init)
            except ValueError:
                raise ValueError(
                    f"normbt init must be 'first_batch' or a positive number, got {init!r}"
                ) from None
            if not self.init_mu > 0:
                raise ValueError(f"normbt init must be positive, got {init!r}")
        self.beta, self.eps, self.update, self.distance = beta, eps, update, distance
        self.weight_cap, self.use_ema, self.sync = weight_cap, use_ema, sync
        self.identical_tol = identical_tol
        self.process_group = process_group
        base_options = {
            "label_smoothing": {"epsilon": label_smoothing_epsilon},
            "center": {"coef": center_coef},
        }.get(base, {})
        self.base: PairwiseLoss = build_loss(base, **base_options)
        self.uses_margin = self.base.uses_margin
        self.mu: float | None = self.init_mu  # python float: identical on every rank, cheap to save
        self.steps = 0

    def _global_mean(self, dist_: Tensor, valid: Tensor) -> tuple[float, int]:
        """Mean of the valid distances over all data-parallel ranks (sum and count reduced)."""
        stats = torch.stack([dist_[valid].double().sum(), valid.sum().double()])
        if self.sync and dist.is_available() and dist.is_initialized():
            if dist.get_world_size(self.process_group) > 1:
                dist.all_reduce(stats, group=self.process_group)
        total, count = stats.tolist()
        return (total / count if count > 0 else math.nan), int(count)

    def __call__(
        self,
        chosen_reward: Tensor,
        reject_reward: Tensor,
        chosen_hidden: Tensor | None = None,
        reject_hidden: Tensor | None = None,
        margin: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        _check_inputs(chosen_reward, reject_reward)
        if chosen_hidden is None or reject_hidden is None:
            raise ValueError("normbt needs the chosen and rejected hidden states ([B, H] each)")
        if chosen_hidden.shape != reject_hidden.shape or chosen_hidden.shape[0] != len(chosen_reward):
            raise ValueError(
                f"hidden states must be [B, H] with B = {len(chosen_reward)}, got "
                f"{tuple(chosen_hidden.shape)} and {tuple(reject_hidden.shape)}"
            )
        d = pair_distance(chosen_hidden, reject_hidden, self.distance)
        if not bool(torch.isfinite(d).all()):
            raise FloatingPointError(
                "non-finite hidden state (NaN or inf): the model has diverged or overflowed; "
                "NormBT's EMA was left unchanged. Lower --adam.lr or resume from a checkpoint."
            )
        reference = self.mu
        if reference is None:  # first batch: tolerance relative to the mean of all its pairs
            reference, _ = self._global_mean(d, torch.ones_like(d, dtype=torch.bool))
        valid = d > self.identical_tol * reference
        batch_mean, n_valid = self._global_mean(d, valid)

        mu_prev = self.mu
        if n_valid > 0 and self.training:
            if self.mu is None:
                self.mu = batch_mean
            else:
                self.mu = self.beta * self.mu + (1.0 - self.beta) * batch_mean
            self.steps += 1
        if not self.use_ema:
            scale = batch_mean
        elif self.update == "after" and mu_prev is not None:
            scale = mu_prev
        else:
            scale = self.mu if self.mu is not None else batch_mean
        if math.isnan(scale):  # no valid pair anywhere yet: plain base loss
            weight = torch.ones_like(d)
        else:
            weight = torch.where(valid, scale / (d + self.eps * scale), torch.ones_like(d))
            if self.weight_cap > 0:
                weight = weight.clamp(max=self.weight_cap)

        per_pair = self.base.per_pair(chosen_reward, reject_reward, margin)
        loss = (weight.to(per_pair.dtype) * per_pair).mean()

        # one host transfer for all the logged numbers
        summary = [d.mean(), d.min(), d.max(), weight.mean(), weight.min(), weight.max()]
        extra = [per_pair.detach().float().mean(), (~valid).sum().float()]
        stats = torch.stack([*summary, *extra]).tolist()
        metrics = {
            "normbt_mu": float(self.mu) if self.mu is not None else math.nan,
            "normbt_dist_mean": stats[0],
            "normbt_dist_min": stats[1],
            "normbt_dist_max": stats[2],
            "normbt_weight_mean": stats[3],
            "normbt_weight_min": stats[4],
            "normbt_weight_max": stats[5],
            "normbt_identical_pairs": stats[7],
            # the unweighted loss: comparable across steps and with a BT run (mu moves)
            "normbt_base_loss": stats[6],
        }
        return loss, metrics

    def state_dict(self) -> dict[str, Any]:
        return {"mu": self.mu, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = set(state) - {"mu", "steps"}
        if unknown:
            raise ValueError(f"unexpected NormBT state keys {sorted(unknown)}")
        self.mu = None if state.get("mu") is None else float(state["mu"])
        self.steps = int(state.get("steps", 0))
