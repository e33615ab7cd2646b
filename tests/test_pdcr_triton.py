"""The Triton PDCR kernels (kernels/pdcr.py, registered in affseg/_ops/pdcr.py) against affseg.reference.

On CPU the kernels run in the Triton interpreter (conftest sets TRITON_INTERPRET=1), so sizes stay
small (N ≤ 300, tiles ≥ 32). Each case checks the per-row loss and the gradients of both feature
inputs; the public-API tests (backend="triton") add the normalisation and the reductions.
"""
import pytest
import torch
import torch.nn.functional as F

import affseg
from affseg import reference
from affseg._ops import pdcr as pdcr_ops

pytestmark = pytest.mark.skipif(
    not hasattr(torch.ops.affseg, "triton_pdcr_fwd"), reason="Triton could not be imported on this machine"
)

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}
DTYPES = [torch.float32, torch.float64]


def _triton_rows(*args, **kwargs):
    return pdcr_ops.pdcr_rows(*args, backend="triton", **kwargs)


def _ratios(B, W, N, K, dtype, gen):
    phi = torch.rand(B, W, N, K, dtype=dtype, generator=gen) ** 2  # skewed, some near-pure patches
    return phi / phi.sum(-1, keepdim=True)


def _make(B, N, M, C, W, K, dtype, *, cross, drop=0.2, seed=0):
    """Raw features, ratios and masks; M is ignored intra-layer."""
    gen = torch.Generator().manual_seed(seed)
    inputs = dict(
        feats=torch.randn(B, N, C, dtype=dtype, generator=gen).requires_grad_(),
        phi=_ratios(B, W, N, K, dtype, gen),
        valid=torch.rand(B, N, generator=gen) >= drop,
    )
    if cross:
        inputs.update(
            feats_b=torch.randn(B, M, C, dtype=dtype, generator=gen).requires_grad_(),
            phi_b=_ratios(B, W, M, K, dtype, gen),
            valid_b=torch.rand(B, M, generator=gen) >= drop,
        )
    return inputs


def _kernel_rows(inputs, tau, orientation, divergence, exclude_self, input_precision="ieee"):
    """pdcr_rows_triton on the inputs, set up as affseg.functional.pdcr does it."""
    fa = F.normalize(inputs["feats"], dim=-1, eps=1e-8)
    if "feats_b" in inputs:
        fb = F.normalize(inputs["feats_b"], dim=-1, eps=1e-8)
        pb, vb = inputs["phi_b"], inputs["valid_b"]
    else:
        fb, pb, vb = fa, inputs["phi"], inputs["valid"]
    return _triton_rows(
        fa, inputs["phi"], fb, pb, inputs["valid"], vb, inv_tau=1.0 / tau, swapped=orientation == "swapped",
        fg_l1=divergence == "fg_l1", exclude_self=exclude_self, input_precision=input_precision,
    )


def _grads(out, inputs):
    leaves = [inputs["feats"]] + ([inputs["feats_b"]] if "feats_b" in inputs else [])
    return torch.autograd.grad(out, leaves)


def _assert_close(actual, expected, dtype, **tol):
    torch.testing.assert_close(actual, expected, **(tol or TOL[dtype]))


