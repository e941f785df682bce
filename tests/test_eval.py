import contextlib
import copy
import io
import math
import random
import sys

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tood.boxes import box_iou
from tood.eval import AlignmentAccumulator, alignment_before_nms, count_detection_types, detections_to_coco, evaluate_coco
from tood.eval.coco_map import METRIC_NAMES, resolve_backend
from tood.eval.alignment import instance_alignment, instance_predictions, instance_scores

# ---------------------------------------------------------------- COCO AP


def make_coco(images, anns, num_cats=3):
    """pycocotools COCO from ``images`` [(id, w, h)] and ``anns`` [(image_id, cat_id, [x, y, w, h])]."""
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i, "width": w, "height": h, "file_name": f"{i}.png"} for i, w, h in images],
        "categories": [{"id": c, "name": f"c{c}"} for c in range(1, num_cats + 1)],
        "annotations": [
            {"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for k, (i, c, b) in enumerate(anns)
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def pycocotools_by_hand(coco, dets, img_ids=None):
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes([dict(d) for d in dets]), "bbox")
        if img_ids is not None:
            ev.params.imgIds = img_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float("nan") if s < 0 else 100 * s for s in ev.stats[:6]]


def det(image_id, cat, bbox, score):
    return {"image_id": image_id, "category_id": cat, "bbox": bbox, "score": score}


def random_gt(seed, n_images=6):
    rng = random.Random(seed)
    images = [(i, 320, 240) for i in range(1, n_images + 1)]
    anns = []
    for i, _, _ in images:
        for _ in range(rng.randint(0, 6)):
            w, h = rng.uniform(4, 150), rng.uniform(4, 120)
            anns.append((i, rng.randint(1, 3), [rng.uniform(0, 320 - w), rng.uniform(0, 240 - h), w, h]))
    return make_coco(images, anns), anns, images


def random_dets(seed, anns, images):
    rng = random.Random(seed)
    dets = []
    for i, c, (x, y, w, h) in anns:  # jittered copies of the GT, sometimes with the wrong class
        for _ in range(rng.randint(0, 3)):
            j = [rng.gauss(0, 0.15 * w), rng.gauss(0, 0.15 * h), rng.gauss(0, 0.2 * w), rng.gauss(0, 0.2 * h)]
            cat = c if rng.random() < 0.8 else rng.randint(1, 3)
            dets.append(det(i, cat, [x + j[0], y + j[1], max(1.0, w + j[2]), max(1.0, h + j[3])], rng.random()))
    for i, _, _ in images:  # background false positives
        for _ in range(rng.randint(0, 5)):
            dets.append(det(i, rng.randint(1, 3), [rng.uniform(0, 300), rng.uniform(0, 220), rng.uniform(2, 80), rng.uniform(2, 80)], rng.random()))
    return dets


def test_hand_computed_ap_and_pycocotools_agree():
    coco = make_coco([(1, 200, 200)], [(1, 1, [10, 10, 50, 50]), (1, 1, [100, 100, 50, 50])])
    dets = [det(1, 1, [10, 10, 50, 50], 0.9), det(1, 1, [60, 140, 50, 50], 0.8), det(1, 1, [100, 100, 50, 50], 0.7)]
    # TP (P=1, R=.5), FP, TP (P=2/3, R=1): 51 recall points at precision 1, 50 at 2/3.
    expected = (51 + 50 * 2 / 3) / 101 * 100
    m = evaluate_coco(coco, dets)
    assert m["AP"] == pytest.approx(expected) and m["AP50"] == pytest.approx(expected)
    assert m["AP75"] == pytest.approx(expected) and m["APm"] == pytest.approx(expected)
    assert math.isnan(m["APs"]) and math.isnan(m["APl"])  # no GT of those sizes
    ref = pycocotools_by_hand(coco, dets)
    for k, r in zip(("AP", "AP50", "AP75", "APs", "APm", "APl"), ref):
        assert (math.isnan(m[k]) and math.isnan(r)) or m[k] == pytest.approx(r, abs=1e-9)


