"""T-head (task-aligned head) of TOOD and the pieces both heads share.

Box decoding is shared with the parallel head so the two heads differ only in
structure: per level, the raw regression map is decoded in *stride units* (anchor-free:
``distance2bbox(point / stride, scale_l * exp(reg))``; anchor-based:
``delta_decode(anchor, scale_l * reg) / stride``), the T-head then resamples each box side
at its learned offset, and the result is multiplied by the stride -> pixels.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tood.boxes import delta_decode, distance2bbox
from tood.priors import Priors

ANCHOR_TYPES = ("anchor_free", "anchor_based")


def aligned_logit(z: Tensor, m: Tensor) -> Tensor:
    """Logit of the aligned score ``p = sqrt(sigmoid(z) * sigmoid(m))``, in float32.

    Computed in log space so value and gradients stay finite for any finite inputs
    (the reference's ``sqrt`` of a product gives NaN gradients at 0): with
    ``a = sigmoid(z)``, ``b = sigmoid(m)``, ``log p = (logsig(z) + logsig(m)) / 2`` and
    ``1 - p = (1 - ab) / (1 + p)`` where ``1 - ab = sigmoid(-z) + a * sigmoid(-m)`` is a
    sum of positive terms, so ``log(1 - p)`` never cancels, even when ``p`` rounds to 1.
    Shapes broadcast (e.g. ``(B, C, H, W)`` with ``(B, 1, H, W)``); autocast is disabled inside.
    """
    with torch.autocast(device_type=z.device.type, enabled=False):
        z, m = z.float(), m.float()
        log_a, log_b = F.logsigmoid(z), F.logsigmoid(m)
        log_p = 0.5 * (log_a + log_b)
        log_1m_ab = torch.logaddexp(F.logsigmoid(-z), log_a + F.logsigmoid(-m))
        log_1m_p = log_1m_ab - F.softplus(log_p)
        return log_p - log_1m_p


def deform_sample(x: Tensor, offsets: Tensor) -> Tensor:
    """Resample channel ``k`` of ``x`` at ``(y + offsets[:, 2k], x + offsets[:, 2k + 1])``.

    Bilinear interpolation with zero padding, exactly mmcv ``deform_conv2d`` with a 1x1
    all-ones weight, ``groups = deform_groups = C`` (a position at or beyond -1 / H
    reads 0; corners outside the map count as 0). Zero offsets return ``x`` exactly.
    Gradients flow to ``x`` and to ``offsets``.

    Args:
        x: ``(B, C, H, W)``; offsets: ``(B, 2C, H, W)`` (dy, dx) pairs in cells.
    Returns:
        ``(B, C, H, W)`` float32.
    """
    b, c, h, w = x.shape
    if offsets.shape != (b, 2 * c, h, w):
        raise ValueError(f"deform_sample: offsets {tuple(offsets.shape)} (expected {(b, 2 * c, h, w)})")
    with torch.autocast(device_type=x.device.type, enabled=False):
        flat = x.float().reshape(b, c, h * w)
        off = offsets.float().view(b, c, 2, h, w)
        ys = torch.arange(h, device=x.device, dtype=torch.float32).view(1, 1, h, 1) + off[:, :, 0]  # (B, C, H, W)
        xs = torch.arange(w, device=x.device, dtype=torch.float32).view(1, 1, 1, w) + off[:, :, 1]
        y0, x0 = ys.floor(), xs.floor()
        ly, lx = ys - y0, xs - x0
        out = torch.zeros_like(ys)
        for dy, wy in ((0, 1 - ly), (1, ly)):
            for dx, wx in ((0, 1 - lx), (1, lx)):
                yi, xi = y0 + dy, x0 + dx
                inside = (yi >= 0) & (yi <= h - 1) & (xi >= 0) & (xi <= w - 1)
                # nan_to_num: non-finite offsets (a diverged run) must reach the loss check, not crash gather
                idx = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).nan_to_num(0.0).long().view(b, c, h * w)
                val = flat.gather(2, idx).view(b, c, h, w)
                out = out + torch.where(inside, wy * wx * val, 0.0)
        return out


def sample_boxes(boxes: Tensor, offsets: Tensor) -> Tensor:
    """Deformable resampling of a box map, keeping the unsampled box where it turns invalid.

    ``boxes (B, 4, H, W)`` xyxy (any units), ``offsets (B, 8, H, W)`` -> ``(B, 4, H, W)``.
    A sampled box with ``x1 > x2`` or ``y1 > y2`` falls back to the input box (mmdet PR 7567).
    """
    sampled = deform_sample(boxes, offsets)  # (B, 4, H, W)
    invalid = (sampled[:, 0:1] > sampled[:, 2:3]) | (sampled[:, 1:2] > sampled[:, 3:4])  # (B, 1, H, W)
    return torch.where(invalid, boxes.float(), sampled)


def decode_level(reg: Tensor, scale: Tensor, priors: Priors, level: int, anchor_type: str) -> Tensor:
    """Decode one level's raw regression map into xyxy boxes in stride units.

    Args:
        reg: ``(B, 4, H, W)`` raw output of the regression conv.
        scale: learnable scalar of this level.
        priors: the priors of the whole pyramid; ``level`` selects the slice.
        anchor_type: ``anchor_free`` (ltrb distances ``scale * exp(reg)`` from the point)
            or ``anchor_based`` (deltas ``scale * reg`` against the square anchor).
    Returns:
        ``(B, 4, H, W)`` float32 xyxy in units of this level's stride.
    """
    b, _, h, w = reg.shape
    sl = priors.level_slices()[level]
    stride = priors.strides[sl].view(h, w, 1)  # (H, W, 1)
    reg = reg.float().permute(0, 2, 3, 1)  # (B, H, W, 4)
    if anchor_type == "anchor_free":
        boxes = distance2bbox(priors.points[sl].view(h, w, 2) / stride, scale * reg.exp())
    else:
        boxes = delta_decode(priors.anchors[sl].view(h, w, 4), scale * reg) / stride
    return boxes.permute(0, 3, 1, 2)  # (B, 4, H, W)


def flatten_level(x: Tensor) -> Tensor:
    """``(B, K, H, W)`` -> ``(B, H * W, K)``, row-major like :class:`Priors`."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])


def check_levels(feats: list[Tensor], priors: Priors, num_levels: int) -> None:
    sizes = [f.shape[2] * f.shape[3] for f in feats]
    if len(feats) != num_levels or tuple(sizes) != tuple(priors.num_per_level):
        raise ValueError(
            f"head: got {len(feats)} levels with {sizes} cells, expected {num_levels} levels "
            f"matching priors.num_per_level={list(priors.num_per_level)}"
        )


def conv_gn_relu(in_channels: int, out_channels: int, gn_groups: int) -> nn.Sequential:
    """3x3 conv (no bias) + GroupNorm + ReLU, the tower layer of both heads."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.GroupNorm(gn_groups, out_channels),
        nn.ReLU(inplace=True),
    )


def normal_init(conv: nn.Conv2d, std: float, bias: float = 0.0) -> None:
    nn.init.normal_(conv.weight, 0.0, std)
    if conv.bias is not None:
        nn.init.constant_(conv.bias, bias)


def prior_bias(prior_prob: float) -> float:
    """Bias giving ``sigmoid(bias) = prior_prob`` (focal-loss init)."""
    return -math.log((1 - prior_prob) / prior_prob)


class TaskDecomposition(nn.Module):
    """Task-specific features from the concatenated tower outputs (mmdet ``TaskDecomposition``).

    ``X_task = ReLU(GN(conv1x1(concat_k w_k * X_k)))`` with layer attention
    ``w = sigmoid(conv(ReLU(conv(GAP(concat)))))`` of shape ``(B, N)``; without layer
    attention every ``w_k = 1``. ``forward(feat (B, N*F, H, W), avg_feat (B, N*F, 1, 1))
    -> (B, F, H, W)``.
    """

    def __init__(self, feat_channels: int, stacked_convs: int, la_down_rate: int = 8, gn_groups: int = 32, layer_attention: bool = True):
        super().__init__()
        self.feat_channels, self.stacked_convs = feat_channels, stacked_convs
        in_channels = feat_channels * stacked_convs
        self.layer_attention = None
        if layer_attention:
            hidden = in_channels // (stacked_convs * la_down_rate)
            self.layer_attention = nn.Sequential(
                nn.Conv2d(in_channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, stacked_convs, 1), nn.Sigmoid()
            )
        self.reduction_conv = nn.Conv2d(in_channels, feat_channels, 1, bias=False)
        self.norm = nn.GroupNorm(gn_groups, feat_channels)

    def init_weights(self) -> None:
        if self.layer_attention is not None:
            for m in self.layer_attention:
                if isinstance(m, nn.Conv2d):
                    normal_init(m, std=0.001)
        normal_init(self.reduction_conv, std=0.01)

    def forward(self, feat: Tensor, avg_feat: Tensor) -> Tensor:
        if self.layer_attention is None:
            return F.relu(self.norm(F.conv2d(feat, self.reduction_conv.weight)))
        b, _, h, w = feat.shape
        n, c = self.stacked_convs, self.feat_channels
        attn = self.layer_attention(avg_feat).view(b, 1, n, 1)  # (B, 1, N, 1)
        # fold w into the 1x1 weight (one bmm instead of scaling the N*F-channel map)
        weight = (attn * self.reduction_conv.weight.view(1, c, n, c)).reshape(b, c, n * c)  # (B, F, N*F)
        out = torch.bmm(weight, feat.reshape(b, n * c, h * w)).view(b, c, h, w)
        return F.relu(self.norm(out))


class TOODHead(nn.Module):
    """T-head: task-interactive tower, task decomposition, task-aligned predictor.

    Toggles for the ablations: ``layer_attention`` (task decomposition weights, else 1),
    ``alignment_map`` (M; else the score is ``sigmoid(z)``), ``offsets`` (O; else no
    resampling). ``forward(feats [(B, in_channels, H_l, W_l)], priors) -> dict`` with
    ``cls_logits (B, A, C)`` float32 (logit of the aligned score), ``boxes (B, A, 4)``
    float32 xyxy pixels, ``centerness None``; A flattened as in ``priors``.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 256,
        feat_channels: int = 256,
        stacked_convs: int = 6,
        la_down_rate: int = 8,
        anchor_type: str = "anchor_free",
        layer_attention: bool = True,
        alignment_map: bool = True,
        offsets: bool = True,
        num_levels: int = 5,
        gn_groups: int = 32,
        prior_prob: float = 0.01,
        alignment_map_prior: float = 0.01,
    ):
        super().__init__()
        if anchor_type not in ANCHOR_TYPES:
            raise ValueError(f"TOODHead: anchor_type={anchor_type!r} (expected one of {ANCHOR_TYPES})")
        if not 0 < alignment_map_prior < 1:
            raise ValueError(f"TOODHead: alignment_map_prior={alignment_map_prior} (expected 0 < p < 1)")
        if stacked_convs < 1:
            raise ValueError(f"TOODHead: stacked_convs={stacked_convs} (expected >= 1)")
        self.num_classes, self.anchor_type, self.num_levels = num_classes, anchor_type, num_levels
        cat = feat_channels * stacked_convs
        self.inter_convs = nn.ModuleList(
            conv_gn_relu(in_channels if i == 0 else feat_channels, feat_channels, gn_groups) for i in range(stacked_convs)
        )
        self.cls_decomp = TaskDecomposition(feat_channels, stacked_convs, la_down_rate, gn_groups, layer_attention)
        self.reg_decomp = TaskDecomposition(feat_channels, stacked_convs, la_down_rate, gn_groups, layer_attention)
        self.tood_cls = nn.Conv2d(feat_channels, num_classes, 3, padding=1)
        self.tood_reg = nn.Conv2d(feat_channels, 4, 3, padding=1)
        hidden = feat_channels // 4
        self.cls_prob_module = None
        if alignment_map:
            self.cls_prob_module = nn.Sequential(nn.Conv2d(cat, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, 1, 3, padding=1))
        self.reg_offset_module = None
        if offsets:
            self.reg_offset_module = nn.Sequential(nn.Conv2d(cat, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, 8, 3, padding=1))
        self.scales = nn.Parameter(torch.ones(num_levels))
        self._init_weights(prior_bias(prior_prob), prior_bias(alignment_map_prior))

    def _init_weights(self, bias_cls: float, bias_prob: float) -> None:
        # mmdet TOODHead.init_weights
        for m in self.inter_convs:
            normal_init(m[0], std=0.01)
        self.cls_decomp.init_weights()
        self.reg_decomp.init_weights()
        if self.cls_prob_module is not None:
            normal_init(self.cls_prob_module[0], std=0.01)
            normal_init(self.cls_prob_module[-1], std=0.01, bias=bias_prob)
        if self.reg_offset_module is not None:
            for m in self.reg_offset_module:
                if isinstance(m, nn.Conv2d):
                    normal_init(m, std=0.001)
        normal_init(self.tood_cls, std=0.01, bias=bias_cls)
        normal_init(self.tood_reg, std=0.01)

    def forward(self, feats: list[Tensor], priors: Priors) -> dict[str, Tensor | None]:
        check_levels(feats, priors, self.num_levels)
        cls_out, box_out = [], []
        for lvl, x in enumerate(feats):
            inter = []
            for conv in self.inter_convs:
                x = conv(x)
                inter.append(x)
            feat = torch.cat(inter, 1)  # (B, N*F, H, W)
            avg_feat = F.adaptive_avg_pool2d(feat, 1)  # (B, N*F, 1, 1)
            cls_feat = self.cls_decomp(feat, avg_feat)  # (B, F, H, W)
            reg_feat = self.reg_decomp(feat, avg_feat)

            z = self.tood_cls(cls_feat)  # (B, C, H, W)
            logits = z.float() if self.cls_prob_module is None else aligned_logit(z, self.cls_prob_module(feat))

            boxes = decode_level(self.tood_reg(reg_feat), self.scales[lvl], priors, lvl, self.anchor_type)  # (B, 4, H, W)
            if self.reg_offset_module is not None:
                boxes = sample_boxes(boxes, self.reg_offset_module(feat))
            stride = priors.strides[priors.level_slices()[lvl]]  # (H*W,)
            cls_out.append(flatten_level(logits))  # (B, H*W, C)
            box_out.append(flatten_level(boxes) * stride[:, None])  # (B, H*W, 4) pixels
        return {"cls_logits": torch.cat(cls_out, 1), "boxes": torch.cat(box_out, 1), "centerness": None}
