"""Training/test transforms and batch collation, plain torch.

A sample is a dict (see :class:`tood.data.coco.CocoDetection`). The pipeline is the
mmdet one: keep-ratio resize -> random horizontal flip -> normalise (ImageNet mean/std,
RGB); :func:`collate` then pads to a multiple of ``size_divisor``. After the transforms a
sample also holds ``img_size`` (h, w) of the resized image, ``scale_factor``
(w_scale, h_scale) = resized / original and ``flipped``; ``image`` is float32 (3, h, w).
Boxes stay xyxy pixels, now of the resized (and possibly flipped) image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # RGB, 0-255 scale
IMAGENET_STD = (58.395, 57.12, 57.375)


def rescale_size(h: int, w: int, scale: tuple[int, int]) -> tuple[int, int]:
    """New (h, w) fitting an image inside ``scale`` = (long, short) edge limits, keeping
    the aspect ratio; the rule and the rounding of mmcv ``imrescale`` (mmdet
    ``Resize(keep_ratio=True)``): factor = min(long / max(h, w), short / min(h, w))."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def resize(sample: dict[str, Any], scale: tuple[int, int]) -> dict[str, Any]:
    """Keep-ratio resize of ``image`` (3, H, W) and ``boxes`` (N, 4) xyxy px into ``scale``.

    Bilinear (antialiased when shrinking); boxes are scaled per axis by the realised
    factors new/old and clipped to the new image. Returns a float32 image."""
    image = sample["image"]
    h, w = image.shape[-2:]
    nh, nw = rescale_size(h, w, scale)
    image = image.to(torch.float32)
    if (nh, nw) != (h, w):
        image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False,
                              antialias=nh < h or nw < w)[0]
    w_scale, h_scale = nw / w, nh / h
    boxes = sample["boxes"] * sample["boxes"].new_tensor([w_scale, h_scale, w_scale, h_scale])
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, nw)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, nh)
    return {**sample, "image": image, "boxes": boxes, "img_size": (nh, nw), "scale_factor": (w_scale, h_scale)}


def hflip(sample: dict[str, Any]) -> dict[str, Any]:
    """Mirror ``image`` (3, H, W) left-right; box x1' = W - x2, x2' = W - x1 (xyxy px)."""
    image, boxes = sample["image"], sample["boxes"]
    w = image.shape[-1]
    flipped_boxes = boxes.clone()
    flipped_boxes[:, 0] = w - boxes[:, 2]
    flipped_boxes[:, 2] = w - boxes[:, 0]
    return {**sample, "image": image.flip(-1), "boxes": flipped_boxes, "flipped": not sample.get("flipped", False)}