def test_perfect_detections_give_100():
    anns = [(1, 1, [5, 5, 20, 20]), (1, 2, [40, 40, 60, 60]), (2, 3, [0, 0, 150, 120]), (2, 1, [160, 10, 30, 25])]
    coco = make_coco([(1, 200, 200), (2, 200, 200)], anns)
    dets = [det(i, c, b, 0.5 + 0.1 * k) for k, (i, c, b) in enumerate(anns)]
    for backend in ("pycocotools", "faster"):
        m = evaluate_coco(coco, dets, backend=backend)
        assert all(v == pytest.approx(100.0) for v in m.values()), (backend, m)


def test_zero_detections_give_zero_without_output(capsys):
    anns = [(1, 1, [5, 5, 20, 20]), (1, 2, [40, 40, 60, 60]), (2, 3, [0, 0, 150, 120])]
    coco = make_coco([(1, 200, 200), (2, 200, 200)], anns)
    for backend in ("pycocotools", "faster"):
        m = evaluate_coco(coco, [], backend=backend)
        assert m == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "APs": 0.0, "APm": 0.0, "APl": 0.0}
    evaluate_coco(coco, [det(1, 1, [5, 5, 20, 20], 0.9)])
    assert capsys.readouterr().out == ""
    evaluate_coco(coco, [det(1, 1, [5, 5, 20, 20], 0.9)], verbose=True)
    assert "Average Precision" in capsys.readouterr().out


def assert_same_metrics(got: dict[str, float], ref: list[float]) -> None:
    """``got`` (evaluate_coco) equals ``ref`` (pycocotools_by_hand) to 1e-9 on the 0-100 scale.

    The backends run the same matching and the same float64 accumulation and differ only in
    summation order (observed: <= 1e-14). A single detection matched differently changes at
    least one precision entry by 1 / (detections of its class), which moves AP by more than
    1e-7 even on the 5,000-image case, so 1e-9 still catches it."""
    for k, r in zip(METRIC_NAMES, ref):
        assert (math.isnan(got[k]) and math.isnan(r)) or abs(got[k] - r) <= 1e-9, (k, got[k], r)


@pytest.mark.parametrize("seed", range(4))
def test_backends_agree_with_pycocotools_on_random_detections(seed):
    coco, anns, images = random_gt(seed)
    dets = random_dets(seed, anns, images)
    before = [dict(d) for d in dets]
    img_ids = [1, 2, 4] if seed % 2 else None
    ref = pycocotools_by_hand(coco, dets, img_ids)
    slow = evaluate_coco(coco, dets, backend="pycocotools", img_ids=img_ids)
    fast = evaluate_coco(coco, dets, backend="faster", img_ids=img_ids)
    assert dets == before  # inputs untouched
    assert 0 < slow["AP"] < 100
    assert_same_metrics(slow, ref)
    assert_same_metrics(fast, ref)


