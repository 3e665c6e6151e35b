"""Pairwise reward-model losses and their registry. Depends on torch only.

Every loss is called as ``loss(chosen_reward, reject_reward, chosen_hidden, reject_hidden,
margin=None)`` with rewards ``[B]`` and the hidden states the value head reads ``[B, H]``, and
returns ``(scalar_loss, metrics)`` where ``metrics`` maps names to 0-d tensors for logging.
Nothing in a loss call waits for the device: the finite checks ride along as metrics and
``host_metrics(metrics)`` (one device-to-host transfer, at logging time) raises on them.

Registry (after verl's ``register_policy_loss``)::

    @register_loss("my_loss", options=MyOptions)
    class MyLoss(PreferenceLoss): ...

    loss = build_loss("normbt", beta=0.95)

Third-party packages register losses under the ``normbt_plugin.losses`` entry-point group
(``name = "pkg.module:LossClass"``); they are loaded on the first lookup.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from normbt_plugin import collectives
from normbt_plugin.options import add_options, from_args, option
from normbt_plugin.stats import DISTANCES, normbt_weight, pair_distance

ENTRY_POINT_GROUP = "normbt_plugin.losses"


@dataclass
class LossSpec:
    name: str
    factory: Callable[..., PreferenceLoss]
    options: type | None  # a dataclass whose fields are the loss's options (CLI: --<name>.<field>)
    doc: str
    aliases: tuple[str, ...] = ()


_REGISTRY: dict[str, LossSpec] = {}
_ALIASES: dict[str, str] = {}
_entry_points_loaded = False


def register_loss(
    name: str, *, options: type | None = None, aliases: tuple[str, ...] = ()
) -> Callable[[Callable[..., PreferenceLoss]], Callable[..., PreferenceLoss]]:
    """Class decorator: make a loss buildable by ``name`` (and by each alias)."""

    def decorator(factory: Callable[..., PreferenceLoss]) -> Callable[..., PreferenceLoss]:
        if name in _REGISTRY or name in _ALIASES:
            raise ValueError(f"loss {name!r} is already registered")
        if options is not None and not dataclasses.is_dataclass(options):
            raise TypeError(f"options of loss {name!r} must be a dataclass, got {options!r}")
        if options is not None and isinstance(factory, type) and issubclass(factory, PreferenceLoss):
            factory.Options = options  # the constructor's input: PreferenceLoss.__init__
        doc = (factory.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = LossSpec(name, factory, options, doc[0] if doc else "", tuple(aliases))
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


def unregister_loss(name: str) -> None:
    """Remove ``name`` and its aliases (tests, notebooks); unknown names are ignored."""
    _REGISTRY.pop(name, None)
    for alias in [a for a, target in _ALIASES.items() if target == name]:
        del _ALIASES[alias]


def registered_losses() -> list[LossSpec]:
    """Every registered loss (entry points included), by name; aliases are in each spec."""
    _load_entry_points()
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


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


def add_loss_arguments(parser: Any) -> None:
    """``--<loss>.<option>`` for every registered loss with options, one argument group each (a
    trainer's parser: OpenRLHF's train_rm, TRL's reward script); bools take true/false."""
    for spec in registered_losses():
        if spec.options is not None:
            group = parser.add_argument_group(f"{spec.name} loss options (loss {spec.name})", spec.doc)
            add_options(group, spec.options, prefix=f"{spec.name}.", bool_values=True)


def loss_options_from_args(spec: LossSpec, parsed: Any) -> dict[str, Any]:
    """The keyword options of ``spec``'s loss from its ``--<loss>.*`` flags (what ``add_loss_arguments``
    parsed; a flat or OpenRLHF's nested namespace): its options object and, for a loss built over
    another (NormBT's ``base``), that loss's own from ``--<base>.*``."""
    if spec.options is None:
        return {}
    options = from_args(spec.options, parsed, f"{spec.name}.")
    kwargs: dict[str, Any] = {"options": options}
    base = getattr(options, "base", None)
    if base is not None and (base_spec := loss_spec(base)).options is not None:
        kwargs["base_options"] = from_args(base_spec.options, parsed, f"{base_spec.name}.")
    return kwargs


def build_loss(name: str, **options: Any) -> PreferenceLoss:
    """Build the loss registered as ``name`` with keyword options (see each loss's Options)."""
    spec = loss_spec(name)
    return spec.factory(**options)


# --------------------------------------------------------------------------------------------
# Base class and the per-pair losses
# --------------------------------------------------------------------------------------------


def _check_inputs(chosen: Tensor, reject: Tensor) -> Tensor:
    """Shape check (host only) and the count of non-finite rewards (stays on the device)."""
    if chosen.shape != reject.shape or chosen.dim() != 1:
        raise ValueError(
            f"rewards must be two [B] tensors of one shape, got {tuple(chosen.shape)} and "
            f"{tuple(reject.shape)}"
        )
    return (~torch.isfinite(chosen)).sum() + (~torch.isfinite(reject)).sum()


NONFINITE_REWARDS = "nonfinite_rewards"
NONFINITE_HIDDEN = "normbt_nonfinite_hidden"
_CHECKS = {
    NONFINITE_REWARDS: "non-finite reward (NaN or inf) in the batch: the model has diverged or "
    "overflowed. Lower --adam.lr, check the data, or use --model.compute_fp32_loss_enable; "
    "resume from the last checkpoint with --ckpt.load_enable.",
    NONFINITE_HIDDEN: "non-finite hidden state (NaN or inf): the model has diverged or "
    "overflowed; NormBT's EMA was left unchanged. Lower --adam.lr or resume from a checkpoint.",
}


def host_metrics(metrics: dict[str, Tensor | float | list[Tensor | float]]) -> dict[str, Any]:
    """Metrics as Python floats (lists stay lists), in one device-to-host transfer.

    Raises FloatingPointError if a loss call saw non-finite rewards or hidden states; those
    check counts are not returned.
    """
    keys, flat = [], []
    for key, value in metrics.items():
        for v in value if isinstance(value, list) else [value]:
            keys.append(key)
            flat.append(v)
    tensors = [v.detach().reshape(()).double() for v in flat if isinstance(v, Tensor)]
    moved = iter(torch.stack(tensors).tolist() if tensors else [])  # the one transfer
    values = [next(moved) if isinstance(v, Tensor) else float(v) for v in flat]
    out: dict[str, Any] = {}
    for key, v in zip(keys, values, strict=True):
        if isinstance(metrics[key], list):
            out.setdefault(key, []).append(v)
        else:
            out[key] = v
    for key, message in _CHECKS.items():
        if key in out and (max(out[key]) if isinstance(out[key], list) else out[key]) > 0:
            raise FloatingPointError(message)
        out.pop(key, None)
    return out


class PreferenceLoss:
    """Base class: subclasses implement ``per_pair`` (unreduced loss, ``[B]``)."""

    #: whether the loss reads hidden states (the trainer may skip collecting them otherwise)
    needs_hidden: bool = False
    #: whether the loss uses the dataset's margin column
    uses_margin: bool = False
    #: the options dataclass (set by ``register_loss(..., options=)``); None: no options
    Options: type | None = None
    #: metric names that are states, not per-batch values: a step logs their latest value. The
    #: others reduce by name over micro-batches and ranks: ``*_min`` min, ``*_max`` max, else mean
    state_metrics: tuple[str, ...] = ()

    def __init__(self, options: Any = None, **values: Any) -> None:
        """``Loss(Loss.Options(x=1))`` or ``Loss(x=1)``: the options dataclass validates them."""
        self.training = True
        if self.Options is None and (options is not None or values):
            raise TypeError(f"{type(self).__name__} takes no options, got {sorted(values) or options!r}")
        self.options = options if options is not None or self.Options is None else self.Options(**values)

    def train(self, mode: bool = True) -> PreferenceLoss:
        """In eval mode stateful losses read their state but do not update it."""
        self.training = mode
        return self

    def per_pair(self, chosen: Tensor, reject: Tensor, margin: Tensor | None) -> Tensor:
        raise NotImplementedError

    def batch_term(self, chosen: Tensor, reject: Tensor) -> tuple[Tensor, dict[str, Tensor]] | None:
        """A term of the whole batch added to the mean pair loss (BSR's), with its metrics; None: none."""
        return None

    def __call__(
        self,
        chosen_reward: Tensor,
        reject_reward: Tensor,
        chosen_hidden: Tensor | None = None,
        reject_hidden: Tensor | None = None,
        margin: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        metrics = {NONFINITE_REWARDS: _check_inputs(chosen_reward, reject_reward)}
        loss = self.per_pair(chosen_reward, reject_reward, margin).mean()
        if (term := self.batch_term(chosen_reward, reject_reward)) is not None:
            loss = loss + term[0]
            metrics.update(term[1])
        return loss, metrics

    def step_by_optimizer(self) -> None:
        """A trainer's promise to call ``end_step()`` after each optimizer step (stateful losses then
        move their state per step, not per micro-batch)."""

    def end_step(self) -> None:
        """Called by the trainer after each optimizer step."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} is stateless, got state {sorted(state)}")


@register_loss("bt", aliases=("sigmoid",))
class BTLoss(PreferenceLoss):
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

    def __post_init__(self) -> None:
        if not 0.0 <= self.epsilon < 0.5:
            raise ValueError(f"label_smoothing epsilon must be in [0, 0.5), got {self.epsilon}")


@register_loss("label_smoothing", options=LabelSmoothingOptions)
class LabelSmoothingLoss(PreferenceLoss):
    """Conservative BT: -(1-e) log sigmoid(d) - e log sigmoid(-d)."""

    def per_pair(self, chosen: Tensor, reject: Tensor, margin: Tensor | None) -> Tensor:
        d, e = chosen - reject, self.options.epsilon
        return -(1 - e) * F.logsigmoid(d) - e * F.logsigmoid(-d)


@dataclass
class CenterOptions:
    coef: float = option(
        0.01, "weight of the centering term mean((r_c + r_r)^2), TRL's center_rewards_coefficient"
    )


@register_loss("center", options=CenterOptions)
class CenterLoss(BTLoss):
    """BT plus reward centering: + coef * (r_c + r_r)^2 per pair (TRL, Eisenstein et al.)."""

    def per_pair(self, chosen: Tensor, reject: Tensor, margin: Tensor | None) -> Tensor:
        return super().per_pair(chosen, reject, margin) + self.options.coef * (chosen + reject) ** 2


@dataclass
class BSROptions:
    coef: float = option(
        1e-3,
        "lambda of BSR's batch term lambda * B * mean(all 2B rewards)^2, B the pairs per loss call (a "
        "rank's micro-batch): the paper's code multiplies bsr_lambda (1e-3) by the per-device batch",
    )

    def __post_init__(self) -> None:
        if self.coef < 0:
            raise ValueError(f"bsr coef must be >= 0, got {self.coef}")


@register_loss("bsr", options=BSROptions)
class BSRLoss(BTLoss):
    """BT plus batch sum-to-zero regularisation: + coef * B * mean(r_c, r_r)^2 (Hong et al. 2025, BSR).

    arXiv 2505.07271, code LinkedIn-XFACT/RM-Robustness: loss = mean BT + bsr_lambda * B *
    mean(cat(r_c, r_r))^2 with bsr_lambda = 1e-3 scaled by the per-device batch size B. Here B is
    the pairs of one loss call (OpenRLHF's micro-batch on one rank), the mean that rank's rewards.
    """

    def batch_term(self, chosen: Tensor, reject: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        mean = torch.cat([chosen, reject]).mean()
        return self.options.coef * len(chosen) * mean.square(), {"bsr_reward_mean": mean.detach()}


# --------------------------------------------------------------------------------------------
# NormBT
# --------------------------------------------------------------------------------------------


@dataclass
class NormBTOptions:
    beta: float = option(0.9, "EMA decay of the mean pair distance mu")
    eps: float = option(1e-6, "stabiliser relative to mu: w = mu / (dist + eps * mu)")
    init: str = option("first_batch", "EMA start: 'first_batch' (mu_0 = its mean) or a number")
    update: str = option(
        "before",
        "'before': weight a batch with the mu it just updated; 'after': the previous mu",
        choices=["before", "after"],
    )
    distance: str = option(
        "l2",
        "'l2' (the paper), 'unit_l2' (L2 of the unit-normalised states) or 'cosine' (1 - cos)",
        choices=list(DISTANCES),
    )
    weight_cap: float = option(0.0, "cap on each pair's weight; 0 disables (the paper's setting)")
    use_ema: bool = option(True, "false: w = batch mean / dist (the paper's no-EMA ablation)")
    base: str = option(
        "bt",
        "the registered per-pair loss that is weighted (its own options: --<base>.*), e.g. label_smoothing",
    )
    sync: bool = option(True, "average distances over data-parallel ranks (same mu everywhere)")
    ema_every: str = option(
        "step",
        "'step': mu moves once per optimizer step, by all its pairs; 'call': at every micro-batch (the rule "
        "of the results committed before 2026-12-07)",
        choices=["step", "call"],
    )
    identical_tol: float = option(
        1e-3, "pairs with dist <= tol * mu count as identical: weight 1, not in the mean"
    )

    def __post_init__(self) -> None:
        """Every value checked here, once: by the constructor and by train_rm's parser."""
        if not 0.0 <= self.beta < 1.0:
            raise ValueError(f"normbt beta must be in [0, 1), got {self.beta}")
        if self.eps <= 0:
            raise ValueError(f"normbt eps must be > 0, got {self.eps}")
        if self.update not in ("before", "after"):
            raise ValueError(f"normbt update must be 'before' or 'after', got {self.update!r}")
        if self.ema_every not in ("step", "call"):
            raise ValueError(f"normbt ema_every must be 'step' or 'call', got {self.ema_every!r}")
        if self.distance not in DISTANCES:
            raise ValueError(f"normbt distance must be 'l2', 'unit_l2' or 'cosine', got {self.distance!r}")
        if self.identical_tol < 0:
            raise ValueError(f"normbt identical_tol must be >= 0, got {self.identical_tol}")
        if self.weight_cap < 0:
            raise ValueError(f"normbt weight_cap must be >= 0 (0 disables), got {self.weight_cap}")
        self.base_spec()  # a registered per-pair loss
        self.init_mu()  # 'first_batch' or a positive number

    def base_spec(self) -> LossSpec:
        """The registered loss ``base`` names: one that weights per pair without hidden states."""
        try:
            spec = loss_spec(self.base)
        except KeyError as exc:
            raise ValueError(f"normbt base: {exc.args[0]}") from None
        factory = spec.factory
        if not (isinstance(factory, type) and issubclass(factory, PreferenceLoss)) or factory.needs_hidden:
            per_pair = [s.name for s in registered_losses() if _per_pair_loss(s)]
            raise ValueError(
                f"normbt base must be a per-pair loss without hidden states ({', '.join(per_pair)}), "
                f"got {self.base!r}"
            )
        return spec

    def init_mu(self) -> float | None:
        """The EMA's start: None for 'first_batch', else the number ``init`` names."""
        if self.init == "first_batch":
            return None
        try:
            mu = float(self.init)
        except ValueError:
            raise ValueError(
                f"normbt init must be 'first_batch' or a positive number, got {self.init!r}"
            ) from None
        if not mu > 0:
            raise ValueError(f"normbt init must be positive, got {self.init!r}")
        return mu


def _per_pair_loss(spec: LossSpec) -> bool:
    f = spec.factory
    return isinstance(f, type) and issubclass(f, PreferenceLoss) and not f.needs_hidden


@register_loss("normbt", options=NormBTOptions)
class NormBTLoss(PreferenceLoss):
    """NormBT: each pair's loss divided by its representation distance, rescaled by an EMA of the mean.

    dist_i = ||h_c,i - h_r,i|| (detached); mu_t = beta mu_{t-1} + (1 - beta) mean(dist), the mean
    over step t's pairs (every rank, every micro-batch: see ``step_by_optimizer``);
    w_i = mu_t / (dist_i + eps mu_t); L = mean_i w_i * base_loss_i.
    Pairs with (near) identical representations (dist <= identical_tol * mu, e.g. chosen ==
    rejected up to padding noise) have no real gradient to rescale: dividing by their distance
    would amplify numerical noise. They get weight 1 and stay out of the mean distance.

    The family: a variant overrides ``weights(dist, mu)`` and registers with an options class
    that extends ``NormBTOptions`` (``PartialNormBTLoss`` below); the distances, the EMA, its sync
    over ranks, the identical pairs, the cap, the base loss and the checkpointed state are shared.
    """

    needs_hidden = True
    state_metrics = ("normbt_mu",)

    def __init__(
        self,
        options: NormBTOptions | None = None,
        *,
        base_options: Any = None,
        process_group: Any = None,
        **values: Any,
    ) -> None:
        """``base_options``: the base loss's options object (or a dict of them); default its defaults."""
        super().__init__(options, **values)
        o: NormBTOptions = self.options
        self.init_mu = o.init_mu()
        self.beta, self.eps, self.update, self.distance = o.beta, o.eps, o.update, o.distance
        self.weight_cap, self.use_ema, self.sync = o.weight_cap, o.use_ema, o.sync
        self.identical_tol = o.identical_tol
        self.process_group = process_group
        base = o.base_spec().factory
        if isinstance(base_options, dict):
            self.base: PreferenceLoss = base(**base_options)
        else:
            self.base = base(base_options)
        self.uses_margin = self.base.uses_margin
        # mu and the step count live on the loss's device (a NaN mu: not set yet), so a call never
        # waits for the device; ``mu`` and ``steps`` read them on the host for logs and checkpoints.
        self._mu: Tensor | None = None
        self._steps: Tensor | None = None
        self._pending: tuple[float | None, int] = (self.init_mu, 0)  # host state, moved on first use
        self._by_optimizer = False
        self._step_stats: Tensor | None = None  # [sum, count] of this optimizer step's distances so far

    def _state_on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if self._mu is None or self._mu.device != device:
            mu, steps = self._pending if self._mu is None else (self.mu, self.steps)
            self._mu = torch.tensor(math.nan if mu is None else mu, dtype=torch.float64, device=device)
            self._steps = torch.tensor(steps, dtype=torch.int64, device=device)
        return self._mu, self._steps

    @property
    def mu(self) -> float | None:
        """The EMA of the mean pair distance (None before the first training batch)."""
        if self._mu is None:
            return self._pending[0]
        value = self._mu.item()
        return None if math.isnan(value) else value

    @property
    def steps(self) -> int:
        """How many steps updated the EMA (optimizer steps in a trainer, else training calls)."""
        return self._pending[1] if self._steps is None else int(self._steps.item())

    def _global_stats(self, dist_: Tensor, valid: Tensor) -> Tensor:
        """Sum and count of the valid distances over all data-parallel ranks (float64 ``[2]``)."""
        stats = torch.stack([torch.where(valid, dist_, 0.0).double().sum(), valid.sum().double()])
        return collectives.all_reduce(stats, group=self.process_group) if self.sync else stats

    def _folded(self, mu: Tensor, step: Tensor) -> Tensor:
        """mu after a step whose valid distances sum and count to ``step``: the EMA's update (the
        step's mean where mu is unset); mu itself where the step has no valid pair."""
        mean = step[0] / step[1]
        updated = torch.where(mu.isnan(), mean, self.beta * mu + (1.0 - self.beta) * mean)
        return torch.where(step[1] > 0, updated, mu)

    def step_by_optimizer(self) -> None:
        """From now on mu moves once per optimizer step, at ``end_step()`` (which the trainer calls
        after each), by the mean over all of the step's pairs: the same data gives the same mu however
        it is split into micro-batches. Without it (a loss used on its own), or with ``ema_every='call'``,
        every call is a step."""
        self._by_optimizer = self.options.ema_every == "step"

    def end_step(self) -> None:
        """Fold the optimizer step's distances into mu (see ``step_by_optimizer``)."""
        if self._step_stats is None:
            return
        mu, steps = self._state_on(self._step_stats.device)
        self._mu, self._steps = self._folded(mu, self._step_stats), steps + (self._step_stats[1] > 0).long()
        self._step_stats = None

    def __call__(
        self,
        chosen_reward: Tensor,
        reject_reward: Tensor,
        chosen_hidden: Tensor | None = None,
        reject_hidden: Tensor | None = None,
        margin: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        nonfinite_rewards = _check_inputs(chosen_reward, reject_reward)
        if chosen_hidden is None or reject_hidden is None:
            raise ValueError("normbt needs the chosen and rejected hidden states ([B, H] each)")
        if chosen_hidden.shape != reject_hidden.shape or chosen_hidden.shape[0] != len(chosen_reward):
            raise ValueError(
                f"hidden states must be [B, H] with B = {len(chosen_reward)}, got "
                f"{tuple(chosen_hidden.shape)} and {tuple(reject_hidden.shape)}"
            )
        d = pair_distance(chosen_hidden, reject_hidden, self.distance)
        mu, steps = self._state_on(d.device)
        nonfinite_hidden = (~torch.isfinite(d)).sum()
        # before the first update, the identical-pair tolerance is relative to this batch's mean
        reference = torch.where(mu.isnan(), d.double().mean(), mu)
        valid = d > self.identical_tol * reference
        stats = self._global_stats(d, valid)  # [sum, count] of the valid distances, every rank
        batch_mean = stats[0] / stats[1]  # NaN where no pair is valid anywhere

        if self.training:  # a batch with a non-finite value or no valid pair leaves the EMA alone
            ok = (stats[1] > 0) & (nonfinite_hidden == 0) & (nonfinite_rewards == 0)
            step = torch.where(ok, stats, 0.0) + (0.0 if self._step_stats is None else self._step_stats)
            running, provisional = step[0] / step[1], self._folded(mu, step)  # the step so far
            if self._by_optimizer:
                self._step_stats = step
            else:  # every call is a step
                self._mu, self._steps = provisional, steps + (step[1] > 0).long()
        else:  # eval reads mu, never moves it
            running, provisional = batch_mean, mu
        if not self.use_ema:
            scale = running
        elif self.update == "after":
            scale = torch.where(mu.isnan(), provisional, mu)
        else:
            scale = provisional
        scale = torch.where(scale.isnan(), batch_mean, scale).float()  # eval before any training
        weight = torch.where(valid & ~scale.isnan(), self.weights(d, scale), torch.ones_like(d))
        if self.weight_cap > 0:
            weight = weight.clamp(max=self.weight_cap)

        per_pair = self.base.per_pair(chosen_reward, reject_reward, margin)
        loss = (weight.to(per_pair.dtype) * per_pair).mean()
        batch_metrics: dict[str, Tensor] = {}
        if (term := self.base.batch_term(chosen_reward, reject_reward)) is not None:
            loss, batch_metrics = loss + term[0], term[1]  # a batch term has no pair to weight
        metrics = {
            "normbt_mu": provisional,  # at a step's last call, the step's mu
            "normbt_dist_mean": d.mean(),
            "normbt_dist_min": d.min(),
            "normbt_dist_max": d.max(),
            "normbt_weight_mean": weight.mean(),
            "normbt_weight_min": weight.min(),
            "normbt_weight_max": weight.max(),
            "normbt_identical_pairs": (~valid).sum(),
            # the unweighted loss: comparable across steps and with a BT run (mu moves)
            "normbt_base_loss": per_pair.detach().float().mean(),
            NONFINITE_REWARDS: nonfinite_rewards,
            NONFINITE_HIDDEN: nonfinite_hidden,
            **batch_metrics,
        }
        return loss, metrics

    def weights(self, dist: Tensor, mu: Tensor) -> Tensor:
        """Each valid pair's weight from its distance ``[B]`` and the scale ``mu`` (0-d): the one
        place a variant changes. NormBT: mu / (dist + eps mu)."""
        return normbt_weight(dist, mu, self.eps)

    def state_dict(self) -> dict[str, Any]:
        return {"mu": self.mu, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = set(state) - {"mu", "steps"}
        if unknown:
            raise ValueError(f"unexpected NormBT state keys {sorted(unknown)}")
        mu = state.get("mu")
        self._pending = (None if mu is None else float(mu), int(state.get("steps", 0)))
        self._mu = self._steps = self._step_stats = None


# --------------------------------------------------------------------------------------------
# NormBT variants aimed at its cost on easy pairs (docs/results.md, "NormBT variants")
# --------------------------------------------------------------------------------------------


@dataclass
class PartialNormBTOptions(NormBTOptions):
    alpha: float = option(
        0.5, "how much of the normalisation: w = (mu / dist)^alpha (1: NormBT, toward 0: BT)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"normbt_partial alpha must be in (0, 1], got {self.alpha}")


@register_loss("normbt_partial", options=PartialNormBTOptions)
class PartialNormBTLoss(NormBTLoss):
    """NormBT in part: w = (mu / dist)^alpha, between BT (alpha -> 0) and NormBT (alpha = 1).

    Why: on SmolLM2 NormBT loses easy (coarse) pairs where the whole distance scale shrank. alpha < 1
    lifts far pairs' weights toward 1 and compresses the close pairs' up-weighting: a pair 10x closer
    than mu gets 10^alpha. The second is what acts there: NormBT's weights on the coarse-dominated
    training batches stay near 1, its closest pairs' reach ~19x (docs/results.md, "NormBT variants").
    """

    def weights(self, dist: Tensor, mu: Tensor) -> Tensor:
        return super().weights(dist, mu).pow(self.options.alpha)


@dataclass
class FloorNormBTOptions(NormBTOptions):
    floor: float = option(0.5, "least weight of a pair: w = max(mu / dist, floor) (0: NormBT)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.floor <= 1.0:
            raise ValueError(f"normbt_floor floor must be in [0, 1], got {self.floor}")


@register_loss("normbt_floor", options=FloorNormBTOptions)
class FloorNormBTLoss(NormBTLoss):
    """NormBT whose far pairs keep a floor of BT's gradient: w = max(mu / dist, floor).

    Why (the hypothesis it was registered on): NormBT's lost easy pairs are far ones whose weight fell
    toward 0; the floor keeps at least ``floor`` of their BT gradient, fine pairs untouched. On the
    SmolLM2 runs a floor of 0.5 rarely binds (docs/results.md, "NormBT variants").
    """

    def weights(self, dist: Tensor, mu: Tensor) -> Tensor:
        return super().weights(dist, mu).clamp(min=self.options.floor)
