"""pdcr_loss's own options: window_align="official" (SPEC §3) and a location mask, on every backend."""
import itertools

import pytest
import torch

import affseg
from affseg.functional import pdcr as pdcr_api
from conftest import INTERPRETING

BACKENDS = ["cpu", "reference"] + (["triton"] if INTERPRETING else [])


def _official_phi(labels, feature_shape, L, K):
    """φ of the official 2D code's windows, by loops: rows ⌊p·s − L/2⌋ … ⌊p·s + L/2⌋ − 1, clipped."""
    B, *S = labels.shape
    out = torch.zeros(B, *feature_shape, K, dtype=torch.float64)
    for b in range(B):
        for p in itertools.product(*[range(f) for f in feature_shape]):
            window = labels[b]
            for d, (pd, f, s) in enumerate(zip(p, feature_shape, S)):
                x = pd * s / f
                lo, hi = int(torch.floor(torch.tensor(x - L / 2))), int(torch.floor(torch.tensor(x + L / 2)))
                window = window.narrow(d, max(lo, 0), min(hi, s) - max(lo, 0))
            counts = torch.bincount(window.flatten(), minlength=K).double()
            out[(b, *p)] = counts / counts.sum()
    return out.reshape(B, -1, K)


@pytest.mark.parametrize("feature_shape,input_shape", [((4, 4), (16, 16)), ((5, 7), (16, 16)), ((3, 3, 2), (8, 8, 6))],
                         ids=["2d", "2d-odd-stride", "3d"])
def test_official_windows_match_a_loop_over_the_official_definition(feature_shape, input_shape):
    K, windows = 3, (3, 4, 5)
    labels = torch.randint(0, K, (2, *input_shape))
    features = torch.randn(2, 1, *feature_shape)
    _, phi, _ = pdcr_api._rows_of(features, None, labels, windows, K, None, "grid", None, "official", None, "cpu")
    for w, L in enumerate(windows):
        torch.testing.assert_close(phi[:, w].double(), _official_phi(labels, feature_shape, L, K), rtol=1e-6, atol=1e-7)


def test_official_and_center_windows_differ_and_center_is_the_default():
    labels = torch.zeros(1, 32, 32, dtype=torch.long)
    labels[:, 8:20, 5:23] = 1
    feats = torch.randn(1, 8, 8, 8)
    default = affseg.pdcr_loss(feats, labels, num_classes=2, reduction="none", backend="cpu")
    center = affseg.pdcr_loss(feats, labels, num_classes=2, reduction="none", window_align="center", backend="cpu")
    official = affseg.pdcr_loss(feats, labels, num_classes=2, reduction="none", window_align="official", backend="cpu")
    torch.testing.assert_close(default, center)
    assert not torch.allclose(center, official)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("windows", [(5, 7, 9), (4, 5, 7)], ids=["odd", "mixed-parity"])
def test_official_alignment_agrees_across_backends(backend, windows):
    gen = torch.Generator().manual_seed(4)
    feats = torch.randn(2, 6, 7, 5, generator=gen, requires_grad=True)
    labels = torch.randint(0, 3, (2, 20, 16), generator=gen)
    kwargs = dict(num_classes=3, window_sizes=windows, window_align="official", reduction="none")
    got = affseg.pdcr_loss(feats, labels, backend=backend, **kwargs)
    want = affseg.pdcr_loss(feats, labels, backend="reference", **kwargs)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_valid_mask_drops_locations_as_rows_and_columns(backend):
    gen = torch.Generator().manual_seed(5)
    feats = torch.randn(2, 6, 6, 6, generator=gen, requires_grad=True)
    labels = torch.randint(0, 2, (2, 24, 24), generator=gen)
    mask = torch.rand(2, 6, 6, generator=gen) > 0.4
    feats_nan = feats.detach().clone()
    feats_nan[~mask[:, None].expand_as(feats_nan)] = float("nan")  # masked locations must not matter
    got = affseg.pdcr_loss(feats_nan, labels, num_classes=2, valid=mask, backend=backend)
    phi, valid = affseg.patch_label_ratios(labels, affseg.grid_centers((6, 6), (24, 24)).expand(2, -1, -1),
                                           (5, 7, 9), 2)
    rows = feats.detach().flatten(2).transpose(1, 2)
    want = affseg.pdcr_loss_from_ratios(rows, phi, valid=valid.all(1) & mask.flatten(1), backend="reference")
    assert torch.isfinite(got)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_signature_spells_out_every_core_keyword():
    import inspect

    params = inspect.signature(affseg.pdcr_loss).parameters
    for name in ("orientation", "divergence", "exclude_self", "reduction", "valid", "valid_b", "window_align"):
        assert name in params and params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cross", [False, True], ids=["intra", "cross"])
def test_nan_at_an_invalid_location_drops_out_of_value_and_gradient(backend, cross):
    gen = torch.Generator().manual_seed(8)
    feats = torch.randn(1, 9, 4, dtype=torch.float64, generator=gen)
    phi = torch.rand(1, 2, 9, 3, dtype=torch.float64, generator=gen).softmax(-1)
    valid = torch.rand(1, 9, generator=gen) > 0.3
    feats[~valid] = float("nan")
    kwargs = dict(valid=valid)
    if cross:
        feats_b = torch.randn(1, 7, 4, dtype=torch.float64, generator=gen)
        valid_b = torch.rand(1, 7, generator=gen) > 0.3
        feats_b[~valid_b] = float("nan")
        kwargs.update(feats_b=feats_b.requires_grad_(), phi_b=torch.rand(1, 2, 7, 3, dtype=torch.float64).softmax(-1),
                      valid_b=valid_b)
    feats.requires_grad_()
    loss = affseg.pdcr_loss_from_ratios(feats, phi, backend=backend, **kwargs)
    leaves = [feats] + ([kwargs["feats_b"]] if cross else [])
    grads = torch.autograd.grad(loss, leaves)
    want = affseg.pdcr_loss_from_ratios(feats, phi, backend="reference", **kwargs)
    want_grads = torch.autograd.grad(want, leaves)
    torch.testing.assert_close(loss, want, rtol=1e-10, atol=1e-12)
    for g, w in zip(grads, want_grads):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)