def coco_sized_case(n_images: int, dets_per_image: int = 100, seed: int = 0, num_cats: int = 80) -> tuple[COCO, list[dict]]:
    """A generated COCO val-like case: ``n_images`` of 640x480, 0-15 GTs each over ``num_cats``
    classes (sides log-uniform in 4-400 px, so small, medium and large all occur; 2% crowd),
    and exactly ``dets_per_image`` detections per image: up to 3 jittered copies of each GT
    (20% with a random class, scores in [0.3, 1)) and background boxes (scores in [0, 0.7)).
    Scores are rounded to 2 decimals so that ties occur, as with float32 model scores.
    Also used by benchmarks/bench_eval.py."""
    rng = np.random.default_rng(seed)
    size = np.array([640.0, 480.0])
    images, anns, dets = [], [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"})
        g = int(rng.integers(0, 16))
        wh = np.minimum(np.exp(rng.uniform(np.log(4), np.log(400), (g, 2))), size - 1)  # (G, 2)
        xy = rng.random((g, 2)) * (size - wh)
        cats = rng.integers(1, num_cats + 1, g)
        crowd = rng.random(g) < 0.02
        anns += [{"id": len(anns) + k + 1, "image_id": i, "category_id": int(cats[k]), "bbox": [*xy[k].tolist(), *wh[k].tolist()],
                  "area": float(wh[k, 0] * wh[k, 1]), "iscrowd": int(crowd[k])} for k in range(g)]
        n_near = min(dets_per_image, 3 * g)
        src = rng.integers(0, max(g, 1), n_near)  # the GT each near detection copies
        jitter = rng.normal(0.0, 0.1, (n_near, 4)) * np.tile(wh[src], 2)  # 10% of the GT's size
        near = np.concatenate([xy[src] + jitter[:, :2], np.maximum(wh[src] + jitter[:, 2:], 1.0)], 1)  # (n_near, 4) xywh
        near_cats = np.where(rng.random(n_near) < 0.8, cats[src], rng.integers(1, num_cats + 1, n_near))
        n_bg = dets_per_image - n_near
        bg_wh = np.minimum(np.exp(rng.uniform(np.log(4), np.log(300), (n_bg, 2))), size - 1)
        bg = np.concatenate([rng.random((n_bg, 2)) * (size - bg_wh), bg_wh], 1)
        boxes = np.concatenate([near, bg])  # (dets_per_image, 4) xywh
        labels = np.concatenate([near_cats, rng.integers(1, num_cats + 1, n_bg)])
        scores = np.round(np.concatenate([rng.uniform(0.3, 1.0, n_near), rng.uniform(0.0, 0.7, n_bg)]), 2)
        dets += [{"image_id": i, "category_id": int(c), "bbox": b, "score": float(sc)}
                 for b, c, sc in zip(boxes.tolist(), labels.tolist(), scores.tolist())]
    coco = COCO()
    coco.dataset = {"images": images, "categories": [{"id": c, "name": f"c{c}"} for c in range(1, num_cats + 1)], "annotations": anns}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco, dets


@pytest.mark.parametrize("n_images", [500, pytest.param(5000, marks=pytest.mark.slow)])
def test_faster_equals_pycocotools_on_a_coco_sized_case(n_images):
    coco, dets = coco_sized_case(n_images, seed=0)
    assert len(dets) == 100 * n_images
    ref = pycocotools_by_hand(coco, dets)
    assert 10 < ref[0] < 90 and not any(math.isnan(r) for r in ref)  # every metric is defined and informative
    gt_before, dets_before = copy.deepcopy(coco.dataset), copy.deepcopy(dets)
    assert_same_metrics(evaluate_coco(coco, dets, backend="faster"), ref)
    assert coco.dataset == gt_before and dets == dets_before  # nothing written into the inputs, nested lists included


def test_auto_backend_is_faster_where_installed_else_pycocotools(monkeypatch):
    coco, anns, images = random_gt(1)
    dets = random_dets(1, anns, images)
    ref = pycocotools_by_hand(coco, dets)
    assert resolve_backend("auto") == "faster"  # a core dependency
    assert_same_metrics(evaluate_coco(coco, dets), ref)
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # as if not installed: its import fails
    assert resolve_backend("auto") == "pycocotools"
    assert_same_metrics(evaluate_coco(coco, dets), ref)
    with pytest.raises(ImportError, match="backend='faster' needs the faster-coco-eval package"):
        evaluate_coco(coco, dets, backend="faster")


def test_unknown_backend_is_named():
    coco = make_coco([(1, 10, 10)], [])
    with pytest.raises(ValueError, match="backend: unknown value 'fast'"):
        evaluate_coco(coco, [], backend="fast")


def test_detections_to_coco():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.5, 1.5, 2.5, 4.0]])
    out = detections_to_coco(boxes, torch.tensor([0.75, 0.25]), torch.tensor([2, 0]), [7, 9], cat_ids=[1, 3, 8])
    assert out == [
        {"image_id": 7, "category_id": 8, "bbox": [10.0, 20.0, 20.0, 40.0], "score": 0.75},
        {"image_id": 9, "category_id": 1, "bbox": [0.5, 1.5, 2.0, 2.5], "score": 0.25},
    ]
    assert detections_to_coco(boxes, torch.tensor([0.75, 0.25]), torch.tensor([2, 0]), 4, [1, 3, 8])[1]["image_id"] == 4
    assert detections_to_coco(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), [], [1]) == []
    with pytest.raises(ValueError, match="image_ids 1"):
        detections_to_coco(boxes, torch.tensor([0.75, 0.25]), torch.tensor([2, 0]), [7], [1, 3, 8])


# ---------------------------------------------------------------- Table 6 alignment measures


