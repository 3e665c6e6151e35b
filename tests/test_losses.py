"""The losses on their own (torch only): formulas, the gradient property, EMA, bad input."""

from __future__ import annotations

import math
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from normbt_plugin import available_losses, build_loss, register_loss, unregister_loss
from normbt_plugin import losses as losses_module
from normbt_plugin.losses import (
    FloorNormBTLoss,
    NormBTLoss,
    PartialNormBTLoss,
    PreferenceLoss,
    host_metrics,
    registered_losses,
    resolve_loss_name,
)


def pairs_at_distances(distances: torch.Tensor, error: torch.Tensor, w: torch.Tensor, seed: int = 0):
    """Hidden pairs with ||h_c - h_r|| = distances[i] and reward gap w.(h_c - h_r) = error[i]."""
    gen = torch.Generator().manual_seed(1000 + seed)  # not w's stream: rows must not be parallel to w
    b, h = len(distances), len(w)
    w_hat = w / w.norm()
    other = torch.randn(b, h, generator=gen, dtype=w.dtype)
    other = other - (other @ w_hat)[:, None] * w_hat  # orthogonal to w
    other = other / other.norm(dim=1, keepdim=True)
    along = error / w.norm()  # component along w_hat giving the wanted gap
    assert bool((along.abs() < distances).all()), "gap too large for this distance"
    across = (distances**2 - along**2).sqrt()
    delta = along[:, None] * w_hat + across[:, None] * other
    h_r = torch.randn(b, h, generator=gen, dtype=w.dtype)
    return h_r + delta, h_r


def per_pair_head_grads(loss_fn, h_c, h_r, w, margin=None) -> torch.Tensor:
    """Norm of each pair's gradient w.r.t. the value head, via one head copy per pair."""
    heads = w.repeat(len(h_c), 1).requires_grad_(True)
    chosen = (heads * h_c).sum(-1)
    reject = (heads * h_r).sum(-1)
    value, _ = loss_fn(chosen, reject, h_c, h_r, margin=margin)
    (grad,) = torch.autograd.grad(value, heads)
    return grad.norm(dim=1) * len(h_c)  # undo the batch mean


# --------------------------------------------------------------------- registry


def test_registry_names_aliases_and_unknown_name():
    names = available_losses()
    for name in ("bt", "sigmoid", "logexp", "margin", "label_smoothing", "center", "bsr", "normbt"):
        assert name in names
    assert resolve_loss_name("sigmoid") == "bt"
    with pytest.raises(KeyError) as err:
        build_loss("normbtt")
    message = str(err.value)
    assert "normbtt" in message and "normbt" in message and "label_smoothing" in message


def test_register_loss_decorator_and_duplicate_name():
    @register_loss("test_double_bt")
    class DoubleBT(PreferenceLoss):
        """Twice BT."""

        def per_pair(self, chosen, reject, margin):
            return -2 * F.logsigmoid(chosen - reject)

    try:
        value, _ = build_loss("test_double_bt")(torch.zeros(2), torch.zeros(2))
        assert value.item() == pytest.approx(2 * math.log(2))
        with pytest.raises(ValueError, match="already registered"):
            register_loss("test_double_bt")(DoubleBT)
    finally:
        unregister_loss("test_double_bt")


def test_third_party_loss_through_entry_point(tmp_path, monkeypatch):
    """A package registers a loss under the entry-point group, without touching the plugin."""
    pkg = tmp_path / "acme_losses.py"
    pkg.write_text(
        textwrap.dedent(
            '''
            import torch.nn.functional as F
            from normbt_plugin import PreferenceLoss

            class HingeLoss(PreferenceLoss):
                """Hinge on the reward gap."""

                def per_pair(self, chosen, reject, margin):
                    return F.relu(1 - (chosen - reject))
            '''
        )
    )
    dist_info = tmp_path / "acme_losses-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-losses\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        "[normbt_plugin.losses]\nacme_hinge = acme_losses:HingeLoss\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(losses_module, "_entry_points_loaded", False)
    try:
        assert "acme_hinge" in available_losses()
        value, _ = build_loss("acme_hinge")(torch.tensor([3.0, 0.0]), torch.tensor([0.0, 0.0]))
        assert value.item() == pytest.approx(0.5)
    finally:
        unregister_loss("acme_hinge")
        sys.modules.pop("acme_losses", None)


