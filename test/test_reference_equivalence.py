"""Equivalence with the reference implementations (issue 2: "with the same weights, our eval outputs
must equal the reference implementation's to fp32 rounding").

The reference code (CoinCheung/BiSeNet ``lib/models/{bisenetv1,bisenetv2,resnet}.py``; STDC-Seg
``models/model_stages.py``, ``nets/stdcnet.py`` and the InPlace-ABN ``modules/`` it ships) is not
available at test time, so this file re-states its eval-mode forward pass as independent *functional*
code (``torch.nn.functional`` only) that reads every tensor by its PUBLISHED checkpoint key, straight
from a published-layout state_dict. Each test then

1. builds a state_dict with exactly the keys, shapes, dtypes and alias structure of the published
   file, from the manifests in ``../shared/reference`` (random values; BatchNorm running statistics
   are calibrated on a separate batch so that activations stay O(1) and ReLUs are really
   half-active all the way down, instead of dying or exploding);
2. saves it with ``torch.save`` and loads it through the real loading code
   (``build_model(variant, weights=path)``);
3. runs our model and the functional reference on the same input and requires the difference to be
   of the size of fp32 rounding: our error against a float64 run of the reference may not exceed a
   small multiple of the fp32 reference's own error against it, and the argmax must agree wherever
   the float64 top-2 margin is not itself within rounding.

For STDC-Seg this also checks that the loader reproduces InPlace-ABN's eval scale
(``|weight| + eps``) in the layers without ``num_batches_tracked``.

Reference semantics restated here (each is a fact of the reference code, not of this project):

* CoinCheung BiSeNet V1: ResNet-18 (7x7/2 stem, max-pool 3/2/1, BasicBlocks with a 1x1 conv + BN
  downsample); ARM = 3x3 ConvBNReLU, global mean, 1x1 conv, BN, sigmoid, multiply (no ReLU on the
  attention); context path adds the ``conv_avg`` (1x1 ConvBNReLU of the global mean) to ARM32,
  upsamples x2 with ``nn.Upsample(scale_factor=2.)`` (nearest) before ``conv_head32`` /
  ``conv_head16``; spatial path = 7x7/2, 3x3/2, 3x3/2, 1x1 ConvBNReLUs; FFM = 1x1 ConvBNReLU on
  cat(spatial, context), attention = sigmoid(BN(1x1 conv(mean))), out = f * a + f; head = 3x3
  ConvBNReLU, 1x1 conv with bias, ``nn.Upsample(scale_factor=8, mode='bilinear',
  align_corners=False)``.
* CoinCheung BiSeNet V2: detail branch of 3x3 ConvBNReLUs; stem with a 1x1 + 3x3/2 left path and a
  3x3/2/1 max-pool right path, fused by a 3x3 ConvBNReLU; GE layers (stride 1: 3x3 ConvBNReLU,
  depthwise x6 conv + BN + ReLU, 1x1 conv + BN, identity residual, ReLU; stride 2: depthwise /2 +
  BN (no ReLU), depthwise + BN + ReLU, 1x1 + BN, shortcut = depthwise /2 + BN + 1x1 + BN); CE block
  = mean, BN, 1x1 ConvBNReLU, add, 3x3 ConvBNReLU; BGA with nearest x4 upsampling
  (``nn.Upsample(scale_factor=4)``) of right1 and of the gated left2 path, avg-pool 3/2/1 in left2,
  final 3x3 conv + BN + ReLU; head = 3x3 ConvBNReLU to 1024, (dropout), 1x1 conv with bias,
  bilinear x8 with align_corners=False. No booster heads in eval.
* STDC-Seg: backbone ``features`` = ConvX 3x3/2, ConvX 3x3/2, then CatBottlenecks: block 1 is a
  1x1 ConvX, with stride 2 its output goes through the depthwise ``avd_layer`` (conv/2 + BN, no
  ReLU) into block 2 and through ``skip`` = AvgPool2d(3, 2, 1) into the concatenation, which is
  [block 1, block 2, ..., block n] in that order; stages are the reference's ``x8/x16/x32`` slices
  of ``features``; the context path is V1's but upsamples with ``F.interpolate(size=...)`` nearest
  and the global context is ``avg_pool2d`` over the whole map; FFM attention is
  sigmoid(conv2(ReLU(conv1(avg)))) without BN; the head's classifier has no bias; logits are
  resized with ``F.interpolate(..., mode='bilinear', align_corners=True)``. Every BatchNorm outside
  the backbone is an InPlace-ABN layer (``InPlaceABNSync(activation='none')``) whose eval forward is
  ``(x - mean) * rsqrt(var + eps) * (|weight| + eps) + bias`` with eps = 1e-5 (mapillary/inplace_abn
  ``forward_cpu`` / ``forward_kernel``): the scale is the ABSOLUTE weight plus eps. These layers are
  the ones without ``num_batches_tracked`` in the published file.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Callable

import pytest
import torch
import torch.nn.functional as F

from bisenet_ros.models import build_model
from published import MANIFESTS, REFERENCE

BN_EPS = 1e-5   # nn.BatchNorm2d and InPlaceABNSync defaults; no reference layer overrides it
ABN_EPS = 1e-5  # InPlace-ABN: scale = |weight| + eps
SIZE = (64, 128)            # a multiple of 32, as the reference code requires
NUM_CLASSES = 19

# --------------------------------------------------------------------------------------------------
# Functional building blocks over a published-layout state_dict
# --------------------------------------------------------------------------------------------------
class Weights:
    """Reads tensors by their published key; BatchNorm in eval mode (running statistics).

    Args:
        state: Published-layout state_dict (float32 or float64).
        abn_layers: BN prefixes that are InPlace-ABN layers (scale |w| + eps).
        calibrate: If given, each BN first sets its running statistics from the batch it sees
            (with random perturbations), so that generated weights give O(1) activations.
    """

    def __init__(self, state: dict[str, torch.Tensor], abn_layers: frozenset[str] = frozenset(),
                 calibrate: torch.Generator | None = None) -> None:
        self.state = state
        self.abn_layers = abn_layers
        self.calibrate = calibrate

    def __contains__(self, key: str) -> bool:
        return key in self.state

    def conv(self, x: torch.Tensor, name: str, stride: int = 1, groups: int = 1, bias: bool = False) -> torch.Tensor:
        weight = self.state[f"{name}.weight"]
        # Every convolution of the three reference implementations is "same"-padded: k // 2.
        padding = weight.shape[-1] // 2
        return F.conv2d(x, weight, self.state[f"{name}.bias"] if bias else None, stride, padding, 1, groups)

    def bn(self, x: torch.Tensor, name: str) -> torch.Tensor:
        mean, var = self.state[f"{name}.running_mean"], self.state[f"{name}.running_var"]
        if self.calibrate is not None:
            self._calibrate(x, mean, var)
        weight = self.state[f"{name}.weight"]
        if name in self.abn_layers:
            weight = weight.abs() + ABN_EPS
        return F.batch_norm(x, mean, var, weight, self.state[f"{name}.bias"], False, 0.0, BN_EPS)

    def _calibrate(self, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> None:
        g = self.calibrate
        x = x.detach()
        if x.shape[0] * x.shape[2] * x.shape[3] >= 8:
            batch_mean, batch_var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)
        else:  # global-pool paths (1x1 maps): one statistic over all channels
            batch_mean = x.mean().expand(x.shape[1])
            batch_var = x.var(unbiased=False).expand(x.shape[1])
        batch_var = batch_var.clamp_min(1e-2)
        noise = torch.randn(mean.shape, generator=g, dtype=mean.dtype)
        mean.copy_(batch_mean + 0.1 * batch_var.sqrt() * noise)
        var.copy_(batch_var * torch.empty(var.shape, dtype=var.dtype).uniform_(0.7, 1.4, generator=g))

    def cbr(self, x: torch.Tensor, name: str, stride: int = 1) -> torch.Tensor:
        """ConvBNReLU / ConvX: children ``conv``, ``bn`` (and a ReLU)."""
        return F.relu(self.bn(self.conv(x, f"{name}.conv", stride), f"{name}.bn"))


def _arm(w: Weights, x: torch.Tensor, name: str, pool: str) -> torch.Tensor:
    """Attention refinement: 3x3 ConvBNReLU, global pool, 1x1 conv, BN, sigmoid (no ReLU), multiply."""
    feat = w.cbr(x, f"{name}.conv")
    if pool == "mean":   # CoinCheung: torch.mean(dim=(2, 3), keepdim=True)
        atten = feat.mean(dim=(2, 3), keepdim=True)
    else:                # STDC-Seg: F.avg_pool2d(feat, feat.size()[2:])
        atten = F.avg_pool2d(feat, feat.shape[2:])
    atten = torch.sigmoid(w.bn(w.conv(atten, f"{name}.conv_atten"), f"{name}.bn_atten"))
    return feat * atten


# --------------------------------------------------------------------------------------------------
# CoinCheung BiSeNet V1 (ResNet-18)
# --------------------------------------------------------------------------------------------------
def _resnet18(w: Weights, x: torch.Tensor, prefix: str = "cp.resnet") -> list[torch.Tensor]:
    x = F.relu(w.bn(w.conv(x, f"{prefix}.conv1", stride=2), f"{prefix}.bn1"))
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    features = []
    for layer, stride in (("layer1", 1), ("layer2", 2), ("layer3", 2), ("layer4", 2)):
        for index in range(2):
            p = f"{prefix}.{layer}.{index}"
            s = stride if index == 0 else 1
            residual = F.relu(w.bn(w.conv(x, f"{p}.conv1", s), f"{p}.bn1"))
            residual = w.bn(w.conv(residual, f"{p}.conv2"), f"{p}.bn2")
            shortcut = x
            if f"{p}.downsample.0.weight" in w:
                shortcut = w.bn(w.conv(x, f"{p}.downsample.0", s), f"{p}.downsample.1")
            x = F.relu(shortcut + residual)
        features.append(x)
    return features[1:]  # strides 8, 16, 32


def reference_bisenetv1(w: Weights, x: torch.Tensor) -> torch.Tensor:
    feat8, feat16, feat32 = _resnet18(w, x)
    # Context path.
    avg = w.cbr(feat32.mean(dim=(2, 3), keepdim=True), "cp.conv_avg")
    feat32_sum = _arm(w, feat32, "cp.arm32", "mean") + avg
    feat32_up = w.cbr(F.interpolate(feat32_sum, scale_factor=2.0, mode="nearest"), "cp.conv_head32")
    feat16_sum = _arm(w, feat16, "cp.arm16", "mean") + feat32_up
    feat_cp8 = w.cbr(F.interpolate(feat16_sum, scale_factor=2.0, mode="nearest"), "cp.conv_head16")
    # Spatial path.
    feat_sp = x
    for name, stride in (("sp.conv1", 2), ("sp.conv2", 2), ("sp.conv3", 2), ("sp.conv_out", 1)):
        feat_sp = w.cbr(feat_sp, name, stride)
    # Feature fusion (conv + BN + sigmoid attention, residual).
    feat = w.cbr(torch.cat([feat_sp, feat_cp8], dim=1), "ffm.convblk")
    atten = torch.sigmoid(w.bn(w.conv(feat.mean(dim=(2, 3), keepdim=True), "ffm.conv"), "ffm.bn"))
    fused = feat * atten + feat
    # Output head.
    logits = w.conv(w.cbr(fused, "conv_out.conv"), "conv_out.conv_out", bias=True)
    return F.interpolate(logits, scale_factor=8.0, mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------------------------------
# CoinCheung BiSeNet V2
# --------------------------------------------------------------------------------------------------
def _ge_layer(w: Weights, x: torch.Tensor, p: str) -> torch.Tensor:
    channels = x.shape[1]
    feat = w.cbr(x, f"{p}.conv1")
    if f"{p}.shortcut.0.weight" in w:  # GELayerS2
        feat = w.bn(w.conv(feat, f"{p}.dwconv1.0", stride=2, groups=channels), f"{p}.dwconv1.1")
        mid = feat.shape[1]
        feat = F.relu(w.bn(w.conv(feat, f"{p}.dwconv2.0", groups=mid), f"{p}.dwconv2.1"))
        feat = w.bn(w.conv(feat, f"{p}.conv2.0"), f"{p}.conv2.1")
        shortcut = w.bn(w.conv(x, f"{p}.shortcut.0", stride=2, groups=channels), f"{p}.shortcut.1")
        shortcut = w.bn(w.conv(shortcut, f"{p}.shortcut.2"), f"{p}.shortcut.3")
    else:  # GELayerS1
        feat = F.relu(w.bn(w.conv(feat, f"{p}.dwconv.0", groups=channels), f"{p}.dwconv.1"))
        feat = w.bn(w.conv(feat, f"{p}.conv2.0"), f"{p}.conv2.1")
        shortcut = x
    return F.relu(feat + shortcut)


def reference_bisenetv2(w: Weights, x: torch.Tensor) -> torch.Tensor:
    # Detail branch.
    detail = x
    for stage, strides in (("S1", (2, 1)), ("S2", (2, 1, 1)), ("S3", (2, 1, 1))):
        for index, stride in enumerate(strides):
            detail = w.cbr(detail, f"detail.{stage}.{index}", stride)
    # Semantic branch: stem.
    feat = w.cbr(x, "segment.S1S2.conv", stride=2)
    left = w.cbr(w.cbr(feat, "segment.S1S2.left.0"), "segment.S1S2.left.1", stride=2)
    right = F.max_pool2d(feat, kernel_size=3, stride=2, padding=1)
    feat = w.cbr(torch.cat([left, right], dim=1), "segment.S1S2.fuse")
    # GE stages.
    for stage, depth in (("S3", 2), ("S4", 2), ("S5_4", 4)):
        for index in range(depth):
            feat = _ge_layer(w, feat, f"segment.{stage}.{index}")
    # Context embedding.
    context = w.bn(feat.mean(dim=(2, 3), keepdim=True), "segment.S5_5.bn")
    context = w.cbr(context, "segment.S5_5.conv_gap")
    semantic = w.cbr(context + feat, "segment.S5_5.conv_last")
    # Bilateral guided aggregation.
    left1 = w.conv(w.bn(w.conv(detail, "bga.left1.0", groups=128), "bga.left1.1"), "bga.left1.2")
    left2 = w.bn(w.conv(detail, "bga.left2.0", stride=2), "bga.left2.1")
    left2 = F.avg_pool2d(left2, kernel_size=3, stride=2, padding=1)
    right1 = w.bn(w.conv(semantic, "bga.right1.0"), "bga.right1.1")
    right2 = w.conv(w.bn(w.conv(semantic, "bga.right2.0", groups=128), "bga.right2.1"), "bga.right2.2")
    right1 = F.interpolate(right1, scale_factor=4.0, mode="nearest")
    left = left1 * torch.sigmoid(right1)
    right = F.interpolate(left2 * torch.sigmoid(right2), scale_factor=4.0, mode="nearest")
    feat = F.relu(w.bn(w.conv(left + right, "bga.conv.0"), "bga.conv.1"))
    # Segmentation head (dropout is the identity in eval; no booster heads).
    logits = w.conv(w.cbr(feat, "head.conv"), "head.conv_out.1", bias=True)
    return F.interpolate(logits, scale_factor=8.0, mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------------------------------
# STDC-Seg (STDC1 = STDCNet813, STDC2 = STDCNet1446)
# --------------------------------------------------------------------------------------------------
# The reference's x8 / x16 / x32 slices of ``features``: [start, end) of each stage.
STDC_STAGES = {"stdc1": ((2, 4), (4, 6), (6, 8)), "stdc2": ((2, 6), (6, 11), (11, 14))}


def _cat_bottleneck(w: Weights, x: torch.Tensor, p: str) -> torch.Tensor:
    stride2 = f"{p}.avd_layer.0.weight" in w
    blocks = sum(1 for k in w.state if re.fullmatch(rf"{re.escape(p)}\.conv_list\.\d+\.conv\.weight", k))
    out1 = w.cbr(x, f"{p}.conv_list.0")
    outputs = []
    out = out1
    for index in range(1, blocks):
        if index == 1 and stride2:
            out = w.bn(w.conv(out1, f"{p}.avd_layer.0", stride=2, groups=out1.shape[1]), f"{p}.avd_layer.1")
        out = w.cbr(out, f"{p}.conv_list.{index}")
        outputs.append(out)
    if stride2:
        out1 = F.avg_pool2d(out1, kernel_size=3, stride=2, padding=1)  # count_include_pad=True
    return torch.cat([out1] + outputs, dim=1)


def _stdc_backbone(w: Weights, x: torch.Tensor, variant: str) -> list[torch.Tensor]:
    feat2 = w.cbr(x, "cp.backbone.features.0", stride=2)
    feat4 = w.cbr(feat2, "cp.backbone.features.1", stride=2)
    features = [feat2, feat4]
    out = feat4
    for start, end in STDC_STAGES[variant]:
        for index in range(start, end):
            out = _cat_bottleneck(w, out, f"cp.backbone.features.{index}")
        features.append(out)
    return features  # strides 2, 4, 8, 16, 32 (use_conv_last=False)


def reference_stdc(w: Weights, x: torch.Tensor, variant: str) -> torch.Tensor:
    height, width = x.shape[2:]
    _, _, feat8, feat16, feat32 = _stdc_backbone(w, x, variant)
    # Context path.
    avg = w.cbr(F.avg_pool2d(feat32, feat32.shape[2:]), "cp.conv_avg")
    avg_up = F.interpolate(avg, feat32.shape[2:], mode="nearest")
    feat32_sum = _arm(w, feat32, "cp.arm32", "avg_pool") + avg_up
    feat32_up = w.cbr(F.interpolate(feat32_sum, feat16.shape[2:], mode="nearest"), "cp.conv_head32")
    feat16_sum = _arm(w, feat16, "cp.arm16", "avg_pool") + feat32_up
    feat_cp8 = w.cbr(F.interpolate(feat16_sum, feat8.shape[2:], mode="nearest"), "cp.conv_head16")
    # Feature fusion: SE-style attention conv1 -> ReLU -> conv2 -> sigmoid, no BN.
    feat = w.cbr(torch.cat([feat8, feat_cp8], dim=1), "ffm.convblk")
    atten = F.avg_pool2d(feat, feat.shape[2:])
    atten = torch.sigmoid(w.conv(F.relu(w.conv(atten, "ffm.conv1")), "ffm.conv2"))
    fused = feat * atten + feat
    # Output head: classifier without bias, bilinear with align_corners=True.
    logits = w.conv(w.cbr(fused, "conv_out.conv"), "conv_out.conv_out")
    return F.interpolate(logits, (height, width), mode="bilinear", align_corners=True)


REFERENCES: dict[str, Callable[[Weights, torch.Tensor], torch.Tensor]] = {
    "bisenetv1": reference_bisenetv1,
    "bisenetv2": reference_bisenetv2,
    "stdc1": lambda w, x: reference_stdc(w, x, "stdc1"),
    "stdc2": lambda w, x: reference_stdc(w, x, "stdc2"),
}


# --------------------------------------------------------------------------------------------------
# Published-layout state_dicts from the manifests
# --------------------------------------------------------------------------------------------------
def _manifest(variant: str) -> dict:
    path = REFERENCE / MANIFESTS[variant]
    if not path.is_file():
        pytest.skip(f"checkpoint manifests not found at {REFERENCE} (shared/ must sit beside the clone)")
    return json.loads(path.read_text())


def _abn_layers(manifest: dict) -> frozenset[str]:
    """BN layers that keep no batch counter: InPlace-ABN layers (STDC-Seg heads / context path)."""
    keys = {entry["key"] for entry in manifest["keys"]}
    return frozenset(k[: -len(".running_var")] for k in keys
                     if k.endswith(".running_var") and k.replace("running_var", "num_batches_tracked") not in keys)


def published_state_dict(manifest: dict, seed: int) -> dict[str, torch.Tensor]:
    """Random tensors in the exact published layout: key order, shapes, dtypes, and alias keys that
    hold the very same tensor object as their target (as ``torch.save`` of the reference does).

    Convolutions ~ N(0, 1/fan_in), conv biases ~ N(0, 0.1^2); BN weight ~ U(0.5, 1.5) (for the
    InPlace-ABN layers a third of them negative, which their |w| + eps scale makes legitimate), bias
    ~ N(0, 0.2^2), running_mean ~ N(0, 0.1^2), running_var ~ U(0.5, 1.5) (the used layers are
    re-calibrated afterwards, see :func:`calibrated_state_dict`).
    """
    g = torch.Generator().manual_seed(seed)
    aliases = manifest["aliases"] if isinstance(manifest["aliases"], dict) else {}
    abn = _abn_layers(manifest)
    keys = {entry["key"] for entry in manifest["keys"]}
    state: dict[str, torch.Tensor] = {}
    for entry in manifest["keys"]:
        key, shape, dtype = entry["key"], tuple(entry["shape"]), entry["dtype"]
        if key in aliases:
            state[key] = state[aliases[key]]  # targets precede their aliases in the file
            continue
        if dtype == "int64":
            state[key] = torch.tensor(1000, dtype=torch.int64)
            continue
        assert dtype == "float32", (key, dtype)
        prefix, leaf = key.rsplit(".", 1)
        if len(shape) >= 2:  # conv (4-D) and linear (2-D) weights
            fan_in = math.prod(shape[1:])
            tensor = torch.randn(shape, generator=g) / math.sqrt(fan_in)
        elif leaf == "running_mean":
            tensor = 0.1 * torch.randn(shape, generator=g)
        elif leaf == "running_var":
            tensor = torch.empty(shape).uniform_(0.5, 1.5, generator=g)
        elif leaf == "weight":  # BN scale
            tensor = torch.empty(shape).uniform_(0.5, 1.5, generator=g)
            if prefix in abn:
                tensor = torch.where(torch.rand(shape, generator=g) < 1 / 3, -tensor, tensor)
        elif f"{prefix}.running_var" in keys:  # BN shift
            tensor = 0.2 * torch.randn(shape, generator=g)
        else:  # conv bias
            tensor = 0.1 * torch.randn(shape, generator=g)
        state[key] = tensor
    for alias, target in aliases.items():
        assert state[alias] is state[target], alias
    return state


def calibrated_state_dict(variant: str, seed: int) -> tuple[dict[str, torch.Tensor], frozenset[str]]:
    manifest = _manifest(variant)
    state = published_state_dict(manifest, seed)
    abn = _abn_layers(manifest)
    g = torch.Generator().manual_seed(seed + 1)
    calibration_batch = torch.randn(2, 3, *SIZE, generator=g)
    with torch.no_grad():
        REFERENCES[variant](Weights(state, abn, calibrate=g), calibration_batch)
    # The layout is untouched by the calibration (in-place writes into the shared tensors).
    assert list(state) == [e["key"] for e in manifest["keys"]]
    for entry in manifest["keys"]:
        assert tuple(state[entry["key"]].shape) == tuple(entry["shape"]), entry["key"]
        assert str(state[entry["key"]].dtype) == f"torch.{entry['dtype']}", entry["key"]
    assert len(state) == manifest["state_dict_key_count"]
    assert len({id(t) for t in state.values()}) == manifest["unique_tensor_count"]
    if variant in STDC_STAGES:  # the stage slices used above are the file's x8 / x16 / x32 aliases
        stages: dict[str, set[int]] = {}
        for alias in manifest["aliases"]:
            if match := re.match(r"cp\.backbone\.x(8|16|32)\.0\.(\d+)\.", alias):
                stages.setdefault(match[1], set()).add(int(match[2]))
        assert [sorted(stages[s]) for s in ("8", "16", "32")] == [
            list(range(start, end)) for start, end in STDC_STAGES[variant]]
    return state, abn


def _double(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.double() if v.is_floating_point() else v for k, v in state.items()}


# --------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------
_LOADED: dict[str, tuple[dict[str, torch.Tensor], frozenset[str], torch.nn.Module, int]] = {}


def _published_model(variant: str, tmp_path_factory: pytest.TempPathFactory):
    """(state, abn_layers, model, seed): a published-layout file, saved and loaded through
    ``build_model(variant, weights=path)``; built once per variant and shared by the tests."""
    if variant not in _LOADED:
        seed = 1000 + list(MANIFESTS).index(variant)
        state, abn = calibrated_state_dict(variant, seed)
        path = tmp_path_factory.mktemp("published") / f"{variant}.pth"
        torch.save(state, path)
        model = build_model(variant, num_classes=NUM_CLASSES, weights=path)
        _LOADED[variant] = (state, abn, model, seed)
    return _LOADED[variant]


@pytest.mark.parametrize("variant", [
    "bisenetv1",
    "bisenetv2",
    "stdc1",
    "stdc2",
])
def test_eval_output_equals_reference(variant: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    state, abn, model, seed = _published_model(variant, tmp_path_factory)
    assert not model.training
    x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(seed + 2))
    reference = REFERENCES[variant]
    with torch.no_grad():
        ours = model(x)
        ref32 = reference(Weights(state, abn), x)
        ref64 = reference(Weights(_double(state), abn), x.double())

    assert ours.shape == ref64.shape == (1, NUM_CLASSES, *SIZE)
    assert ours.dtype == torch.float32
    # The generated weights give a well-conditioned, non-degenerate network: O(1) logits that
    # differ across pixels and classes (a dead network would make any comparison vacuous).
    scale = ref64.abs().max().item()
    assert 0.1 < ref64.std().item() and scale < 1e3, (ref64.std().item(), scale)
    assert ref64.argmax(dim=1).unique().numel() >= 3

    # fp32 rounding, measured: a faithful fp32 evaluation of the reference sits this far from
    # the float64 one. Ours (different but equivalent op order: fused BN, mean vs avg_pool, size-
    # vs scale-based resizing) may sit a few times as far, never more.
    err_ref32 = (ref32.double() - ref64).abs().max().item()
    err_ours = (ours.double() - ref64).abs().max().item()
    assert err_ref32 < 1e-4 * scale, (err_ref32, scale)
    tolerance = 8 * err_ref32 + 1e-6 * scale
    if err_ours > tolerance and abn:
        plain = reference(Weights(_double(state)), x.double())  # the same net, ABN read as plain BN
        hint = (f"; against the reference with its ABN layers read as plain BatchNorm: "
                f"{(ours.double() - plain).abs().max().item():.3g}")
    else:
        hint = ""
    assert err_ours <= tolerance, (
        f"{variant}: max |ours - reference(float64)| = {err_ours:.3g} exceeds fp32 rounding "
        f"(fp32 reference error {err_ref32:.3g}, tolerance {tolerance:.3g}, logit scale {scale:.3g}){hint}")

    # Same decisions: the argmax agrees wherever the float64 top-2 margin is not within rounding.
    top2 = ref64.topk(2, dim=1).values
    decisive = (top2[:, 0] - top2[:, 1]) > 2 * tolerance
    agree = ours.argmax(dim=1) == ref64.argmax(dim=1)
    assert bool(agree[decisive].all()), f"{int((~agree & decisive).sum())} decisive pixels disagree"
    assert agree.float().mean().item() >= 0.999


@pytest.mark.parametrize("variant", list(MANIFESTS))
def test_any_input_size_runs(variant: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Sizes that are not multiples of 32 (where the reference code crashes at its fixed x2 / x4
    upsampling) give logits at the input resolution, with the published-layout weights loaded."""
    model = _published_model(variant, tmp_path_factory)[2]
    del _LOADED[variant]  # the last user: free the weights
    with torch.no_grad():
        out = model(torch.randn(1, 3, 72, 100, generator=torch.Generator().manual_seed(5)))
    assert out.shape == (1, NUM_CLASSES, 72, 100)
    assert out.dtype == torch.float32
    assert bool(torch.isfinite(out).all())
