"""Feature pyramid network: C3..C5 -> P3..P7 (mmdet ``FPN`` with
``add_extra_convs='on_output'``, ``relu_before_extra_convs=False`` as in the TOOD and ATSS
configs).

P6 is a 3x3 stride-2 conv on the P5 *output*; P7 a 3x3 stride-2 conv on P6, no ReLU between.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


class FPN(nn.Module):
    """Args:
        in_channels: channels of the input maps, finest first (e.g. [512, 1024, 2048]).
        out_channels: channels of every output level.
        num_outs: number of outputs; levels beyond ``len(in_channels)`` are the extra
            stride-2 convs (5 outputs from 3 inputs = P3..P7).

    ``forward([C_l (B, in_channels[l], H_l, W_l)]) -> [P_l (B, out_channels, H_l, W_l)]``;
    each extra level has ``ceil(H / 2)`` of the previous one.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, num_outs: int = 5):
        super().__init__()
        if num_outs < len(in_channels):
            raise ValueError(f"FPN: num_outs={num_outs} is smaller than the {len(in_channels)} input levels")
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        self.extra_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1) for _ in range(num_outs - len(in_channels))
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        if len(inputs) != len(self.lateral_convs):
            raise ValueError(f"FPN: got {len(inputs)} feature maps, expected {len(self.lateral_convs)}")
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        for i in range(len(laterals) - 1, 0, -1):
            # size= (not scale_factor=2) so odd sizes of the finer level still line up
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[2:], mode="nearest")
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)]
        for i, conv in enumerate(self.extra_convs):
            outs.append(conv(outs[-1]))
        return outs
