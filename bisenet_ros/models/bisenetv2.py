"""BiSeNet V2 (Yu et al., "BiSeNet V2: Bilateral Network with Guided Aggregation for Real-time
Semantic Segmentation", IJCV 2021).

Attribute names follow the CoinCheung/BiSeNet implementation so that its Cityscapes release
(``model_final_v2_city.pth``, 75.0 mIoU on val) loads unchanged: e.g. the semantic branch is
``segment``, its stages ``S1S2`` / ``S3`` / ``S4`` / ``S5_4`` / ``S5_5``, the booster heads
``aux2`` .. ``aux5_4``, and the BGA's four paths ``left1`` / ``left2`` / ``right1`` / ``right2``.
"""
from __future__ import annotations

import torch
from torch import nn

from bisenet_ros.models.blocks import CITYSCAPES_COINCHEUNG, ConvNormAct, init_weights, resize_bilinear


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
             groups: int = 1, relu: bool = False) -> list[nn.Module]:
    # Plain lists of layers: the checkpoint indexes these Sequential children numerically.
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2,
                                         groups=groups, bias=False), nn.BatchNorm2d(out_channels)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return layers


class DetailBranch(nn.Module):
    """Detail branch (Table 1): wide, shallow VGG-style stages S1..S3 at strides 2, 4, 8.

    Shape:
        (N, 3, H, W) -> (N, 128, H/8, W/8)
    """

    def __init__(self) -> None:
        super().__init__()
        self.S1 = nn.Sequential(ConvNormAct(3, 64, 3, stride=2), ConvNormAct(64, 64, 3))
        self.S2 = nn.Sequential(ConvNormAct(64, 64, 3, stride=2), ConvNormAct(64, 64, 3), ConvNormAct(64, 64, 3))
        self.S3 = nn.Sequential(ConvNormAct(64, 128, 3, stride=2), ConvNormAct(128, 128, 3),
                                ConvNormAct(128, 128, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.S3(self.S2(self.S1(x)))


class StemBlock(nn.Module):
    """Stem block (Fig. 4a): stride-4 downsampling by a conv path and a max-pool path.

    Shape:
        (N, 3, H, W) -> (N, 16, H/4, W/4)
    """

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        self.conv = ConvNormAct(3, channels, 3, stride=2)
        self.left = nn.Sequential(ConvNormAct(channels, channels // 2, 1),
                                  ConvNormAct(channels // 2, channels, 3, stride=2))
        self.right = nn.MaxPool2d(3, 2, 1)
        self.fuse = ConvNormAct(2 * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.conv(x)
        return self.fuse(torch.cat([self.left(stem), self.right(stem)], dim=1))


class ContextEmbeddingBlock(nn.Module):
    """Context embedding block (Fig. 4b): global average pooling added back to the feature.

    Shape:
        (N, 128, h, w) -> (N, 128, h, w)
    """

    def __init__(self, channels: int = 128) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.conv_gap = ConvNormAct(channels, channels, 1)
        # The paper ends with a plain 3x3 conv; the reference adds BN + ReLU (in the checkpoint).
        self.conv_last = ConvNormAct(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = self.conv_gap(self.bn(x.mean(dim=(2, 3), keepdim=True)))
        return self.conv_last(x + context)


class GatherExpansionLayer(nn.Module):
    """Gather-and-expansion layer (Fig. 5b stride 1, Fig. 5c stride 2).

    3x3 conv, depthwise expansion by ``expansion`` (two depthwise convs when striding), 1x1
    projection, residual (a depthwise-separable shortcut when striding), ReLU.

    Shape:
        (N, in_channels, H, W) -> (N, out_channels, H/stride, W/stride)
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, expansion: int = 6) -> None:
        super().__init__()
        mid_channels = in_channels * expansion
        self.stride = stride
        self.conv1 = ConvNormAct(in_channels, in_channels, 3)
        if stride == 1:
            # The ReLU after the expansion is not in the paper's figure; the reference has it.
            self.dwconv = nn.Sequential(*_conv_bn(in_channels, mid_channels, 3, groups=in_channels, relu=True))
        else:
            self.dwconv1 = nn.Sequential(*_conv_bn(in_channels, mid_channels, 3, 2, groups=in_channels))
            self.dwconv2 = nn.Sequential(*_conv_bn(mid_channels, mid_channels, 3, groups=mid_channels, relu=True))
            self.shortcut = nn.Sequential(*_conv_bn(in_channels, in_channels, 3, 2, groups=in_channels),
                                          *_conv_bn(in_channels, out_channels, 1))
        self.conv2 = nn.Sequential(*_conv_bn(mid_channels, out_channels, 1))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feature = self.conv1(x)
        if self.stride == 1:
            expanded = self.dwconv(feature)
            shortcut = x
        else:
            expanded = self.dwconv2(self.dwconv1(feature))
            shortcut = self.shortcut(x)
        return self.relu(self.conv2(expanded) + shortcut)


class SemanticBranch(nn.Module):
    """Semantic branch (Table 1): stem, GE stages S3..S5 and the context embedding block.

    Returns (forward):
        ``(feat2, feat3, feat4, feat5_4, feat5_5)`` at strides 4, 8, 16, 32, 32 with 16, 32, 64,
        128, 128 channels; the first four feed the booster heads, the last the aggregation.
    """

    def __init__(self) -> None:
        super().__init__()
        self.S1S2 = StemBlock()
        self.S3 = nn.Sequential(GatherExpansionLayer(16, 32, 2), GatherExpansionLayer(32, 32))
        self.S4 = nn.Sequential(GatherExpansionLayer(32, 64, 2), GatherExpansionLayer(64, 64))
        self.S5_4 = nn.Sequential(GatherExpansionLayer(64, 128, 2), GatherExpansionLayer(128, 128),
                                  GatherExpansionLayer(128, 128), GatherExpansionLayer(128, 128))
        self.S5_5 = ContextEmbeddingBlock()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feat2 = self.S1S2(x)
        feat3 = self.S3(feat2)
        feat4 = self.S4(feat3)
        feat5_4 = self.S5_4(feat4)
        return feat2, feat3, feat4, feat5_4, self.S5_5(feat5_4)


class BilateralGuidedAggregation(nn.Module):
    """Bilateral guided aggregation layer (Fig. 6): each branch gates the other.

    ``left1``/``left2`` are the detail branch's full-resolution and downsampled paths,
    ``right1``/``right2`` the semantic branch's paths to be upsampled and kept (names fixed by the
    checkpoint).

    Shape:
        detail (N, 128, H/8, W/8), semantic (N, 128, H/32, W/32) -> (N, 128, H/8, W/8)
    """

    def __init__(self, channels: int = 128) -> None:
        super().__init__()
        self.left1 = nn.Sequential(*_conv_bn(channels, channels, 3, groups=channels),
                                   nn.Conv2d(channels, channels, 1, bias=False))
        self.left2 = nn.Sequential(*_conv_bn(channels, channels, 3, 2), nn.AvgPool2d(3, 2, 1))
        self.right1 = nn.Sequential(*_conv_bn(channels, channels, 3))
        self.right2 = nn.Sequential(*_conv_bn(channels, channels, 3, groups=channels),
                                    nn.Conv2d(channels, channels, 1, bias=False))
        # The paper's final layer is a plain 3x3 conv; the reference adds BN + ReLU.
        self.conv = nn.Sequential(*_conv_bn(channels, channels, 3, relu=True))

    def forward(self, detail: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        detail_keep = self.left1(detail)
        detail_down = self.left2(detail)
        # Nearest x4 in the reference; resizing to the detail size is identical when H, W are
        # multiples of 32 and also works when they are not.
        semantic_up = nn.functional.interpolate(self.right1(semantic), size=detail.shape[-2:], mode="nearest")
        semantic_keep = self.right2(semantic)
        detail_guided = detail_keep * torch.sigmoid(semantic_up)
        semantic_guided = detail_down * torch.sigmoid(semantic_keep)
        semantic_guided = nn.functional.interpolate(semantic_guided, size=detail.shape[-2:], mode="nearest")
        return self.conv(detail_guided + semantic_guided)


class SegmentHead(nn.Module):
    """Segmentation head and booster heads (Fig. 7).

    A 3x3 ConvBNReLU, dropout, and a 1x1 classifier. Booster heads (``booster=True``) first
    upsample x2 and apply a ConvBNReLU with ``scale**2`` channels, as in the reference.

    Shape:
        (N, in_channels, h, w) -> (N, num_classes, H, W) with (H, W) given to ``forward``.
    """

    def __init__(self, in_channels: int, mid_channels: int, num_classes: int, scale: int = 8,
                 booster: bool = False) -> None:
        super().__init__()
        self.conv = ConvNormAct(in_channels, mid_channels, 3)
        self.drop = nn.Dropout(0.1)
        booster_channels = scale * scale if booster else mid_channels
        # conv_out.0 / conv_out.1 indices are fixed by the checkpoint; the final upsampling
        # (conv_out.2 in the reference) has no weights and is done in forward() to the exact size.
        self.conv_out = nn.Sequential(
            nn.Sequential(nn.Upsample(scale_factor=2), ConvNormAct(mid_channels, booster_channels, 3))
            if booster else nn.Identity(),
            nn.Conv2d(booster_channels, num_classes, 1, bias=True),
        )

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return resize_bilinear(self.conv_out(self.drop(self.conv(x))), size)


class BiSeNetV2(nn.Module):
    """BiSeNet V2: detail branch + semantic branch + bilateral guided aggregation.

    Args:
        num_classes: Number of output classes.
        aux: Build the four booster heads (on S2, S3, S4, S5_4) used only by the training loss.

    Output contract:
        eval, or train with ``aux=False``: logits ``(N, num_classes, H, W)``.
        train with ``aux=True``: ``{"out": logits, "aux": [4 booster logits]}``, all at input size.
    """

    normalization = CITYSCAPES_COINCHEUNG

    def __init__(self, num_classes: int = 19, aux: bool = False) -> None:
        super().__init__()
        self.aux = aux
        self.detail = DetailBranch()
        self.segment = SemanticBranch()
        self.bga = BilateralGuidedAggregation()
        self.head = SegmentHead(128, 1024, num_classes, scale=8)
        if aux:
            self.aux2 = SegmentHead(16, 128, num_classes, scale=4, booster=True)
            self.aux3 = SegmentHead(32, 128, num_classes, scale=8, booster=True)
            self.aux4 = SegmentHead(64, 128, num_classes, scale=16, booster=True)
            self.aux5_4 = SegmentHead(128, 128, num_classes, scale=32, booster=True)
        init_weights(self)
        # As in the reference: the last BN of each GE residual branch starts at zero, so every GE
        # layer starts as an identity mapping.
        for module in self.modules():
            if isinstance(module, GatherExpansionLayer):
                nn.init.zeros_(module.conv2[1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor | list[torch.Tensor]]:
        size = x.shape[-2:]
        detail = self.detail(x)
        feat2, feat3, feat4, feat5_4, semantic = self.segment(x)
        logits = self.head(self.bga(detail, semantic), size)
        if not (self.training and self.aux):
            return logits
        aux = [self.aux2(feat2, size), self.aux3(feat3, size), self.aux4(feat4, size), self.aux5_4(feat5_4, size)]
        return {"out": logits, "aux": aux}


def bisenetv2(num_classes: int = 19, aux: bool = False) -> BiSeNetV2:
    """BiSeNet V2 (CoinCheung/BiSeNet: 75.0 mIoU, Cityscapes val)."""
    return BiSeNetV2(num_classes, aux=aux)