# --------------------------------------------------------------------- formulas


def test_baseline_formulas():
    c, r = torch.tensor([1.0, -0.5, 2.0]), torch.tensor([0.0, 0.5, 2.5])
    m = torch.tensor([0.3, 0.1, 1.0])
    d = c - r
    assert build_loss("bt")(c, r)[0].item() == pytest.approx((-F.logsigmoid(d)).mean().item())
    assert build_loss("sigmoid")(c, r, margin=m)[0].item() == pytest.approx(
        (-F.logsigmoid(d - m)).mean().item()
    )
    assert build_loss("logexp")(c, r, margin=m)[0].item() == pytest.approx(
        torch.log1p(torch.exp(r - c)).mean().item(), rel=1e-6
    )
    assert build_loss("margin")(c, r, margin=m)[0].item() == pytest.approx(
        (-F.logsigmoid(d - m)).mean().item()
    )
    ls = -(0.9 * F.logsigmoid(d) + 0.1 * F.logsigmoid(-d))
    assert build_loss("label_smoothing", epsilon=0.1)(c, r)[0].item() == pytest.approx(ls.mean().item())
    center = -F.logsigmoid(d) + 0.01 * (c + r) ** 2
    assert build_loss("center")(c, r)[0].item() == pytest.approx(center.mean().item())


def test_bsr_is_bt_plus_the_squared_batch_mean_scaled_by_the_batch():
    """BSR (arXiv 2505.07271; LinkedIn-XFACT/RM-Robustness reward_trainer.py): mean BT +
    bsr_lambda * B * mean(cat(r_c, r_r))^2, by hand on known numbers."""
    c = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    r = torch.tensor([0.0, -1.0], dtype=torch.float64)
    bt = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(-3.0))) / 2
    value, metrics = build_loss("bsr")(c, r)  # the paper's lambda 1e-3
    assert value.item() == pytest.approx(bt + 1e-3 * 2 * 0.5**2, abs=1e-12)
    assert host_metrics(metrics) == {"bsr_reward_mean": 0.5}
    value, _ = build_loss("bsr", coef=0.5)(c, r)
    assert value.item() == pytest.approx(bt + 0.5 * 2 * 0.25, abs=1e-12)
    (grad,) = torch.autograd.grad(value, c)  # d/dc_i of coef*B*mean^2 = coef*B*2*mean/(2B) = coef*mean
    expected = -torch.sigmoid(-(c - r)).detach() / 2 + 0.5 * 0.5
    torch.testing.assert_close(grad, expected)
    with pytest.raises(ValueError, match="bsr coef must be >= 0"):
        build_loss("bsr", coef=-1.0)


def test_matches_openrlhf_losses(openrlhf_patched):
    """bt/sigmoid and logexp give OpenRLHF 0.11.2's own PairWiseLoss / LogExpLoss values."""
    from openrlhf.models.loss import LogExpLoss, PairWiseLoss

    gen = torch.Generator().manual_seed(1)
    c, r, m = (torch.randn(16, generator=gen) for _ in range(3))
    torch.testing.assert_close(build_loss("sigmoid")(c, r, margin=m)[0], PairWiseLoss()(c, r, m))
    torch.testing.assert_close(build_loss("bt")(c, r)[0], PairWiseLoss()(c, r, None))
    torch.testing.assert_close(build_loss("logexp")(c, r, margin=m)[0], LogExpLoss()(c, r, m))


def test_margin_loss_without_margin_is_a_clear_error():
    with pytest.raises(ValueError, match="margin_loss_enable"):
        build_loss("margin")(torch.zeros(2), torch.zeros(2))


