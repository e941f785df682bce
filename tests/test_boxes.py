"""tood/boxes.py box coders against numbers worked out by hand (arithmetic in the comments).

Non-square anchors and unequal deltas on every axis, so that swapping x and y, left and top,
or using another delta std changes the expected numbers.
"""
import math

import torch

from tood.boxes import bbox2distance, delta_decode, delta_encode, distance2bbox

POINTS = torch.tensor([[10.0, 20.0], [0.0, 0.0]])
LTRB = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 0.5, 2.0, 7.0]])
# (x - l, y - t, x + r, y + b): (10 - 1, 20 - 2, 10 + 3, 20 + 4) and (0 - 5, 0 - 0.5, 0 + 2, 0 + 7)
XYXY = torch.tensor([[9.0, 18.0, 13.0, 24.0], [-5.0, -0.5, 2.0, 7.0]])

ANCHOR = torch.tensor([0.0, 0.0, 40.0, 20.0])  # w 40, h 20, centre (20, 10)
# the project's delta coder: means 0, stds (0.1, 0.1, 0.2, 0.2) (tood.boxes.DELTA_STDS, the default)


def test_distance2bbox_hand_values():
    assert distance2bbox(POINTS, LTRB).tolist() == XYXY.tolist()
    # max_shape is (h, w) = (20, 12): x clipped to [0, 12], y to [0, 20]
    clipped = distance2bbox(POINTS, LTRB, max_shape=(20, 12))
    assert clipped.tolist() == [[9.0, 18.0, 12.0, 20.0], [0.0, 0.0, 2.0, 7.0]]


def test_bbox2distance_hand_values():
    assert bbox2distance(POINTS, XYXY).tolist() == LTRB.tolist()


def test_delta_encode_hand_values():
    # box [10, 0, 50, 40]: w 40, h 40, centre (30, 20)
    # dx = (30 - 20) / 40 = 0.25 -> / 0.1 = 2.5     dy = (20 - 10) / 20 = 0.5 -> / 0.1 = 5
    # dw = log(40 / 40) = 0 -> 0                     dh = log(40 / 20) = log 2 -> / 0.2 = 5 log 2
    deltas = delta_encode(ANCHOR, torch.tensor([10.0, 0.0, 50.0, 40.0]))
    torch.testing.assert_close(deltas, torch.tensor([2.5, 5.0, 0.0, 5 * math.log(2)]))


def test_delta_decode_hand_values():
    # deltas (1, -2, 0.5, 1) * stds (0.1, 0.1, 0.2, 0.2) = (0.1, -0.2, 0.1, 0.2)
    # cx = 20 + 0.1 * 40 = 24     cy = 10 - 0.2 * 20 = 6
    # w = 40 e^0.1 = 44.207       h = 20 e^0.2 = 24.428
    # box = (24 - w/2, 6 - h/2, 24 + w/2, 6 + h/2) = (1.897, -6.214, 46.103, 18.214)
    box = delta_decode(ANCHOR, torch.tensor([1.0, -2.0, 0.5, 1.0]))
    w, h = 40 * math.exp(0.1), 20 * math.exp(0.2)
    torch.testing.assert_close(box, torch.tensor([24 - w / 2, 6 - h / 2, 24 + w / 2, 6 + h / 2]))


def test_delta_decode_clamps_the_log_size():
    # dh = 100 * 0.2 = 20 is clamped to |log(16 / 1000)|: h = 20 * 1000 / 16 = 1250 (centre y 10);
    # dw = -100 * 0.2 = -20 is clamped to log(16 / 1000): w = 40 * 16 / 1000 = 0.64 (centre x 20)
    box = delta_decode(ANCHOR, torch.tensor([0.0, 0.0, -100.0, 100.0]))
    torch.testing.assert_close(box, torch.tensor([20 - 0.32, 10 - 625.0, 20 + 0.32, 10 + 625.0]))


def test_delta_decode_inverts_encode_on_a_batch():
    anchors = torch.tensor([[[0.0, 0.0, 40.0, 20.0], [5.0, -3.0, 13.0, 29.0]]])  # (1, 2, 4)
    boxes = torch.tensor([[[10.0, 0.0, 50.0, 40.0], [-2.0, 1.0, 30.0, 9.0]]])
    torch.testing.assert_close(delta_decode(anchors, delta_encode(anchors, boxes)), boxes)
