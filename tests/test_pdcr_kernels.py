"""The fused C++ PDCR kernels (SPEC §3) against affseg.reference, through the public API."""
import itertools
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import affseg
from isa_paths import ISAS, assert_passes_under

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}


def _ratios(B, W, N, K, dtype):
    return torch.rand(B, W, N, K, dtype=dtype).softmax(-1)


def _case(B, N, M, C, W, K, dtype, cross, invalid=0.2):
    feats = torch.randn(B, N, C, dtype=dtype)
    phi = _ratios(B, W, N, K, dtype)
    valid = torch.rand(B, N) > invalid
    kwargs = dict(valid=valid)
    if cross:
        kwargs.update(feats_b=torch.randn(B, M, C, dtype=dtype), phi_b=_ratios(B, W, M, K, dtype),
                      valid_b=torch.rand(B, M) > invalid)
        if B > 1:
            kwargs["valid_b"][1] = False  # every row of batch 1 has no valid column
    elif B > 1:
        valid[-1] = False
        valid[-1, N // 2] = True  # batch -1: a single valid location (no column under exclude_self)
    return feats, phi, kwargs


def _run(feats, phi, kwargs, backend, row_weights, **options):
    """Values of all three reductions and the gradients of Σ_i weight_i·r_i w.r.t. feats (and feats_b)."""
    leaves = {"feats": feats.detach().clone().requires_grad_()}
    extra = dict(kwargs)
    if "feats_b" in kwargs:
        leaves["feats_b"] = kwargs["feats_b"].detach().clone().requires_grad_()
        extra["feats_b"] = leaves["feats_b"]
    call = lambda reduction: affseg.pdcr_loss_from_ratios(  # noqa: E731
        leaves["feats"], phi, backend=backend, reduction=reduction, **extra, **options)
    rows = call("none")
    (rows * row_weights).sum().backward()
    grads = {k: v.grad for k, v in leaves.items()}
    return rows.detach(), call("mean").detach(), call("sum").detach(), grads


def _assert_match(feats, phi, kwargs, grad_tol=None, **options):
    tol = TOL[feats.dtype]
    weights = torch.rand(feats.shape[:2], dtype=feats.dtype)
    weights[:, ::3] = 0  # rows with g_i = 0 must contribute nothing
    ref = _run(feats, phi, kwargs, "reference", weights, **options)
    out = _run(feats, phi, kwargs, "cpu", weights, **options)
    for name, r, o in zip(("rows", "mean", "sum"), ref[:3], out[:3]):
        torch.testing.assert_close(o, r, **tol, msg=lambda m: f"{name}: {m}")
    assert ref[3].keys() == out[3].keys()
    for key in ref[3] if grad_tol != "values only" else ():
        torch.testing.assert_close(out[3][key], ref[3][key], **(grad_tol or tol), msg=lambda m: f"grad {key}: {m}")


SHAPES = [  # B, N, M (cross-layer columns or None), C, W, K
    (1, 1, None, 1, 1, 2),
    (2, 7, None, 3, 2, 3),
    (3, 100, None, 33, 3, 4),
    (1, 257, None, 5, 1, 2),
    (2, 7, 100, 3, 3, 2),
    (3, 100, 7, 33, 2, 4),
    (2, 257, 1, 1, 1, 3),
]
OPTIONS = list(itertools.product(("paper", "swapped"), ("tv", "fg_l1")))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)).replace("None", "intra"))
@pytest.mark.parametrize("orientation,divergence", OPTIONS)
def test_matches_reference(shape, orientation, divergence, dtype):
    B, N, M, C, W, K = shape
    feats, phi, kwargs = _case(B, N, M, C, W, K, dtype, cross=M is not None)
    _assert_match(feats, phi, kwargs, orientation=orientation, divergence=divergence)
    if M is None:
        _assert_match(feats, phi, kwargs, orientation=orientation, divergence=divergence, exclude_self=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("tau", [1e-4, 0.07, 5.0])
def test_temperatures_and_unnormalised_ratios(tau, dtype):
    # τ = 1e-4 gives logits of −2e4: the kernel leaves its fixed-shift LSE for the running maximum.
    # Ratios that do not sum to 1 (and fg_l1, where a can be negative) widen the logit bound too.
    # At τ = 1e-4 the gradient itself is ill-conditioned: exp of differences of ~1e4-sized logits,
    # times 1/τ, amplifies rounding by about 1e4·|logit|, in the reference as much as here; in
    # float32 that leaves no digit to compare, so there only the values are checked.
    feats, _, kwargs = _case(2, 61, None, 9, 2, 3, dtype, cross=False)
    phi = torch.rand(2, 2, 61, 3, dtype=dtype) * 3
    grad_tol = None
    if tau < 1e-3:
        grad_tol = "values only" if dtype == torch.float32 else dict(rtol=1e-7, atol=1e-7)
    for orientation, divergence in OPTIONS:
        _assert_match(feats, phi, kwargs, grad_tol, tau=tau, orientation=orientation, divergence=divergence,
                      exclude_self=True)
    rows = affseg.pdcr_loss_from_ratios(feats, phi, tau=tau, backend="cpu", reduction="none", **kwargs)
    assert torch.isfinite(rows).all()


def test_tiles_larger_than_one_block():
    # More rows than one task block (32) and more columns than one tile (256), float64, exclude_self:
    # the self pair falls in every tile position, tiles end mid-vector.
    feats, phi, kwargs = _case(2, 601, None, 17, 2, 3, torch.float64, cross=False, invalid=0.1)
    _assert_match(feats, phi, kwargs, exclude_self=True, orientation="swapped", divergence="fg_l1")


def test_non_contiguous_inputs():
    feats = torch.randn(2, 12, 50)[:, ::2].transpose(1, 2)  # (2, 50, 6), strided
    feats_b = torch.randn(2, 6, 40).transpose(1, 2)
    phi = _ratios(2, 4, 50, 3, torch.float32)[:, 1:]
    phi_b = _ratios(2, 3, 40, 6, torch.float32)[..., ::2].softmax(-1)
    valid = (torch.rand(2, 100) > 0.3)[:, ::2]
    for kwargs in (dict(valid=valid), dict(valid=valid, feats_b=feats_b, phi_b=phi_b)):
        _assert_match(feats, phi, kwargs)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("sampling,num_samples", [("grid", 9), ("random", 10), ("stride", 8), ("grid", None)])
def test_pdcr_loss_maps(ndim, sampling, num_samples):
    spatial, label_spatial = ((6, 5), (24, 20)) if ndim == 2 else ((4, 3, 5), (8, 6, 10))
    features = torch.randn(2, 7, *spatial, dtype=torch.float64, requires_grad=True)
    features_b = torch.randn(2, 7, *(s - 1 for s in spatial), dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (2, *label_spatial))
    labels[0, 0] = 255
    for cross in (False, True):
        results = {}
        for backend in ("reference", "cpu"):
            features.grad = features_b.grad = None
            generator = torch.Generator().manual_seed(3)
            extra = dict(features_b=features_b) if cross else {}
            loss = affseg.pdcr_loss(features, labels, num_classes=3, window_sizes=(3, 5), num_samples=num_samples,
                                    sampling=sampling, ignore_index=255, generator=generator, backend=backend,
                                    exclude_self=not cross, **extra)
            loss.backward()
            results[backend] = (loss.detach(), features.grad.clone(),
                                features_b.grad.clone() if cross else None)
        ref, out = results["reference"], results["cpu"]
        torch.testing.assert_close(out[0], ref[0], **TOL[torch.float64])
        torch.testing.assert_close(out[1], ref[1], **TOL[torch.float64])
        if cross:
            torch.testing.assert_close(out[2], ref[2], **TOL[torch.float64])


def test_gradcheck_cpu():
    feats = torch.randn(2, 6, 4, dtype=torch.float64, requires_grad=True)
    feats_b = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    phi, phi_b = _ratios(2, 2, 6, 3, torch.float64), _ratios(2, 2, 5, 3, torch.float64)
    valid = torch.tensor([[True, True, False, True, True, True], [True] * 6])

    def intra(f):
        return affseg.pdcr_loss_from_ratios(f, phi, valid=valid, exclude_self=True, backend="cpu", reduction="sum")

    def cross(f, g):
        return affseg.pdcr_loss_from_ratios(f, phi, feats_b=g, phi_b=phi_b, valid=valid, orientation="swapped",
                                            divergence="fg_l1", backend="cpu", reduction="none")

    assert torch.autograd.gradcheck(intra, (feats,))
    assert torch.autograd.gradcheck(cross, (feats, feats_b))


def _op_args(dtype=torch.float64):
    fa = torch.nn.functional.normalize(torch.randn(2, 9, 5, dtype=dtype), dim=-1)
    fb = torch.nn.functional.normalize(torch.randn(2, 11, 5, dtype=dtype), dim=-1)
    pa, pb = _ratios(2, 2, 9, 3, dtype), _ratios(2, 2, 11, 3, dtype)
    va, vb = torch.rand(2, 9) > 0.2, torch.rand(2, 11) > 0.2
    return fa, pa, fb, pb, va, vb


@pytest.mark.parametrize("swapped,fg_l1", [(False, False), (True, True)])
def test_opcheck(swapped, fg_l1):
    fa, pa, fb, pb, va, vb = _op_args()
    fa.requires_grad_()
    fb.requires_grad_()
    fwd_args = (fa, pa, fb, pb, va, vb, 2.0, swapped, fg_l1, False)
    torch.library.opcheck(torch.ops.affseg.pdcr_fwd.default, fwd_args)
    with torch.no_grad():
        _, lse = torch.ops.affseg.pdcr_fwd(*fwd_args)
    grad_row = torch.randn(2, 9, dtype=torch.float64)
    bwd_args = (grad_row, fa.detach(), pa, fb.detach(), pb, va, vb, lse, 2.0, swapped, fg_l1, False)
    torch.library.opcheck(torch.ops.affseg.pdcr_bwd.default, bwd_args)
    intra = (fa.detach(), pa, fa.detach(), pa, va, va, 2.0, swapped, fg_l1, True)
    torch.library.opcheck(torch.ops.affseg.pdcr_fwd.default, intra)


def test_opcheck_intra():
    fa, pa, _, _, va, _ = _op_args()
    fa.requires_grad_()
    for swapped, fg_l1, exclude_self in ((False, False, True), (True, True, False)):
        options = (2.0, swapped, fg_l1, exclude_self)
        torch.library.opcheck(torch.ops.affseg.pdcr_intra_fwd.default, (fa, pa, va, *options))
        with torch.no_grad():
            _, lse = torch.ops.affseg.pdcr_intra_fwd(fa, pa, va, *options)
        grad_row = torch.randn(2, 9, dtype=torch.float64)
        torch.library.opcheck(torch.ops.affseg.pdcr_intra_bwd.default, (grad_row, fa.detach(), pa, va, lse, *options))


def _intra_case(dtype, n=300, c=21, w=3, k=4):
    f = torch.nn.functional.normalize(torch.randn(3, n, c, dtype=dtype), dim=-1)
    phi = _ratios(3, w, n, k, dtype)
    valid = torch.rand(3, n) > 0.2
    valid[1] = False
    valid[1, 7] = True  # one valid item: no column for it under exclude_self
    valid[2] = False  # nothing valid
    return f, phi, valid


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("inv_tau", [2.0, 100.0])  # the one-exp (fixed shift) and the two-exp sweep
@pytest.mark.parametrize("swapped,fg_l1,exclude_self", [(False, False, True), (True, True, False),
                                                        (False, True, True)])
def test_intra_backward_is_the_two_sweeps_sum(dtype, inv_tau, swapped, fg_l1, exclude_self):
    # The one-sweep intra-layer backward against pdcr_bwd's row and column sweeps on the same tensors
    # (their sum is the gradient of f in both roles): several tiles and task blocks (N = 300 > 256),
    # odd C, zero row gradients, a batch with one valid item and one with none.
    f, phi, valid = _intra_case(dtype)
    options = (inv_tau, swapped, fg_l1, exclude_self)
    _, lse = torch.ops.affseg.pdcr_intra_fwd(f, phi, valid, *options)
    grad_row = torch.randn(3, 300, dtype=dtype)
    grad_row[:, ::4] = 0
    one = torch.ops.affseg.pdcr_intra_bwd(grad_row, f, phi, valid, lse, *options)
    ga, gb = torch.ops.affseg.pdcr_bwd(grad_row, f, phi, f, phi, valid, valid, lse, *options)
    assert torch.isfinite(one).all()
    torch.testing.assert_close(one, ga + gb, **TOL[dtype])
    assert torch.equal(one[~valid], torch.zeros_like(one[~valid]))


def test_intra_backward_extreme_row_gradients():
    # Two antipodal items of disjoint foreground classes (fg_l1: d = 2) at inv_tau = 9.5, just inside
    # the fixed-shift bound: lse = ŝ·d = −38, so c·exp(−lse) overflows float32 for g = 1e30 although
    # the true term c·p = c is finite. The one-exp sweep must give way to the two-exp one, not return
    # inf. A NaN g must reach the gradient.
    f = torch.zeros(1, 2, 4)
    f[0, 0, 0], f[0, 1, 0] = 1.0, -1.0
    phi = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]).reshape(1, 1, 2, 3)
    valid = torch.ones(1, 2, dtype=torch.bool)
    options = (9.5, False, True, True)
    _, lse = torch.ops.affseg.pdcr_intra_fwd(f, phi, valid, *options)
    torch.testing.assert_close(lse, torch.full((1, 2, 1), -38.0))
    for value in (1e30, float("nan")):
        grad_row = torch.tensor([[value, 1e-3]])
        one = torch.ops.affseg.pdcr_intra_bwd(grad_row, f, phi, valid, lse, *options)
        ga, gb = torch.ops.affseg.pdcr_bwd(grad_row, f, phi, f, phi, valid, valid, lse, *options)
        torch.testing.assert_close(one, ga + gb, equal_nan=True)
        assert bool(torch.isfinite(one).all()) == (value == value)


