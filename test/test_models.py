"""Registry-driven model tests (every registered model), as torchvision and timm do."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch

from bisenet_ros.models import build_model, list_models

REFERENCE_PARAMETERS = {  # eval models (aux=False), as counted on the reference implementations
    "bisenetv1": 13_275_539,
    "bisenetv2": 3_358_627,
    "stdc1": 8_275_104,
    "stdc2": 12_305_568,
}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_list_models() -> None:
    assert list_models() == ["bisenetv1", "bisenetv1_xception39", "bisenetv2", "stdc1", "stdc2"]


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="bisenetv1, bisenetv1_xception39, bisenetv2, stdc1, stdc2"):
        build_model("bisenetv3")


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMETERS))
def test_parameter_count_matches_reference(name: str) -> None:
    model = build_model(name)
    assert sum(p.numel() for p in model.parameters()) == REFERENCE_PARAMETERS[name]


@pytest.mark.parametrize("name", list_models())
def test_aux_heads_are_not_built_for_deployment(name: str) -> None:
    deploy = {k for k, _ in build_model(name).named_parameters()}
    train = {k for k, _ in build_model(name, aux=True).named_parameters()}
    assert deploy < train  # strictly fewer: the training heads only exist with aux=True


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("size", [(65, 97), (90, 160)], ids=["odd", "720p-aspect"])
def test_eval_output_shape_at_any_size(name: str, size: tuple[int, int]) -> None:
    model = build_model(name, num_classes=7)
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (1, 7, *size)
    assert torch.isfinite(out).all()


def test_720p_frame_runs() -> None:
    # The reference V1/V2 code crashes unless sizes are multiples of 32; 720 is not.
    with torch.no_grad():
        out = build_model("bisenetv2")(torch.randn(1, 3, 720, 1280))
    assert out.shape == (1, 19, 720, 1280)


@pytest.mark.parametrize("name", list_models())
def test_train_mode_contract_and_every_parameter_gets_a_gradient(name: str) -> None:
    model = build_model(name, num_classes=5, aux=True).train()
    # BiSeNetV2 zero-initialises the last BN of each GE branch (identity start), which zeroes the
    # gradient of everything before it; randomise BN so a zero gradient means a disconnected layer.
    _randomize_batchnorm(model)
    out = model(torch.randn(2, 3, 64, 96))
    assert set(out) == ({"out", "aux", "detail"} if name.startswith("stdc") else {"out", "aux"})
    assert out["out"].shape == (2, 5, 64, 96)
    assert len(out["aux"]) == (4 if name == "bisenetv2" else 2)
    for aux in out["aux"]:
        assert aux.shape == (2, 5, 64, 96)
    loss = out["out"].square().mean() + sum(a.square().mean() for a in out["aux"])
    if "detail" in out:
        assert out["detail"].shape == (2, 1, 8, 12)
        loss = loss + out["detail"].square().mean()
    loss.backward()
    without_grad = [k for k, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not without_grad, f"parameters without gradient: {without_grad[:5]}"


@pytest.mark.parametrize("name", list_models())
def test_train_mode_without_aux_returns_logits(name: str) -> None:
    model = build_model(name, num_classes=3).train()
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3, 64, 64)


@pytest.mark.parametrize("name", list_models())
def test_eval_is_deterministic(name: str) -> None:
    model = build_model(name)
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@torch.no_grad()
def _randomize_batchnorm(model: torch.nn.Module) -> None:
    # Fresh BN layers are the identity in eval mode, which would hide normalization bugs.
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)


@torch.no_grad()
def calibrate_batchnorm(model: torch.nn.Module, size: tuple[int, int] = (64, 128)) -> torch.nn.Module:
    """Give BN layers the running statistics of real activations, as a trained network has.

    A freshly initialised network's logits grow to 1e2..1e3 through its depth, which makes any
    absolute tolerance meaningless; after calibration they are of the order of trained logits.
    """
    _randomize_batchnorm(model)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
    model.train()
    for _ in range(2):
        model(torch.randn(2, 3, *size))
    return model.eval()


@pytest.mark.parametrize("name", list_models())
def test_onnx_runtime_parity(name: str) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = calibrate_batchnorm(build_model(name))
    x = torch.randn(1, 3, 64, 128)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buffer, opset_version=17, dynamo=False,
                          input_names=["image"], output_names=["logits"])
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        torch_logits = model(x).numpy()
        exact = model.double()(x.double()).numpy()
    # Both runtimes accumulate fp32 sums in different orders (oneDNN vs MLAS kernels, fused
    # Conv+BN in ORT) through 20-60 layers. Allowed: 1e-4 relative to the logit scale, or, for the
    # deepest nets, twice torch's own fp32 rounding error measured against a float64 run.
    scale = float(np.abs(torch_logits).max())
    fp32_error = float(np.abs(torch_logits - exact).max())
    difference = float(np.abs(onnx_logits - torch_logits).max())
    assert difference <= max(1e-4 * scale, 2 * fp32_error), (difference, scale, fp32_error)
    assert (onnx_logits.argmax(1) == torch_logits.argmax(1)).mean() > 0.999