# --------------------------------------------------------------------- NormBT


def test_gradient_property_distance_vs_prediction_error():
    """BT's per-pair head gradient grows with distance (100x span); NormBT's follows the error only."""
    torch.manual_seed(0)
    w = torch.randn(32, dtype=torch.float64)
    distances = torch.logspace(-1, 1, 8, dtype=torch.float64)  # 0.1 ... 10: a 100x span
    same_error = torch.full((8,), -0.05, dtype=torch.float64)  # every pair equally misranked
    h_c, h_r = pairs_at_distances(distances, same_error, w)

    bt = per_pair_head_grads(build_loss("bt"), h_c, h_r, w)
    # exactly |sigmoid(d) - 1| * ||h_c - h_r||
    torch.testing.assert_close(bt, (1 - torch.sigmoid(same_error)) * distances, rtol=1e-4, atol=0)
    assert bt.max() / bt.min() > 90

    normbt = NormBTLoss()
    nb = per_pair_head_grads(normbt, h_c, h_r, w)
    assert nb.max() / nb.min() < 1 + 1e-4  # equal errors -> equal gradients, whatever the distance
    mu = normbt.mu
    torch.testing.assert_close(nb, mu * (1 - torch.sigmoid(same_error)), rtol=1e-4, atol=0)

    # now the error varies and the distance too: NormBT's gradient = mu * |sigmoid(d) - 1|
    errors = torch.linspace(-0.09, 0.09, 8, dtype=torch.float64)
    h_c, h_r = pairs_at_distances(distances.flip(0), errors, w, seed=1)
    normbt = NormBTLoss(init=2.0)
    nb = per_pair_head_grads(normbt, h_c, h_r, w)
    torch.testing.assert_close(nb, normbt.mu * (1 - torch.sigmoid(errors)), rtol=1e-4, atol=0)


def test_constant_distance_is_bt_times_constant_and_weights_settle_at_one():
    gen = torch.Generator().manual_seed(0)
    loss = NormBTLoss(beta=0.9)
    for _ in range(40):
        c, r = torch.randn(8, generator=gen), torch.randn(8, generator=gen)
        h_r = torch.randn(8, 16, generator=gen)
        delta = torch.randn(8, 16, generator=gen)
        h_c = h_r + 3.0 * delta / delta.norm(dim=1, keepdim=True)  # every pair at distance 3
        value, metrics = loss(c, r, h_c, h_r)
        metrics = host_metrics(metrics)
        bt_value, _ = build_loss("bt")(c, r)
        ratio = value / bt_value
        assert ratio.item() == pytest.approx(metrics["normbt_weight_mean"], rel=1e-5)
        assert metrics["normbt_weight_min"] == pytest.approx(metrics["normbt_weight_max"], rel=1e-5)
    assert loss.mu == pytest.approx(3.0, rel=1e-5)
    assert metrics["normbt_weight_mean"] == pytest.approx(1.0, abs=1e-4)


def test_mean_weight_near_one_only_when_distances_concentrate():
    """The EMA scales the mean *distance*: mean(mu / d) = exp(s^2) > 1 for log-normal d (Jensen)."""
    gen = torch.Generator().manual_seed(0)
    for sigma, lo, hi in ((0.1, 0.99, 1.03), (1.0, 2.0, 3.6)):
        loss = NormBTLoss(beta=0.9)
        weights = []
        for _ in range(200):
            d = torch.exp(sigma * torch.randn(64, generator=gen))
            h_r = torch.zeros(64, 4)
            h_c = torch.zeros(64, 4)
            h_c[:, 0] = d
            metrics = host_metrics(loss(torch.zeros(64), torch.zeros(64), h_c, h_r)[1])
            weights.append(metrics["normbt_weight_mean"])
        settled = sum(weights[50:]) / len(weights[50:])
        assert lo < settled < hi, (sigma, settled)