def alignment_case(seed, b=2, a=300, c=3, g=4):
    """Random scores; half the predicted boxes are jittered copies of GTs so IoUs vary."""
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(b, g, 2, generator=gen) * 150
    gt_boxes = torch.cat([xy, xy + 20 + torch.rand(b, g, 2, generator=gen) * 60], -1)  # (B, G, 4)
    gt_labels = torch.randint(0, c, (b, g), generator=gen)
    gt_mask = torch.rand(b, g, generator=gen) < 0.8
    gt_mask[:, 0] = True
    gt_labels[~gt_mask] = -1  # padded rows hold garbage
    src = torch.randint(0, g, (b, a), generator=gen)
    near = torch.gather(gt_boxes, 1, src[..., None].expand(b, a, 4)) + torch.randn(b, a, 4, generator=gen) * 8
    pxy = torch.rand(b, a, 2, generator=gen) * 200
    far = torch.cat([pxy, pxy + 5 + torch.rand(b, a, 2, generator=gen) * 60], -1)
    pred_boxes = torch.where((torch.arange(a) % 2 == 0)[None, :, None], near, far)  # (B, A, 4)
    cls_scores = torch.rand(b, a, c, generator=gen)
    return cls_scores, pred_boxes, gt_boxes, gt_labels, gt_mask


def brute_force_alignment(cls_scores, pred_boxes, gt_boxes, gt_labels, gt_mask, k_pcc=50, k_iou=10, whole_image=False):
    """Per instance, with python loops and scipy: list of (pearson r or None, spearman rho or
    None, top-k mean IoU, n attributed). The instance reading attributes each prediction to
    the valid GT its box overlaps most (IoU > 0); ``whole_image`` ranks every anchor."""
    from scipy.stats import pearsonr, spearmanr

    out = []
    for i in range(gt_boxes.shape[0]):
        valid = [j for j in range(gt_boxes.shape[1]) if gt_mask[i, j]]
        for j in valid:
            s = cls_scores[i, :, gt_labels[i, j]].tolist()
            iou = [box_iou(pred_boxes[i, n][None], gt_boxes[i, j][None]).item() for n in range(len(s))]
            mine = range(len(s))
            if not whole_image:
                best = lambda n: max(valid, key=lambda v: (box_iou(pred_boxes[i, n][None], gt_boxes[i, v][None]).item(), -v))  # noqa: E731
                mine = [n for n in mine if iou[n] > 0 and best(n) == j]
            order = sorted(mine, key=lambda n: -s[n])
            top_s, top_u = [s[n] for n in order[:k_pcc]], [iou[n] for n in order[:k_pcc]]
            ok = len(top_s) >= 2 and len(set(top_s)) > 1 and len(set(top_u)) > 1
            k = min(k_iou, len(order))
            out.append((pearsonr(top_s, top_u)[0] if ok else None, spearmanr(top_s, top_u)[0] if ok else None,
                        sum(top_u[:k]) / k if k else 0.0, len(order)))
    return out


def test_pcc_and_top10_iou_match_scipy_and_brute_force():
    acc = AlignmentAccumulator()
    ref, ref_img = [], []
    for seed in range(3):  # several batches accumulate into one mean over instances
        case = alignment_case(seed)
        acc.update_before_nms(*case)
        ref += brute_force_alignment(*case)
        ref_img += brute_force_alignment(*case, whole_image=True)
    rs = [r for r, *_ in ref if r is not None]
    res = acc.result()
    assert res["n_instances"] == len(ref) and len(ref) >= 15
    assert res["n_pcc_skipped"] == sum(r is None for r, *_ in ref)
    assert res["PCC"] == pytest.approx(sum(rs) / len(rs), abs=1e-6)
    assert res["PCC_spearman"] == pytest.approx(sum(x for _, x, *_ in ref if x is not None) / len(rs), abs=1e-6)
    assert res["top10_iou"] == pytest.approx(sum(x[2] for x in ref) / len(ref), abs=1e-6)
    assert res["pcc_n_mean"] == pytest.approx(sum(x[3] for x in ref) / len(ref))
    r_img = [r for r, *_ in ref_img if r is not None]
    assert res["PCC_image"] == pytest.approx(sum(r_img) / len(r_img), abs=1e-6)
    assert 0.05 < res["top10_iou"] < 0.95 and abs(res["PCC"]) > 1e-3  # the data is not degenerate
    one = alignment_before_nms(*alignment_case(0), topk_pcc=20, topk_iou=5)
    ref = brute_force_alignment(*alignment_case(0), k_pcc=20, k_iou=5)
    assert one.pcc_sum == pytest.approx(sum(r for r, *_ in ref if r is not None), abs=1e-6)
    assert one.iou_sum == pytest.approx(sum(x[2] for x in ref), abs=1e-6)


