"""Anchor points and square anchors for every FPN level, flattened level by level.

Anchor ``a`` of level ``l`` at feature cell (row ``i``, column ``j``) is centred at
``(x, y) = (j * s, i * s)`` pixels (offset 0, as in the reference), ``s`` the stride.
Within a level the order is row-major (i, then j); levels follow each other.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

DEFAULT_STRIDES = (8, 16, 32, 64, 128)
OCTAVE_BASE_SCALE = 8


@dataclass(frozen=True)
class Priors:
    """Priors of one image size (shared by every image of a padded batch).

    points:  (A, 2) centres (x, y) in pixels.
    anchors: (A, 4) xyxy square anchors of side ``octave_base_scale * stride``.
    strides: (A,) stride in pixels of each prior's level.
    num_per_level: number of priors on each level, in level order.
    """

    points: Tensor
    anchors: Tensor
    strides: Tensor
    num_per_level: tuple[int, ...]

    @property
    def num_priors(self) -> int:
        return int(self.points.shape[0])

    def level_slices(self) -> list[slice]:
        out, start = [], 0
        for n in self.num_per_level:
            out.append(slice(start, start + n))
            start += n
        return out


def make_priors(
    feat_sizes: list[tuple[int, int]] | tuple[tuple[int, int], ...],
    strides: tuple[int, ...] = DEFAULT_STRIDES,
    octave_base_scale: float = OCTAVE_BASE_SCALE,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Priors:
    """Build :class:`Priors` for feature maps of ``feat_sizes`` = [(H_l, W_l), ...]."""
    if len(feat_sizes) != len(strides):
        raise ValueError(f"make_priors: {len(feat_sizes)} feature maps but {len(strides)} strides")
    points, anchors, level_strides, counts = [], [], [], []
    for (h, w), s in zip(feat_sizes, strides):
        ys = torch.arange(h, device=device, dtype=dtype) * s
        xs = torch.arange(w, device=device, dtype=dtype) * s
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)  # (H*W, 2)
        half = 0.5 * octave_base_scale * s
        points.append(pts)
        anchors.append(torch.cat([pts - half, pts + half], dim=-1))  # (H*W, 4)
        level_strides.append(torch.full((h * w,), float(s), device=device, dtype=dtype))
        counts.append(h * w)
    return Priors(
        points=torch.cat(points),
        anchors=torch.cat(anchors),
        strides=torch.cat(level_strides),
        num_per_level=tuple(counts),
    )
