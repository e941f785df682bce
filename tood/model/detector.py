"""One-stage detector: backbone -> FPN -> head, returning the head's raw outputs and the priors."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from tood.priors import DEFAULT_STRIDES, Priors, make_priors

_MAX_CACHED_SIZES = 64


class Detector(nn.Module):
    """``forward(images (B, 3, H, W)) -> dict``:

    - ``cls_logits`` (B, A, C) float32; ``sigmoid`` of it is the detection score.
    - ``boxes`` (B, A, 4) float32 xyxy in input-image pixels.
    - ``centerness`` (B, A) logits or None.
    - ``priors``: :class:`Priors` of this input size (A priors, level by level, row-major).
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module, strides: tuple[int, ...] = DEFAULT_STRIDES):
        super().__init__()
        self.backbone, self.neck, self.head = backbone, neck, head
        self.strides = tuple(strides)
        # Priors depend only on the feature sizes and device; multi-scale training sees a
        # handful of sizes, so a small cache saves rebuilding them every step.
        self._priors_cache: dict[tuple, Priors] = {}

    def priors_for(self, feat_sizes: tuple[tuple[int, int], ...], device: torch.device) -> Priors:
        key = (feat_sizes, str(device))
        priors = self._priors_cache.get(key)
        if priors is None:
            if len(self._priors_cache) >= _MAX_CACHED_SIZES:
                self._priors_cache.clear()
            priors = make_priors(feat_sizes, self.strides, device=device)
            self._priors_cache[key] = priors
        return priors

    def forward(self, images: Tensor) -> dict:
        feats = self.neck(self.backbone(images))
        if len(feats) != len(self.strides):
            raise ValueError(f"Detector: neck returned {len(feats)} levels but strides={self.strides}")
        priors = self.priors_for(tuple((f.shape[2], f.shape[3]) for f in feats), images.device)
        out = dict(self.head(feats, priors))
        out["priors"] = priors
        return out


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (all of them, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
