"""Building blocks shared by the BiSeNet family.

Attribute names (``conv``, ``bn``, ``conv_atten``, ``bn_atten``, ``conv_head32`` ...) are fixed by the
published checkpoints (CoinCheung/BiSeNet and STDC-Seg) so that their state_dicts load unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Normalization:
    """Input normalization that belongs to a set of weights.

    The network expects an RGB image scaled to 0..1, then ``(x - mean) / std`` per channel.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, values: dict) -> "Normalization":
        return cls(tuple(float(v) for v in values["mean"]), tuple(float(v) for v in values["std"]))


# Statistics used to train the CoinCheung/BiSeNet Cityscapes releases (RGB/255).
CITYSCAPES_COINCHEUNG = Normalization((0.3257, 0.3690, 0.3223), (0.2112, 0.2148, 0.2115))
# STDC-Seg trains with the ImageNet statistics of its pretrained backbone.
IMAGENET = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class ConvNormAct(nn.Sequential):
    """Conv2d -> BatchNorm2d -> ReLU (the ``ConvBNReLU`` / ``ConvX`` of the reference code).

    Children are named ``conv``, ``bn`` and ``relu`` as in every published BiSeNet checkpoint.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Square kernel size.
        stride: Convolution stride.
        padding: Zero padding; ``None`` means ``kernel_size // 2`` ("same" for odd kernels).
        groups: Convolution groups (``in_channels`` for depthwise).
        activation: Append the ReLU. ``False`` gives Conv-BN.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int | None = None, groups: int = 1, activation: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                              kernel_size // 2 if padding is None else padding,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True) if activation else nn.Identity()


class AttentionRefinementModule(nn.Module):
    """ARM (BiSeNet V1, Sec. 3.2): refine a context feature with a global-pool channel attention.

    Args:
        in_channels: Channels of the backbone feature.
        out_channels: Channels after the 3x3 projection (128 in every published model).

    Shape:
        (N, in_channels, H, W) -> (N, out_channels, H, W)
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        # The paper applies attention to the backbone feature directly; the reference
        # implementations first project it with a 3x3 ConvBNReLU, which the checkpoints contain.
        self.conv = ConvNormAct(in_channels, out_channels, 3)
        self.conv_atten = nn.Conv2d(out_channels, out_channels, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feature = self.conv(x)
        attention = feature.mean(dim=(2, 3), keepdim=True)
        attention = torch.sigmoid(self.bn_atten(self.conv_atten(attention)))
        return feature * attention


class ContextPath(nn.Module):
    """Context path of BiSeNet V1 and STDC-Seg: backbone + ARMs at 1/16 and 1/32 + global context.

    The backbone must return a tuple of features whose last two are at strides 16 and 32.

    Args:
        backbone: Feature extractor.
        channels16: Channels of the stride-16 backbone feature.
        channels32: Channels of the stride-32 backbone feature.
        channels: Channels of the context features (128 in the papers).

    Returns (forward):
        ``(backbone_features, context8, context16)``: the backbone's tuple, and the fused context
        features at strides 8 and 16, each ``(N, channels, H/s, W/s)``.
    """

    def __init__(self, backbone: nn.Module, channels16: int, channels32: int, channels: int = 128) -> None:
        super().__init__()
        self.backbone = backbone
        self.arm16 = AttentionRefinementModule(channels16, channels)
        self.arm32 = AttentionRefinementModule(channels32, channels)
        self.conv_head32 = ConvNormAct(channels, channels, 3)
        self.conv_head16 = ConvNormAct(channels, channels, 3)
        self.conv_avg = ConvNormAct(channels32, channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor]:
        features = self.backbone(x)
        feat8, feat16, feat32 = features[-3], features[-2], features[-1]
        global_context = self.conv_avg(feat32.mean(dim=(2, 3), keepdim=True))
        context32 = self.arm32(feat32) + global_context  # broadcast over H/32 x W/32
        # The reference code upsamples by a fixed factor 2, which breaks for sizes that are not
        # multiples of 32; resizing to the skip feature's size is identical when they are.
        context16 = self.conv_head32(resize_nearest(context32, feat16))
        context16_sum = self.arm16(feat16) + context16
        context8 = self.conv_head16(resize_nearest(context16_sum, feat8))
        return features, context8, context16


class SegmentationHead(nn.Module):
    """3x3 ConvBNReLU followed by a 1x1 classifier (``BiSeNetOutput`` in the reference code).

    Args:
        in_channels: Input channels.
        mid_channels: Channels of the 3x3 layer.
        num_classes: Output channels.
        bias: Classifier bias (CoinCheung V1 uses one, STDC-Seg does not).

    Shape:
        (N, in_channels, h, w) -> (N, num_classes, h, w); upsampling is left to the model.
    """

    def __init__(self, in_channels: int, mid_channels: int, num_classes: int, bias: bool = True) -> None:
        super().__init__()
        self.conv = ConvNormAct(in_channels, mid_channels, 3)
        self.conv_out = nn.Conv2d(mid_channels, num_classes, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


def resize_nearest(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour resize of ``x`` to the spatial size of ``like``."""
    return F.interpolate(x, size=like.shape[-2:], mode="nearest")


def resize_bilinear(x: torch.Tensor, size: torch.Size | tuple[int, int], align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize of logits to ``size`` (H, W)."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal convolutions, unit/zero BatchNorm: the initialisation of the reference code."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