def test_torch_compile_fullgraph():
    # The op chain under the public API (normalise, fused op with its fake kernel and autograd, row
    # reduction). pdcr_loss_from_ratios itself is not traced: its backend resolution calls
    # torch._C._dispatch_has_kernel_for_dispatch_key, which Dynamo cannot put in a graph.
    from affseg._ops import pdcr as pdcr_ops

    feats = torch.randn(2, 40, 8, requires_grad=True)
    phi = _ratios(2, 3, 40, 3, torch.float32)
    valid = torch.ones(2, 40, dtype=torch.bool)

    def loss_fn(f):
        unit = torch.nn.functional.normalize(f, dim=-1, eps=1e-8)
        rows = pdcr_ops.pdcr_rows(unit, phi, unit, phi, valid, valid, inv_tau=2.0, swapped=False, fg_l1=False,
                                  exclude_self=True, backend="cpu")
        return rows.mean()

    compiled = torch.compile(loss_fn, fullgraph=True)
    loss = compiled(feats)
    loss.backward()
    grad = feats.grad.clone()
    feats.grad = None
    expected = affseg.pdcr_loss_from_ratios(feats, phi, exclude_self=True, backend="reference")
    expected.backward()
    torch.testing.assert_close(loss, expected, **TOL[torch.float32])
    torch.testing.assert_close(grad, feats.grad, **TOL[torch.float32])


