"""STDC-Seg (Fan et al., "Rethinking BiSeNet For Real-time Semantic Segmentation", CVPR 2021).

BiSeNet V1's context path on an STDC backbone; the stride-8 backbone feature replaces the spatial
path. In training, a detail head on that feature is supervised by Laplacian detail ground truth
(BCE + Dice; see ``training/losses.py``); it is not built for deployment.

Attribute names follow the official STDC-Seg code, so ``model_maxmIOU50.pth`` / ``model_maxmIOU75.pth``
load after dropping their alias and unused keys (see ``checkpoint.py``).
"""
from __future__ import annotations

import torch
from torch import nn

from bisenet_ros.models.backbones import STDCNet
from bisenet_ros.models.blocks import (IMAGENET, ContextPath, ConvNormAct, SegmentationHead, init_weights,
                                       resize_bilinear)


class FeatureFusionModule(nn.Module):
    """STDC-Seg's FFM: like BiSeNet V1's, but the channel attention is squeeze-excitation style
    (1x1 reduce by 4, ReLU, 1x1 expand, sigmoid) without BatchNorm.

    Shape:
        (N, C_s, h, w), (N, C_c, h, w) -> (N, out_channels, h, w) with C_s + C_c = in_channels.
    """

    def __init__(self, in_channels: int, out_channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.convblk = ConvNormAct(in_channels, out_channels, 1)
        self.conv1 = nn.Conv2d(out_channels, out_channels // reduction, 1, bias=False)
        self.conv2 = nn.Conv2d(out_channels // reduction, out_channels, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        fused = self.convblk(torch.cat([spatial, context], dim=1))
        attention = fused.mean(dim=(2, 3), keepdim=True)
        attention = torch.sigmoid(self.conv2(self.relu(self.conv1(attention))))
        return fused + fused * attention


class STDCSeg(nn.Module):
    """STDC-Seg segmentation network.

    Args:
        num_classes: Number of output classes.
        layers: STDC modules per backbone stage: (2, 2, 2) for STDC1, (4, 5, 3) for STDC2.
        aux: Build the training-only heads: two auxiliary heads on the context features and the
            detail head on the stride-8 backbone feature.

    Output contract:
        eval, or train with ``aux=False``: logits ``(N, num_classes, H, W)``.
        train with ``aux=True``: ``{"out": logits, "aux": [logits16, logits32] (input size),
        "detail": detail logits (N, 1, H/8, W/8)}``.
    """

    normalization = IMAGENET

    def __init__(self, num_classes: int = 19, layers: tuple[int, int, int] = (2, 2, 2), aux: bool = False) -> None:
        super().__init__()
        self.aux = aux
        backbone = STDCNet(layers)
        _, _, channels8, channels16, channels32 = backbone.out_channels
        self.cp = ContextPath(backbone, channels16, channels32)
        self.ffm = FeatureFusionModule(channels8 + 128, 256)
        self.conv_out = SegmentationHead(256, 256, num_classes, bias=False)
        if aux:
            self.conv_out16 = SegmentationHead(128, 64, num_classes, bias=False)
            self.conv_out32 = SegmentationHead(128, 64, num_classes, bias=False)
            # Detail head on the stride-8 feature (``use_boundary_8`` in STDC-Seg, the setting
            # of the published models; the paper finds the other strides do not help).
            self.conv_out_sp8 = SegmentationHead(channels8, 64, 1, bias=False)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor | list[torch.Tensor]]:
        size = x.shape[-2:]
        features, context8, context16 = self.cp(x)
        spatial8 = features[2]
        # STDC-Seg upsamples with align_corners=True (CoinCheung's BiSeNet uses False).
        logits = resize_bilinear(self.conv_out(self.ffm(spatial8, context8)), size, align_corners=True)
        if not (self.training and self.aux):
            return logits
        aux = [resize_bilinear(self.conv_out16(context8), size, align_corners=True),
               resize_bilinear(self.conv_out32(context16), size, align_corners=True)]
        return {"out": logits, "aux": aux, "detail": self.conv_out_sp8(spatial8)}


def stdc1(num_classes: int = 19, aux: bool = False) -> STDCSeg:
    """STDC1-Seg (STDC813 backbone; 72.2 mIoU at 512x1024 "Seg50", Cityscapes val)."""
    return STDCSeg(num_classes, layers=(2, 2, 2), aux=aux)


def stdc2(num_classes: int = 19, aux: bool = False) -> STDCSeg:
    """STDC2-Seg (STDC1446 backbone; 77.0 mIoU at 768x1536 "Seg75", Cityscapes val)."""
    return STDCSeg(num_classes, layers=(4, 5, 3), aux=aux)