def test_ema_update_order_init_and_no_ema():
    h_r = torch.zeros(2, 3)
    batches = [torch.tensor([1.0, 3.0]), torch.tensor([4.0, 4.0]), torch.tensor([2.0, 6.0])]

    def run(**kw):
        loss = NormBTLoss(beta=0.5, **kw)
        mus, weights = [], []
        for d in batches:
            h_c = torch.zeros(2, 3)
            h_c[:, 1] = d
            m = host_metrics(loss(torch.zeros(2), torch.zeros(2), h_c, h_r)[1])
            mus.append(loss.mu)
            weights.append(m["normbt_weight_min"])
        return mus, weights

    mus, weights = run()
    assert mus == pytest.approx([2.0, 3.0, 3.5])  # mu0 = first mean, then 0.5 mu + 0.5 mean
    assert weights[1] == pytest.approx(3.0 / (4.0 + 1e-6 * 3.0))
    mus, weights = run(update="after")
    assert weights[1] == pytest.approx(2.0 / 4.0, rel=1e-5)  # the previous mu
    mus, _ = run(init="10")
    assert mus == pytest.approx([6.0, 5.0, 4.5])
    _, weights = run(use_ema=False)
    assert weights[2] == pytest.approx(4.0 / 6.0, rel=1e-5)  # batch mean / dist


def test_cosine_distance_weight_cap_and_stacked_bases():
    gen = torch.Generator().manual_seed(0)
    h_c, h_r = torch.randn(6, 8, generator=gen), torch.randn(6, 8, generator=gen)
    h_c[0] = h_r[0] + 1e-2 * torch.randn(8, generator=gen)  # a near pair: large weight
    c, r, m = (torch.randn(6, generator=gen) for _ in range(3))

    cos = NormBTLoss(distance="cosine")
    metrics = host_metrics(cos(c, r, h_c, h_r)[1])
    cos_dist = 1 - F.cosine_similarity(h_c, h_r, dim=-1)
    # the near pair's cosine distance (~1e-5) is inside identical_tol * mu: not in the mean
    assert metrics["normbt_identical_pairs"] == 1.0
    assert cos.mu == pytest.approx(cos_dist[1:].mean().item(), rel=1e-5)
    # unit_l2 = sqrt(2 (1 - cos)): linear in the angle, so the near pair is no longer "identical"
    unit = NormBTLoss(distance="unit_l2")
    metrics = host_metrics(unit(c, r, h_c, h_r)[1])
    unit_dist = (2 * cos_dist).sqrt()
    assert metrics["normbt_identical_pairs"] == 0.0
    assert unit.mu == pytest.approx(unit_dist.mean().item(), rel=1e-4)
    assert metrics["normbt_dist_min"] == pytest.approx(unit_dist.min().item(), rel=1e-3)
    with pytest.raises(ValueError, match="'l2', 'unit_l2' or 'cosine'"):
        NormBTLoss(distance="manhattan")

    capped = host_metrics(NormBTLoss(weight_cap=2.0)(c, r, h_c, h_r)[1])
    uncapped = host_metrics(NormBTLoss()(c, r, h_c, h_r)[1])
    assert uncapped["normbt_weight_max"] > 2.0 and capped["normbt_weight_max"] == pytest.approx(2.0)

    for base, ref in (
        ("margin", build_loss("margin")),
        ("label_smoothing", build_loss("label_smoothing", epsilon=0.2)),
        ("center", build_loss("center", coef=0.05)),
        ("bsr", build_loss("bsr", coef=0.3)),
    ):
        loss = NormBTLoss(base=base, base_options=ref.options)
        value, _ = loss(c, r, h_c, h_r, margin=m)
        d = torch.linalg.vector_norm(h_c - h_r, dim=-1)
        weight = loss.mu / (d + 1e-6 * loss.mu)
        expected = (weight * ref.per_pair(c, r, m)).mean()
        if base == "bsr":  # the batch term, unweighted
            expected = expected + 0.3 * len(c) * torch.cat([c, r]).mean() ** 2
        torch.testing.assert_close(value, expected)
    with pytest.raises(ValueError, match="margin"):
        NormBTLoss(base="margin")(c, r, h_c, h_r)


