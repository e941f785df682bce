"""Straightforward per-image, per-GT reference assigners (loops on purpose).

They restate each rule as plainly as possible, so that the batched assigners in
``tood.assigners`` can be checked against them, and they are the naive baseline
of ``benchmarks/bench_assign.py``.
"""
from __future__ import annotations

import torch

from tood.boxes import box_area, box_iou

EPS = 0.01


def _inside(point, box) -> bool:
    x, y = float(point[0]), float(point[1])
    return min(x - float(box[0]), y - float(box[1]), float(box[2]) - x, float(box[3]) - y) > EPS


def _result(num_classes, a, assigned, gts, labels, scores):
    """assigned: {anchor: gt}; scores: {anchor: soft target}."""
    out_labels = torch.full((a,), num_classes, dtype=torch.long)
    out_boxes = torch.zeros(a, 4)
    out_scores = torch.zeros(a)
    fg = torch.zeros(a, dtype=torch.bool)
    gt_index = torch.full((a,), -1, dtype=torch.long)
    for anchor, g in assigned.items():
        out_labels[anchor] = labels[g]
        out_boxes[anchor] = gts[g]
        out_scores[anchor] = scores[anchor]
        fg[anchor] = True
        gt_index[anchor] = g
    return out_labels, out_boxes, out_scores, fg, gt_index


def _resolve(claims, key, largest):
    """claims: {anchor: [gt, ...]} -> {anchor: gt} by the largest/smallest key[gt][anchor] (first wins ties)."""
    pick = {}
    for anchor, gts in claims.items():
        best = gts[0]
        for g in gts[1:]:
            k, kb = float(key(g, anchor)), float(key(best, anchor))
            if (k > kb) if largest else (k < kb):
                best = g
        pick[anchor] = best
    return pick


def tal_reference(priors, pred_scores, pred_boxes, gts, labels, num_classes, topk=13, alpha=1.0, beta=6.0, conflict="max_iou"):
    """One image: pred_scores (A, C), pred_boxes (A, 4), gts (G, 4), labels (G,)."""
    a = pred_boxes.shape[0]
    claims, ious, metrics = {}, [], []
    for g in range(len(gts)):
        iou = box_iou(gts[g : g + 1], pred_boxes)[0]  # (A,)
        t = pred_scores[:, labels[g]].pow(alpha) * iou.pow(beta)
        ious.append(iou)
        metrics.append(t)
        for anchor in torch.topk(t, min(topk, a)).indices.tolist():
            if t[anchor] > 0 and _inside(priors.points[anchor], gts[g]):
                claims.setdefault(anchor, []).append(g)
    if conflict == "max_iou":
        assigned = _resolve(claims, lambda g, anchor: ious[g][anchor], True)
    else:
        assigned = _resolve(claims, lambda g, anchor: box_area(gts[g]), False)
    scores = {}
    for g in set(assigned.values()):
        mine = [anchor for anchor, h in assigned.items() if h == g]
        max_t = max(float(metrics[g][x]) for x in mine)
        max_u = max(float(ious[g][x]) for x in mine)
        for x in mine:
            scores[x] = float(metrics[g][x]) / (max_t + 1e-7) * max_u
    return _result(num_classes, a, assigned, gts, labels, scores)


def atss_reference(priors, pred_boxes, gts, labels, num_classes, topk=9):
    a = pred_boxes.shape[0]
    claims, ious = {}, []
    for g in range(len(gts)):
        iou = box_iou(gts[g : g + 1], priors.anchors)[0]
        ious.append(iou)
        cx, cy = (gts[g, 0] + gts[g, 2]) / 2, (gts[g, 1] + gts[g, 3]) / 2
        cand = []
        for sl in priors.level_slices():
            d = ((priors.points[sl, 0] - cx) ** 2 + (priors.points[sl, 1] - cy) ** 2).sqrt()
            cand += (torch.topk(d, min(topk, sl.stop - sl.start), largest=False).indices + sl.start).tolist()
        cand_iou = iou[cand]
        thr = cand_iou.mean() + cand_iou.std()
        for anchor in cand:
            if iou[anchor] >= thr and _inside(priors.points[anchor], gts[g]):
                claims.setdefault(anchor, []).append(g)
    assigned = _resolve(claims, lambda g, anchor: ious[g][anchor], True)
    scores = {x: float(box_iou(pred_boxes[x : x + 1], gts[g : g + 1])[0, 0]) for x, g in assigned.items()}
    return _result(num_classes, a, assigned, gts, labels, scores)


def max_iou_reference(priors, pred_boxes, gts, labels, num_classes, pos=0.5, neg=0.4, min_pos=0.0):
    a = pred_boxes.shape[0]
    ious = box_iou(gts, priors.anchors)  # (G, A)
    assigned, ignore = {}, set()
    for anchor in range(a if len(gts) else 0):
        best = max(range(len(gts)), key=lambda g: (float(ious[g, anchor]), -g))
        if ious[best, anchor] >= pos:
            assigned[anchor] = best
        elif ious[best, anchor] >= neg:
            ignore.add(anchor)
    for g in range(len(gts)):  # low-quality matches, later GTs overwrite
        best = float(ious[g].max())
        if best >= min_pos:
            for anchor in range(a):
                if float(ious[g, anchor]) == best:
                    assigned[anchor] = g
                    ignore.discard(anchor)
    scores = {x: float(box_iou(pred_boxes[x : x + 1], gts[g : g + 1])[0, 0]) for x, g in assigned.items()}
    out = list(_result(num_classes, a, assigned, gts, labels, scores))
    for anchor in ignore:
        out[0][anchor] = -1
    return tuple(out)


def center_sampling_reference(priors, pred_boxes, gts, labels, num_classes, radius=1.5, ranges=None, scale_factor=1.0):
    from tood.assigners.center_sampling import FCOS_RANGES

    ranges = ranges or FCOS_RANGES
    a = pred_boxes.shape[0]
    level = torch.cat([torch.full((n,), i) for i, n in enumerate(priors.num_per_level)])
    claims = {}
    for g in range(len(gts)):
        x1, y1, x2, y2 = (float(v) for v in gts[g])
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        for anchor in range(a):
            x, y = float(priors.points[anchor, 0]), float(priors.points[anchor, 1])
            ltrb = (x - x1, y - y1, x2 - x, y2 - y)
            if min(ltrb) <= 0:
                continue
            r = float(priors.strides[anchor]) * radius
            if not (max(cx - r, x1) < x < min(cx + r, x2) and max(cy - r, y1) < y < min(cy + r, y2)):
                continue
            lo, hi = ranges[int(level[anchor])]
            if lo * scale_factor <= max(ltrb) <= hi * scale_factor:
                claims.setdefault(anchor, []).append(g)
    assigned = _resolve(claims, lambda g, anchor: box_area(gts[g]), False)
    scores = {x: float(box_iou(pred_boxes[x : x + 1], gts[g : g + 1])[0, 0]) for x, g in assigned.items()}
    return _result(num_classes, a, assigned, gts, labels, scores)
