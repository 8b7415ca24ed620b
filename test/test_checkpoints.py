"""Checkpoint loading: the published layouts (from ../shared/reference manifests), this project's
format, and the clear errors for corrupt or mismatched files."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from bisenet_ros.models import (CITYSCAPES_COINCHEUNG, IMAGENET, CheckpointError, Normalization, build_model,
                                load_weights, make_checkpoint)
from published import MANIFESTS, REFERENCE

PUBLISHED_FORMAT = {"bisenetv1": "coincheung", "bisenetv2": "coincheung", "stdc1": "stdc_seg", "stdc2": "stdc_seg"}
UNUSED_GROUPS = ("backbone_unused_imagenet_head", "detail_head(conv_out_sp16)", "detail_head(conv_out_sp4)",
                 "detail_head(conv_out_sp2)")


def _manifest(variant: str) -> dict:
    path = REFERENCE / MANIFESTS[variant]
    if not path.is_file():
        pytest.skip(f"checkpoint manifests not found at {REFERENCE} (shared/ must sit beside the clone)")
    return json.loads(path.read_text())


def _our_key(variant: str, key: str, aliases: dict[str, str]) -> str:
    key = aliases.get(key, key)
    if variant == "bisenetv1":
        key = re.sub(r"^cp\.resnet\.", "cp.backbone.", key)
    return key


def abn_prefix(key: str, manifest: dict) -> bool:
    """Whether ``key`` belongs to a BN layer stored without a batch counter (InPlace-ABN)."""
    prefix = key[: -len("weight")]
    keys = {e["key"] for e in manifest["keys"]}
    return prefix + "running_var" in keys and prefix + "num_batches_tracked" not in keys


def published_state_dict(model: torch.nn.Module, variant: str) -> dict[str, torch.Tensor]:
    """Lay out ``model``'s weights exactly as the published file does (keys, order, shapes, dtypes,
    shared alias tensors); tensors the model does not have (unused heads) get random values."""
    manifest = _manifest(variant)
    aliases = manifest["aliases"] if isinstance(manifest["aliases"], dict) else {}
    ours = model.state_dict()
    used: set[str] = set()
    out: dict[str, torch.Tensor] = {}
    for entry in manifest["keys"]:
        key, shape = entry["key"], tuple(entry["shape"])
        source = _our_key(variant, key, aliases)
        if key in aliases:
            out[key] = out[aliases[key]]  # the same tensor object, as in the real file
        elif source in ours:
            out[key] = ours[source].clone()
            used.add(source)
            if key.endswith(".weight") and abn_prefix(key, manifest):
                # InPlace-ABN layers scale by |weight| + eps: store what gives our weight back.
                out[key] = out[key] - 1e-5
        else:
            assert entry["group"] in UNUSED_GROUPS, f"manifest key {key} has no counterpart in our model"
            if entry["dtype"] == "int64":
                out[key] = torch.tensor(100, dtype=torch.int64)
            else:
                out[key] = torch.randn(shape).abs() if "running_var" in key else torch.randn(shape)
        assert tuple(out[key].shape) == shape, (key, tuple(out[key].shape), shape)
        assert str(out[key].dtype) == "torch." + entry["dtype"], key
    # Ours holds nothing the file lacks, except the counters ABN layers do not keep.
    leftovers = [k for k in ours if k not in used and not k.endswith("num_batches_tracked")]
    assert not leftovers, leftovers
    assert len(out) == manifest["state_dict_key_count"]
    return out


@torch.no_grad()
def _realistic(model: torch.nn.Module) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(3)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return model


@pytest.mark.parametrize("variant", sorted(MANIFESTS))
def test_published_checkpoint_loads_and_reproduces_its_model(variant: str, tmp_path: Path) -> None:
    source = _realistic(build_model(variant, aux=True))  # saved from a train-mode model, as released
    path = tmp_path / "release.pth"
    torch.save(published_state_dict(source, variant), path)

    model = build_model(variant, weights=path)
    info = model.checkpoint_info
    assert (info.format, info.variant, info.num_classes) == (PUBLISHED_FORMAT[variant], variant, 19)
    expected_normalization = IMAGENET if variant.startswith("stdc") else CITYSCAPES_COINCHEUNG
    assert model.normalization == info.normalization == expected_normalization
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        # Exact for CoinCheung files; the InPlace-ABN weight round trip (w - eps, |.| + eps) of
        # STDC-Seg files costs one fp32 rounding.
        torch.testing.assert_close(model(x), source.eval()(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", sorted(MANIFESTS))
def test_published_checkpoint_loads_training_heads(variant: str, tmp_path: Path) -> None:
    source = _realistic(build_model(variant, aux=True))
    path = tmp_path / "release.pth"
    torch.save(published_state_dict(source, variant), path)
    model = build_model(variant, aux=True, weights=path)
    for key, tensor in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], tensor, rtol=1e-6, atol=1e-6, msg=key)


def test_own_checkpoint_round_trip(tmp_path: Path) -> None:
    source = _realistic(build_model("bisenetv1_xception39", num_classes=4, aux=True))
    source.normalization = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    names, palette = ["road", "car", "sky", "other"], [[128, 64, 128], [0, 0, 142], [70, 130, 180], [0, 0, 0]]
    path = tmp_path / "own.pth"
    torch.save(make_checkpoint(source, class_names=names, palette=palette, step=7), path)

    model = build_model("bisenetv1_xception39", num_classes=4, weights=path)  # deployment: no aux heads
    info = model.checkpoint_info
    assert (info.format, info.num_classes, info.class_names, info.palette) == ("bisenet_ros", 4, names, palette)
    assert model.normalization == Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x = torch.randn(1, 3, 40, 72)
    with torch.no_grad():
        assert torch.equal(model(x), source.eval()(x))


def test_deployment_weights_into_training_model_warn_about_fresh_heads(tmp_path: Path) -> None:
    path = tmp_path / "deploy.pth"
    torch.save(make_checkpoint(build_model("stdc1")), path)
    with pytest.warns(UserWarning, match="training-head tensors"):
        build_model("stdc1", aux=True, weights=path)


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "model_final_v2_city.pth"
    torch.save(make_checkpoint(build_model("bisenetv2")), path)
    path.write_bytes(path.read_bytes()[: 5000])  # truncated download
    with pytest.raises(CheckpointError, match=r"model_final_v2_city\.pth: not a readable PyTorch "
                       r"checkpoint \(5000 bytes\): the file is corrupt, truncated") as error:
        build_model("bisenetv2", weights=path)
    assert "weights_only" not in str(error.value) and "Download it again" in str(error.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        build_model("bisenetv2", weights=tmp_path / "nope.pth")


class _Payload:
    def __reduce__(self):  # what a malicious pickle does
        return (print, ("unpickled!",))


def test_arbitrary_pickles_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"model": _Payload()}, path)
    with pytest.raises(CheckpointError, match="holds Python objects other than tensors") as error:
        build_model("bisenetv2", weights=path)
    # PyTorch's own message advises re-running torch.load with weights_only=False, i.e. letting
    # the file run code: ours must never pass that on.
    message = str(error.value)
    assert "weights_only" not in message and "can run arbitrary code" in message
    assert "(it holds a print object)" in message  # names what the file holds


def test_other_variant_names_both(tmp_path: Path) -> None:
    path = tmp_path / "v2.pth"
    torch.save(published_state_dict(build_model("bisenetv2", aux=True), "bisenetv2"), path)
    with pytest.raises(CheckpointError, match=r"format coincheung\) holds a bisenetv2 model, but the model is bisenetv1"):
        build_model("bisenetv1", weights=path)


def test_other_class_count(tmp_path: Path) -> None:
    path = tmp_path / "stdc.pth"
    torch.save(published_state_dict(build_model("stdc1", aux=True), "stdc1"), path)
    with pytest.raises(CheckpointError, match="has 19 classes, but the model was built with 7; set num_classes=19"):
        build_model("stdc1", num_classes=7, weights=path)


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path) -> None:
    checkpoint = make_checkpoint(build_model("bisenetv2"))
    del checkpoint["model"]["bga.conv.0.weight"]
    checkpoint["model"]["bga.extra.weight"] = torch.zeros(1)
    path = tmp_path / "edited.pth"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError) as error:
        build_model("bisenetv2", weights=path)
    message = str(error.value)
    assert "edited.pth (format bisenet_ros, variant bisenetv2)" in message
    assert "1 missing (first: bga.conv.0.weight)" in message
    assert "1 unexpected (first: bga.extra.weight)" in message


def test_damaged_stdc_alias_is_detected(tmp_path: Path) -> None:
    state = published_state_dict(build_model("stdc1", aux=True), "stdc1")
    state["cp.backbone.x8.0.2.conv_list.0.conv.weight"] = state["cp.backbone.x8.0.2.conv_list.0.conv.weight"] + 1
    path = tmp_path / "model_maxmIOU50.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="alias key cp.backbone.x8.0.2.conv_list.0.conv.weight does not hold"):
        build_model("stdc1", weights=path)


def test_unrecognised_layout(tmp_path: Path) -> None:
    path = tmp_path / "resnet50.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout"):
        build_model("bisenetv1", weights=path)


def test_ddp_prefixed_state_dict_loads(tmp_path: Path) -> None:
    source = build_model("bisenetv2", aux=True)
    state = {"module." + k: v for k, v in published_state_dict(source, "bisenetv2").items()}
    path = tmp_path / "ddp.pth"
    torch.save(state, path)
    info = load_weights(build_model("bisenetv2"), path)
    assert info.format == "coincheung"
