"""ResNet backbone with torchvision's parameter names, returning C3, C4, C5.

State-dict keys are exactly torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``layer4.2.downsample.1``) minus the classifier, so ImageNet checkpoints saved by
torchvision load directly (:func:`load_torchvision_weights`). The 3x3 conv carries the
stride in bottlenecks (torchvision / mmdet ``style='pytorch'``).

``base_width`` < 64 scales every width proportionally (stem ``base_width``, stages
``base_width * (1, 2, 4, 8) * expansion``): the small CPU backbone of proxy runs, e.g.
``ResNet(depth=18, base_width=16)``.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

# depth -> (block type, blocks per stage)
_ARCH = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3))}


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet-{18,34,50,101} feature extractor.

    Args:
        depth: 18, 34, 50 or 101.
        base_width: stem width (64 = the standard network; smaller scales every stage).
        frozen_stages: -1 freezes nothing, 0 the stem (conv1, bn1), k >= 1 the stem and
            layer1..layerk. Frozen parameters get ``requires_grad=False`` and their
            modules stay in eval mode.
        norm_eval: keep every BatchNorm in eval mode during ``train()`` (frozen running
            statistics) and freeze their affine parameters too ("frozen BN").
        out_indices: stages to return, 0 = layer1 (stride 4) ... 3 = layer4 (stride 32).
            The default (1, 2, 3) gives C3, C4, C5 at strides 8, 16, 32.

    ``forward(images (B, 3, H, W)) -> [C_i (B, out_channels[i], H / s_i, W / s_i)]``.
    """

    def __init__(
        self,
        depth: int = 50,
        base_width: int = 64,
        frozen_stages: int = 1,
        norm_eval: bool = True,
        out_indices: Sequence[int] = (1, 2, 3),
    ):
        super().__init__()
        if depth not in _ARCH:
            raise ValueError(f"ResNet: depth={depth} is not supported (expected one of {sorted(_ARCH)})")
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"ResNet: frozen_stages={frozen_stages} (expected -1..4)")
        if any(i not in range(4) for i in out_indices):
            raise ValueError(f"ResNet: out_indices={tuple(out_indices)} (expected values in 0..3)")
        kind, blocks = _ARCH[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.depth, self.base_width = depth, base_width
        self.frozen_stages, self.norm_eval, self.out_indices = frozen_stages, norm_eval, tuple(out_indices)

        self.conv1 = nn.Conv2d(3, base_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes, stage_channels = base_width, []
        for i, n in enumerate(blocks):
            planes = base_width * 2**i
            layer, inplanes = _make_layer(block, inplanes, planes, n, stride=1 if i == 0 else 2)
            self.add_module(f"layer{i + 1}", layer)
            stage_channels.append(inplanes)
        self.out_channels = [stage_channels[i] for i in self.out_indices]

        _init_weights(self)
        self._freeze()

    def _frozen_modules(self) -> list[nn.Module]:
        mods: list[nn.Module] = [self.conv1, self.bn1] if self.frozen_stages >= 0 else []
        return mods + [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)]

    def _freeze(self) -> None:
        for m in self._frozen_modules():
            for p in m.parameters():
                p.requires_grad_(False)
        if self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    for p in m.parameters():
                        p.requires_grad_(False)

    def train(self, mode: bool = True) -> ResNet:
        super().train(mode)
        if mode:
            for m in self._frozen_modules():
                m.eval()
            if self.norm_eval:
                for m in self.modules():
                    if isinstance(m, nn.BatchNorm2d):
                        m.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            if i in self.out_indices:
                outs.append(x)
        return outs


def _make_layer(block: type[nn.Module], inplanes: int, planes: int, blocks: int, stride: int) -> tuple[nn.Sequential, int]:
    out = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != out:
        downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
    layers = [block(inplanes, planes, stride, downsample)]
    layers += [block(out, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers), out


def _init_weights(model: nn.Module) -> None:
    """torchvision's ResNet init: Kaiming-normal (fan_out) convs, BN weight 1 bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _short(items: list[str], limit: int = 8) -> str:
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return "[" + ", ".join(items[:limit]) + more + "]"


def load_torchvision_weights(model: ResNet, path_or_state_dict: str | os.PathLike | Mapping[str, Tensor]) -> None:
    """Load a torchvision ResNet checkpoint (``resnet50-*.pth``) into ``model`` in place.

    ``fc.*`` entries are ignored. Checkpoints older than BatchNorm's
    ``num_batches_tracked`` buffer load too (the model keeps its own counter).
    Any other missing or unexpected key, or any shape mismatch, raises ``ValueError``
    naming the file and the keys.
    """
    if isinstance(path_or_state_dict, Mapping):
        name, state = "<state_dict>", path_or_state_dict
    else:
        name = os.fspath(path_or_state_dict)
        if not os.path.isfile(name):
            raise FileNotFoundError(f"{name}: backbone checkpoint not found (expected a torchvision ResNet .pth)")
        state = torch.load(name, map_location="cpu", weights_only=True)
        if not isinstance(state, Mapping):
            raise ValueError(f"{name}: expected a torchvision ResNet state_dict (mapping of tensors), got {type(state).__name__}")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = model.state_dict()
    for k in own.keys() - state.keys():
        if k.endswith("num_batches_tracked"):
            state[k] = own[k]
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    mismatched = sorted(
        f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in own.keys() & state.keys()
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{name}: does not match ResNet(depth={model.depth}, base_width={model.base_width}): "
            f"missing keys {_short(missing)}, unexpected keys {_short(unexpected)}, shape mismatches {_short(mismatched)}"
        )
    model.load_state_dict(state, strict=True)
