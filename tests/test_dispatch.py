"""Backend rules (SPEC §8): declared limits, "auto" skipping what a backend cannot take, explicit
backends failing with the limit named, messages naming the public op, validation before kernels."""
import pytest
import torch

import affseg
from affseg import _backend
from affseg.functional import labels as labels_api
from conftest import INTERPRETING


def _pdcr_inputs(C=8, W=3, K=2, N=16, dtype=torch.float32):
    feats = torch.randn(2, N, C, dtype=dtype, requires_grad=True)
    phi = torch.rand(2, W, N, K, dtype=dtype).softmax(-1)
    return feats, phi


def test_limits_describe_and_detect_violations():
    lim = _backend.Limits(channels=512, windows=8, dtypes=(torch.float32,))
    assert lim.describe() == "C <= 512, W <= 8, float32"
    assert _backend.Limits(batch=65535).violation(batch=70000) == "it takes B <= 65535, got B=70000"
    assert lim.violation(torch.float32, channels=512, windows=8) is None
    assert lim.violation(torch.float32, channels=768) == "it takes C <= 512, got C=768"
    assert lim.violation(torch.float64, channels=4) == "it takes dtypes float32, got float64"
    assert _backend.NO_LIMITS.describe() == "no limit"


def test_auto_skips_a_backend_that_cannot_take_the_call(monkeypatch):
    monkeypatch.setitem(_backend._C_LIMITS, ("cpu", "pdcr_loss_from_ratios"), _backend.Limits(windows=2))
    assert _backend.resolve("pdcr_loss_from_ratios", "auto", torch.device("cpu"), windows=2) == "cpu"
    assert _backend.resolve("pdcr_loss_from_ratios", "auto", torch.device("cpu"), windows=3) == "reference"
    feats, phi = _pdcr_inputs(W=3)
    got = affseg.pdcr_loss_from_ratios(feats, phi)  # runs, on the reference
    torch.testing.assert_close(got, affseg.pdcr_loss_from_ratios(feats, phi, backend="reference"))


def test_explicit_backend_beyond_its_limit_raises_value_error_naming_it(monkeypatch):
    monkeypatch.setitem(_backend._C_LIMITS, ("cpu", "pdcr_loss_from_ratios"), _backend.Limits(windows=2))
    feats, phi = _pdcr_inputs(W=3)
    with pytest.raises(ValueError, match=r"affseg\.pdcr_loss_from_ratios: backend 'cpu' cannot take this call: "
                                         r"it takes W <= 2, got W=3"):
        affseg.pdcr_loss_from_ratios(feats, phi, backend="cpu")


def test_the_cuda_kernels_declare_their_limits():
    # csrc/cuda/pdcr_kernels.cu kMaxWindows = 8; csrc/cuda/entropy_kernels.h kEntropyMaxClasses = 2048.
    assert _backend.limits("pdcr_loss_from_ratios", "cuda").windows == 8
    assert _backend.limits("pdcr_loss_from_ratios", "cuda").batch == 65535
    assert _backend.limits("soft_supcon_loss", "cuda").batch == 65535
    assert _backend.limits("patch_entropy", "cuda").classes == 2048
    assert _backend.limits("pdcr_loss_from_ratios", "cpu") == _backend.NO_LIMITS


@pytest.mark.skipif(not INTERPRETING, reason="Triton on CPU tensors needs the interpreter")
def test_triton_declares_limits_from_its_kernel_module():
    from affseg.kernels import pdcr as kernels

    declared = _backend.limits("pdcr_loss_from_ratios", "triton", "cpu")
    assert declared.channels == kernels.LIMITS["channels"]
    assert torch.float64 in declared.dtypes  # the interpreter runs the float64 parity tests
    # compiled for a GPU, float64 spills, so it is declared away and goes to CUDA C++ there; float16
    # and bfloat16 run upcast, with dots at their own precision (SPEC §8)
    assert _backend.limits("pdcr_loss_from_ratios", "triton", "cuda").dtypes == (
        torch.float16, torch.bfloat16, torch.float32)
    feats, phi = _pdcr_inputs(C=declared.channels + 1)
    with pytest.raises(ValueError, match=rf"backend 'triton' cannot take this call: it takes C <= {declared.channels}"):
        affseg.pdcr_loss_from_ratios(feats, phi, backend="triton")


@pytest.mark.skipif(not INTERPRETING, reason="Triton on CPU tensors needs the interpreter")
def test_bfloat16_is_refused_by_the_triton_interpreter():
    x = torch.randn(1, 2, 4, 4, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="interpreter computes bfloat16 wrongly"):
        affseg.uafs_reweight(x, x, backend="triton")


def test_an_unavailable_backend_is_named_for_the_public_op_the_user_called():
    feats = torch.randn(1, 4, 4, 4)
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    with pytest.raises(RuntimeError, match=r"^affseg\.pdcr_loss: backend 'cuda' cannot run patch_label_ratios: "
                                           r"backend 'cuda' needs CUDA tensors, got tensors on cpu"):
        affseg.pdcr_loss(feats, labels, num_classes=2, backend="cuda")


def test_unknown_backend_names_the_op():
    with pytest.raises(ValueError, match=r"affseg\.uafs_reweight: backend must be one of .*got 'gpu'"):
        affseg.uafs_reweight(torch.randn(1, 2, 3), torch.randn(1, 2, 3), backend="gpu")


def test_every_argument_is_validated_before_any_kernel_runs(monkeypatch):
    ran = []
    real = labels_api.label_ratios
    monkeypatch.setattr(labels_api, "label_ratios", lambda *a, **k: ran.append(1) or real(*a, **k))
    feats = torch.randn(2, 4, 4, 4)
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    bad = {
        "features_b": (dict(features_b=torch.randn(2, 5, 4, 4)), ValueError, "features_b must match features in number of channels"),
        "features_b dtype": (dict(features_b=torch.zeros(2, 4, 4, 4, dtype=torch.long)), TypeError, "features_b must be a floating-point"),
        "valid_b": (dict(valid_b=torch.ones(2, 4, 4, dtype=torch.bool)), ValueError, "valid_b applies to the locations of features_b"),
        "valid": (dict(valid=torch.ones(2, 3, 3, dtype=torch.bool)), ValueError, r"valid must have shape \(2, 4, 4\)"),
        "tau": (dict(tau=0.0), ValueError, "tau must be a finite number > 0"),
        "window_align": (dict(window_align="corner"), ValueError, "window_align must be one of"),
        "exclude_self": (dict(features_b=feats, exclude_self=True), ValueError, "exclude_self applies to intra-layer"),
    }
    for name, (kwargs, error, message) in bad.items():
        with pytest.raises(error, match=message):
            affseg.pdcr_loss(feats, labels, num_classes=2, backend="cpu", **kwargs)
        assert not ran, f"{name}: patch_label_ratios ran before the bad argument was caught"
    affseg.pdcr_loss(feats, labels, num_classes=2, backend="cpu")
    assert ran
