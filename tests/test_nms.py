import pytest
import torch

import tood.nms as nms_module
from tood.nms import batched_nms, nms


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def reference_nms(boxes, scores, idxs, thr):
    """Pure-python greedy NMS: by decreasing score (input order on ties), per group."""
    boxes, scores, idxs = boxes.tolist(), scores.tolist(), idxs.tolist()
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep = []
    for i in order:
        if all(idxs[j] != idxs[i] or _iou(boxes[i], boxes[j]) <= thr for j in keep):
            keep.append(i)
    return keep


def random_case(seed, n, num_groups):
    """Integer boxes on a small canvas (exact IoU ties such as 0.5 happen), duplicated
    boxes, and scores drawn from few values (exact score ties)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.randint(0, 40, (n, 2), generator=g).float()
    wh = torch.randint(1, 20, (n, 2), generator=g).float()
    boxes = torch.cat([xy, xy + wh], 1)
    if n > 3:
        dup = torch.randint(0, n, (n // 4,), generator=g)
        boxes[torch.randperm(n, generator=g)[: n // 4]] = boxes[dup]
    scores = torch.randint(0, 8, (n,), generator=g).float() / 8
    idxs = torch.randint(0, num_groups, (n,), generator=g)
    return boxes, scores, idxs


@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_matches_reference_on_random_inputs(thr):
    for seed in range(40):
        n = [1, 2, 5, 17, 60, 150][seed % 6]
        boxes, scores, idxs = random_case(seed, n, num_groups=1 + seed % 4)
        assert nms(boxes, scores, thr).tolist() == reference_nms(boxes, scores, torch.zeros(n, dtype=torch.long), thr)
        assert batched_nms(boxes, scores, idxs, thr).tolist() == reference_nms(boxes, scores, idxs, thr)


def test_group_by_group_and_chunked_paths_match_reference(monkeypatch):
    monkeypatch.setattr(nms_module, "_SINGLE_MATRIX_MAX", 0)  # force the per-group loop
    monkeypatch.setattr(nms_module, "_ROW_CHUNK", 7)  # and several row chunks
    for seed in range(10):
        boxes, scores, idxs = random_case(100 + seed, 80, num_groups=5)
        assert batched_nms(boxes, scores, idxs, 0.5).tolist() == reference_nms(boxes, scores, idxs, 0.5)
        assert nms(boxes, scores, 0.5).tolist() == reference_nms(boxes, scores, torch.zeros(80, dtype=torch.long), 0.5)


def test_neighbouring_large_group_ids_stay_separate():
    # idx = image * C + label reaches the hundreds; groups must stay exactly separate.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.5]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert batched_nms(boxes, scores, torch.tensor([639, 640, 639]), 0.5).tolist() == [0, 1]


def test_hand_computed_case():
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # 0: score .9
            [1.0, 0.0, 11.0, 10.0],  # 1: IoU with 0 = 90/110 = 0.818
            [20.0, 20.0, 30.0, 30.0],  # 2: overlaps nothing
            [5.0, 0.0, 15.0, 10.0],  # 3: IoU with 0 = 50/150 = 0.333, with 1 = 60/140 = 0.429
        ]
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.85])
    assert nms(boxes, scores, 0.5).tolist() == [0, 3, 2]
    assert nms(boxes, scores, 0.3).tolist() == [0, 2]
    assert nms(boxes, scores, 0.9).tolist() == [0, 3, 1, 2]
    assert batched_nms(boxes, scores, torch.tensor([0, 0, 0, 1]), 0.3).tolist() == [0, 3, 2]
    # 1 alone in its class survives; 3 is still suppressed by 0 (0.333 > 0.3).
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 0, 0]), 0.3).tolist() == [0, 1, 2]


def test_iou_equal_to_threshold_is_kept():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 20.0]])  # IoU = 100/200
    assert nms(boxes, torch.tensor([0.5, 0.6]), 0.5).tolist() == [1, 0]
    assert nms(boxes, torch.tensor([0.5, 0.6]), 0.49).tolist() == [1]


def test_equal_scores_keep_input_order():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3 + [[50.0, 50.0, 60.0, 60.0]])
    scores = torch.tensor([0.5, 0.5, 0.5, 0.5])
    assert nms(boxes, scores, 0.5).tolist() == [0, 3]


def test_empty_and_single():
    empty = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert empty.dtype == torch.long and empty.shape == (0,)
    empty = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5)
    assert empty.dtype == torch.long and empty.shape == (0,)
    one = batched_nms(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([0.1]), torch.tensor([3]), 0.5)
    assert one.dtype == torch.long and one.tolist() == [0]