def test_rescoring_instances_matches_a_fresh_attribution_with_brute_force():
    """``inst._replace(scores=instance_scores(...))`` (evaluate's one attribution, reused for
    another score) gives what the brute-force reference gives for that score."""
    cls_scores, pred_boxes, gt_boxes, gt_labels, gt_mask = alignment_case(1)
    other = torch.rand(cls_scores.shape, generator=torch.Generator().manual_seed(7))
    inst = instance_predictions(cls_scores, pred_boxes, gt_boxes, gt_labels, gt_mask)
    s = instance_alignment(inst._replace(scores=instance_scores(other, gt_labels, gt_mask)))
    ref = brute_force_alignment(other, pred_boxes, gt_boxes, gt_labels, gt_mask)
    assert s.pcc_sum == pytest.approx(sum(r for r, *_ in ref if r is not None), abs=1e-6)
    assert s.iou_sum == pytest.approx(sum(x[2] for x in ref), abs=1e-6)
    assert s.pcc_sum != pytest.approx(instance_alignment(inst).pcc_sum, abs=1e-3)  # the score mattered


def test_instance_reading_differs_from_whole_image_reading_by_hand():
    """One GT [0, 0, 10, 10] and four predictions: two on the object (scores 0.9 / 0.6 with IoU
    0.5 / 1.0 -- misaligned), two far away on background with low scores and IoU 0. The whole
    image's top-4 correlates score with IoU through fg/bg contrast (r > 0); the instance's own
    predictions are anti-aligned (r = -1 on two points, top-10 IoU 0.75, n = 2)."""
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 5.0], [0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0], [70.0, 70.0, 80.0, 80.0]]])
    scores = torch.tensor([[[0.9], [0.6], [0.1], [0.05]]])
    gt, labels, mask = torch.tensor([[[0.0, 0.0, 10.0, 10.0]]]), torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.bool)
    s = alignment_before_nms(scores, boxes, gt, labels, mask, topk_pcc=4, topk_iou=10)
    assert (s.n_pcc, s.n_sum) == (1, 2)
    assert s.pcc_sum == pytest.approx(-1.0) and s.spearman_sum == pytest.approx(-1.0)
    assert s.iou_sum == pytest.approx(0.75)
    from scipy.stats import pearsonr

    assert s.pcc_image_sum == pytest.approx(pearsonr([0.9, 0.6, 0.1, 0.05], [0.5, 1.0, 0.0, 0.0])[0], abs=1e-6)
    assert s.pcc_image_sum > 0.5


def test_predictions_go_to_the_gt_they_overlap_most():
    """A box overlapping two GTs counts for the one with the higher IoU only."""
    gt = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [8.0, 0.0, 18.0, 10.0]]])
    boxes = torch.tensor([[[1.0, 0.0, 11.0, 10.0], [7.0, 0.0, 17.0, 10.0], [0.0, 0.0, 9.0, 10.0]]])  # GT0, GT1, GT0
    scores = torch.tensor([[[0.8], [0.7], [0.3]]])
    labels, mask = torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool)
    s = alignment_before_nms(scores, boxes, gt, labels, mask)
    assert s.n_sum == 3 and s.n_pcc == 1  # GT1 has one prediction: no r
    iou = box_iou(boxes[0], gt[0])
    assert s.iou_sum == pytest.approx(float((iou[0, 0] + iou[2, 0]) / 2 + iou[1, 1]))