def normalize(sample: dict[str, Any], mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> dict[str, Any]:
    """(image - mean) / std per RGB channel on the 0-255 scale -> float32 (3, H, W)."""
    image = sample["image"].to(torch.float32)
    inv_std = 1.0 / image.new_tensor(std)[:, None, None]  # (3, 1, 1)
    # one fused pass, never in place: image * (1 / std) - mean / std
    return {**sample, "image": torch.addcmul(-image.new_tensor(mean)[:, None, None] * inv_std, image, inv_std)}


@dataclass(frozen=True)
class Transforms:
    """Resize (optionally multi-scale) -> flip with probability ``flip_prob`` -> normalise.

    ``img_scale`` = (long, short) edge limits. ``multiscale``: short sides to draw from;
    ``"value"`` mode picks one of them, ``"range"`` mode draws an integer uniformly in
    [min, max]; the long edge stays capped at ``max(img_scale)``. Randomness comes from
    ``generator`` (or the global torch RNG when None); every call draws the same number
    of values, so a seeded generator fixes the result.
    """

    img_scale: tuple[int, int] = (1333, 800)
    multiscale: tuple[int, ...] | None = None
    multiscale_mode: Literal["value", "range"] = "value"
    flip_prob: float = 0.0

    def __post_init__(self) -> None:
        if self.multiscale_mode not in ("value", "range"):
            raise ValueError(f"multiscale_mode: unknown value {self.multiscale_mode!r} (expected 'value' or 'range')")
        if self.multiscale is not None and (len(self.multiscale) == 0 or (self.multiscale_mode == "range" and len(self.multiscale) != 2)):
            raise ValueError(f"multiscale: {self.multiscale!r} (expected a non-empty list of short sides; two values [min, max] in 'range' mode)")
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"flip_prob: {self.flip_prob} (expected a probability in [0, 1])")

    def draw_scale(self, generator: torch.Generator | None = None) -> tuple[int, int]:
        """(long, short) edge limits for one sample."""
        if not self.multiscale:
            return tuple(self.img_scale)
        if self.multiscale_mode == "range":
            lo, hi = min(self.multiscale), max(self.multiscale)
            short = int(torch.randint(lo, hi + 1, (1,), generator=generator))
        else:
            short = int(self.multiscale[int(torch.randint(len(self.multiscale), (1,), generator=generator))])
        return max(self.img_scale), short

    def __call__(self, sample: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        scale = self.draw_scale(generator)
        flip = bool(torch.rand((), generator=generator) < self.flip_prob)
        sample = resize({**sample, "flipped": False}, scale)
        if flip:
            sample = hflip(sample)
        return normalize(sample)


def build_transforms(train: bool, img_scale: tuple[int, int] = (1333, 800), multiscale: Sequence[int] | None = None,
                     flip_prob: float = 0.5, multiscale_mode: Literal["value", "range"] = "value") -> Transforms:
    """Training: (multi-scale) resize + random flip + normalise; test: resize + normalise."""
    if not train:
        return Transforms(tuple(img_scale))
    return Transforms(tuple(img_scale), tuple(multiscale) if multiscale else None, multiscale_mode, flip_prob)


@dataclass
class Batch:
    """A padded batch (the contract in docs/contracts.md, "The padded batch").

    images: (B, 3, H, W) float32 normalised, zero-padded bottom/right, H and W multiples
        of the size divisor.
    gt_boxes: (B, G, 4) xyxy px in the resized image; gt_labels (B, G) long 0..C-1;
        gt_mask (B, G) bool. G = max boxes per image in the batch, at least 1, so that
        reductions over G never see an empty dimension; padded entries are 0 / False.
    image_ids: COCO ids. scale_factors: (B, 2) float (w_scale, h_scale) resized/original.
    img_sizes: (B, 2) long (h, w) of the resized, un-padded image.
    orig_sizes: (B, 2) long (h, w) of the original image. flipped: (B,) bool.
    """

    images: Tensor
    gt_boxes: Tensor
    gt_labels: Tensor
    gt_mask: Tensor
    image_ids: list[int]
    scale_factors: Tensor
    img_sizes: Tensor
    orig_sizes: Tensor
    flipped: Tensor

    def _map(self, fn) -> "Batch":
        return Batch(**{f.name: fn(v) if isinstance(v := getattr(self, f.name), Tensor) else v for f in fields(self)})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":
        """Called by DataLoader(pin_memory=True)."""
        return self._map(Tensor.pin_memory)

    def __len__(self) -> int:
        return self.images.shape[0]


def collate(samples: Sequence[dict[str, Any]], size_divisor: int = 32) -> Batch:
    """Pad transformed samples into a :class:`Batch` (one copy per image, no per-pixel work)."""
    for s in samples:
        if s["image"].dtype != torch.float32:
            raise TypeError(f"collate: image {s['image_id']} is {s['image'].dtype} (expected float32; apply build_transforms first)")
    b = len(samples)
    sizes = torch.tensor([s["image"].shape[-2:] for s in samples], dtype=torch.long)  # (B, 2)
    h, w = (math.ceil(int(v) / size_divisor) * size_divisor for v in sizes.max(0).values)
    images = samples[0]["image"].new_zeros((b, 3, h, w))
    g = max([1] + [len(s["boxes"]) for s in samples])
    gt_boxes = torch.zeros((b, g, 4), dtype=torch.float32)
    gt_labels = torch.zeros((b, g), dtype=torch.long)
    gt_mask = torch.zeros((b, g), dtype=torch.bool)
    for i, s in enumerate(samples):
        ih, iw = s["image"].shape[-2:]
        images[i, :, :ih, :iw] = s["image"]
        n = len(s["boxes"])
        gt_boxes[i, :n] = s["boxes"]
        gt_labels[i, :n] = s["labels"]
        gt_mask[i, :n] = True
    return Batch(
        images=images, gt_boxes=gt_boxes, gt_labels=gt_labels, gt_mask=gt_mask,
        image_ids=[int(s["image_id"]) for s in samples],
        scale_factors=torch.tensor([s.get("scale_factor", (1.0, 1.0)) for s in samples], dtype=torch.float32),
        img_sizes=torch.tensor([s.get("img_size", tuple(s["image"].shape[-2:])) for s in samples], dtype=torch.long),
        orig_sizes=torch.tensor([s["orig_size"] for s in samples], dtype=torch.long),
        flipped=torch.tensor([bool(s.get("flipped", False)) for s in samples], dtype=torch.bool),
    )
