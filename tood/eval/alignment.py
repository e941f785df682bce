"""Table 6 measures of how well classification and localisation agree (TOOD_METHOD.md s.3).

Before NMS, per GT instance, over the predictions attributed to it (see
:func:`alignment_before_nms`): Pearson's r between the top-50 scores for the GT's class and
those predictions' IoU with the GT (PCC; Spearman's rho as a second column), and the mean IoU
of the top-10 (top10_iou). After NMS, per image: counts of correct, redundant and error detections.
All boxes are xyxy pixels; GTs and predictions must be in the same frame.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from tood.boxes import box_iou


# How PCC and top10_iou are computed, as recorded with every tracked run.
PCC_PROTOCOL = ("per instance: predictions attributed by max IoU over the image's GTs (IoU > 0), "
                "ranked by the NMS score of the GT's class; Pearson r of the top min(50, n), Spearman second; "
                "top10_iou over the top min(10, n); boxes clipped to the image")


class AlignmentSums(NamedTuple):
    """Running sums of one batch; add them up over batches.

    pcc_sum / spearman_sum: sums of r over the instances where r is defined (n_pcc of them:
    at least 2 attributed predictions, neither scores nor IoUs constant). iou_sum: sum over
    instances of the top-10 mean IoU (instances with no attributed prediction add 0).
    n_sum: sum of each instance's number of attributed predictions. pcc_image_sum /
    n_pcc_image: the whole-image reading (see :func:`alignment_before_nms`).
    """

    pcc_sum: float
    spearman_sum: float
    n_pcc: int
    iou_sum: float
    n_instances: int
    n_sum: int
    pcc_image_sum: float
    n_pcc_image: int


class DetectionCounts(NamedTuple):
    n_correct: int
    n_redundant: int
    n_error: int


def row_pearson(x: Tensor, y: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Row-wise Pearson r of ``(M, K)`` x and y over the entries where ``valid`` ``(M, K)``
    (default: all) -> ``(M,)`` r and ``(M,)`` bool defined.

    r is undefined with fewer than 2 valid entries or when the valid x or y of a row are
    constant; tested with max == min because a float mean of equal values can differ from
    them by an ulp and fake a tiny variance.
    """
    valid = torch.ones_like(x, dtype=torch.bool) if valid is None else valid
    inf = torch.tensor(float("inf"), dtype=x.dtype, device=x.device)
    span = lambda t: torch.where(valid, t, -inf).amax(1) > torch.where(valid, t, inf).amin(1)  # noqa: E731
    defined = (valid.sum(1) >= 2) & span(x) & span(y)  # (M,)
    w = valid.double()
    n = w.sum(1, keepdim=True).clamp(min=1)
    x, y = x.double() * w, y.double() * w
    dx = (x - x.sum(1, keepdim=True) / n) * w
    dy = (y - y.sum(1, keepdim=True) / n) * w
    denom = ((dx * dx).sum(1) * (dy * dy).sum(1)).sqrt()
    r = (dx * dy).sum(1) / denom.clamp(min=torch.finfo(torch.float64).tiny)
    return r.clamp(-1.0, 1.0), defined


def row_ranks(x: Tensor, valid: Tensor) -> Tensor:
    """Row-wise ranks 0..n-1 of ``(M, K)`` x among its valid entries (invalid ones rank last);
    ties are broken by position, which is exact for continuous scores and IoUs."""
    key = torch.where(valid, x.double(), torch.tensor(float("inf"), dtype=torch.float64, device=x.device))
    return key.argsort(dim=1, stable=True).argsort(dim=1, stable=True).double()


class InstancePredictions(NamedTuple):
    """Every valid GT instance of a batch (M of them, image-major) against every anchor.

    scores: ``(M, A)`` each anchor's score for the instance's class; ious: ``(M, A)`` IoU of
    each anchor's predicted box with the instance; attributed: ``(M, A)`` bool, the anchors
    whose box overlaps this instance most among the image's GTs (IoU > 0); n: ``(M,)`` their count.
    """

    scores: Tensor
    ious: Tensor
    attributed: Tensor
    n: Tensor


def instance_scores(cls_scores: Tensor, gt_labels: Tensor, gt_mask: Tensor) -> Tensor:
    """``(M, A)``: every anchor's score for each valid instance's class (instances image-major,
    as in :class:`InstancePredictions`)."""
    img, gt = gt_mask.nonzero(as_tuple=True)  # (M,), (M,) valid instances
    labels = gt_labels[img, gt].clamp(0, cls_scores.shape[-1] - 1)  # (M,)
    return cls_scores[img, :, labels].float()


