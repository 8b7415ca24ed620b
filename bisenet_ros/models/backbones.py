"""Backbones of the BiSeNet family: ResNet-18, Xception39 and STDCNet (STDC813 / STDC1446).

Every backbone returns a tuple of features ordered by increasing stride, ending with strides
8, 16 and 32. No ImageNet classifier is built: segmentation never uses it.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from bisenet_ros.models.blocks import ConvNormAct


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016). Names match torchvision / CoinCheung checkpoints."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(shortcut + residual)


class ResNet18(nn.Module):
    """ResNet-18 feature extractor (no classifier).

    Shape:
        (N, 3, H, W) -> features at strides 8, 16, 32 with 128, 256, 512 channels.
    """

    out_channels = (128, 256, 512)

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(64, 64, 1)
        self.layer2 = self._make_layer(64, 128, 2)
        self.layer3 = self._make_layer(128, 256, 2)
        self.layer4 = self._make_layer(256, 512, 2)

    @staticmethod
    def _make_layer(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(in_channels, out_channels, stride),
                             BasicBlock(out_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        feat32 = self.layer4(feat16)
        return feat8, feat16, feat32


class SeparableConvNormAct(nn.Module):
    """Depthwise 3x3 + pointwise 1x1 convolution, BatchNorm, optional ReLU (Xception's unit)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, activation: bool = True) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False)
        self.pointwise = ConvNormAct(in_channels, out_channels, 1, activation=activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class XceptionBlock(nn.Module):
    """Residual block of three separable convolutions with a x4 channel expansion."""

    expansion = 4

    def __init__(self, in_channels: int, mid_channels: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = mid_channels * self.expansion
        self.residual = nn.Sequential(
            SeparableConvNormAct(in_channels, mid_channels, stride),
            SeparableConvNormAct(mid_channels, mid_channels),
            SeparableConvNormAct(mid_channels, out_channels, activation=False),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = SeparableConvNormAct(in_channels, out_channels, stride, activation=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.residual(x) + self.shortcut(x))


class Xception39(nn.Module):
    """Xception39, the lightweight context-path backbone of the BiSeNet V1 paper (Sec. 4.1).

    The paper gives no layer table; this follows the widely used TorchSeg definition: a stride-2
    3x3 stem with 8 channels, max-pool, then 4 / 8 / 4 blocks of 16 / 32 / 64 mid channels.

    Shape:
        (N, 3, H, W) -> features at strides 8, 16, 32 with 64, 128, 256 channels.
    """

    out_channels = (64, 128, 256)

    def __init__(self, layers: Sequence[int] = (4, 8, 4), mid_channels: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        self.stem = ConvNormAct(3, 8, 3, stride=2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages = []
        in_channels = 8
        for depth, mid in zip(layers, mid_channels):
            blocks = [XceptionBlock(in_channels, mid, stride=2)]
            in_channels = mid * XceptionBlock.expansion
            blocks += [XceptionBlock(in_channels, mid) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
        self.stage8, self.stage16, self.stage32 = stages
        self.out_channels = tuple(m * XceptionBlock.expansion for m in mid_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat8 = self.stage8(self.maxpool(self.stem(x)))
        feat16 = self.stage16(feat8)
        feat32 = self.stage32(feat16)
        return feat8, feat16, feat32


class STDCModule(nn.Module):
    """Short-Term Dense Concatenate module ("Rethinking BiSeNet", Fig. 3; ``CatBottleneck`` in the
    reference code, whose attribute names ``conv_list``/``avd_layer``/``skip`` the checkpoints fix).

    Block 1 is a 1x1 conv to out/2 channels; blocks 2..n halve the channels each time (the last
    keeps them), and the outputs of all blocks are concatenated. With stride 2, block 2 is preceded
    by a depthwise stride-2 conv and block 1's output is average-pooled before the concatenation.

    Shape:
        (N, in_channels, H, W) -> (N, out_channels, H/stride, W/stride)
    """

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int = 4, stride: int = 1) -> None:
        super().__init__()
        if num_blocks < 2:
            raise ValueError(f"STDCModule needs at least 2 blocks, got {num_blocks}")
        self.stride = stride
        if stride == 2:
            half = out_channels // 2
            self.avd_layer = nn.Sequential(
                nn.Conv2d(half, half, 3, 2, 1, groups=half, bias=False),
                nn.BatchNorm2d(half),
            )
            self.skip = nn.AvgPool2d(3, 2, 1)
        widths = [out_channels // 2] + [out_channels // 2 ** (i + 1) for i in range(1, num_blocks - 1)]
        widths.append(widths[-1])
        if num_blocks == 2:
            widths = [out_channels // 2, out_channels // 2]
        self.conv_list = nn.ModuleList(
            [ConvNormAct(in_channels, widths[0], 1)]
            + [ConvNormAct(widths[i - 1], widths[i], 3) for i in range(1, num_blocks)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.conv_list[0](x)
        out = self.avd_layer(first) if self.stride == 2 else first
        outputs = []
        for conv in self.conv_list[1:]:
            out = conv(out)
            outputs.append(out)
        if self.stride == 2:
            first = self.skip(first)
        return torch.cat([first] + outputs, dim=1)


class STDCNet(nn.Module):
    """STDC network ("Rethinking BiSeNet", Table 1): STDC1 = STDC813, STDC2 = STDC1446.

    ``features`` holds two stride-2 ConvX layers followed by the STDC stages; its indices are
    the checkpoint's ``cp.backbone.features.N``. (The reference code also registers the same
    modules again as ``x2 .. x32``; those alias keys are dropped on loading.)

    Args:
        layers: STDC modules per stage at strides 8, 16, 32 ((2, 2, 2) for STDC1, (4, 5, 3) for STDC2).
        base: Channels at stride 4.
        num_blocks: Blocks per STDC module.

    Shape:
        (N, 3, H, W) -> features at strides 2, 4, 8, 16, 32 with base/2, base, 4*base, 8*base,
        16*base channels.
    """

    def __init__(self, layers: Sequence[int] = (2, 2, 2), base: int = 64, num_blocks: int = 4) -> None:
        super().__init__()
        modules: list[nn.Module] = [ConvNormAct(3, base // 2, 3, stride=2), ConvNormAct(base // 2, base, 3, stride=2)]
        in_channels = base
        self.stage_ends = []
        for stage, depth in enumerate(layers):
            out_channels = base * 4 * 2 ** stage
            for index in range(depth):
                modules.append(STDCModule(in_channels, out_channels, num_blocks, stride=2 if index == 0 else 1))
                in_channels = out_channels
            self.stage_ends.append(len(modules))
        self.features = nn.Sequential(*modules)
        self.out_channels = (base // 2, base, base * 4, base * 8, base * 16)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feat2 = self.features[0](x)
        feat4 = self.features[1](feat2)
        outputs = [feat2, feat4]
        start = 2
        out = feat4
        for end in self.stage_ends:
            for module in self.features[start:end]:
                out = module(out)
            outputs.append(out)
            start = end
        return tuple(outputs)
