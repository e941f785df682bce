"""Greedy non-maximum suppression in plain torch, with torchvision's semantics.

Boxes are ``xyxy`` in pixels. A box is suppressed when its IoU with an already kept,
higher-scored box of the same group is strictly greater than ``iou_threshold``. Kept
indices come back sorted by decreasing score; equal scores keep their input order.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from tood.boxes import box_iou

# Above this many boxes batched_nms runs group by group: one (N, N) matrix grows
# quadratically in time and memory while the groups (image x class) stay small.
_SINGLE_MATRIX_MAX = 1000
_ROW_CHUNK = 1024


def _score_order(scores: Tensor) -> Tensor:
    """Indices ``(N,)`` by decreasing score, input order among equal scores."""
    return torch.sort(scores, descending=True, stable=True).indices


def _greedy_keep(overlap: Tensor) -> Tensor:
    """Greedy pass over a boolean ``(N, N)`` matrix whose rows/columns are in score order.

    ``overlap[i, j]`` (only ``j > i`` is read) says box ``i`` suppresses box ``j`` if kept.
    Returns the kept positions ``(K,)`` long, ascending (= decreasing score).
    """
    over = overlap.cpu().numpy()
    removed = np.zeros(over.shape[0], dtype=bool)
    keep = []
    for i in range(over.shape[0]):  # sequential by nature; each step is one row OR
        if removed[i]:
            continue
        keep.append(i)
        removed |= over[i]
    return torch.as_tensor(keep, dtype=torch.long)


def _suppression_matrix(boxes: Tensor, iou_threshold: float, groups: Tensor | None) -> Tensor:
    """``(N, N)`` bool: IoU > threshold, same group, strictly upper triangular.

    Built in row chunks so the float IoU matrix never exists in full.
    """
    n = boxes.shape[0]
    rows = []
    cols = torch.arange(n, device=boxes.device)
    for start in range(0, n, _ROW_CHUNK):
        stop = min(start + _ROW_CHUNK, n)
        over = box_iou(boxes[start:stop], boxes) > iou_threshold  # (R, N)
        if groups is not None:
            over &= groups[start:stop, None] == groups[None, :]
        over &= cols[None, :] > torch.arange(start, stop, device=boxes.device)[:, None]
        rows.append(over)
    return torch.cat(rows, 0) if rows else torch.zeros(0, 0, dtype=torch.bool, device=boxes.device)


def _nms_sorted(boxes: Tensor, scores: Tensor, iou_threshold: float, groups: Tensor | None) -> Tensor:
    order = _score_order(scores)  # (N,)
    sorted_groups = groups[order] if groups is not None else None
    keep = _greedy_keep(_suppression_matrix(boxes[order].float(), iou_threshold, sorted_groups))
    return order[keep.to(order.device)]


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS over all boxes as one group.

    Args:
        boxes: ``(N, 4)`` xyxy.
        scores: ``(N,)``.
        iou_threshold: a box is dropped when IoU > this with a kept higher-scored box.
    Returns:
        ``(K,)`` long indices into ``boxes``, by decreasing score.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    return _nms_sorted(boxes, scores, iou_threshold, None)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Class-aware NMS: boxes with different ``idxs`` never suppress each other.

    torchvision separates groups by shifting each group's coordinates by
    ``idx * (max_coordinate + 1)``; with ``idx = image * C + label`` that offset reaches
    ~1e6 px, where float32 rounds coordinates to ~0.06 px and IoU near the threshold can
    flip. Masking the suppression matrix with ``idxs[i] == idxs[j]`` gives the same
    result exactly. Large inputs run group by group to bound memory.

    Args:
        boxes: ``(N, 4)`` xyxy.
        scores: ``(N,)``.
        idxs: ``(N,)`` integer group of each box (e.g. class, or image * C + class).
        iou_threshold: as in :func:`nms`.
    Returns:
        ``(K,)`` long indices into ``boxes``, by decreasing score (input order on ties).
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    if boxes.shape[0] <= _SINGLE_MATRIX_MAX:
        return _nms_sorted(boxes, scores, iou_threshold, idxs)
    keep_mask = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    for group in torch.unique(idxs):
        members = torch.nonzero(idxs == group).squeeze(1)  # ascending input order
        keep_mask[members[nms(boxes[members], scores[members], iou_threshold)]] = True
    kept = torch.nonzero(keep_mask).squeeze(1)  # ascending, so the stable sort keeps input order on ties
    return kept[_score_order(scores[kept])]