def test_constant_instances_are_skipped_by_pcc_only():
    cls_scores, pred_boxes, gt_boxes, gt_labels, gt_mask = alignment_case(5, b=1, g=3)
    gt_mask[:] = True
    gt_labels[0] = torch.tensor([0, 1, 2])
    cls_scores[0, :, 1] = 0.3  # instance 1: every score of its class is equal
    gt_boxes[0, 2] = torch.tensor([1000.0, 1000.0, 1100.0, 1100.0])  # instance 2: IoU 0 everywhere
    s = alignment_before_nms(cls_scores, pred_boxes, gt_boxes, gt_labels, gt_mask)
    ref = brute_force_alignment(cls_scores, pred_boxes, gt_boxes, gt_labels, gt_mask)
    assert ref[1][0] is None and ref[2][0] is None and ref[2][2] == 0.0 and ref[2][3] == 0
    assert (s.n_instances, s.n_pcc) == (3, 1)
    assert s.pcc_sum == pytest.approx(ref[0][0], abs=1e-6)
    # top-10 IoU keeps instance 2 (at 0); instance 1's top-10 is an arbitrary pick among ties.
    # Without instance 1 its predictions go to instance 0 (attribution is over valid GTs).
    gt_mask[0, 1] = False
    s = alignment_before_nms(cls_scores, pred_boxes, gt_boxes, gt_labels, gt_mask)
    ref = brute_force_alignment(cls_scores, pred_boxes, gt_boxes, gt_labels, gt_mask)
    assert (s.n_instances, s.n_pcc) == (2, 1)
    assert s.iou_sum == pytest.approx(ref[0][2] + ref[1][2], abs=1e-6)


def test_no_instances():
    cls_scores, pred_boxes, gt_boxes, gt_labels, gt_mask = alignment_case(1)
    assert alignment_before_nms(cls_scores, pred_boxes, gt_boxes, gt_labels, gt_mask & False) == (0.0, 0.0, 0, 0.0, 0, 0, 0.0, 0)
    res = AlignmentAccumulator().result()
    assert math.isnan(res["PCC"]) and math.isnan(res["top10_iou"]) and res["n_correct"] == 0


def _counts(dets, gts):
    """dets: [(box, score, label)], gts: [(box, label)]."""
    t = lambda rows: torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)
    return tuple(
        count_detection_types(
            t([d[0] for d in dets]),
            torch.tensor([d[1] for d in dets]),
            torch.tensor([d[2] for d in dets], dtype=torch.long),
            t([g[0] for g in gts]),
            torch.tensor([g[1] for g in gts], dtype=torch.long),
        )
    )


def test_detection_types_hand_made():
    gts = [([0, 0, 10, 10], 0), ([20, 0, 30, 10], 0), ([0, 20, 10, 30], 1)]
    dets = [
        ([0, 0, 10, 10], 0.9, 0),  # IoU 1 with GT 0: correct
        ([0, 0, 10, 11], 0.8, 0),  # IoU 100/110 with the already matched GT 0: redundant
        ([20, 0, 30, 3], 0.7, 0),  # IoU 30/100 = 0.3 with GT 1: error
        ([20, 0, 30, 0.5], 0.6, 0),  # IoU 0.05 with GT 1: none
        ([0, 20, 10, 30], 0.95, 0),  # perfect box on GT 2 but the wrong class: none
    ]
    assert _counts(dets, gts) == (1, 1, 1)
    assert _counts(dets[:1], gts) == (1, 0, 0)
    assert _counts(dets[2:3], gts) == (0, 0, 1)
    assert _counts(dets[3:], gts) == (0, 0, 0)
    assert _counts([], gts) == (0, 0, 0) and _counts(dets, []) == (0, 0, 0)


def test_detection_types_follow_score_order():
    # P overlaps both GTs and prefers GT 0 (0.833 vs 0.75); Q only reaches GT 0 (0.7 vs 0.4375).
    gts = [([0, 0, 10, 10], 0), ([0, 0, 10, 16], 0)]
    p, q = [0, 0, 10, 12], [0, 0, 10, 7]
    assert _counts([(p, 0.9, 0), (q, 0.8, 0)], gts) == (1, 1, 0)  # P takes GT 0, Q is redundant
    assert _counts([(p, 0.8, 0), (q, 0.9, 0)], gts) == (2, 0, 0)  # Q takes GT 0, P falls back to GT 1
    assert _counts([(q, 0.9, 0), (p, 0.8, 0)], gts) == (2, 0, 0)  # input order is irrelevant


def test_accumulator_sums_images():
    gts = [([0, 0, 10, 10], 0), ([20, 0, 30, 10], 0)]
    gt_boxes = torch.tensor([g[0] for g in gts], dtype=torch.float32)
    gt_labels = torch.tensor([0, 0])
    acc = AlignmentAccumulator()
    dets = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 11], [20, 0, 30, 3]])
    for _ in range(2):
        acc.update_after_nms(dets, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 0, 0]), gt_boxes, gt_labels)
    res = acc.result()
    assert (res["n_correct"], res["n_redundant"], res["n_error"]) == (2, 2, 2)
