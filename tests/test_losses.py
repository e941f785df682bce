import math

import pytest
import torch

from tood.assigners.base import AssignResult
from tood.criterion import Phase, TOODCriterion
from tood.losses import centerness_target, focal_loss, giou_loss, quality_focal_loss
from tood.priors import make_priors


def test_focal_loss_hand_values():
    # logit 0 -> p = 0.5. Positive: 0.25 * 0.5^2 * ln 2; negative: 0.75 * 0.5^2 * ln 2.
    loss = focal_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]]))
    assert loss[0, 0].item() == pytest.approx(0.25 * 0.25 * math.log(2), rel=1e-6)
    assert loss[0, 1].item() == pytest.approx(0.75 * 0.25 * math.log(2), rel=1e-6)


def test_quality_focal_loss_hand_values():
    # target 0.3, p = 0.5: |0.3 - 0.5|^2 * -(0.3 ln .5 + .7 ln .5) = 0.04 ln 2
    loss = quality_focal_loss(torch.tensor([0.0]), torch.tensor([0.3]))
    assert loss.item() == pytest.approx(0.04 * math.log(2), rel=1e-6)
    # target 0 reduces to p^2 * BCE(p, 0): logit 2 -> p = sigmoid(2)
    p = 1 / (1 + math.exp(-2))
    loss0 = quality_focal_loss(torch.tensor([2.0]), torch.tensor([0.0]))
    assert loss0.item() == pytest.approx(p**2 * -math.log(1 - p), rel=1e-5)


def test_losses_finite_for_extreme_logits_in_bf16():
    logits = torch.tensor([-1e4, -100.0, 0.0, 100.0, 1e4], dtype=torch.bfloat16, requires_grad=True)
    targets = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0])
    for fn in (focal_loss, quality_focal_loss):
        out = fn(logits, targets).sum()
        (grad,) = torch.autograd.grad(out, logits)
        assert torch.isfinite(out) and torch.isfinite(grad).all()


def test_giou_loss_hand_value():
    # inter 1, union 7, enclosing 9: GIoU = 1/7 - 2/9
    loss = giou_loss(torch.tensor([[0.0, 0, 2, 2]]), torch.tensor([[1.0, 1, 3, 3]]))
    assert loss.item() == pytest.approx(1 - (1 / 7 - 2 / 9), rel=1e-6)
    assert giou_loss(torch.tensor([[0.0, 0, 2, 2]]), torch.tensor([[0.0, 0, 2, 2]])).item() == pytest.approx(0.0, abs=1e-6)


def test_centerness_target_hand_value():
    # point (1, 1) in [0, 0, 4, 2]: l=1 r=3 t=1 b=1 -> sqrt(1/3 * 1)
    c = centerness_target(torch.tensor([[1.0, 1.0], [5.0, 1.0]]), torch.tensor([[0.0, 0, 4, 2], [0.0, 0, 4, 2]]))
    assert c[0].item() == pytest.approx(math.sqrt(1 / 3), rel=1e-6)
    assert c[1].item() == 0.0  # outside the box


class FixedAssigner:
    def __init__(self, result: AssignResult):
        self.result = result
        self.calls = 0

    def __call__(self, priors, pred_scores, pred_boxes, gt_boxes, gt_labels, gt_mask):
        self.calls += 1
        return self.result


def _setup():
    priors = make_priors([(1, 3)], strides=(8,))  # 3 anchors at x = 0, 8, 16; y = 0
    gt = torch.tensor([[[-4.0, -4.0, 12.0, 4.0]]])  # (1, 1, 4)
    res = AssignResult(
        labels=torch.tensor([[1, 1, 2]]),  # C = 2: anchors 0, 1 positive for class 1
        boxes=torch.cat([gt[0], gt[0], torch.zeros(1, 4)])[None],
        scores=torch.tensor([[0.4, 0.8, 0.0]]),
        fg_mask=torch.tensor([[True, True, False]]),
        gt_index=torch.tensor([[0, 0, -1]]),
    )
    pred_boxes = torch.tensor([[[-4.0, -4.0, 12.0, 4.0], [0.0, -4.0, 12.0, 4.0], [0.0, 0.0, 1.0, 1.0]]])
    outputs = {"cls_logits": torch.zeros(1, 3, 2), "boxes": pred_boxes, "centerness": None, "priors": priors}
    return priors, gt, res, outputs