@pytest.mark.parametrize("tau", [0.5, 1e-4])  # the fixed-shift and the running-maximum LSE
def test_nan_propagates(tau):
    feats = torch.randn(1, 20, 4)
    phi = _ratios(1, 2, 20, 3, torch.float32)
    feats[0, 5, 1] = float("nan")
    rows = affseg.pdcr_loss_from_ratios(feats, phi, tau=tau, backend="cpu", reduction="none")
    assert torch.isnan(rows).all()  # row 5 directly, every other row through its pair with column 5
    assert torch.isnan(affseg.pdcr_loss_from_ratios(feats, phi, tau=tau, backend="cpu"))
    phi[0, 1, 3, 0] = float("nan")
    feats[0, 5, 1] = 0.0
    assert torch.isnan(affseg.pdcr_loss_from_ratios(feats, phi, tau=tau, backend="cpu"))


def test_zero_size():
    feats = torch.randn(2, 0, 8, requires_grad=True)
    phi = torch.rand(2, 3, 0, 2)
    loss = affseg.pdcr_loss_from_ratios(feats, phi, backend="cpu")
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert feats.grad.shape == feats.shape
    rows = affseg.pdcr_loss_from_ratios(torch.randn(0, 5, 3), torch.rand(0, 1, 5, 2), backend="cpu",
                                        reduction="none")
    assert rows.shape == (0, 5)
    empty_cols = affseg.pdcr_loss_from_ratios(torch.randn(1, 4, 3), torch.rand(1, 1, 4, 2),
                                              feats_b=torch.randn(1, 0, 3), phi_b=torch.rand(1, 1, 0, 2),
                                              backend="cpu", reduction="none")
    assert torch.equal(empty_cols, torch.zeros(1, 4))