def test_identical_pairs_are_safe():
    """chosen == rejected: weight 1, no gradient, and the mean distance ignores them."""
    h = torch.randn(4, 8)
    h_c, h_r = h.clone(), h.clone()
    h_c[2:] += torch.randn(2, 8)  # pairs 0, 1 identical; 2, 3 real
    h_c[1] += 1e-6  # identical up to numerical noise
    w = torch.randn(8)
    loss = NormBTLoss()
    grads = per_pair_head_grads(loss, h_c, h_r, w)
    real = torch.linalg.vector_norm(h_c[2:] - h_r[2:], dim=-1).mean().item()
    assert loss.mu == pytest.approx(real, rel=1e-5)
    assert grads[0].item() == 0.0 and grads[1].item() < 1e-5
    metrics = host_metrics(NormBTLoss()(torch.zeros(4), torch.zeros(4), h_c, h_r)[1])
    assert metrics["normbt_identical_pairs"] == 2.0
    # a batch of identical pairs only: plain BT, the EMA untouched
    only = NormBTLoss()
    value, metrics = only(torch.zeros(2), torch.zeros(2), h[:2], h[:2])
    assert value.item() == pytest.approx(math.log(2)) and only.mu is None


def test_non_finite_input_raises_and_keeps_state():
    loss = NormBTLoss()
    h_c, h_r = torch.randn(3, 4), torch.randn(3, 4)
    loss(torch.zeros(3), torch.zeros(3), h_c, h_r)
    state = loss.state_dict()
    with pytest.raises(FloatingPointError, match="non-finite reward"):
        host_metrics(loss(torch.tensor([0.0, math.nan, 1.0]), torch.zeros(3), h_c, h_r)[1])
    bad = h_c.clone()
    bad[1, 2] = math.inf
    with pytest.raises(FloatingPointError, match="EMA was left unchanged"):
        host_metrics(loss(torch.zeros(3), torch.zeros(3), bad, h_r)[1])
    assert loss.state_dict() == state
    with pytest.raises(FloatingPointError):
        host_metrics(build_loss("bt")(torch.tensor([math.nan]), torch.zeros(1))[1])


def test_state_dict_roundtrip_and_eval_mode():
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 8, generator=gen), torch.randn(4, 8, generator=gen)) for _ in range(6)]
    a = NormBTLoss()
    for h_c, h_r in batches[:3]:
        a(torch.zeros(4), torch.zeros(4), h_c, h_r)
    b = NormBTLoss()
    b.load_state_dict(a.state_dict())
    a.train(False)
    a(torch.zeros(4), torch.zeros(4), *batches[5])  # eval: reads mu, does not update it
    assert a.mu == b.mu
    a.train(True)
    for h_c, h_r in batches[3:]:
        va, _ = a(torch.ones(4), torch.zeros(4), h_c, h_r)
        vb, _ = b(torch.ones(4), torch.zeros(4), h_c, h_r)
        assert va.item() == vb.item() and a.mu == b.mu
    with pytest.raises(ValueError, match="unexpected"):
        b.load_state_dict({"mu": 1.0, "sigma": 2.0})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"beta": 1.0}, "beta"),
        ({"eps": 0.0}, "eps"),
        ({"update": "later"}, "update"),
        ({"distance": "l1"}, "distance"),
        ({"init": "zero"}, "init"),
        ({"base": "normbt"}, "base"),
        ({"base": "normbt_floor"}, "per-pair loss"),
        ({"base": "nonesuch"}, "unknown reward-model loss"),
        ({"weight_cap": -1.0}, "weight_cap"),
    ],
)
def test_bad_options_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NormBTLoss(**kwargs)