def test_criterion_tal_phase_matches_hand_computation():
    _, gt, res, outputs = _setup()
    crit = TOODCriterion(2, Phase(FixedAssigner(res), "soft", "target_sum", "target"), reg_weight=2.0)
    out = crit(outputs, gt, torch.tensor([[1]]), torch.tensor([[True]]), epoch=0)
    ln2 = math.log(2)
    # cls: p = 0.5 everywhere; positives' own-class targets 0.4, 0.8; all other entries target 0.
    pos = (0.1**2) * ln2 + (0.3**2) * ln2  # |t - p|^2 * BCE(0.5, t) = |t-p|^2 ln 2 at p = .5
    neg = 4 * (0.25 * ln2)  # 4 remaining (anchor, class) entries with target 0: p^2 * ln 2
    assert out.terms["loss_cls"].item() == pytest.approx((pos + neg) / 1.2, rel=1e-5)  # / sum(t_hat) = 1.2
    # box: anchor 0 exact (loss 0), anchor 1 IoU = 12/16 inside target -> GIoU = 0.75.
    assert out.terms["loss_box"].item() == pytest.approx(2.0 * (0.8 * 0.25) / 1.2, rel=1e-5)
    assert out.num_pos == 2


def test_criterion_hard_phase_and_epoch_switch():
    _, gt, res, outputs = _setup()
    warm, main = FixedAssigner(res), FixedAssigner(res)
    crit = TOODCriterion(
        2, Phase(main, "soft", "target_sum", "target"), warmup=Phase(warm, "hard", "num_pos", "none"), warmup_epochs=2
    )
    out = crit(outputs, gt, torch.tensor([[1]]), torch.tensor([[True]]), epoch=1)
    assert (warm.calls, main.calls) == (1, 0)
    ln2 = math.log(2)
    expected_cls = (2 * 0.25 * 0.25 * ln2 + 4 * 0.75 * 0.25 * ln2) / 2  # focal, / num_pos
    assert out.terms["loss_cls"].item() == pytest.approx(expected_cls, rel=1e-5)
    assert out.terms["loss_box"].item() == pytest.approx(2.0 * 0.25 / 2, rel=1e-5)  # unweighted mean GIoU loss
    crit(outputs, gt, torch.tensor([[1]]), torch.tensor([[True]]), epoch=2)
    assert (warm.calls, main.calls) == (1, 1)


def test_criterion_ignores_label_minus_one():
    _, gt, res, outputs = _setup()
    ignored = res._replace(labels=torch.tensor([[1, 1, -1]]))
    crit_a = TOODCriterion(2, Phase(FixedAssigner(res), "hard", "num_pos", "none"))
    crit_b = TOODCriterion(2, Phase(FixedAssigner(ignored), "hard", "num_pos", "none"))
    a = crit_a(outputs, gt, torch.tensor([[1]]), torch.tensor([[True]]), 0).terms["loss_cls"].item()
    b = crit_b(outputs, gt, torch.tensor([[1]]), torch.tensor([[True]]), 0).terms["loss_cls"].item()
    # anchor 2 contributes 2 negatives of 0.75 * 0.25 * ln 2 each (divided by num_pos 2)
    assert a - b == pytest.approx(2 * 0.75 * 0.25 * math.log(2) / 2, rel=1e-5)