def instance_predictions(cls_scores: Tensor, pred_boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, gt_mask: Tensor) -> InstancePredictions:
    """The per-instance view the alignment measures share; shapes as in :func:`alignment_before_nms`.
    Another score over the same boxes: ``inst._replace(scores=instance_scores(...))``
    (attribution depends on the boxes only)."""
    img, gt = gt_mask.nonzero(as_tuple=True)  # (M,), (M,) valid instances
    iou_all = box_iou(pred_boxes.float(), gt_boxes.float()).masked_fill(~gt_mask[:, None, :], -1.0)  # (B, A, G)
    best_iou, best_gt = iou_all.max(-1)  # (B, A)
    attributed = (best_gt[img] == gt[:, None]) & (best_iou[img] > 0)  # (M, A)
    ious = iou_all[img, :, gt]  # (M, A) IoU of every anchor's box with this GT
    return InstancePredictions(instance_scores(cls_scores, gt_labels, gt_mask), ious, attributed, attributed.sum(1))


def top_attributed(inst: InstancePredictions, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Each instance's attributed predictions in decreasing score order, the first
    ``min(k, A)``: ``(M, k)`` scores, IoUs and bool valid (False past the instance's n)."""
    scores, ious, attributed, n = inst
    k = min(k, scores.shape[1])
    ranked = scores.masked_fill(~attributed, -1.0)  # scores are >= 0: unattributed sort last
    top_i = ranked.topk(k, dim=1).indices  # (M, k)
    valid = torch.arange(k, device=n.device)[None, :] < n[:, None]  # (M, k)
    return scores.gather(1, top_i), ious.gather(1, top_i), valid


def alignment_before_nms(
    cls_scores: Tensor,
    pred_boxes: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_mask: Tensor,
    topk_pcc: int = 50,
    topk_iou: int = 10,
) -> AlignmentSums:
    """PCC (Pearson and Spearman) and top-k mean IoU sums for one batch, batched over instances.

    The paper's reading (TOOD_METHOD.md s.3): an instance's predictions are the anchors
    *attributed* to it -- those whose predicted box has its highest IoU with this GT among
    the image's valid GTs (IoU > 0). They are ranked by their score for the GT's class (the
    score NMS ranks by); PCC is Pearson's r between the top ``min(topk_pcc, n)`` scores and
    their IoUs with the GT, top10_iou the mean IoU of the top ``min(topk_iou, n)``. Ranking
    every anchor of the image instead mixes background and other objects of the same class
    into an instance's top-50: on 160-px proxy images (~540 anchors, a median object covers
    ~17 anchor points) that measures foreground/background contrast, not whether the
    best-scored boxes of an object are its best-localised ones. That whole-image reading is
    kept as ``pcc_image_sum`` for comparison.

    Args:
        cls_scores: ``(B, A, C)`` detection probabilities (the scores NMS ranks by).
        pred_boxes: ``(B, A, 4)`` decoded xyxy boxes (clipped to the image), same pixels as ``gt_boxes``.
        gt_boxes: ``(B, G, 4)`` xyxy; gt_labels ``(B, G)`` long; gt_mask ``(B, G)`` bool.
    """
    return instance_alignment(instance_predictions(cls_scores, pred_boxes, gt_boxes, gt_labels, gt_mask), topk_pcc, topk_iou)


def instance_alignment(inst: InstancePredictions, topk_pcc: int = 50, topk_iou: int = 10) -> AlignmentSums:
    """:func:`alignment_before_nms` on an already computed :func:`instance_predictions`."""
    if inst.n.numel() == 0:
        return AlignmentSums(0.0, 0.0, 0, 0.0, 0, 0, 0.0, 0)
    scores, ious, _, n = inst
    a = scores.shape[1]
    top_s, top_u, valid = top_attributed(inst, max(topk_pcc, topk_iou))  # (M, k)
    kp, ki = min(topk_pcc, a), min(topk_iou, a)
    in_pcc = valid[:, :kp]  # (M, kp)
    r, defined = row_pearson(top_s[:, :kp], top_u[:, :kp], in_pcc)
    rho, _ = row_pearson(row_ranks(top_s[:, :kp], in_pcc), row_ranks(top_u[:, :kp], in_pcc), in_pcc)
    in_iou = valid[:, :ki].double()  # (M, ki)
    top10 = (top_u[:, :ki].double() * in_iou).sum(1) / in_iou.sum(1).clamp(min=1)  # (M,)

    img_s, img_i = scores.topk(kp, dim=1)  # whole-image reading: every anchor, by score
    r_img, def_img = row_pearson(img_s, ious.gather(1, img_i))
    return AlignmentSums(
        pcc_sum=float(r[defined].sum()),
        spearman_sum=float(rho[defined].sum()),
        n_pcc=int(defined.sum()),
        iou_sum=float(top10.sum()),
        n_instances=int(n.numel()),
        n_sum=int(n.sum()),
        pcc_image_sum=float(r_img[def_img].sum()),
        n_pcc_image=int(def_img.sum()),
    )


def count_detection_types(
    det_boxes: Tensor,
    det_scores: Tensor,
    det_labels: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    pos_iou: float = 0.5,
    err_iou: float = 0.1,
) -> DetectionCounts:
    """Correct / redundant / error detections of one image after NMS.

    Detections are taken in decreasing score order (input order on ties). With IoU
    measured against GTs of the detection's own class only:
    - correct: IoU >= ``pos_iou`` with an unmatched GT; the highest-IoU such GT becomes matched;
    - redundant: no unmatched GT qualifies but IoU >= ``pos_iou`` with a matched one;
    - error: best IoU in (``err_iou``, ``pos_iou``).
    The paper states the error band without a class; this is the class-aware reading,
    consistent with correct/redundant. Detections whose best same-class IoU is
    <= ``err_iou`` (background, or a wrong class on an object) count in none of the three.

    Args:
        det_boxes: ``(N, 4)`` xyxy; det_scores ``(N,)``; det_labels ``(N,)`` long.
        gt_boxes: ``(G, 4)`` xyxy (valid GTs only, same pixels); gt_labels ``(G,)`` long.
    """
    if det_boxes.shape[0] == 0 or gt_boxes.shape[0] == 0:
        return DetectionCounts(0, 0, 0)
    same = det_labels[:, None].cpu() == gt_labels[None, :].cpu()  # (N, G)
    iou = box_iou(det_boxes.float(), gt_boxes.float()).cpu().masked_fill(~same, -1.0)  # (N, G)
    best = iou.max(1).values  # (N,)
    n_error = int(((best > err_iou) & (best < pos_iou)).sum())
    order = torch.sort(det_scores.cpu(), descending=True, stable=True).indices  # (N,)
    hits = order[best[order] >= pos_iou]  # correct or redundant, by score
    matched = torch.zeros(gt_boxes.shape[0], dtype=torch.bool)  # (G,)
    n_correct = 0
    for d in hits.tolist():  # greedy matching is sequential; <= max_per_img detections
        free = iou[d].masked_fill(matched, -1.0)  # (G,)
        j = int(free.argmax())
        if free[j] >= pos_iou:
            matched[j] = True
            n_correct += 1
    return DetectionCounts(n_correct, hits.numel() - n_correct, n_error)


@dataclass
class AlignmentAccumulator:
    """Accumulates the Table 6 measures over an evaluation run.

    Call :meth:`update_before_nms` once per batch with the raw per-anchor outputs and
    :meth:`update_after_nms` once per image with its final detections.
    """

    topk_pcc: int = 50
    topk_iou: int = 10
    pos_iou: float = 0.5
    err_iou: float = 0.1
    pcc_sum: float = 0.0
    spearman_sum: float = 0.0
    n_pcc: int = 0
    iou_sum: float = 0.0
    n_instances: int = 0
    n_sum: int = 0
    pcc_image_sum: float = 0.0
    n_pcc_image: int = 0
    n_correct: int = 0
    n_redundant: int = 0
    n_error: int = 0

    def update_before_nms(self, cls_scores: Tensor, pred_boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, gt_mask: Tensor) -> None:
        """Shapes as in :func:`alignment_before_nms`."""
        self.update_instances(instance_predictions(cls_scores, pred_boxes, gt_boxes, gt_labels, gt_mask))

    def update_instances(self, inst: InstancePredictions) -> None:
        """:meth:`update_before_nms` on an already computed :func:`instance_predictions`."""
        s = instance_alignment(inst, self.topk_pcc, self.topk_iou)
        for name, value in s._asdict().items():
            setattr(self, name, getattr(self, name) + value)

    def update_after_nms(self, det_boxes: Tensor, det_scores: Tensor, det_labels: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> None:
        """One image; shapes as in :func:`count_detection_types`."""
        c = count_detection_types(det_boxes, det_scores, det_labels, gt_boxes, gt_labels, self.pos_iou, self.err_iou)
        self.n_correct += c.n_correct
        self.n_redundant += c.n_redundant
        self.n_error += c.n_error

    def result(self) -> dict[str, float]:
        """PCC (Pearson, the paper's), PCC_spearman, top10_iou (0-1, nan without instances),
        the whole-image PCC_image, pcc_n_mean (attributed predictions per instance), the
        three counts and instance counts."""
        nan = float("nan")
        return {
            "PCC": self.pcc_sum / self.n_pcc if self.n_pcc else nan,
            "PCC_spearman": self.spearman_sum / self.n_pcc if self.n_pcc else nan,
            "top10_iou": self.iou_sum / self.n_instances if self.n_instances else nan,
            "PCC_image": self.pcc_image_sum / self.n_pcc_image if self.n_pcc_image else nan,
            "pcc_n_mean": self.n_sum / self.n_instances if self.n_instances else nan,
            "n_correct": self.n_correct,
            "n_redundant": self.n_redundant,
            "n_error": self.n_error,
            "n_instances": self.n_instances,
            "n_pcc_skipped": self.n_instances - self.n_pcc,
        }