def test_deterministic():
    feats, phi, kwargs = _case(2, 300, None, 16, 3, 3, torch.float32, cross=False)
    weights = torch.rand(2, 300)
    first = _run(feats, phi, kwargs, "cpu", weights, exclude_self=True)
    second = _run(feats, phi, kwargs, "cpu", weights, exclude_self=True)
    assert torch.equal(first[0], second[0]) and torch.equal(first[3]["feats"], second[3]["feats"])


def test_explicit_cpu_backend_rejects_bad_input():
    feats, phi = torch.randn(1, 5, 3), torch.rand(1, 1, 5, 2)
    with pytest.raises(ValueError, match="exclude_self applies to intra-layer pairs only"):
        affseg.pdcr_loss_from_ratios(feats, phi, feats_b=feats, phi_b=phi, exclude_self=True, backend="cpu")
    with pytest.raises(ValueError, match="tau must be a finite number > 0"):
        affseg.pdcr_loss_from_ratios(feats, phi, tau=0.0, backend="cpu")
    with pytest.raises(RuntimeError, match="dtype"):  # direct op calls are checked in C++
        torch.ops.affseg.pdcr_fwd(feats, phi, feats, phi.double(), torch.ones(1, 5, dtype=torch.bool),
                                  torch.ones(1, 5, dtype=torch.bool), 1.0, False, False, False)


