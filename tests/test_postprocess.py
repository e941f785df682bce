import pytest
import torch

from tood.boxes import box_iou
from tood.postprocess import detection_scores, postprocess
from tood.priors import make_priors


def greedy_nms_reference(boxes, scores, thr):
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    keep = []
    for i in order:
        if all(box_iou(boxes[i : i + 1], boxes[j : j + 1]).item() <= thr for j in keep):
            keep.append(i)
    return keep


def reference_postprocess(outputs, nms_pre, score_thr, nms_iou, max_per_img):
    """Per image, per level, per class: the straightforward loops."""
    scores = detection_scores(outputs)
    b, _, c = scores.shape
    results = []
    for i in range(b):
        cand = []  # (score, anchor, label)
        for sl in outputs["priors"].level_slices():
            s = scores[i, sl].reshape(-1)
            top = sorted(range(len(s)), key=lambda k: -float(s[k]))[:nms_pre]
            cand += [(float(s[k]), sl.start + k // c, k % c) for k in top if float(s[k]) > score_thr]
        dets = []
        for label in range(c):
            group = [x for x in cand if x[2] == label]
            if not group:
                continue
            boxes = torch.stack([outputs["boxes"][i, a] for _, a, _ in group])
            sc = torch.tensor([x[0] for x in group])
            dets += [(group[k][0], group[k][1], label) for k in greedy_nms_reference(boxes, sc, nms_iou)]
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


def test_postprocess_matches_per_image_reference():
    for seed in range(3):
        for centerness in (False, True):
            out = _random_outputs(seed, centerness)
            dets = postprocess(out, nms_pre=20, score_thr=0.3, nms_iou=0.5, max_per_img=15)
            ref = reference_postprocess(out, nms_pre=20, score_thr=0.3, nms_iou=0.5, max_per_img=15)
            for d, r in zip(dets, ref):
                assert len(d.scores) == len(r)
                assert torch.allclose(d.scores, torch.tensor([x[0] for x in r]).reshape(-1))
                assert d.labels.tolist() == [x[2] for x in r]
            assert len(dets[1].scores) == 0


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
    assert dets[0].scores.tolist() == [pytest.approx(torch.tensor(5.0).sigmoid().item())]
    assert dets[0].boxes.tolist() == [[0.0, 0.0, 40.0, 10.0]]
