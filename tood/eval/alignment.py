"""Table 6 measures of how well classification and localisation agree (TOOD_METHOD.md s.3).

Before NMS, per GT instance: Pearson's r between the scores of the top-50 anchors for the
GT's class and those anchors' IoU with the GT (PCC), and the mean IoU of the top-10
(top10_iou). After NMS, per image: counts of correct, redundant and error detections.
All boxes are xyxy pixels; GTs and predictions must be in the same frame.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from tood.boxes import aligned_iou, box_iou


class AlignmentSums(NamedTuple):
    """Running sums of one batch; add them up over batches.

    pcc_sum: sum of r over instances where r is defined; n_pcc: how many those are.
    iou_sum: sum over instances of the top-k mean IoU; n_instances: all valid GTs.
    Instances skipped by PCC (constant scores or IoUs) = n_instances - n_pcc.
    """

    pcc_sum: float
    n_pcc: int
    iou_sum: float
    n_instances: int


class DetectionCounts(NamedTuple):
    n_correct: int
    n_redundant: int
    n_error: int


def _pearson(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Row-wise Pearson r of ``(M, K)`` x and y -> ``(M,)`` r and ``(M,)`` bool defined.

    r is undefined when a row of x or y is constant; tested with max == min because a
    float mean of equal values can differ from them by an ulp and fake a tiny variance.
    """
    defined = (x.amax(1) > x.amin(1)) & (y.amax(1) > y.amin(1))  # (M,)
    x, y = x.double(), y.double()
    dx = x - x.mean(1, keepdim=True)
    dy = y - y.mean(1, keepdim=True)
    denom = ((dx * dx).sum(1) * (dy * dy).sum(1)).sqrt()
    r = (dx * dy).sum(1) / denom.clamp(min=torch.finfo(torch.float64).tiny)
    return r.clamp(-1.0, 1.0), defined


def alignment_before_nms(
    cls_scores: Tensor,
    pred_boxes: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_mask: Tensor,
    topk_pcc: int = 50,
    topk_iou: int = 10,
) -> AlignmentSums:
    """PCC and top-k mean IoU sums for one batch, batched over all GT instances.

    For each valid GT, the anchors are ranked by their score for the GT's class over all
    FPN levels and the whole image (the paper's definition; anchors on other objects
    count too). PCC uses the ``topk_pcc`` best, top10_iou the ``topk_iou`` best.

    Args:
        cls_scores: ``(B, A, C)`` detection probabilities (the scores NMS ranks by).
        pred_boxes: ``(B, A, 4)`` decoded xyxy boxes, same pixels as ``gt_boxes``.
        gt_boxes: ``(B, G, 4)`` xyxy; gt_labels ``(B, G)`` long; gt_mask ``(B, G)`` bool.
    """
    b, a, c = cls_scores.shape
    img, gt = gt_mask.nonzero(as_tuple=True)  # (M,), (M,) valid instances
    if img.numel() == 0:
        return AlignmentSums(0.0, 0, 0.0, 0)
    labels = gt_labels[img, gt].clamp(0, c - 1)  # (M,)
    scores = cls_scores[img, :, labels].float()  # (M, A)
    k = min(max(topk_pcc, topk_iou), a)
    top_s, top_i = scores.topk(k, dim=1)  # (M, k), sorted by decreasing score
    boxes = pred_boxes[img[:, None], top_i].float()  # (M, k, 4)
    ious = aligned_iou(boxes, gt_boxes[img, gt][:, None, :].float())  # (M, k)
    kp, ki = min(topk_pcc, a), min(topk_iou, a)
    r, defined = _pearson(top_s[:, :kp], ious[:, :kp])  # (M,), (M,)
    return AlignmentSums(
        pcc_sum=float(r[defined].sum()),
        n_pcc=int(defined.sum()),
        iou_sum=float(ious[:, :ki].double().mean(1).sum()),
        n_instances=int(img.numel()),
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
    n_pcc: int = 0
    iou_sum: float = 0.0
    n_instances: int = 0
    n_correct: int = 0
    n_redundant: int = 0
    n_error: int = 0

    def update_before_nms(self, cls_scores: Tensor, pred_boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, gt_mask: Tensor) -> None:
        """Shapes as in :func:`alignment_before_nms`."""
        s = alignment_before_nms(cls_scores, pred_boxes, gt_boxes, gt_labels, gt_mask, self.topk_pcc, self.topk_iou)
        self.pcc_sum += s.pcc_sum
        self.n_pcc += s.n_pcc
        self.iou_sum += s.iou_sum
        self.n_instances += s.n_instances

    def update_after_nms(self, det_boxes: Tensor, det_scores: Tensor, det_labels: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> None:
        """One image; shapes as in :func:`count_detection_types`."""
        c = count_detection_types(det_boxes, det_scores, det_labels, gt_boxes, gt_labels, self.pos_iou, self.err_iou)
        self.n_correct += c.n_correct
        self.n_redundant += c.n_redundant
        self.n_error += c.n_error

    def result(self) -> dict[str, float]:
        """PCC and top10_iou (0-1, nan without instances), the three counts, instance counts."""
        nan = float("nan")
        return {
            "PCC": self.pcc_sum / self.n_pcc if self.n_pcc else nan,
            "top10_iou": self.iou_sum / self.n_instances if self.n_instances else nan,
            "n_correct": self.n_correct,
            "n_redundant": self.n_redundant,
            "n_error": self.n_error,
            "n_instances": self.n_instances,
            "n_pcc_skipped": self.n_instances - self.n_pcc,
        }