# every registered loss, and NormBT on each per-pair loss as its base
PER_PAIR = [s.name for s in registered_losses() if not s.factory.needs_hidden]
DEVICE_FREE = [(spec.name, {}) for spec in registered_losses()] + [
    ("normbt", {"base": base}) for base in PER_PAIR
]


@pytest.mark.parametrize(
    "name, options", DEVICE_FREE, ids=[f"{n}-{o.get('base', '')}" for n, o in DEVICE_FREE]
)
def test_a_loss_call_never_waits_for_the_device(name, options):
    """On the meta device any host read (.item(), .tolist(), bool()) raises: a call never syncs."""
    loss = build_loss(name, **options)
    meta = torch.device("meta")
    margin = torch.empty(8, device=meta) if loss.uses_margin else None
    for _ in range(2):  # the first batch (mu unset) and a later one
        c = torch.empty(8, device=meta, requires_grad=True)
        h = torch.empty(8, 16, device=meta)
        value, metrics = loss(c, torch.empty(8, device=meta), h, torch.empty(8, 16, device=meta), margin)
        value.backward()
        assert all(isinstance(v, torch.Tensor) and v.device == meta for v in metrics.values())


def test_step_metrics_reduce_by_name_and_a_losss_states_by_their_latest_value():
    """One rank's micro-batches: ``*_min`` min, ``*_max`` max, the loss's declared states their
    latest value (NormBT's mu), the rest the mean."""
    from normbt_plugin.rank_metrics import reduce_metrics

    local = {
        "loss": [1.0, 3.0],
        "normbt_dist_min": [0.5, 0.2],
        "normbt_dist_max": [2.0, 4.0],
        "normbt_mu": [1.0, 1.5],
    }
    states = build_loss("normbt").state_metrics
    assert states == ("normbt_mu",) and build_loss("bt").state_metrics == ()
    out = reduce_metrics(local, states)
    assert out == {"loss": 2.0, "normbt_dist_min": 0.2, "normbt_dist_max": 4.0, "normbt_mu": 1.5}
    assert reduce_metrics(local)["normbt_mu"] == 1.25  # not declared a state: averaged


# ---------------------------------------------------------------- the NormBT family


def test_a_variant_is_a_weights_override_with_its_own_options_and_flags(tmp_path):
    """A NormBT variant written as a user would: an options class extending NormBTOptions and a
    ``weights`` override. It gets the registry, the EMA and its state, bad options refused, and
    train_rm's ``--<name>.*`` flags (every NormBT option included, optional and choice types too)."""
    from dataclasses import dataclass

    from normbt_plugin.losses import NormBTOptions, loss_options_from_args
    from normbt_plugin.options import option
    from normbt_plugin.patches.openrlhf_0_11_2.cli_options import add_plugin_arguments

    @dataclass
    class SquaredOptions(NormBTOptions):
        power: float = option(2.0, "w = (mu / dist)^power")
        tag: str | None = option(None, "an optional string")
        mode: str = option("a", "a choice", choices=["a", "b"])

    @register_loss("test_squared", options=SquaredOptions)
    class Squared(NormBTLoss):
        def weights(self, dist, mu):
            return super().weights(dist, mu) ** self.options.power

    try:
        gen = torch.Generator().manual_seed(0)
        h_c, h_r = torch.randn(5, 8, generator=gen), torch.randn(5, 8, generator=gen)
        c, r = torch.randn(5, generator=gen), torch.randn(5, generator=gen)
        loss = build_loss("test_squared", power=2.0, base="label_smoothing", base_options={"epsilon": 0.2})
        value, metrics = loss(c, r, h_c, h_r)
        d = torch.linalg.vector_norm(h_c - h_r, dim=-1)
        w = (loss.mu / (d + 1e-6 * loss.mu)) ** 2
        smooth = build_loss("label_smoothing", epsilon=0.2).per_pair(c, r, None)
        torch.testing.assert_close(value, (w * smooth).mean())
        assert host_metrics(metrics)["normbt_weight_max"] == pytest.approx(w.max().item(), rel=1e-5)
        assert loss.state_dict() == {"mu": loss.mu, "steps": 1}
        with pytest.raises(ValueError, match="beta"):
            build_loss("test_squared", beta=2.0)

        import argparse

        parser = argparse.ArgumentParser()
        parser.add_argument("--model.loss_type")
        add_plugin_arguments(parser)
        parsed = parser.parse_args(
            ["--model.loss_type", "test_squared", "--test_squared.power", "3", "--test_squared.tag", "x",
             "--test_squared.mode", "b", "--test_squared.use_ema", "false", "--test_squared.base", "bsr",
             "--bsr.coef", "0.25"]
        )  # fmt: skip
        from normbt_plugin.losses import loss_spec

        kwargs = loss_options_from_args(loss_spec("test_squared"), parsed)
        o = kwargs["options"]
        assert (o.power, o.tag, o.mode, o.use_ema, o.base) == (3.0, "x", "b", False, "bsr")
        assert kwargs["base_options"].coef == 0.25
        with pytest.raises(SystemExit):  # a choice outside the list: argparse's own error
            parser.parse_args(["--model.loss_type", "test_squared", "--test_squared.mode", "c"])
    finally:
        unregister_loss("test_squared")


