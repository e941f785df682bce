"""The result type shared by every assigner, and the padded-GT batch convention.

Ground truths of a batch are padded to the batch maximum ``G``:
``gt_boxes (B, G, 4)`` xyxy pixels, ``gt_labels (B, G)`` long, ``gt_mask (B, G)`` bool
(True = real GT). Padded rows may hold anything; every assigner ignores them.
"""
from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class AssignResult(NamedTuple):
    """Per-anchor training targets for a batch.

    labels:   (B, A) long, class index for foreground, ``num_classes`` for background,
              -1 for priors an assigner ignores (MaxIoU's band between its thresholds).
    boxes:    (B, A, 4) xyxy pixels of the assigned GT (zeros for background).
    scores:   (B, A) soft targets in [0, 1]: normalised alignment ``t_hat`` for TAL,
              IoU(predicted box, assigned GT) for the other assigners; 0 for background.
    fg_mask:  (B, A) bool foreground mask.
    gt_index: (B, A) long index into the padded GT dimension, -1 for background.
    """

    labels: Tensor
    boxes: Tensor
    scores: Tensor
    fg_mask: Tensor
    gt_index: Tensor
