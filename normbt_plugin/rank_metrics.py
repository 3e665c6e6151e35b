"""What the trainer's logs and eval read over all data-parallel ranks: torch.distributed only (core).

``reduce_metrics``: a step's loss metrics (collected per micro-batch) as one number each, the same
on every rank. ``gather_distance_bins``: eval accuracy by distance bin over every rank's pairs.
"""

from __future__ import annotations

import torch

from normbt_plugin import collectives
from normbt_plugin.stats import DistanceBin, distance_bins


def reduce_metrics(local: dict[str, list[float]], states: tuple[str, ...] = ()) -> dict[str, float]:
    """Per-micro-batch values of this rank -> one value per name over all ranks: ``*_min`` the
    minimum, ``*_max`` the maximum, a state (``states``: the loss's ``state_metrics``, equal on all
    ranks) its latest value, anything else the mean."""
    keys = sorted(local)
    mins = [k for k in keys if k.endswith("_min")]
    maxs = [k for k in keys if k.endswith("_max")]
    means = [k for k in keys if k not in mins and k not in maxs]
    out = {k: float(sum(local[k]) / len(local[k])) for k in means}
    out.update({k: float(min(local[k])) for k in mins})
    out.update({k: float(max(local[k])) for k in maxs})
    if (world := collectives.world_size()) > 1:  # means averaged over ranks; max as max; min as -max(-x)
        avg = collectives.all_reduce(torch.tensor([out[k] for k in means], dtype=torch.float64)) / world
        peak = torch.tensor([out[k] for k in maxs] + [-out[k] for k in mins], dtype=torch.float64)
        peak = collectives.all_reduce(peak, op="max")
        out.update(dict(zip(means, avg.tolist(), strict=True)))
        values = peak.tolist()
        out.update(dict(zip(maxs, values[: len(maxs)], strict=True)))
        out.update({k: -v for k, v in zip(mins, values[len(maxs) :], strict=True)})
    for k in states:
        if k in local:
            out[k] = float(local[k][-1])
    return out


def gather_distance_bins(pairs: list[tuple[torch.Tensor, torch.Tensor]], n_bins: int) -> list[DistanceBin]:
    """Accuracy by distance quantile bin over every rank's ``(distance, correct)`` batches."""
    if n_bins <= 0:
        return []
    if pairs:
        local = (torch.cat([d for d, _ in pairs]), torch.cat([c for _, c in pairs]))
    else:
        local = (torch.empty(0), torch.empty(0, dtype=torch.bool))
    gathered = collectives.all_gather_object(local)
    distances, correct = torch.cat([g[0] for g in gathered]), torch.cat([g[1] for g in gathered])
    return distance_bins(distances.double().numpy(), correct.double().numpy(), n_bins)


def format_bins(bins: list[DistanceBin]) -> list[str]:
    """The eval log's table of accuracy by distance bin."""
    lines = [
        "normbt-plugin: eval accuracy by representation-distance quantile bin",
        f"  {'bin':>3}  {'distance range':>21}  {'pairs':>6}  {'acc':>6}",
    ]
    lines += [f"  {i:>3}  {b.lo:>10.4g}-{b.hi:<10.4g}  {b.n:>6}  {b.acc:>6.3f}" for i, b in enumerate(bins)]
    return lines