MEMORY_PROBE = textwrap.dedent("""
    import resource, sys, torch, affseg
    def run(n):
        feats = torch.randn(1, n, 16, requires_grad=True)
        phi = torch.rand(1, 1, n, 2).softmax(-1)
        affseg.pdcr_loss_from_ratios(feats, phi, exclude_self=True, backend=sys.argv[1]).backward()
    run(512)  # load everything, start the OpenMP threads
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run(8192)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
""")


def _peak_growth(backend):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, backend], capture_output=True, text=True, env=env,
                         check=True)
    return int(out.stdout.strip().splitlines()[-1])


def test_no_pairwise_allocation():
    # N = 8192: one N×N float32 tensor is 256 MiB. The peak RSS of a fresh process grows by far less
    # than that for the fused forward + backward (inputs, panels and outputs are O(N·C)), while the
    # reference grows by several N×N tensors, which shows the probe can see such an allocation.
    nn_bytes = 8192 * 8192 * 4
    fused = _peak_growth("cpu")
    assert fused < nn_bytes // 8, f"fused PDCR grew the peak RSS by {fused / 2**20:.0f} MiB"
    reference = _peak_growth("reference")
    assert reference > nn_bytes, f"reference grew only {reference / 2**20:.0f} MiB: the probe is blind"


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_cuda_matches_reference(dtype):
    feats, phi, kwargs = _case(2, 300, None, 40, 3, 3, dtype, cross=False)
    feats_b = torch.randn(2, 77, 40, dtype=dtype)
    phi_b = _ratios(2, 3, 77, 3, dtype)
    cases = [(dict(exclude_self=True), dict(valid=kwargs["valid"])),
             (dict(orientation="swapped", divergence="fg_l1"),
              dict(valid=kwargs["valid"], feats_b=feats_b, phi_b=phi_b))]
    for options, extra in cases:
        results = {}
        for backend in ("reference", "cuda"):
            f = feats.cuda().requires_grad_()
            cuda_extra = {k: v.cuda() for k, v in extra.items()}
            if "feats_b" in cuda_extra:
                cuda_extra["feats_b"].requires_grad_()
            loss = affseg.pdcr_loss_from_ratios(f, phi.cuda(), backend=backend, reduction="sum", **cuda_extra,
                                                **options)
            loss.backward()
            grads = [f.grad] + ([cuda_extra["feats_b"].grad] if "feats_b" in cuda_extra else [])
            results[backend] = [loss.detach()] + grads
        for r, o in zip(results["reference"], results["cuda"]):
            torch.testing.assert_close(o, r, **TOL[dtype])


_ISA_SCRIPT = """
import torch
import affseg
from affseg import reference
torch.manual_seed(0)
for dtype, tol in ((torch.float32, dict(rtol=1e-4, atol=1e-5)), (torch.float64, dict(rtol=1e-10, atol=1e-12))):
    for n, m, orientation, divergence, tau in ((100, None, "paper", "tv", 0.3), (37, 61, "swapped", "fg_l1", 0.3),
                                               (300, None, "swapped", "fg_l1", 0.3), (270, None, "paper", "tv", 1e-3)):
        feats = torch.randn(2, n, 33, dtype=dtype, requires_grad=True)
        phi = torch.rand(2, 3, n, 3, dtype=dtype).softmax(-1)
        kw = dict(orientation=orientation, divergence=divergence, tau=tau, exclude_self=m is None)
        if m is not None:
            kw.update(feats_b=torch.randn(2, m, 33, dtype=dtype, requires_grad=True),
                      phi_b=torch.rand(2, 3, m, 3, dtype=dtype).softmax(-1))
        leaves = [feats] + ([kw["feats_b"]] if m is not None else [])
        got = affseg.pdcr_loss_from_ratios(feats, phi, backend="cpu", **kw)
        want = reference.pdcr_loss_from_ratios(feats, phi, **kw)
        torch.testing.assert_close(got, want, **tol)
        for a, b in zip(torch.autograd.grad(got, leaves), torch.autograd.grad(want, leaves)):
            torch.testing.assert_close(a, b, **tol)
print("ok")
"""


@pytest.mark.parametrize("isa", ISAS)
def test_every_cpu_simd_path(isa):
    assert_passes_under(isa, _ISA_SCRIPT)
