"""BiSeNet V1 (Yu et al., "BiSeNet: Bilateral Segmentation Network for Real-time Semantic
Segmentation", ECCV 2018).

Layout and attribute names follow the CoinCheung/BiSeNet implementation whose Cityscapes release
(``model_final_v1_city_new.pth``, 75.4 mIoU on val) loads unchanged; its ``cp.resnet.*`` keys are
renamed to ``cp.backbone.*`` on loading (see ``checkpoint.py``).
"""
from __future__ import annotations

import torch
from torch import nn

from bisenet_ros.models.backbones import ResNet18, Xception39
from bisenet_ros.models.blocks import (CITYSCAPES_COINCHEUNG, ContextPath, ConvNormAct, SegmentationHead,
                                       init_weights, resize_bilinear)


class SpatialPath(nn.Module):
    """Spatial path (Sec. 3.1): three stride-2 convolutions keep 1/8-resolution detail.

    Shape:
        (N, 3, H, W) -> (N, 128, H/8, W/8)
    """

    def __init__(self, channels: int = 64, out_channels: int = 128) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(3, channels, 7, stride=2)
        self.conv2 = ConvNormAct(channels, channels, 3, stride=2)
        self.conv3 = ConvNormAct(channels, channels, 3, stride=2)
        # Not in the paper: a 1x1 projection to the context path's width (present in the checkpoint).
        self.conv_out = ConvNormAct(channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv3(self.conv2(self.conv1(x))))


class FeatureFusionModule(nn.Module):
    """FFM (Sec. 3.3): concatenate spatial and context features, re-weight channels with a
    global-pool attention and add the re-weighted feature back.

    Shape:
        (N, C_s, h, w), (N, C_c, h, w) -> (N, out_channels, h, w) with C_s + C_c = in_channels.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.convblk = ConvNormAct(in_channels, out_channels, 1)
        # The paper uses two 1x1 convs (ReLU, sigmoid); the CoinCheung "new" V1 release uses a
        # single 1x1 conv + BN before the sigmoid, and its checkpoint fixes that choice.
        self.conv = nn.Conv2d(out_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        fused = self.convblk(torch.cat([spatial, context], dim=1))
        attention = torch.sigmoid(self.bn(self.conv(fused.mean(dim=(2, 3), keepdim=True))))
        return fused + fused * attention


class BiSeNetV1(nn.Module):
    """BiSeNet V1: spatial path + context path (ARM) fused by the FFM.

    Args:
        num_classes: Number of output classes.
        backbone: Context-path backbone, ``"resnet18"`` (CoinCheung release) or ``"xception39"``
            (the paper's lightweight variant).
        aux: Build the two auxiliary heads (on the 1/8 and 1/16 context features) used by the
            training loss. Deployment does not need them.

    Output contract:
        eval, or train with ``aux=False``: logits ``(N, num_classes, H, W)`` for input ``(N, 3, H, W)``.
        train with ``aux=True``: ``{"out": logits, "aux": [logits16, logits32]}``, all at input size.
    """

    normalization = CITYSCAPES_COINCHEUNG

    def __init__(self, num_classes: int = 19, backbone: str = "resnet18", aux: bool = False) -> None:
        super().__init__()
        backbones = {"resnet18": ResNet18, "xception39": Xception39}
        if backbone not in backbones:
            raise ValueError(f"backbone={backbone!r}: expected one of {', '.join(backbones)}")
        net = backbones[backbone]()
        _, channels16, channels32 = net.out_channels
        self.aux = aux
        self.cp = ContextPath(net, channels16, channels32)
        self.sp = SpatialPath()
        self.ffm = FeatureFusionModule(256, 256)
        self.conv_out = SegmentationHead(256, 256, num_classes)
        if aux:
            self.conv_out16 = SegmentationHead(128, 64, num_classes)
            self.conv_out32 = SegmentationHead(128, 64, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor | list[torch.Tensor]]:
        size = x.shape[-2:]
        _, context8, context16 = self.cp(x)
        fused = self.ffm(self.sp(x), context8)
        logits = resize_bilinear(self.conv_out(fused), size)
        if not (self.training and self.aux):
            return logits
        aux = [resize_bilinear(self.conv_out16(context8), size),
               resize_bilinear(self.conv_out32(context16), size)]
        return {"out": logits, "aux": aux}


def bisenetv1(num_classes: int = 19, aux: bool = False) -> BiSeNetV1:
    """BiSeNet V1 with a ResNet-18 context path (CoinCheung/BiSeNet: 75.4 mIoU, Cityscapes val)."""
    return BiSeNetV1(num_classes, backbone="resnet18", aux=aux)


def bisenetv1_xception39(num_classes: int = 19, aux: bool = False) -> BiSeNetV1:
    """BiSeNet V1 with the paper's Xception39 context path (no public Cityscapes weights)."""
    return BiSeNetV1(num_classes, backbone="xception39", aux=aux)
