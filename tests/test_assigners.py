"""Batched assigners against the per-image references, plus hand-computed cases."""
import pytest
import torch

from tests.reference_assigners import atss_reference, center_sampling_reference, max_iou_reference, tal_reference
from tood.assigners import ATSSAssigner, CenterSamplingAssigner, FoveaAssigner, MaxIoUAssigner, TaskAlignedAssigner
from tood.assigners.common import level_grids, overlap_mask, overlap_pairs, pairs_from_mask
from tood.priors import make_priors

C = 4
H, W = 256, 320
STRIDES = (8, 16, 32, 64, 128)
PRIORS = make_priors([(-(-H // s), -(-W // s)) for s in STRIDES], strides=STRIDES)


def _random_batch(seed: int, far_boxes: bool = False):
    """4 images, G = 8: image 0 holds the corner cases (whole image, tiny, exact duplicate, bigger
    than the image, touching the border), image 2 has no GT, padded rows hold garbage.
    far_boxes: some predicted boxes reach across the image (the windows then give way to the
    dense search)."""
    g = torch.Generator().manual_seed(seed)
    a, b, gmax = PRIORS.num_priors, 4, 8
    xy = torch.rand(b, gmax, 2, generator=g) * torch.tensor([W, H])
    wh = torch.rand(b, gmax, 2, generator=g).pow(2) * 200 + 3
    gt = torch.cat([xy - wh / 2, xy + wh / 2], -1)
    gt[0, 0] = torch.tensor([150.5, 100.2, 230.7, 170.9])
    gt[0, 1] = torch.tensor([0.0, 0.0, W, H])  # whole image, touches every border
    gt[0, 2] = torch.tensor([100.3, 60.1, 104.9, 63.7])  # smaller than one stride
    gt[0, 3] = gt[0, 0]  # exact duplicate
    gt[0, 4] = torch.tensor([-40.0, -25.0, W + 60.0, H + 30.0])  # bigger than the image
    gt[0, 5] = torch.tensor([0.0, 200.0, 64.0, H])  # touches the left and bottom border
    labels = torch.randint(0, C, (b, gmax), generator=g)
    labels[0, 3] = labels[0, 0]
    mask = torch.zeros(b, gmax, dtype=torch.bool)
    mask[0, :7], mask[1, :3], mask[3, :] = True, True, True
    gt[~mask] = torch.rand(int((~mask).sum()), 4, generator=g) * 5000 - 1000  # garbage padding
    labels[~mask] = 99
    stride = PRIORS.strides[None, :, None]
    pxy = PRIORS.points[None] + torch.randn(b, a, 2, generator=g) * stride
    pwh = (torch.rand(b, a, 2, generator=g) * 7 + 1) * stride
    if far_boxes:
        pwh[:, :40] = 3 * W
    pred_boxes = torch.cat([pxy - pwh / 2, pxy + pwh / 2], -1)
    pred_scores = torch.rand(b, a, C, generator=g).pow(0.3)  # dense scores: candidates overlap between GTs
    return pred_scores, pred_boxes, gt, labels, mask


def _check(batched, refs):
    labels, boxes, scores, fg, gt_index = batched
    assert len(refs) == fg.shape[0]
    for i, (r_labels, r_boxes, r_scores, r_fg, r_index) in enumerate(refs):
        assert torch.equal(fg[i], r_fg), f"image {i}: foreground differs"
        assert torch.equal(gt_index[i], r_index), f"image {i}: gt index differs"
        assert torch.equal(labels[i], r_labels), f"image {i}: labels differ"
        assert torch.equal(boxes[i], r_boxes), f"image {i}: boxes differ"
        torch.testing.assert_close(scores[i], r_scores, atol=1e-5, rtol=0)


def _refs(fn, pred_boxes, gt, labels, mask, scores=None, **kw):
    """The reference on each image with its real GTs only (scores first for TAL)."""
    first = [] if scores is None else [scores]
    return [fn(PRIORS, *[x[i] for x in first], pred_boxes[i], gt[i][mask[i]], labels[i][mask[i]], C, **kw) for i in range(len(gt))]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("conflict", ["max_iou", "min_area"])
def test_tal_matches_reference(seed, conflict):
    s, p, gt, lab, m = _random_batch(seed, far_boxes=seed == 3)
    res = TaskAlignedAssigner(C, topk=13, alpha=1.0, beta=6.0, conflict=conflict)(PRIORS, s, p, gt, lab, m)
    _check(res, _refs(tal_reference, p, gt, lab, m, s, topk=13, alpha=1.0, beta=6.0, conflict=conflict))
    assert res.fg_mask[0].sum() > 10 and not res.fg_mask[2].any()
    assert res.gt_index[0].eq(0).any() and not res.gt_index[0].eq(3).any()  # duplicate: the lower index wins


@pytest.mark.parametrize("seed", range(3))
def test_tal_matches_reference_when_scores_are_one(seed):
    """s = 1 makes the pruning bound u >= tau^(1/beta) tight."""
    s, p, gt, lab, m = _random_batch(seed)
    s = torch.ones_like(s)
    res = TaskAlignedAssigner(C, topk=13)(PRIORS, s, p, gt, lab, m)
    _check(res, _refs(tal_reference, p, gt, lab, m, s, topk=13))


@pytest.mark.parametrize("alpha", [0.5, 1.5])
@pytest.mark.parametrize("beta", [1.0, 4.0, 6.0])
@pytest.mark.parametrize("seed", range(2))
def test_tal_matches_reference_with_low_scores(alpha, beta, seed):
    """Table 4's alphas with scores in [0.01, 0.2]: the pruning bound must use max(s)^alpha, which
    for alpha < 1 is larger than max(s) (bounding with max(s) prunes pairs that belong in the top-k)."""
    s, p, gt, lab, m = _random_batch(seed)
    s = torch.rand(s.shape, generator=torch.Generator().manual_seed(100 + seed)) * 0.19 + 0.01
    res = TaskAlignedAssigner(C, topk=13, alpha=alpha, beta=beta)(PRIORS, s, p, gt, lab, m)
    _check(res, _refs(tal_reference, p, gt, lab, m, s, topk=13, alpha=alpha, beta=beta))
    assert res.fg_mask[0].sum() > 10 and not res.fg_mask[2].any()


def test_tal_tie_rule_lower_prior_first():
    """Every prediction identical: t ties within each GT; the lower prior indices fill the top-k."""
    s, p, gt, lab, m = _random_batch(5)
    s = torch.full_like(s, 0.5)
    p = torch.tensor([0.0, 0.0, W, H]).expand_as(p).clone()
    res = TaskAlignedAssigner(C, topk=9, beta=2.0)(PRIORS, s, p, gt, lab, m)
    _check(res, _refs(tal_reference, p, gt, lab, m, s, topk=9, beta=2.0))
    assert res.fg_mask.any()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("snap", [False, True])
def test_atss_matches_reference(seed, snap):
    s, p, gt, lab, m = _random_batch(seed)
    if snap:  # GT centres on the half-grid: many exactly equidistant candidates, ties by prior index
        gt = (gt / 4).round() * 4
    res = ATSSAssigner(C, topk=9)(PRIORS, s, p, gt, lab, m)
    _check(res, _refs(atss_reference, p, gt, lab, m, topk=9))
    assert res.fg_mask[0].sum() > 5 and not res.fg_mask[2].any()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("assign_all", [True, False])
@pytest.mark.parametrize("inside_gt", [True, False])
def test_max_iou_matches_reference(seed, assign_all, inside_gt):
    s, p, gt, lab, m = _random_batch(seed)
    res = MaxIoUAssigner(C, gt_max_assign_all=assign_all, inside_gt=inside_gt)(PRIORS, s, p, gt, lab, m)
    _check(res, _refs(max_iou_reference, p, gt, lab, m, assign_all=assign_all, inside_gt=inside_gt))
    assert (res.labels == -1).any() and res.fg_mask.any()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("scale_factor", [1.0, 0.25])
def test_center_sampling_matches_reference(seed, scale_factor):
    s, p, gt, lab, m = _random_batch(seed)
    res = CenterSamplingAssigner(C, scale_factor=scale_factor)(PRIORS, s, p, gt, lab, m)
    _check(res, _refs(center_sampling_reference, p, gt, lab, m, scale_factor=scale_factor))
    assert res.fg_mask.sum() > 5


@pytest.mark.parametrize("far", [False, True])
def test_window_search_equals_dense_mask(far):
    _, p, gt, _, m = _random_batch(7, far_boxes=far)
    for boxes in (p, PRIORS.anchors[None], PRIORS.points.repeat(1, 2)[None]):
        dense = pairs_from_mask(overlap_mask(boxes, gt, m))
        found = overlap_pairs(PRIORS, boxes, gt, m)
        assert torch.equal(found.seg, dense.seg) and torch.equal(found.a, dense.a)


ASSIGNERS = [TaskAlignedAssigner(C), ATSSAssigner(C), MaxIoUAssigner(C), CenterSamplingAssigner(C)]


@pytest.mark.parametrize("assigner", ASSIGNERS, ids=lambda x: type(x).__name__)
@pytest.mark.parametrize("g", [0, 3])
def test_no_ground_truth_in_the_batch(assigner, g):
    s, p, _, _, _ = _random_batch(0)
    res = assigner(PRIORS, s, p, torch.full((4, g, 4), 7.0), torch.full((4, g), 99), torch.zeros(4, g, dtype=torch.bool))
    assert not res.fg_mask.any() and (res.labels == C).all() and (res.gt_index == -1).all()
    assert not res.scores.any() and not res.boxes.any() and res.boxes.shape == p.shape


def test_level_grids_reads_the_layout_and_rejects_other_points():
    layout, cols, rows = level_grids(PRIORS)
    assert layout[0] == (0, 32, 40) and layout[4] == (1700, 2, 3)
    assert cols[1, :3].tolist() == [0.0, 16.0, 32.0] and rows[4, 1] == 128.0
    shuffled = PRIORS.__class__(PRIORS.points.flip(0), PRIORS.anchors, PRIORS.strides, PRIORS.num_per_level)
    with pytest.raises(ValueError, match="row-major grid"):
        level_grids(shuffled)


# ---------------------------------------------------------------- hand-computed cases
ONE = torch.ones(1, 1, dtype=torch.bool)
LINE = make_priors([(1, 3)], strides=(8,))  # points x = 0, 8, 16 at y = 0


def test_tal_hand_computed_targets():
    gt = torch.tensor([[[-4.0, -4.0, 20.0, 4.0]]])  # all three points inside
    pred = torch.tensor([[[-4.0, -4.0, 20.0, 4.0], [-4.0, -4.0, 8.0, 4.0], [-4.0, -4.0, 15.2, 4.0]]])  # IoU 1, .5, .8
    scores = torch.tensor([[[0.5], [0.8], [0.2]]])
    res = TaskAlignedAssigner(1, topk=2, alpha=1.0, beta=1.0)(LINE, scores, pred, gt, torch.zeros(1, 1, dtype=torch.long), ONE)
    # t = s * u = 0.5, 0.4, 0.16 -> top-2 = priors 0, 1; t_hat = t / (0.5 + 1e-7) * max u (1.0)
    assert res.fg_mask.tolist() == [[True, True, False]]
    torch.testing.assert_close(res.scores, torch.tensor([[0.5 / (0.5 + 1e-7), 0.4 / (0.5 + 1e-7), 0.0]]), atol=1e-7, rtol=0)
    # alpha = 1, beta = 6: t = .5, .8 * .5^6 = .0125, .2 * .8^6 = .0524 -> top-2 = priors 0, 2
    res = TaskAlignedAssigner(1, topk=2)(LINE, scores, pred, gt, torch.zeros(1, 1, dtype=torch.long), ONE)
    assert res.fg_mask.tolist() == [[True, False, True]]
    torch.testing.assert_close(res.scores[0, 2], torch.tensor(0.2 * 0.8**6 / 0.5), atol=1e-6, rtol=0)


def test_tal_max_iou_of_the_final_anchors_scales_targets():
    # the best-IoU prediction (prior 0, IoU 1) is NOT inside the GT: t_hat is scaled by the kept IoU 0.5
    gt = torch.tensor([[[2.0, -4.0, 20.0, 4.0]]])  # prior 0 (x = 0) lies outside
    pred = torch.tensor([[[2.0, -4.0, 20.0, 4.0], [2.0, -4.0, 11.0, 4.0], [-20.0, -4.0, -10.0, 4.0]]])  # IoU 1, .5, 0
    scores = torch.full((1, 3, 1), 0.5)
    res = TaskAlignedAssigner(1, topk=3, beta=1.0)(LINE, scores, pred, gt, torch.zeros(1, 1, dtype=torch.long), ONE)
    assert res.fg_mask.tolist() == [[False, True, False]]  # prior 2: t = 0
    torch.testing.assert_close(res.scores[0, 1], torch.tensor(0.25 / (0.25 + 1e-7) * 0.5))


def test_tal_conflict_rules_disagree_as_designed():
    gt = torch.tensor([[[4.0, -2.0, 12.0, 2.0], [-4.0, -4.0, 20.0, 4.0]]])  # small A (area 32), large B (192); both hold x = 8
    pred = torch.tensor([[[-4.0, -4.0, 4.0, 4.0], [0.0, -4.0, 16.0, 4.0], [12.0, -4.0, 20.0, 4.0]]])
    # prior 1's box (area 128): IoU 32/128 = .25 with A, 128/192 = .667 with B
    args = (LINE, torch.full((1, 3, 1), 0.5), pred, gt, torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool))
    by_iou = TaskAlignedAssigner(1, topk=3, beta=1.0, conflict="max_iou")(*args)
    by_area = TaskAlignedAssigner(1, topk=3, beta=1.0, conflict="min_area")(*args)
    assert by_iou.gt_index[0].tolist() == [1, 1, 1] and by_area.gt_index[0].tolist() == [1, 0, 1]
    # max_iou: B keeps all three (t = .5 * IoU = .167, .333, .167); prior 1 has the max t and IoU -> .667
    torch.testing.assert_close(by_iou.scores[0, 1], torch.tensor(128 / 192), atol=1e-6, rtol=0)
    # min_area: A keeps only prior 1 -> t_hat = its IoU .25
    torch.testing.assert_close(by_area.scores[0, 1], torch.tensor(0.25), atol=1e-6, rtol=0)


def test_tal_top_k_tie_goes_to_the_lower_prior():
    gt = torch.tensor([[[-4.0, -4.0, 20.0, 4.0]]])
    pred = torch.tensor([[-4.0, -4.0, 20.0, 4.0]]).expand(1, 3, 4)  # all IoU 1, all t = .5
    res = TaskAlignedAssigner(1, topk=2)(LINE, torch.full((1, 3, 1), 0.5), pred, gt, torch.zeros(1, 1, dtype=torch.long), ONE)
    assert res.fg_mask.tolist() == [[True, True, False]]


def test_tal_zero_score_and_the_inside_margin():
    # every prediction is the GT box (IoU 1). Prior 0 has score 0 (t = 0); prior 2 (x = 16) lies
    # .005 px inside the right side (not more than .01) -> only prior 1 is positive
    gt = torch.tensor([[[-4.0, -4.0, 16.005, 4.0]]])
    pred = gt.expand(1, 3, 4)
    scores = torch.tensor([[[0.0], [0.5], [0.5]]])
    res = TaskAlignedAssigner(1, topk=3)(LINE, scores, pred, gt, torch.zeros(1, 1, dtype=torch.long), ONE)
    assert res.fg_mask.tolist() == [[False, True, False]]
    res = ATSSAssigner(1, topk=3)(LINE, scores, pred, gt, torch.zeros(1, 1, dtype=torch.long), ONE)
    assert not res.fg_mask[0, 2]


def test_atss_hand_computed_case():
    # 4x4 points (stride 8), anchors 16x16; GT = the anchor at point (8, 8): the 9 nearest points are
    # its 3x3 block; IoUs 1 (centre), 1/3 (4 edge neighbours: 8x16 / 24x16), 1/7 (4 diagonals: 64/448)
    priors = make_priors([(4, 4)], strides=(8,), octave_base_scale=2)
    gt = torch.tensor([[[0.0, 0.0, 16.0, 16.0]]])
    pred = priors.anchors[None].clone()
    pred[0, 5] = torch.tensor([0.0, 0.0, 16.0, 8.0])  # IoU .5 with the GT
    res = ATSSAssigner(1, topk=9)(priors, torch.rand(1, 16, 1), pred, gt, torch.zeros(1, 1, dtype=torch.long), ONE)
    ious = torch.tensor([1.0] + [1 / 3] * 4 + [1 / 7] * 4, dtype=torch.float64)
    assert ious.mean() + ious.std() == pytest.approx(0.5940, abs=1e-4)  # only the centre passes
    assert res.fg_mask[0].nonzero().flatten().tolist() == [5]
    assert res.scores[0, 5].item() == pytest.approx(0.5)


def test_atss_unbiased_std_can_leave_a_gt_without_positives():
    # 5x5 points (stride 8), anchors 16x16, topk 3. GT [0, 0, 9, 12], centre (4.5, 6): candidates are
    # the points (8, 8), (0, 8), (8, 0) with IoUs 108/256 = .4219, 96/268 = .3582, 72/292 = .2466.
    # mean + unbiased std = .4310 > .4219, so no positive (a biased std, .4147, would take prior 6)
    priors = make_priors([(5, 5)], strides=(8,), octave_base_scale=2)
    gt = torch.tensor([[[0.0, 0.0, 9.0, 12.0]]])
    res = ATSSAssigner(1, topk=3)(priors, torch.rand(1, 25, 1), priors.anchors[None], gt, torch.zeros(1, 1, dtype=torch.long), ONE)
    assert not res.fg_mask.any()
    # topk 4 adds (0, 0) with IoU 64/300 = .2133: mean + std = .4070 and prior 6 passes
    res = ATSSAssigner(1, topk=4)(priors, torch.rand(1, 25, 1), priors.anchors[None], gt, torch.zeros(1, 1, dtype=torch.long), ONE)
    assert res.fg_mask[0].nonzero().flatten().tolist() == [6]


def test_max_iou_hand_computed_case():
    # anchors 16x16 at x = 0, 8, 16 (y = 0): [-8, 8], [0, 16], [8, 24] in x, [-8, 8] in y
    priors = make_priors([(1, 3)], strides=(8,), octave_base_scale=2)
    gt = torch.tensor([[[0.0, -8.0, 14.0, 8.0], [30.0, 2.0, 34.0, 6.0], [4.0, -2.0, 4.0, 2.0]]])
    # GT 0 vs anchors: IoU 8*16/(256+224-128) = .364, 14*16/256 = .875, 6*16/(256+224-96) = .25
    # GT 1 overlaps nothing and GT 2 has no area: best IoU 0 -> no low-quality match
    # (mmdet would hand them every anchor of IoU 0)
    args = (priors, torch.rand(1, 3, 2), priors.anchors[None], gt, torch.tensor([[1, 0, 0]]), torch.ones(1, 3, dtype=torch.bool))
    res = MaxIoUAssigner(2, pos_iou_thr=0.5, neg_iou_thr=0.3)(*args)
    assert res.labels.tolist() == [[-1, 1, 2]]  # .364 ignored, .875 positive, .25 negative
    assert res.gt_index.tolist() == [[-1, 0, -1]]
    res = MaxIoUAssigner(2, pos_iou_thr=0.9, neg_iou_thr=0.3)(*args)  # .875 < .9, but it is GT 0's best
    assert res.labels.tolist() == [[-1, 1, 2]]
    res = MaxIoUAssigner(2, pos_iou_thr=0.9, neg_iou_thr=0.3, match_low_quality=False)(*args)
    assert res.labels.tolist() == [[-1, -1, 2]]


def test_max_iou_inside_gt_hand_computed_case():
    # anchors 16x16 centred at x = 0, 8, 16 (y = 0); one GT [1, -4, 9, 4] (8 x 8, inside anchor 1's box)
    # IoU with anchors 0, 1, 2: 7*8/(256+64-56) = .212, 64/256 = .25, 1*8/(256+64-8) = .026
    # anchor 1 (centre (8, 0)) is inside the GT; anchor 0 (centre (0, 0)) is not
    priors = make_priors([(1, 3)], strides=(8,), octave_base_scale=2)
    args = (priors, torch.rand(1, 3, 2), priors.anchors[None], torch.tensor([[[1.0, -4.0, 9.0, 4.0]]]), torch.tensor([[1]]),
            torch.ones(1, 1, dtype=torch.bool))
    res = MaxIoUAssigner(2, pos_iou_thr=0.2, neg_iou_thr=0.1)(*args)  # .212 passes the IoU rule, but its centre is outside
    assert res.labels.tolist() == [[-1, 1, 2]]  # anchor 0 is left to the ignore band (.212 >= .1)
    res = MaxIoUAssigner(2, pos_iou_thr=0.2, neg_iou_thr=0.1, inside_gt=False)(*args)
    assert res.labels.tolist() == [[1, 1, 2]]
    # GT [1, -4, 7, 4] (area 48) lies in anchors 0 and 1, IoU 48/256 = .1875 each (tied best), and
    # holds neither centre (0 < 1, 8 > 7): the inside rule finds no anchor for it, the plain rule
    # gives it both tied anchors as low-quality matches
    args = args[:3] + (torch.tensor([[[1.0, -4.0, 7.0, 4.0]]]),) + args[4:]
    res = MaxIoUAssigner(2, pos_iou_thr=0.9, neg_iou_thr=0.5)(*args)
    assert not res.fg_mask.any()
    assert MaxIoUAssigner(2, pos_iou_thr=0.9, neg_iou_thr=0.5, inside_gt=False)(*args).labels.tolist() == [[1, 1, 2]]


def test_center_sampling_hand_computed_case():
    # points x = 0, 8, ..., 56 at y = 0 (stride 8); GT [-4, -4, 60, 4], centre (28, 0)
    priors = make_priors([(1, 8)], strides=(8,))
    gt = torch.tensor([[[-4.0, -4.0, 60.0, 4.0]]])
    args = (priors, torch.rand(1, 8, 1), priors.anchors[None], gt, torch.zeros(1, 1, dtype=torch.long), ONE)
    # radius 1.5 * 8 = 12: centre region x in (16, 40) -> points 24, 32; max(l, t, r, b) = 36 there
    res = CenterSamplingAssigner(1, radius=1.5, scale_ranges=((0, 64),))(*args)
    assert res.fg_mask[0].nonzero().flatten().tolist() == [3, 4]
    res = CenterSamplingAssigner(1, radius=1.5, scale_ranges=((0, 64),), scale_factor=0.5)(*args)  # range [0, 32]
    assert not res.fg_mask.any()
    res = CenterSamplingAssigner(1, radius=3.0, scale_ranges=((0, 64),))(*args)  # (4, 52) -> x = 8 .. 48
    assert res.fg_mask[0].nonzero().flatten().tolist() == [1, 2, 3, 4, 5, 6]


def test_center_sampling_smallest_gt_wins():
    priors = make_priors([(1, 8)], strides=(8,))
    gt = torch.tensor([[[-4.0, -4.0, 60.0, 4.0], [20.0, -4.0, 28.0, 4.0]]])  # both claim x = 24
    res = CenterSamplingAssigner(1, radius=1.5, scale_ranges=((0, 64),))(
        priors, torch.rand(1, 8, 1), priors.anchors[None], gt, torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool)
    )
    assert res.gt_index[0].tolist() == [-1, -1, -1, 1, 0, -1, -1, -1]


def test_fovea_hand_computed_case():
    # points x = 0, 8, ..., 56 at y = 0 (stride 8); GT [-4, -4, 60, 4]: centre (28, 0), sqrt(w h) =
    # sqrt(512) = 22.6; fovea with sigma 0.4: |x - 28| <= 12.8 and |y| <= 1.6 -> x = 16, 24, 32, 40
    priors = make_priors([(1, 8)], strides=(8,))
    gt = torch.tensor([[[-4.0, -4.0, 60.0, 4.0]]])
    args = (priors, torch.rand(1, 8, 1), priors.anchors[None], gt, torch.zeros(1, 1, dtype=torch.long), ONE)
    assert priors.points[:, 0].tolist() == [0.0, 8.0, 16.0, 24.0, 32.0, 40.0, 48.0, 56.0]
    res = FoveaAssigner(1, sigma=0.4, scale_ranges=((16, 32),))(*args)
    assert res.fg_mask[0].nonzero().flatten().tolist() == [2, 3, 4, 5]
    assert res.boxes[0, 2].tolist() == [-4.0, -4.0, 60.0, 4.0] and res.labels[0].tolist() == [1, 1, 0, 0, 0, 0, 1, 1]
    res = FoveaAssigner(1, sigma=0.2, scale_ranges=((16, 32),))(*args)  # |x - 28| <= 6.4 -> 24, 32
    assert res.fg_mask[0].nonzero().flatten().tolist() == [3, 4]
    res = FoveaAssigner(1, sigma=0.4, scale_ranges=((32, 64),))(*args)  # 22.6 outside the level's range
    assert not res.fg_mask.any()
    res = FoveaAssigner(1, sigma=0.4, scale_ranges=((64, 128),), scale_factor=0.25)(*args)  # [16, 32]
    assert res.fg_mask[0].sum() == 4


def test_fovea_smallest_gt_wins_and_levels_split_by_scale():
    # level 0: x = 0, 8, ..., 56 (range [1, 32]); level 1: x = 0, 16, 32, 48 (range [16, 64])
    priors = make_priors([(1, 8), (1, 4)], strides=(8, 16))
    labels, mask = torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool)
    assign = FoveaAssigner(1, sigma=0.4, scale_ranges=((1, 32), (16, 64)))
    # big GT (scale 22.6, both levels): |x - 28| <= 12.8; small GT [20, -4, 36, 4] (scale 11.3,
    # level 0 only): |x - 28| <= 3.2 holds no point, so it gets no positive
    gt = torch.tensor([[[-4.0, -4.0, 60.0, 4.0], [20.0, -4.0, 36.0, 4.0]]])
    res = assign(priors, torch.rand(1, 12, 1), priors.anchors[None], gt, labels, mask)
    assert res.gt_index[0].tolist() == [-1, -1, 0, 0, 0, 0, -1, -1, -1, 0, 0, -1]
    # small GT [12, -4, 44, 4]: scale 16 (both levels), |x - 28| <= 6.4 -> 24, 32 on level 0 and
    # 32 on level 1, all also claimed by the big GT: the smaller one takes them
    gt[0, 1] = torch.tensor([12.0, -4.0, 44.0, 4.0])
    res = assign(priors, torch.rand(1, 12, 1), priors.anchors[None], gt, labels, mask)
    assert res.gt_index[0].tolist() == [-1, -1, 0, 1, 1, 0, -1, -1, -1, 0, 1, -1]