def _centerness_case():
    """Anchors 0, 1 (points (0, 0), (8, 0)) positive for GT [-4, -4, 20, 4] (24 x 8, area 192).

    Centerness, sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)):
      point (0, 0): l = 4, r = 20, t = b = 4 -> sqrt(4/20 * 1) = sqrt(0.2)
      point (8, 0): l = r = 12, t = b = 4   -> 1
    """
    priors = make_priors([(1, 3)], strides=(8,))
    gt = torch.tensor([[[-4.0, -4.0, 20.0, 4.0]]])
    res = AssignResult(
        labels=torch.tensor([[0, 0, 1]]),  # C = 1: anchors 0, 1 positive, anchor 2 background
        boxes=torch.cat([gt[0], gt[0], torch.zeros(1, 4)])[None],
        scores=torch.tensor([[1.0, 1.0, 0.0]]),
        fg_mask=torch.tensor([[True, True, False]]),
        gt_index=torch.tensor([[0, 0, -1]]),
    )
    pred_boxes = torch.tensor([[[-4.0, -4.0, 14.0, 4.0], [0.0, -8.0, 28.0, 0.0], [0.0, 0.0, 1.0, 1.0]]])
    outputs = {"cls_logits": torch.zeros(1, 3, 1), "boxes": pred_boxes, "priors": priors,
               "centerness": torch.tensor([[math.log(4.0), 0.0, 5.0]])}  # p = 0.8, 0.5 on the positives
    return gt, res, outputs


def test_criterion_centerness_weighted_box_loss_hand_value():
    """The ATSS warm-up phase (and ATSS / IoU-based / centre sampling by default): GIoU loss
    weighted by the centerness of each positive's point, normalised by the sum of the weights."""
    gt, res, outputs = _centerness_case()
    crit = TOODCriterion(1, Phase(FixedAssigner(res), "hard", "num_pos", "centerness"), reg_weight=2.0)
    out = crit(outputs, gt, torch.tensor([[0]]), torch.tensor([[True]]), epoch=0)
    # anchor 0: [-4, -4, 14, 4] lies inside the GT: IoU = 18*8 / 192 = 0.75 = GIoU -> loss 0.25
    # anchor 1: [0, -8, 28, 0] (area 224): inter 20*4 = 80, union 192 + 224 - 80 = 336, enclosing
    #   [-4, -8, 28, 4] = 32*12 = 384: GIoU = 80/336 - 48/384 = 5/21 - 1/8 = 19/168 -> loss 149/168
    c0, c1 = math.sqrt(0.2), 1.0
    expected = 2.0 * (c0 * 0.25 + c1 * 149 / 168) / (c0 + c1)  # = 1.3802 (unweighted: 1.1369)
    assert out.terms["loss_box"].item() == pytest.approx(expected, rel=1e-5)


def test_criterion_centerness_loss_hand_value():
    """BCE of the centerness logits against the centerness targets, summed over positives / num_pos."""
    gt, res, outputs = _centerness_case()
    crit = TOODCriterion(1, Phase(FixedAssigner(res), "hard", "num_pos", "centerness"))
    out = crit(outputs, gt, torch.tensor([[0]]), torch.tensor([[True]]), epoch=0)
    c0 = math.sqrt(0.2)
    bce0 = -(c0 * math.log(0.8) + (1 - c0) * math.log(0.2))  # p = 0.8, target sqrt(0.2): 0.98948
    bce1 = math.log(2)  # p = 0.5, target 1
    assert out.terms["loss_centerness"].item() == pytest.approx((bce0 + bce1) / 2, rel=1e-5)  # = 0.84131


def test_criterion_gfl_box_weight_is_the_max_predicted_score():
    """GFL (Table 2's ATSS + QFL): GIoU weighted by each positive's highest class probability,
    normalised by the sum of those weights."""
    _, gt, res, outputs = _setup()
    outputs = {**outputs, "cls_logits": torch.tensor([[[0.0, math.log(3.0)], [math.log(0.25), -1.0], [2.0, 2.0]]])}
    crit = TOODCriterion(2, Phase(FixedAssigner(res), "soft", "num_pos", "max_score"), reg_weight=2.0)
    out = crit(outputs, gt, torch.tensor([[1]]), torch.tensor([[True]]), epoch=0)
    w0, w1 = 0.75, 1 / (1 + math.exp(1.0))  # max over classes of sigmoid: 0.75 (anchor 0), sigmoid(-1) (anchor 1)
    # anchor 0's box is exact (GIoU loss 0), anchor 1's GIoU loss is 0.25
    assert out.terms["loss_box"].item() == pytest.approx(2.0 * (w1 * 0.25) / (w0 + w1), rel=1e-5)
