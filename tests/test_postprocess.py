"""postprocess() against a plain-Python brute force and hand-worked cases.

The reference reads the raw model outputs as Python floats and redoes every step with loops:
sigmoid (times the centerness probability), per-level top-k, threshold, per-class greedy NMS,
the cap per image. It uses nothing from tood/ besides the prior layout.
"""
import math

import pytest
import torch

from tood.postprocess import postprocess
from tood.priors import make_priors


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def iou(a: list[float], b: list[float]) -> float:
    """IoU of two xyxy boxes given as lists."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area = lambda x: max(0.0, x[2] - x[0]) * max(0.0, x[3] - x[1])
    return inter / (area(a) + area(b) - inter)


def greedy_nms_reference(boxes: list[list[float]], scores: list[float], thr: float) -> list[int]:
    """Indices kept by greedy NMS: by decreasing score, drop a box whose IoU with a kept one is > thr."""
    keep = []
    for i in sorted(range(len(scores)), key=lambda i: -scores[i]):
        if all(iou(boxes[i], boxes[j]) <= thr for j in keep):
            keep.append(i)
    return keep


def reference_postprocess(outputs, nms_pre, score_thr, nms_iou, max_per_img):
    """Per image, per level, per class: the straightforward loops. Returns per image a list of
    (score, anchor, label), by decreasing score."""
    logits = outputs["cls_logits"].tolist()  # (B, A, C) nested lists
    ctr = outputs["centerness"].tolist() if outputs["centerness"] is not None else None
    boxes = outputs["boxes"].tolist()
    results = []
    for i, image in enumerate(logits):
        scores = [[sigmoid(x) * (sigmoid(ctr[i][a]) if ctr else 1.0) for x in row] for a, row in enumerate(image)]
        cand = []  # (score, anchor, label)
        for sl in outputs["priors"].level_slices():
            level = [(scores[a][k], a, k) for a in range(sl.start, sl.stop) for k in range(len(scores[a]))]
            level.sort(key=lambda x: -x[0])
            cand += [x for x in level[:nms_pre] if x[0] > score_thr]
        dets = []
        for label in sorted({x[2] for x in cand}):
            group = [x for x in cand if x[2] == label]
            kept = greedy_nms_reference([boxes[i][a] for _, a, _ in group], [x[0] for x in group], nms_iou)
            dets += [group[k] for k in kept]
        dets.sort(key=lambda x: -x[0])
        results.append(dets[:max_per_img])
    return results


def _random_outputs(seed, centerness=False):
    g = torch.Generator().manual_seed(seed)
    priors = make_priors([(8, 8), (4, 4), (2, 2)], strides=(8, 16, 32))
    a = priors.num_priors
    xy = torch.rand(3, a, 2, generator=g) * 50
    wh = torch.rand(3, a, 2, generator=g) * 20 + 2
    boxes = torch.cat([xy, xy + wh], -1)
    logits = torch.randn(3, a, 4, generator=g) * 2 - 1
    logits[1] = -20  # an image with nothing above the threshold
    ctr = torch.randn(3, a, generator=g) if centerness else None
    return {"cls_logits": logits, "boxes": boxes, "centerness": ctr, "priors": priors}


@pytest.mark.parametrize("max_per_img", [15, 1000])  # the cap binds (about 45 survive NMS), or not
def test_postprocess_matches_per_image_reference(max_per_img):
    for seed in range(3):
        for centerness in (False, True):
            out = _random_outputs(seed, centerness)
            dets = postprocess(out, nms_pre=20, score_thr=0.3, nms_iou=0.5, max_per_img=max_per_img)
            ref = reference_postprocess(out, nms_pre=20, score_thr=0.3, nms_iou=0.5, max_per_img=max_per_img)
            for i, (d, r) in enumerate(zip(dets, ref)):
                assert len(d.scores) == len(r)
                assert d.scores.tolist() == pytest.approx([x[0] for x in r], rel=1e-5)
                assert d.labels.tolist() == [x[2] for x in r]
                assert d.boxes.tolist() == [out["boxes"][i, x[1]].tolist() for x in r]
            assert len(dets[1].scores) == 0


def _hand_outputs():
    """One level of 3 anchors, 2 classes, a centerness branch.

    class probabilities (sigmoid of log-odds): anchor 0: .9, .25; anchor 1: .75, .1; anchor 2: .5, .8
    centerness probabilities: .8, .5, .5
    scores = class prob * centerness: anchor 0: .72, .2; anchor 1: .375, .05; anchor 2: .25, .4
    boxes: anchor 0 [0, 0, 10, 10], anchor 1 [1, 0, 11, 10] (IoU 90 / 110 = .818 with anchor 0),
    anchor 2 [20, 20, 30, 30] (overlaps neither)
    """
    logit = lambda p: math.log(p / (1 - p))
    probs = [[0.9, 0.25], [0.75, 0.1], [0.5, 0.8]]
    return {
        "cls_logits": torch.tensor([[[logit(p) for p in row] for row in probs]]),
        "boxes": torch.tensor([[[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [20.0, 20.0, 30.0, 30.0]]]),
        "centerness": torch.tensor([[logit(0.8), 0.0, 0.0]]),
        "priors": make_priors([(1, 3)], strides=(8,)),
    }


def _scores_labels(dets):
    return [round(s, 5) for s in dets[0].scores.tolist()], dets[0].labels.tolist()


def test_postprocess_hand_worked_case():
    out = _hand_outputs()
    # nms_pre 4 keeps .72, .4, .375, .25 (drops .2 and .05); class 0: .375 (anchor 1) has IoU .818
    # > .5 with .72 (anchor 0) and goes; class 1 keeps .4
    dets = postprocess(out, nms_pre=4, score_thr=0.1, nms_iou=0.5, max_per_img=100)
    assert _scores_labels(dets) == ([0.72, 0.4, 0.25], [0, 1, 0])
    assert dets[0].boxes.tolist() == [[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [20.0, 20.0, 30.0, 30.0]]
    # IoU .818 is not above .9: anchor 1 stays
    assert _scores_labels(postprocess(out, nms_pre=4, score_thr=0.1, nms_iou=0.9)) == ([0.72, 0.4, 0.375, 0.25], [0, 1, 0, 0])
    # nms_pre 6 lets anchor 0's class 1 (.2) in; alone in its class it survives; .05 is under the threshold
    assert _scores_labels(postprocess(out, nms_pre=6, score_thr=0.1, nms_iou=0.5)) == ([0.72, 0.4, 0.25, 0.2], [0, 1, 0, 1])
    assert _scores_labels(postprocess(out, nms_pre=4, score_thr=0.1, nms_iou=0.5, max_per_img=2)) == ([0.72, 0.4], [0, 1])
    assert _scores_labels(postprocess(out, nms_pre=4, score_thr=0.3, nms_iou=0.5)) == ([0.72, 0.4], [0, 1])
    # without the centerness branch the scores are the class probabilities: .9, .8, .5 survive
    # (.75 is suppressed by .9; top-4 = .9, .8, .75, .5)
    plain = {**out, "centerness": None}
    assert _scores_labels(postprocess(plain, nms_pre=4, score_thr=0.1, nms_iou=0.5)) == ([0.9, 0.8, 0.5], [0, 1, 0])
    (hand,) = reference_postprocess(out, nms_pre=4, score_thr=0.1, nms_iou=0.5, max_per_img=100)
    assert [(round(s, 5), a, c) for s, a, c in hand] == [(0.72, 0, 0), (0.4, 2, 1), (0.25, 2, 0)]  # the reference agrees


def test_postprocess_rescales_and_clips_to_original_image():
    priors = make_priors([(1, 2)], strides=(8,))
    out = {
        "cls_logits": torch.tensor([[[5.0], [4.0]]]),
        "boxes": torch.tensor([[[10.0, 20.0, 30.0, 60.0], [-8.0, 0.0, 400.0, 10.0]]]),
        "centerness": None,
        "priors": priors,
    }
    dets = postprocess(out, scale_factors=torch.tensor([[2.0, 4.0]]), orig_sizes=torch.tensor([[50, 100]]))
    expected = torch.tensor([[5.0, 5.0, 15.0, 15.0], [0.0, 0.0, 100.0, 2.5]])
    assert torch.allclose(dets[0].boxes, expected)


def test_boxes_are_clipped_to_the_image_before_nms():
    """Two boxes of one class that differ only past the right border (image 40 px wide): unclipped
    their IoU is 40/120 and both survive NMS at 0.6; clipped they coincide and one is suppressed."""
    priors = make_priors([(1, 2)], strides=(8,))
    out = {
        "cls_logits": torch.tensor([[[5.0], [4.0]]]),
        "boxes": torch.tensor([[[0.0, 0.0, 120.0, 10.0], [0.0, 0.0, 40.0, 10.0]]]),
        "centerness": None,
        "priors": priors,
    }
    assert len(postprocess(out, nms_iou=0.6)[0].scores) == 2
    dets = postprocess(out, nms_iou=0.6, img_sizes=torch.tensor([[20, 40]]))
    assert dets[0].scores.tolist() == [pytest.approx(1 / (1 + math.exp(-5.0)))]
    assert dets[0].boxes.tolist() == [[0.0, 0.0, 40.0, 10.0]]
