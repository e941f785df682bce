"""Batched assigners against per-image references and hand-computed cases."""
import pytest
import torch

from tests.reference_assigners import atss_reference, center_sampling_reference, max_iou_reference, tal_reference
from tood.assigners import ATSSAssigner, CenterSamplingAssigner, MaxIoUAssigner, TaskAlignedAssigner
from tood.priors import make_priors

C = 3
H, W = 96, 128
STRIDES = (8, 16, 32)


def _random_batch(seed):
    """3 images: random GTs (tiny, huge, border-touching, a duplicate), one image with none;
    padded rows hold garbage."""
    g = torch.Generator().manual_seed(seed)
    priors = make_priors([(H // s, W // s) for s in STRIDES], strides=STRIDES, octave_base_scale=4)
    a = priors.num_priors
    b, gmax = 3, 6
    xy = torch.rand(b, gmax, 2, generator=g) * torch.tensor([W, H])
    wh = torch.rand(b, gmax, 2, generator=g) * 60 + 2
    gt = torch.cat([xy, xy + wh], -1)
    gt[0, 1] = torch.tensor([0.0, 0.0, W, H])  # whole image (touches every border)
    gt[0, 2] = torch.tensor([30.3, 40.1, 33.0, 42.2])  # tiny
    gt[0, 3] = gt[0, 0]  # exact duplicate
    gt[1, 0] = torch.tensor([-20.0, -30.0, W + 50.0, H + 40.0])  # bigger than the image
    labels = torch.randint(0, C, (b, gmax), generator=g)
    mask = torch.tensor([[True] * 5 + [False], [True, True, True, False, False, False], [False] * 6])
    gt[~mask] = torch.rand(int((~mask).sum()), 4, generator=g) * 1000  # garbage in padding
    labels[~mask] = 7
    pxy = priors.points[None] + torch.randn(b, a, 2, generator=g) * 4
    pwh = torch.rand(b, a, 2, generator=g) * 50 + 1
    pred_boxes = torch.cat([pxy - pwh / 2, pxy + pwh / 2], -1)
    pred_scores = torch.rand(b, a, C, generator=g)
    return priors, pred_scores, pred_boxes, gt, labels, mask


def _check(batched, refs):
    labels, boxes, scores, fg, gt_index = batched
    for i, ref in enumerate(refs):
        r_labels, r_boxes, r_scores, r_fg, r_index = ref
        assert torch.equal(fg[i], r_fg), f"image {i}: foreground differs"
        assert torch.equal(gt_index[i], r_index), f"image {i}: gt index differs"
        assert torch.equal(labels[i], r_labels), f"image {i}: labels differ"
        assert torch.equal(boxes[i], r_boxes), f"image {i}: boxes differ"
        torch.testing.assert_close(scores[i], r_scores, atol=1e-5, rtol=1e-5)


def _per_image(fn, priors, pred_scores, pred_boxes, gt, labels, mask, **kw):
    return [fn(priors, pred_scores[i], pred_boxes[i], gt[i][mask[i]], labels[i][mask[i]], **kw) for i in range(gt.shape[0])]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("conflict", ["max_iou", "min_area"])
def test_tal_matches_reference(seed, conflict):
    priors, s, p, gt, lab, m = _random_batch(seed)
    s = s.pow(0.3)  # denser scores so candidates overlap between GTs
    res = TaskAlignedAssigner(C, topk=13, alpha=1.0, beta=2.0, conflict=conflict)(priors, s, p, gt, lab, m)
    refs = _per_image(tal_reference, priors, s, p, gt, lab, m, num_classes=C, topk=13, alpha=1.0, beta=2.0, conflict=conflict)
    _check(res, refs)
    assert res.fg_mask[0].sum() > 0 and res.fg_mask[2].sum() == 0


@pytest.mark.parametrize("seed", range(4))
def test_atss_matches_reference(seed):
    priors, s, p, gt, lab, m = _random_batch(seed)
    res = ATSSAssigner(C, topk=9)(priors, s, p, gt, lab, m)
    _check(res, [atss_reference(priors, p[i], gt[i][m[i]], lab[i][m[i]], C, topk=9) for i in range(3)])
    assert res.fg_mask[0].sum() > 0


@pytest.mark.parametrize("seed", range(4))
def test_max_iou_matches_reference(seed):
    priors, s, p, gt, lab, m = _random_batch(seed)
    res = MaxIoUAssigner(C)(priors, s, p, gt, lab, m)
    _check(res, [max_iou_reference(priors, p[i], gt[i][m[i]], lab[i][m[i]], C) for i in range(3)])
    assert (res.labels == -1).any()  # some anchors fall in the ignore band


@pytest.mark.parametrize("seed", range(4))
def test_center_sampling_matches_reference(seed):
    priors, s, p, gt, lab, m = _random_batch(seed)
    res = CenterSamplingAssigner(C, scale_factor=0.25)(priors, s, p, gt, lab, m)
    refs = [center_sampling_reference(priors, p[i], gt[i][m[i]], lab[i][m[i]], C, scale_factor=0.25) for i in range(3)]
    _check(res, refs)
    assert res.fg_mask.sum() > 0


@pytest.mark.parametrize("assigner", [TaskAlignedAssigner(C), ATSSAssigner(C), MaxIoUAssigner(C), CenterSamplingAssigner(C)])
def test_empty_ground_truth(assigner):
    priors, s, p, _, _, _ = _random_batch(0)
    res = assigner(priors, s, p, torch.zeros(3, 0, 4), torch.zeros(3, 0, dtype=torch.long), torch.zeros(3, 0, dtype=torch.bool))
    assert not res.fg_mask.any() and (res.labels == C).all() and (res.gt_index == -1).all()


def _line_priors():
    return make_priors([(1, 3)], strides=(8,))  # points x = 0, 8, 16 at y = 0


def test_tal_hand_computed_targets():
    priors = _line_priors()
    gt = torch.tensor([[[-4.0, -4.0, 20.0, 4.0]]])  # area 192, all three points inside
    pred_boxes = torch.tensor([[[-4.0, -4.0, 20.0, 4.0], [-4.0, -4.0, 8.0, 4.0], [-4.0, -4.0, 15.2, 4.0]]])  # IoU 1, .5, .8
    scores = torch.tensor([[[0.5], [0.8], [0.2]]])
    res = TaskAlignedAssigner(1, topk=2, alpha=1.0, beta=1.0)(priors, scores, pred_boxes, gt, torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.bool))
    # t = s * u = 0.5, 0.4, 0.16 -> top-2 = anchors 0, 1; t_hat = t / 0.5 * 1.0
    assert res.fg_mask.tolist() == [[True, True, False]]
    torch.testing.assert_close(res.scores, torch.tensor([[1.0, 0.8, 0.0]]), atol=1e-5, rtol=0)


def test_tal_conflict_rules_disagree_as_designed():
    priors = _line_priors()
    gt = torch.tensor([[[4.0, -2.0, 12.0, 2.0], [-4.0, -4.0, 20.0, 4.0]]])  # small A, large B; both contain x = 8
    pred_boxes = torch.tensor([[[-4.0, -4.0, 4.0, 4.0], [0.0, -4.0, 16.0, 4.0], [12.0, -4.0, 20.0, 4.0]]])
    # anchor 1's box: IoU 0.25 with A, 0.667 with B
    scores = torch.full((1, 3, 1), 0.5)
    args = (priors, scores, pred_boxes, gt, torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool))
    assert TaskAlignedAssigner(1, topk=3, beta=1.0, conflict="max_iou")(*args).gt_index[0, 1] == 1
    assert TaskAlignedAssigner(1, topk=3, beta=1.0, conflict="min_area")(*args).gt_index[0, 1] == 0


def test_atss_hand_computed_case():
    # One level of 4x4 points (stride 8), anchors 16x16. GT centred on point (8, 8) -> the
    # candidates are the 9 nearest points; only the anchor equal-ish to the GT passes mean+std.
    priors = make_priors([(4, 4)], strides=(8,), octave_base_scale=2)
    gt = torch.tensor([[[0.0, 0.0, 16.0, 16.0]]])
    res = ATSSAssigner(1, topk=9)(priors, torch.rand(1, 16, 1), priors.anchors[None], gt, torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.bool))
    # anchor at (8, 8) is [0, 0, 16, 16] (IoU 1); its 4-neighbours have IoU 1/3, diagonals 1/7
    # threshold = mean + std of {1, 4 x 1/3, 4 x 1/7} ~ 0.58 -> only the centre anchor
    assert res.fg_mask[0].nonzero().flatten().tolist() == [5]
    assert res.scores[0, 5].item() == pytest.approx(1.0)
