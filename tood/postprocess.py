"""Model outputs -> detections: per-level top-k, score threshold, class-aware NMS, cap."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tood.boxes import clip_boxes
from tood.nms import batched_nms


@dataclass
class Detections:
    """Detections of one image: boxes ``(N, 4)`` xyxy, scores ``(N,)``, labels ``(N,)``."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor


def detection_scores(outputs: dict) -> Tensor:
    """Per-anchor class scores ``(B, A, C)`` used for ranking and NMS.

    ``sigmoid(cls_logits)`` (the aligned score for a T-head), times the centerness
    probability when the head has a centerness branch (ATSS/FCOS test-time rule).
    """
    scores = outputs["cls_logits"].float().sigmoid()  # (B, A, C)
    if outputs.get("centerness") is not None:
        scores = scores * outputs["centerness"].float().sigmoid()[..., None]
    return scores


@torch.no_grad()
def postprocess(
    outputs: dict,
    nms_pre: int = 1000,
    score_thr: float = 0.05,
    nms_iou: float = 0.6,
    max_per_img: int = 100,
    scale_factors: Tensor | None = None,
    orig_sizes: Tensor | None = None,
    img_sizes: Tensor | None = None,
) -> list[Detections]:
    """Detections for every image of a batch, in one batched pass.

    Args:
        outputs: model outputs (``cls_logits`` (B, A, C), ``boxes`` (B, A, 4) input pixels,
            optional ``centerness``, ``priors``).
        nms_pre: candidates kept per image and FPN level before NMS (by score).
        scale_factors: ``(B, 2)`` (w_scale, h_scale) of the resize; boxes are divided
            by them to return to original-image pixels.
        orig_sizes: ``(B, 2)`` (h, w) original sizes to clip to.
        img_sizes: ``(B, 2)`` (h, w) of the resized, un-padded input: boxes are clipped to
            it before top-k and NMS (as the reference does), so boxes reaching past the image
            border are compared by their visible part.
    """
    scores = detection_scores(outputs)  # (B, A, C)
    boxes = outputs["boxes"].float()  # (B, A, 4)
    if img_sizes is not None:
        boxes = clip_boxes(boxes, img_sizes)
    b, _, c = scores.shape
    img_idx, sel_scores, anchor, label = _candidates(scores, outputs["priors"], nms_pre, score_thr)
    sel_boxes = boxes[img_idx, anchor]  # (N, 4)
    keep = batched_nms(sel_boxes, sel_scores, img_idx * c + label, nms_iou)  # sorted by score
    keep = _cap_per_image(keep, img_idx, b, max_per_img)
    kept_img = img_idx[keep]
    out_boxes = _to_original(sel_boxes[keep], kept_img, scale_factors, orig_sizes)
    counts = torch.bincount(kept_img, minlength=b).tolist()
    return [
        Detections(boxes=bx, scores=sc, labels=lb)
        for bx, sc, lb in zip(out_boxes.split(counts), sel_scores[keep].split(counts), label[keep].split(counts))
    ]


def _candidates(scores: Tensor, priors: Any, nms_pre: int, score_thr: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The ``nms_pre`` best (prior, class) scores per image and FPN level, then those above
    ``score_thr``: (image index, score, prior index, class), each ``(N,)``."""
    b, _, c = scores.shape
    cand_scores, cand_anchor = [], []
    for sl in priors.level_slices():
        s = scores[:, sl, :].reshape(b, -1)  # (B, A_l * C)
        top_s, top_i = s.topk(min(nms_pre, s.shape[1]), dim=1)  # (B, k)
        cand_scores.append(top_s)
        cand_anchor.append(top_i + sl.start * c)  # flat (anchor * C + class) index
    flat_scores = torch.cat(cand_scores, 1)  # (B, K)
    flat_index = torch.cat(cand_anchor, 1)  # (B, K)
    img_idx, pos = (flat_scores > score_thr).nonzero(as_tuple=True)  # (N,), (N,)
    sel_index = flat_index[img_idx, pos]  # (N,)
    return img_idx, flat_scores[img_idx, pos], sel_index // c, sel_index % c


def _cap_per_image(keep: Tensor, img_idx: Tensor, num_images: int, max_per_img: int) -> Tensor:
    """``keep`` (score order) grouped by image, at most ``max_per_img`` per image, score order kept."""
    keep = keep[torch.sort(img_idx[keep], stable=True).indices]
    kept_img = img_idx[keep]
    counts = torch.bincount(kept_img, minlength=num_images)  # (B,)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(keep.numel(), device=keep.device) - starts[kept_img]
    return keep[rank < max_per_img]


def _to_original(boxes: Tensor, img: Tensor, scale_factors: Tensor | None, orig_sizes: Tensor | None) -> Tensor:
    """``boxes`` ``(N, 4)`` xyxy in input pixels -> original-image pixels (undo the resize of image
    ``img[i]``), clipped to the original size."""
    if scale_factors is not None:
        boxes = boxes / scale_factors.to(boxes)[img].repeat(1, 2)
    if orig_sizes is not None:
        wh = orig_sizes.to(boxes)[img].flip(-1).repeat(1, 2)  # (N, 4) (w, h, w, h)
        boxes = torch.minimum(boxes.clamp(min=0), wh)
    return boxes
