"""soft_supcon_loss (SPEC §4) on the fused backends against affseg.reference: values and feature grads.

Only the denominator's log-sum-exp is a kernel (cos_lse_fwd/bwd); the caller adds the O(N·K·C)
positive term. The C++ CPU kernels run the per-element math of csrc/include/affseg/supcon_math.h that
the CUDA kernels share; the Triton kernels run under the interpreter (conftest), so N stays small.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import affseg
from affseg import reference
from isa_paths import ISAS, assert_passes_under

BACKENDS = ["cpu", "triton"]
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")


def _check(features, labels, backend, **kwargs):
    x = features.detach().requires_grad_()
    out = affseg.soft_supcon_loss(x, labels, backend=backend, **kwargs)
    grad_out = torch.rand_like(out) + 0.5
    (g,) = torch.autograd.grad(out, x, grad_out)
    x_ref = features.detach().requires_grad_()
    ref = reference.soft_supcon_loss(x_ref, labels, **kwargs)
    (g_ref,) = torch.autograd.grad(ref, x_ref, grad_out)
    tol = TOL[features.dtype]
    assert out.dtype == ref.dtype and out.shape == ref.shape
    torch.testing.assert_close(out, ref, **tol)
    torch.testing.assert_close(g, g_ref, **tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_int_labels_with_ignore_index(backend, dtype, reduction):
    features = torch.randn(2, 77, 19, dtype=dtype)
    labels = torch.randint(0, 4, (2, 77))
    labels[:, ::9] = -1
    labels[0, 5] = 9  # a class with one member: its row has no positive and is not counted
    _check(features, labels, backend, reduction=reduction, ignore_index=-1, tau=0.1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_unbatched_soft_labels(backend, dtype):
    features = torch.randn(100, 33, dtype=dtype)
    labels = torch.softmax(torch.randn(100, 5, dtype=dtype) * 2, dim=-1)
    for reduction in ("mean", "none"):
        _check(features, labels, backend, reduction=reduction, tau=0.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_and_large_logits(backend):
    features = torch.randn(64, 2, 48, dtype=torch.float64).transpose(0, 1)[:, :, ::2]
    labels = torch.randint(0, 3, (2, 64))
    _check(features, labels, backend, tau=0.01)  # |s| up to 100: needs the max-shifted LSE


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_and_empty(backend):
    one = torch.randn(1, 8, requires_grad=True)
    loss = affseg.soft_supcon_loss(one, torch.tensor([0]), backend=backend)
    assert loss.item() == 0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(one.grad, torch.zeros_like(one))
    empty = torch.randn(2, 0, 8, requires_grad=True)
    loss = affseg.soft_supcon_loss(empty, torch.zeros(2, 0, dtype=torch.long), backend=backend)
    assert loss.item() == 0 and loss.grad_fn is not None
    loss.backward()
    assert affseg.soft_supcon_loss(empty, torch.zeros(2, 0, dtype=torch.long), reduction="none",
                                   backend=backend).shape == (2, 0)
    _check(torch.randn(2, 5, dtype=torch.float64), torch.tensor([1, 1]), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_propagates(backend):
    features = torch.randn(40, 16)
    features[7, 3] = float("nan")
    labels = torch.randint(0, 2, (40,))
    assert torch.isnan(affseg.soft_supcon_loss(features, labels, backend=backend))
    rows = affseg.soft_supcon_loss(features, labels, reduction="none", backend=backend)
    assert torch.isnan(rows).all()  # every row's denominator sums over the NaN row


def _khosla_supcon(features, labels, tau):
    """SupCon 'out' form (Khosla et al. 2020, Eq. 2) written as plain loops over anchors and positives."""
    f = F.normalize(features.double(), dim=-1)
    total, counted = 0.0, 0
    for i in range(len(labels)):
        others = [k for k in range(len(labels)) if k != i]
        positives = [p for p in others if labels[p] == labels[i]]
        if not positives:
            continue
        denom = math.log(sum(math.exp(float(f[i] @ f[a]) / tau) for a in others))
        total += -sum(float(f[i] @ f[p]) / tau - denom for p in positives) / len(positives)
        counted += 1
    return total / max(counted, 1)


def test_cpu_equals_loop_supcon():
    features = torch.randn(30, 6, dtype=torch.float64)
    labels = torch.randint(0, 4, (30,))
    labels[0] = 7  # singleton: no positives, not an anchor
    out = affseg.soft_supcon_loss(features, labels, tau=0.2, backend="cpu")
    assert out.item() == pytest.approx(_khosla_supcon(features, labels, 0.2), rel=1e-12)


def test_gradcheck_cpu():
    features = torch.randn(2, 11, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (2, 11))
    labels[:, 0] = -1
    torch.autograd.gradcheck(
        lambda x: affseg.soft_supcon_loss(x, labels, ignore_index=-1, reduction="none", tau=0.3, backend="cpu"),
        (features,),
    )
    f = F.normalize(torch.randn(1, 9, 4, dtype=torch.float64), dim=-1).requires_grad_()
    valid = torch.tensor([[True, False, True, True, True, False, True, True, True]])
    torch.autograd.gradcheck(lambda x: torch.ops.affseg.cos_lse_fwd(x, valid, 2.0), (f,))


def _op_samples(dtype):
    f = F.normalize(torch.randn(2, 37, 7, dtype=dtype), dim=-1)
    valid = torch.rand(2, 37) > 0.2
    valid[1, :] = False
    valid[1, 4] = True  # the other rows of item 1 see one column; row 4 sees none (lse = -inf)
    return f, valid


@pytest.mark.parametrize("prefix", ["", "triton_"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(prefix, dtype):
    f, valid = _op_samples(dtype)
    fwd = getattr(torch.ops.affseg, f"{prefix}cos_lse_fwd")
    torch.library.opcheck(fwd, (f.requires_grad_(), valid, 3.0))
    lse = fwd(f.detach(), valid, 3.0)
    assert torch.isinf(lse[1, 4]) and lse[1, 4] < 0
    grad = torch.randn_like(lse)
    torch.library.opcheck(getattr(torch.ops.affseg, f"{prefix}cos_lse_bwd"), (grad, f.detach(), valid, lse, 3.0))


def _dense_lse(f, valid, inv_tau):
    """The N×N oracle of cos_lse for small inputs."""
    n = f.shape[1]
    keep = valid[:, None, :] & ~torch.eye(n, dtype=torch.bool)
    return torch.logsumexp((f @ f.transpose(1, 2) * inv_tau).masked_fill(~keep, float("-inf")), dim=-1)


def test_cpu_backward_extreme_row_gradients():
    # Two antipodal unit rows at inv_tau = 40 (the largest with the fixed shift in float32): lse = −40,
    # so a·exp(inv_tau − lse) = a·e^80 overflows for a = 1e6 although every a·p is finite. The one-exp
    # backward must give way to the two-exp one, not return inf; a NaN gradient must propagate.
    f = torch.zeros(1, 3, 4)
    f[0, 0, 0], f[0, 1, 0], f[0, 2, 1] = 1.0, -1.0, 1.0
    valid = torch.tensor([[True, True, False]])
    lse = torch.ops.affseg.cos_lse_fwd(f, valid, 40.0)
    torch.testing.assert_close(lse[0, :2], torch.full((2,), -40.0))
    x = f.double().requires_grad_()
    dense = _dense_lse(x, valid, 40.0)
    for value in (1e6, float("nan")):
        grad = torch.tensor([[value, 1e-3, 0.0]])
        got = torch.ops.affseg.cos_lse_bwd(grad, f, valid, lse, 40.0)
        (want,) = torch.autograd.grad(dense[:, :2], x, grad.double()[:, :2], retain_graph=True)
        assert bool(torch.isfinite(got).all()) == (value == value)
        if value == value:
            torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-3)


def test_torch_compile_fullgraph():
    # The _ops layer under the public API: backend resolution (a dispatcher query) is not traceable.
    from affseg._ops import supcon as ops

    features = torch.randn(2, 50, 12, requires_grad=True)
    valid = torch.rand(2, 50) > 0.1

    @torch.compile(fullgraph=True)
    def loss(x):
        return ops.cos_lse(F.normalize(x, dim=-1), valid, inv_tau=5.0, backend="cpu").sum()

    got = loss(features)
    want = _dense_lse(F.normalize(features, dim=-1), valid, 5.0).sum()
    torch.testing.assert_close(got, want, **TOL[torch.float32])
    torch.testing.assert_close(torch.autograd.grad(got, features)[0], torch.autograd.grad(want, features)[0],
                               **TOL[torch.float32])


def test_bad_input_raises():
    features = torch.randn(10, 4)
    with pytest.raises(TypeError, match="features must be a floating-point tensor"):
        affseg.soft_supcon_loss(features.long(), torch.zeros(10, dtype=torch.long), backend="cpu")
    with pytest.raises(ValueError, match="labels must be int labels .* got shape \\(9,\\)"):
        affseg.soft_supcon_loss(features, torch.zeros(9, dtype=torch.long), backend="cpu")
    with pytest.raises(ValueError, match="tau must be a finite number > 0"):
        affseg.soft_supcon_loss(features, torch.zeros(10, dtype=torch.long), tau=0.0, backend="cpu")
    with pytest.raises(ValueError, match="ignore_index applies to integer labels only"):
        affseg.soft_supcon_loss(features, torch.rand(10, 3), ignore_index=1, backend="cpu")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_backends_match_reference(backend, dtype):
    features = torch.randn(3, 300, 40, dtype=dtype, device="cuda")
    labels = torch.randint(0, 5, (3, 300), device="cuda")
    labels[:, ::11] = -1
    _check(features, labels, backend, ignore_index=-1, tau=0.1)
    soft = torch.softmax(torch.randn(300, 4, dtype=dtype, device="cuda"), dim=-1)
    _check(features[0], soft, backend, reduction="none")


_ISA_SCRIPT = """
import torch
import affseg
from affseg import reference
torch.manual_seed(0)
for dtype, tol in ((torch.float32, dict(rtol=1e-4, atol=1e-5)), (torch.float64, dict(rtol=1e-10, atol=1e-12))):
    # tau 0.2: the fixed-shift LSE (one exp per pair); 0.01: the running maximum (two exps backward).
    for labels, tau in ((torch.randint(0, 4, (2, 300)), 0.2), (torch.rand(2, 300, 4, dtype=dtype).softmax(-1), 0.2),
                        (torch.randint(0, 4, (2, 300)), 0.01)):
        emb = torch.randn(2, 300, 33, dtype=dtype, requires_grad=True)
        got = affseg.soft_supcon_loss(emb, labels, tau=tau, backend="cpu")
        want = reference.soft_supcon_loss(emb, labels, tau=tau)
        torch.testing.assert_close(got, want, **tol)
        torch.testing.assert_close(torch.autograd.grad(got, emb)[0], torch.autograd.grad(want, emb)[0], **tol)
print("ok")
"""


@pytest.mark.parametrize("isa", ISAS)
def test_every_cpu_simd_path(isa):
    assert_passes_under(isa, _ISA_SCRIPT)
