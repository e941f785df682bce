"""Diagnostics of the PCC measure: what an instance's ranked predictions look like beyond r.

Table 6's PCC (Pearson's r of an instance's top-50 scores with their IoUs) can move for
reasons other than alignment: the depth it reaches into an instance's predictions (on the
proxy a median instance has ~70 attributed predictions, so the top-50 is most of them),
how steeply a loss spreads the scores of well-placed boxes, and what the score is made
of (ATSS multiplies by centerness). These measures separate those readings. All are per
GT instance over its attributed predictions (:func:`tood.eval.alignment.instance_predictions`)
ranked by score, averaged over the instances where each is defined:

- ``PCC@k`` / ``spearman@k``: Pearson / Spearman over the top ``min(k, n)``, for each depth k;
- ``top1_iou``: IoU of the highest-scored prediction (the box NMS keeps);
  ``best_iou``: the best IoU any attributed prediction reaches; ``regret = best - top1``;
- ``n_good``: predictions with IoU >= ``good_iou``; ``n_confident``: scores >= half the top score;
  ``good_suppressed``: the share of the good ones scored below half the top score;
- ``concordance@k``: over pairs in the top-k whose IoUs differ by more than ``clear_gap``,
  the share the score orders the same way (ties in score count half). It ignores pairs
  whose IoU difference is within box noise, which Pearson's r does not.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from tood.eval.alignment import InstancePredictions, row_pearson, row_ranks, top_attributed

DEPTHS = (5, 10, 20, 50)


def instance_diagnostics(
    inst: InstancePredictions,
    depths: tuple[int, ...] = DEPTHS,
    good_iou: float = 0.7,
    clear_gap: float = 0.1,
    concordance_k: int = 50,
) -> dict[str, tuple[float, int]]:
    """Sums and counts of the measures above for one batch: ``name -> (sum over instances, instances)``."""
    out: dict[str, tuple[float, int]] = {}
    if inst.n.numel() == 0:
        return out
    kmax = max(max(depths), concordance_k)
    top_s, top_u, valid = top_attributed(inst, kmax)  # (M, k) score-ordered
    has = inst.n > 0  # (M,)

    def add(name: str, values: Tensor, defined: Tensor) -> None:
        out[name] = (float(values.double()[defined].sum()), int(defined.sum()))

    for k in depths:
        v = valid[:, :k]
        r, defined = row_pearson(top_s[:, :k], top_u[:, :k], v)
        rho, _ = row_pearson(row_ranks(top_s[:, :k], v), row_ranks(top_u[:, :k], v), v)
        add(f"PCC@{k}", r, defined)
        add(f"spearman@{k}", rho, defined)

    top1 = top_u[:, 0]  # (M,) the first is the highest-scored attributed prediction
    best = inst.ious.masked_fill(~inst.attributed, -1.0).amax(1)  # (M,)
    add("top1_iou", top1, has)
    add("best_iou", best, has)
    add("regret", best - top1, has)

    att = inst.attributed
    good = att & (inst.ious >= good_iou)  # (M, A)
    confident = att & (inst.scores >= 0.5 * top_s[:, :1])  # (M, A)
    add("n_good", good.sum(1), has)
    add("n_confident", confident.sum(1), has)
    n_good = good.sum(1)
    add("good_suppressed", (good & ~confident).sum(1) / n_good.clamp(min=1), n_good > 0)

    k = min(concordance_k, top_s.shape[1])
    s, u, v = top_s[:, :k].double(), top_u[:, :k].double(), valid[:, :k]
    du = u[:, :, None] - u[:, None, :]  # (M, k, k)
    ds = s[:, :, None] - s[:, None, :]
    upper = torch.ones(k, k, dtype=torch.bool, device=s.device).triu(1)  # each pair once
    clear = (du.abs() > clear_gap) & v[:, :, None] & v[:, None, :] & upper  # (M, k, k)
    agree = torch.where(ds == 0, 0.5, ((du > 0) == (ds > 0)).double())  # (M, k, k)
    n_clear = clear.sum((1, 2))  # (M,)
    add(f"concordance@{concordance_k}", (agree * clear).sum((1, 2)) / n_clear.clamp(min=1), n_clear > 0)
    return out


@dataclass
class DiagnosticsAccumulator:
    """Adds :func:`instance_diagnostics` over batches; :meth:`result` gives the means."""

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def update(self, inst: InstancePredictions, **kwargs) -> None:
        for name, (total, count) in instance_diagnostics(inst, **kwargs).items():
            self.sums[name] = self.sums.get(name, 0.0) + total
            self.counts[name] = self.counts.get(name, 0) + count

    def result(self) -> dict[str, float]:
        return {name: self.sums[name] / c if (c := self.counts[name]) else float("nan") for name in self.sums}