def test_partial_and_floor_variants_weights():
    """normbt_partial: (mu/d)^alpha (alpha 1 is NormBT); normbt_floor: max(mu/d, floor) (0 is NormBT);
    both between BT and NormBT on every pair, and their options refused outside their ranges."""
    gen = torch.Generator().manual_seed(1)
    h_c, h_r = torch.randn(6, 8, generator=gen), torch.randn(6, 8, generator=gen)
    h_c[0] = h_r[0] + 0.05 * torch.randn(8, generator=gen)  # a close pair
    h_c[1] = h_r[1] + 10 * torch.randn(8, generator=gen)  # a far pair
    c, r = torch.randn(6, generator=gen), torch.randn(6, generator=gen)

    def weights(loss):
        loss(c, r, h_c, h_r)
        d = torch.linalg.vector_norm(h_c - h_r, dim=-1)
        return loss.weights(d, torch.tensor(loss.mu)), loss.mu / (d + 1e-6 * loss.mu)

    w_partial, full = weights(PartialNormBTLoss(alpha=0.5))
    torch.testing.assert_close(w_partial, full.pow(0.5))
    w_floor, full = weights(FloorNormBTLoss(floor=0.5))
    torch.testing.assert_close(w_floor, full.clamp(min=0.5))
    assert full[1] < 0.5 and w_floor[1] == 0.5 and w_floor[0] == full[0]  # the far pair lifted only
    for variant in (w_partial, w_floor):  # between BT (1) and NormBT on every pair
        assert bool(((variant - 1) * (variant - full) <= 1e-6).all())
    torch.testing.assert_close(
        PartialNormBTLoss(alpha=1.0)(c, r, h_c, h_r)[0], NormBTLoss()(c, r, h_c, h_r)[0]
    )
    torch.testing.assert_close(FloorNormBTLoss(floor=0.0)(c, r, h_c, h_r)[0], NormBTLoss()(c, r, h_c, h_r)[0])
    for bad in ({"alpha": 0.0}, {"alpha": 1.5}):
        with pytest.raises(ValueError, match="alpha"):
            PartialNormBTLoss(**bad)
    with pytest.raises(ValueError, match="floor"):
        FloorNormBTLoss(floor=-0.1)


