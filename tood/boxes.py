"""Pure tensor box operations.

All boxes are ``xyxy`` in pixels unless a docstring says otherwise. Every function
accepts arbitrary leading batch dimensions where it says ``(..., 4)``.
"""
from __future__ import annotations

import torch
from torch import Tensor

DELTA_STDS = (0.1, 0.1, 0.2, 0.2)
_EPS = 1e-6


def box_area(boxes: Tensor) -> Tensor:
    """Area of ``(..., 4)`` xyxy boxes -> ``(...)``; degenerate boxes get 0."""
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = _EPS) -> Tensor:
    """Pairwise IoU.

    Args:
        boxes1: ``(..., N, 4)`` xyxy.
        boxes2: ``(..., M, 4)`` xyxy, same leading dims as ``boxes1`` (broadcastable).
    Returns:
        ``(..., N, M)`` IoU in [0, 1].
    """
    area1 = box_area(boxes1)  # (..., N)
    area2 = box_area(boxes2)  # (..., M)
    lt = torch.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])  # (..., N, M, 2)
    rb = torch.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])  # (..., N, M, 2)
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]  # (..., N, M)
    union = area1[..., :, None] + area2[..., None, :] - inter
    return inter / union.clamp(min=eps)


def aligned_iou(boxes1: Tensor, boxes2: Tensor, eps: float = _EPS) -> Tensor:
    """Element-wise IoU of ``(..., 4)`` and ``(..., 4)`` boxes -> ``(...)``."""
    lt = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    rb = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(boxes1) + box_area(boxes2) - inter
    return inter / union.clamp(min=eps)


def aligned_giou(boxes1: Tensor, boxes2: Tensor, eps: float = _EPS) -> Tensor:
    """Element-wise generalised IoU of ``(..., 4)`` xyxy boxes -> ``(...)`` in [-1, 1]."""
    lt = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    rb = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = (box_area(boxes1) + box_area(boxes2) - inter).clamp(min=eps)
    iou = inter / union
    enc_lt = torch.minimum(boxes1[..., :2], boxes2[..., :2])
    enc_rb = torch.maximum(boxes1[..., 2:], boxes2[..., 2:])
    enc_wh = (enc_rb - enc_lt).clamp(min=0)
    enclose = (enc_wh[..., 0] * enc_wh[..., 1]).clamp(min=eps)
    return iou - (enclose - union) / enclose


def box_centers(boxes: Tensor) -> Tensor:
    """Centres ``(..., 2)`` as (x, y) of ``(..., 4)`` xyxy boxes."""
    return (boxes[..., :2] + boxes[..., 2:]) * 0.5


def distance2bbox(points: Tensor, distance: Tensor, max_shape: tuple[int, int] | None = None) -> Tensor:
    """Decode (left, top, right, bottom) distances from points into xyxy boxes.

    Args:
        points: ``(..., 2)`` (x, y), broadcastable against ``distance``.
        distance: ``(..., 4)`` non-negative distances, same units as ``points``.
        max_shape: optional (height, width) to clip the boxes to.
    """
    x1 = points[..., 0] - distance[..., 0]
    y1 = points[..., 1] - distance[..., 1]
    x2 = points[..., 0] + distance[..., 2]
    y2 = points[..., 1] + distance[..., 3]
    boxes = torch.stack([x1, y1, x2, y2], dim=-1)
    if max_shape is not None:
        h, w = max_shape
        boxes = torch.stack(
            [boxes[..., 0].clamp(0, w), boxes[..., 1].clamp(0, h), boxes[..., 2].clamp(0, w), boxes[..., 3].clamp(0, h)],
            dim=-1,
        )
    return boxes


def bbox2distance(points: Tensor, boxes: Tensor) -> Tensor:
    """Inverse of :func:`distance2bbox`: ``(..., 2)`` points, ``(..., 4)`` xyxy -> ``(..., 4)`` ltrb."""
    return torch.stack(
        [
            points[..., 0] - boxes[..., 0],
            points[..., 1] - boxes[..., 1],
            boxes[..., 2] - points[..., 0],
            boxes[..., 3] - points[..., 1],
        ],
        dim=-1,
    )


def delta_encode(anchors: Tensor, boxes: Tensor, stds: tuple[float, ...] = DELTA_STDS) -> Tensor:
    """Encode xyxy ``boxes`` relative to xyxy ``anchors`` as (dx, dy, dw, dh) / stds (means 0).

    Shapes: ``(..., 4)`` and ``(..., 4)`` -> ``(..., 4)``.
    """
    aw = anchors[..., 2] - anchors[..., 0]
    ah = anchors[..., 3] - anchors[..., 1]
    ax = anchors[..., 0] + 0.5 * aw
    ay = anchors[..., 1] + 0.5 * ah
    gw = boxes[..., 2] - boxes[..., 0]
    gh = boxes[..., 3] - boxes[..., 1]
    gx = boxes[..., 0] + 0.5 * gw
    gy = boxes[..., 1] + 0.5 * gh
    deltas = torch.stack([(gx - ax) / aw, (gy - ay) / ah, torch.log(gw / aw), torch.log(gh / ah)], dim=-1)
    return deltas / deltas.new_tensor(stds)


def delta_decode(anchors: Tensor, deltas: Tensor, stds: tuple[float, ...] = DELTA_STDS, max_ratio: float = 16 / 1000) -> Tensor:
    """Decode (dx, dy, dw, dh) ``deltas`` against xyxy ``anchors`` into xyxy boxes.

    ``dw``/``dh`` are clamped to ``|log(max_ratio)|`` so exp() cannot overflow.
    Shapes: ``(..., 4)`` and ``(..., 4)`` -> ``(..., 4)``.
    """
    d = deltas * deltas.new_tensor(stds)
    limit = abs(float(torch.log(torch.tensor(max_ratio))))
    dw = d[..., 2].clamp(-limit, limit)
    dh = d[..., 3].clamp(-limit, limit)
    aw = anchors[..., 2] - anchors[..., 0]
    ah = anchors[..., 3] - anchors[..., 1]
    ax = anchors[..., 0] + 0.5 * aw
    ay = anchors[..., 1] + 0.5 * ah
    cx = ax + d[..., 0] * aw
    cy = ay + d[..., 1] * ah
    w = aw * dw.exp()
    h = ah * dh.exp()
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def clip_boxes(boxes: Tensor, sizes: Tensor) -> Tensor:
    """Clip ``(B, N, 4)`` xyxy boxes to per-image ``sizes`` ``(B, 2)`` (h, w), same pixels."""
    wh = sizes.to(boxes).flip(-1).repeat(1, 2)[:, None, :]  # (B, 1, 4) as (w, h, w, h)
    return torch.minimum(boxes.clamp(min=0), wh)
