"""Parallel head (the baseline of the paper's Table 1): ATSS/FCOS-style separate towers.

Boxes decode exactly like the T-head without offsets (see ``tood_head.decode_level``),
so the two heads differ only in structure.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from tood.model.tood_head import ANCHOR_TYPES, check_levels, conv_gn_relu, decode_level, flatten_level, normal_init, prior_bias
from tood.priors import Priors


class ParallelHead(nn.Module):
    """Separate cls and reg towers of ``stacked_convs`` 3x3 conv + GN + ReLU, a 3x3 cls conv,
    a 3x3 reg conv and (optionally) a 3x3 centerness conv on the reg tower (mmdet ``ATSSHead``).

    ``forward(feats [(B, in_channels, H_l, W_l)], priors) -> dict`` with ``cls_logits
    (B, A, C)`` float32 plain logits, ``boxes (B, A, 4)`` float32 xyxy pixels,
    ``centerness (B, A)`` float32 logits or None.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 256,
        feat_channels: int = 256,
        stacked_convs: int = 4,
        anchor_type: str = "anchor_free",
        centerness: bool = True,
        num_levels: int = 5,
        gn_groups: int = 32,
        prior_prob: float = 0.01,
    ):
        super().__init__()
        if anchor_type not in ANCHOR_TYPES:
            raise ValueError(f"ParallelHead: anchor_type={anchor_type!r} (expected one of {ANCHOR_TYPES})")
        self.num_classes, self.anchor_type, self.num_levels = num_classes, anchor_type, num_levels

        def tower() -> nn.Sequential:
            return nn.Sequential(*(conv_gn_relu(in_channels if i == 0 else feat_channels, feat_channels, gn_groups) for i in range(stacked_convs)))

        self.cls_convs, self.reg_convs = tower(), tower()
        head_in = feat_channels if stacked_convs > 0 else in_channels
        self.cls_conv = nn.Conv2d(head_in, num_classes, 3, padding=1)
        self.reg_conv = nn.Conv2d(head_in, 4, 3, padding=1)
        self.centerness_conv = nn.Conv2d(head_in, 1, 3, padding=1) if centerness else None
        self.scales = nn.Parameter(torch.ones(num_levels))

        for layer in [*self.cls_convs, *self.reg_convs]:
            normal_init(layer[0], std=0.01)
        normal_init(self.cls_conv, std=0.01, bias=prior_bias(prior_prob))
        normal_init(self.reg_conv, std=0.01)
        if self.centerness_conv is not None:
            normal_init(self.centerness_conv, std=0.01)

    def forward(self, feats: list[Tensor], priors: Priors) -> dict[str, Tensor | None]:
        check_levels(feats, priors, self.num_levels)
        cls_out, box_out, ctr_out = [], [], []
        for lvl, x in enumerate(feats):
            cls_feat, reg_feat = self.cls_convs(x), self.reg_convs(x)
            boxes = decode_level(self.reg_conv(reg_feat), self.scales[lvl], priors, lvl, self.anchor_type)  # (B, 4, H, W)
            stride = priors.strides[priors.level_slices()[lvl]]  # (H*W,)
            cls_out.append(flatten_level(self.cls_conv(cls_feat).float()))  # (B, H*W, C)
            box_out.append(flatten_level(boxes) * stride[:, None])  # (B, H*W, 4) pixels
            if self.centerness_conv is not None:
                ctr_out.append(flatten_level(self.centerness_conv(reg_feat).float())[..., 0])  # (B, H*W)
        return {
            "cls_logits": torch.cat(cls_out, 1),
            "boxes": torch.cat(box_out, 1),
            "centerness": torch.cat(ctr_out, 1) if ctr_out else None,
        }