# (B, N, M or None for intra-layer, C, W, K, orientation, divergence, exclude_self)
CASES = [
    (1, 1, None, 1, 1, 2, "paper", "tv", False),
    (2, 5, None, 3, 2, 3, "swapped", "fg_l1", True),
    (2, 77, None, 33, 3, 4, "paper", "tv", True),
    (1, 257, None, 1, 1, 4, "swapped", "tv", False),
    (2, 100, 257, 33, 2, 2, "swapped", "tv", False),
    (1, 77, 77, 3, 3, 3, "paper", "fg_l1", False),
    (2, 100, 5, 3, 1, 2, "paper", "tv", False),
    (2, 70, None, 200, 2, 3, "paper", "tv", True),  # C > 128: the channel-chunked kernels
    (1, 40, 33, 150, 1, 12, "swapped", "fg_l1", False),  # K = 12: the run-time class loop
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}N{}M{}C{}W{}K{}-{}-{}-x{}".format(*c))
def test_rows_and_grads_match_reference(case, dtype):
    B, N, M, C, W, K, orientation, divergence, exclude_self = case
    inputs = _make(B, N, M, C, W, K, dtype, cross=M is not None)
    opts = dict(tau=0.3, orientation=orientation, divergence=divergence, exclude_self=exclude_self)
    expected = reference.pdcr_loss_from_ratios(**inputs, **opts, reduction="none")
    rows = _kernel_rows(inputs, **opts)
    # the kernel's rows are 0 where the row is invalid or has no column, like the reference's
    _assert_close(rows, expected, dtype)
    weights = torch.randn(B, N, dtype=dtype, generator=torch.Generator().manual_seed(1))
    tol = dict(TOL[dtype])
    if C == 1:
        # f/|f| is constant in f, so both gradients are rounding noise of size eps·|∂/∂f̂| / |f|
        min_norm = min(t.detach().norm(dim=-1).min().item() for k, t in inputs.items() if k.startswith("feats"))
        tol["atol"] = max(tol["atol"], 1e3 * torch.finfo(dtype).eps / min_norm)
    for got, want in zip(_grads((rows * weights).sum(), inputs), _grads((expected * weights).sum(), inputs)):
        _assert_close(got, want, dtype, **tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_rows_without_columns_give_zero_loss_and_finite_grads(dtype):
    # batch 0: only location 3 valid, so with exclude_self it has no column; batch 1: nothing valid
    inputs = _make(2, 40, None, 8, 2, 3, dtype, cross=False)
    inputs["valid"] = torch.zeros(2, 40, dtype=torch.bool)
    inputs["valid"][0, 3] = True
    rows = _kernel_rows(inputs, 0.5, "paper", "tv", True)
    assert torch.equal(rows, torch.zeros_like(rows))
    (grad,) = _grads(rows.sum(), inputs)
    assert torch.equal(grad, torch.zeros_like(grad))

    # cross-layer: batch 1 has valid rows but no valid column; batch 0 has one column only
    inputs = _make(2, 33, 35, 5, 2, 2, dtype, cross=True)
    inputs["valid_b"] = torch.zeros(2, 35, dtype=torch.bool)
    inputs["valid_b"][0, 7] = True
    opts = dict(tau=0.5, orientation="paper", divergence="tv", exclude_self=False)
    rows = _kernel_rows(inputs, **opts)
    expected = reference.pdcr_loss_from_ratios(**inputs, **opts, reduction="none")
    _assert_close(rows, expected, dtype)
    assert torch.equal(rows[1], torch.zeros_like(rows[1]))
    for got, want in zip(_grads(rows.sum(), inputs), _grads(expected.sum(), inputs)):
        assert torch.isfinite(got).all()
        _assert_close(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_large_logits_stay_finite(dtype):
    # tau = 1e-4 puts ŝ·w in [-2e4, 0]: the online log-sum-exp must not overflow
    inputs = _make(1, 50, None, 6, 2, 2, dtype, cross=False, drop=0.0)
    opts = dict(tau=1e-4, orientation="swapped", divergence="tv", exclude_self=True)
    rows = _kernel_rows(inputs, **opts)
    expected = reference.pdcr_loss_from_ratios(**inputs, **opts, reduction="none")
    assert torch.isfinite(rows).all()
    # 1/τ multiplies the rounding error of cos: |Δŝ| ≈ 1e4·eps, so the float32 softmax weights
    # (and hence the gradients) of kernel and reference each carry ~1e-3 relative noise
    tol = dict(rtol=1e-2, atol=1e-2) if dtype == torch.float32 else dict(rtol=1e-8, atol=1e-8)
    _assert_close(rows, expected, dtype, **tol)
    for got, want in zip(_grads(rows.sum(), inputs), _grads(expected.sum(), inputs)):
        assert torch.isfinite(got).all()
        _assert_close(got, want, dtype, **tol)


def test_intra_layer_gradient_sums_both_roles():
    # the same tensor as rows and columns: autograd must add grad_fa and grad_fb
    inputs = _make(1, 30, None, 4, 1, 2, torch.float64, cross=False, drop=0.0)
    fa = F.normalize(inputs["feats"], dim=-1).detach().requires_grad_()
    fb = fa.detach().clone().requires_grad_()
    opts = dict(inv_tau=2.0, swapped=False, fg_l1=False, exclude_self=False)
    phi, valid = inputs["phi"], inputs["valid"]
    rows = _triton_rows(fa, phi, fb, phi, valid, valid, **opts)
    grad_fa, grad_fb = torch.autograd.grad(rows.sum(), [fa, fb])
    shared = fa.detach().clone().requires_grad_()
    rows_shared = _triton_rows(shared, phi, shared, phi, valid, valid, **opts)
    (grad,) = torch.autograd.grad(rows_shared.sum(), [shared])
    torch.testing.assert_close(grad, grad_fa + grad_fb, rtol=1e-12, atol=1e-14)


def test_tiles_and_channel_chunks_do_not_change_the_result():
    # 32- and 64-row tiles, uneven ones (held 64 x swept 16 as the GPU's tensor-core backward takes,
    # and held 16 x swept 32); and the same call held whole (ONE_CHUNK), summed over 16-channel chunks,
    # and with 16 or 32 output channels per backward program (D = 3 or 2; C = 40 is no multiple of either).
    from affseg.kernels import pdcr as kernels

    inputs = _make(2, 100, 77, 40, 3, 5, torch.float64, cross=True)
    fa = F.normalize(inputs["feats"].detach(), dim=-1)
    fb = F.normalize(inputs["feats_b"].detach(), dim=-1)
    args = (fa, inputs["phi"], fb, inputs["phi_b"], inputs["valid"], inputs["valid_b"])
    opts = dict(inv_tau=3.0, swapped=True, fg_l1=True, exclude_self=False)
    grad_row = torch.randn(2, 100, dtype=torch.float64)
    results = []
    for block, block_c, block_d in ((32, None, None), (64, None, None), (64, 16, 16), (32, 16, 32),
                                    ((64, 16), None, None), ((16, 32), 16, 16)):
        loss, lse = kernels.pdcr_fwd(*args, **opts, block=block, block_c=block_c)
        results.append((loss, lse, *kernels.pdcr_bwd(grad_row, *args, lse, **opts, block=block, block_c=block_c,
                                                     block_d=block_d)))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


def test_intra_layer_tiles_do_not_change_the_result():
    # the one-sweep intra backward pairs each row tile with column tiles of another size: its column
    # terms (G_ji) must not depend on how the tiles split N (67 rows: no tile size divides it)
    from affseg.kernels import pdcr as kernels

    inputs = _make(2, 67, None, 24, 2, 3, torch.float64, cross=False)
    f = F.normalize(inputs["feats"].detach(), dim=-1)
    phi, valid = inputs["phi"], inputs["valid"]
    opts = dict(inv_tau=4.0, swapped=False, fg_l1=False, exclude_self=True)
    grad_row = torch.randn(2, 67, dtype=torch.float64)
    _, lse = kernels.pdcr_intra_fwd(f, phi, valid, **opts)
    grads = [kernels.pdcr_intra_bwd(grad_row, f, phi, valid, lse, **opts, block=block)
             for block in (64, (64, 16), (16, 64), (32, 16))]
    for other in grads[1:]:
        torch.testing.assert_close(other, grads[0], rtol=1e-12, atol=1e-13)
    # and the sum of both roles from the two-sweep backward
    ga, gb = kernels.pdcr_bwd(grad_row, f, phi, f, phi, valid, valid, lse, **opts, block=(64, 16))
    torch.testing.assert_close(grads[0], ga + gb, rtol=1e-12, atol=1e-13)


def test_backward_is_deterministic():
    inputs = _make(1, 70, None, 16, 2, 2, torch.float32, cross=False)
    runs = [_grads(_kernel_rows(inputs, 0.2, "paper", "tv", False).sum(), inputs)[0] for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


def test_nan_features_propagate():
    inputs = _make(1, 20, None, 4, 2, 2, torch.float32, cross=False, drop=0.0)
    with torch.no_grad():
        inputs["feats"][0, 5, 1] = float("nan")
    rows = _kernel_rows(inputs, 0.5, "paper", "tv", False)
    assert torch.isnan(rows).all()  # every row sees the NaN column
    (grad,) = _grads(rows.sum(), inputs)
    assert torch.isnan(grad).any()


def test_nan_at_an_invalid_location_is_dropped_like_the_reference():
    inputs = _make(1, 20, None, 4, 2, 2, torch.float32, cross=False, drop=0.0)
    inputs["valid"][0, 5] = False
    with torch.no_grad():
        inputs["feats"][0, 5] = float("nan")
    opts = dict(tau=0.5, orientation="paper", divergence="tv", exclude_self=False)
    rows = _kernel_rows(inputs, **opts)
    _assert_close(rows, reference.pdcr_loss_from_ratios(**inputs, **opts, reduction="none"), torch.float32)


@pytest.mark.parametrize("shape", [(2, 0), (0, 5)], ids=["N0", "B0"])
def test_empty_inputs(shape):
    B, N = shape
    inputs = _make(B, N, None, 4, 2, 3, torch.float32, cross=False)
    rows = _kernel_rows(inputs, 0.5, "paper", "tv", False)
    assert rows.shape == (B, N)
    (grad,) = _grads(rows.sum(), inputs)
    assert grad.shape == (B, N, 4)


def _op_args(intra=False, requires_grad=True):
    inputs = _make(2, 20, 18, 8, 2, 3, torch.float64, cross=True)
    fa = F.normalize(inputs["feats"].detach(), dim=-1).requires_grad_(requires_grad)
    if intra:  # the same tensor in both roles, as the public API passes it
        return (fa, inputs["phi"], fa, inputs["phi"], inputs["valid"], inputs["valid"], 2.0, True, False, True, "ieee")
    fb = F.normalize(inputs["feats_b"].detach(), dim=-1).requires_grad_(requires_grad)
    return (fa, inputs["phi"], fb, inputs["phi_b"], inputs["valid"], inputs["valid_b"], 2.0, False, True, False, "ieee")


@pytest.mark.parametrize("intra", [False, True], ids=["cross", "intra"])
def test_opcheck_forward(intra):
    torch.library.opcheck(torch.ops.affseg.triton_pdcr_fwd.default, _op_args(intra))


def test_opcheck_backward():
    fa, pa, fb, pb, va, vb, *options = _op_args(requires_grad=False)
    _, row_lse = torch.ops.affseg.triton_pdcr_fwd(fa, pa, fb, pb, va, vb, *options)
    grad_row = torch.randn(fa.shape[:2], dtype=fa.dtype)
    torch.library.opcheck(torch.ops.affseg.triton_pdcr_bwd.default,
                          (grad_row, fa, pa, fb, pb, va, vb, row_lse, *options))


def test_opcheck_intra():
    fa, pa, _, _, va, _, *options = _op_args(intra=True)
    torch.library.opcheck(torch.ops.affseg.triton_pdcr_intra_fwd.default, (fa, pa, va, *options))
    _, row_lse = torch.ops.affseg.triton_pdcr_intra_fwd(fa.detach(), pa, va, *options)
    grad_row = torch.randn(fa.shape[:2], dtype=fa.dtype)
    torch.library.opcheck(torch.ops.affseg.triton_pdcr_intra_bwd.default,
                          (grad_row, fa.detach(), pa, va, row_lse, *options))


def test_torch_compile_fullgraph():
    # unit features in, so the graph is the op and its backward (normalize would triple compile time)
    inputs = _make(2, 40, None, 8, 2, 3, torch.float32, cross=False)
    feats = F.normalize(inputs["feats"].detach(), dim=-1).requires_grad_()
    phi, valid = inputs["phi"], inputs["valid"]

    def loss_fn(f):
        return _triton_rows(f, phi, f, phi, valid, valid, inv_tau=2.0, swapped=False,
                                            fg_l1=False, exclude_self=True).sum()

    got = torch.compile(loss_fn, fullgraph=True)(feats)
    want = loss_fn(feats)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.autograd.grad(got, feats)[0], torch.autograd.grad(want, feats)[0],
                               rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ through the public API

PUBLIC_CASES = [
    (2, 77, None, 33, 3, 4, "paper", "tv", True),
    (1, 100, 257, 3, 2, 2, "swapped", "fg_l1", False),
    (2, 5, None, 1, 1, 3, "swapped", "tv", False),
]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", PUBLIC_CASES, ids=lambda c: "B{}N{}M{}C{}W{}K{}-{}-{}-x{}".format(*c))
def test_public_api_matches_reference(case, dtype, reduction):
    B, N, M, C, W, K, orientation, divergence, exclude_self = case
    inputs = _make(B, N, M, C, W, K, dtype, cross=M is not None, seed=2)
    opts = dict(tau=0.7, orientation=orientation, divergence=divergence, exclude_self=exclude_self, reduction=reduction)
    got = affseg.pdcr_loss_from_ratios(**inputs, **opts, backend="triton")
    want = reference.pdcr_loss_from_ratios(**inputs, **opts)
    _assert_close(got, want, dtype)
    _assert_close(_grads(got.sum(), inputs), _grads(want.sum(), inputs), dtype)


def test_public_api_non_contiguous_and_empty():
    inputs = _make(2, 30, None, 6, 2, 3, torch.float32, cross=False)
    feats = inputs["feats"].detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()
    phi = inputs["phi"].transpose(2, 3).contiguous().transpose(2, 3)
    got = affseg.pdcr_loss_from_ratios(feats, phi, valid=inputs["valid"], backend="triton")
    want = reference.pdcr_loss_from_ratios(feats, phi, valid=inputs["valid"])
    _assert_close(got, want, torch.float32)
    empty = affseg.pdcr_loss_from_ratios(torch.randn(2, 0, 4, requires_grad=True), torch.rand(2, 1, 0, 2),
                                         backend="triton")
    assert empty.item() == 0.0 and empty.grad_fn is not None


# ------------------------------------------------------------------ on a GPU

@pytest.mark.cuda
@pytest.mark.parametrize("input_precision", ["ieee", "tf32"])
def test_cuda_matches_reference(input_precision):
    inputs = _make(2, 300, None, 64, 3, 3, torch.float32, cross=False)
    inputs = {k: v.detach().cuda().requires_grad_(v.requires_grad) for k, v in inputs.items()}
    opts = dict(tau=0.5, orientation="paper", divergence="tv", exclude_self=True)
    rows = _kernel_rows(inputs, **opts, input_precision=input_precision)
    expected = reference.pdcr_loss_from_ratios(**inputs, **opts, reduction="none")
    # tf32 rounds the features to 10 mantissa bits before the dot: ~1e-3 relative error in ŝ
    tol = TOL[torch.float32] if input_precision == "ieee" else dict(rtol=2e-2, atol=2e-2)
    _assert_close(rows, expected, torch.float32, **tol)
    for got, want in zip(_grads(rows.sum(), inputs), _grads(expected.sum(), inputs)):
        _assert_close(got, want, torch.float32, **tol)
    if input_precision == "ieee":
        for dtype in DTYPES:
            cast = {k: v.detach().to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
            if dtype == torch.float64:  # GPU_LIMITS: float64 goes to the CUDA C++ kernel on a GPU
                with pytest.raises(ValueError, match="float64"):
                    affseg.pdcr_loss_from_ratios(**cast, **opts, backend="triton")
                continue
            got = affseg.pdcr_loss_from_ratios(**cast, **opts, backend="triton")
            _assert_close(got, reference.pdcr_loss_from_ratios(**cast, **opts), dtype)