def test_variants_gradient_property():
    """The value head's per-pair gradient, equal errors over a 100x distance span: BT's is
    proportional to dist, NormBT's flat; normbt_partial's goes as mu^alpha dist^(1 - alpha), and
    normbt_floor's is NormBT's below mu / floor and floor x BT's beyond."""
    torch.manual_seed(0)
    w = torch.randn(32, dtype=torch.float64)
    distances = torch.logspace(-1, 1, 8, dtype=torch.float64)
    error = torch.full((8,), -0.05, dtype=torch.float64)
    h_c, h_r = pairs_at_distances(distances, error, w)
    sig = 1 - torch.sigmoid(error)

    partial = PartialNormBTLoss(alpha=0.5, init="2.0", update="after")
    got = per_pair_head_grads(partial, h_c, h_r, w)
    torch.testing.assert_close(got, 2.0**0.5 * distances**0.5 * sig, rtol=1e-4, atol=0)

    floor = FloorNormBTLoss(floor=0.5, init="2.0", update="after")
    got = per_pair_head_grads(floor, h_c, h_r, w)
    expected = torch.where(distances < 2.0 / 0.5, 2.0 * torch.ones_like(distances), 0.5 * distances) * sig
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=0)


@pytest.mark.parametrize("update", ["after", "before"])
def test_mu_follows_the_optimizer_step_not_the_micro_batch(update):
    """The same pairs as one batch a step, or as 4 micro-batches of 2 with ``end_step()`` after
    each optimizer step: the same mu after every step; with ``update='after'`` the same weights
    too (from the second step: the first has no previous mu), with 'before' the step's last
    micro-batch's weights (the earlier ones see the step's mean so far)."""
    gen = torch.Generator().manual_seed(3)
    steps = [(torch.randn(8, 16, generator=gen), torch.randn(8, 16, generator=gen) * 2) for _ in range(5)]
    whole, split = NormBTLoss(update=update), NormBTLoss(update=update)
    split.step_by_optimizer()
    for t, (h_c, h_r) in enumerate(steps):
        w_whole = host_metrics(whole(torch.zeros(8), torch.zeros(8), h_c, h_r)[1])
        w_split = [host_metrics(split(torch.zeros(2), torch.zeros(2), h_c[i : i + 2], h_r[i : i + 2])[1])
                   for i in range(0, 8, 2)]  # fmt: skip
        assert split.steps == t  # mu has not moved inside the step
        split.end_step()
        assert split.mu == pytest.approx(whole.mu, rel=1e-12) and split.steps == whole.steps == t + 1
        assert w_split[-1]["normbt_mu"] == pytest.approx(whole.mu, rel=1e-12)  # the logged mu
        last = w_split[-1]["normbt_weight_max"]
        if update == "after" and t > 0:
            assert max(m["normbt_weight_max"] for m in w_split) == pytest.approx(w_whole["normbt_weight_max"])
            assert min(m["normbt_weight_min"] for m in w_split) == pytest.approx(w_whole["normbt_weight_min"])
        elif update == "before":  # the last micro-batch sees the whole step's mean
            d = torch.linalg.vector_norm(h_c[6:] - h_r[6:], dim=-1)
            assert last == pytest.approx((whole.mu / (d + 1e-6 * whole.mu)).max().item(), rel=1e-6)
    state = split.state_dict()
    resumed = NormBTLoss(update=update)
    resumed.load_state_dict(state)
    assert resumed.mu == split.mu and resumed.steps == 5


def test_ema_every_call_is_the_earlier_rule():
    """``ema_every='call'``: a trainer's ``step_by_optimizer`` changes nothing, mu moves at every call
    (the rule the results committed before 2026-12-07 ran with)."""
    gen = torch.Generator().manual_seed(4)
    batches = [(torch.randn(2, 8, generator=gen), torch.randn(2, 8, generator=gen)) for _ in range(4)]
    per_call, plain = NormBTLoss(ema_every="call"), NormBTLoss()
    per_call.step_by_optimizer()
    for h_c, h_r in batches:
        per_call(torch.zeros(2), torch.zeros(2), h_c, h_r)
        plain(torch.zeros(2), torch.zeros(2), h_c, h_r)
    per_call.end_step()
    assert per_call.steps == plain.steps == 4 and per_call.mu == plain.mu
