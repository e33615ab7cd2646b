"""uafs_reweight (SPEC §6) on the fused backends against affseg.reference: values and both grads.

The C++ CPU kernels run the arithmetic of csrc/include/affseg/uafs_math.h that the CUDA kernels
share; the Triton kernels run under the interpreter (conftest), so sizes stay small.
"""
import pytest
import torch

import affseg
from affseg import reference
from isa_paths import ISAS, assert_passes_under

BACKENDS = ["cpu", "triton"]
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}
# The interpreter evaluates masked-off lanes too (numpy warns on their −inf padding); stores drop them.
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")


def _inputs(batch, channels, m, spatial, dtype, scale=2.0):
    x = torch.randn(batch, channels, *spatial, dtype=torch.float64).to(dtype)
    att = (torch.randn(batch, m, *spatial, dtype=torch.float64) * scale).to(dtype)
    return x, att


def _check(x, att, backend, tol=None):
    x = x.detach().requires_grad_()
    att = att.detach().requires_grad_()
    y = affseg.uafs_reweight(x, att, backend=backend)
    assert y.shape == x.shape and y.dtype == x.dtype
    grad = torch.randn_like(y)
    gx, ga = torch.autograd.grad(y, (x, att), grad)
    y_ref = reference.uafs_reweight(x, att)
    gx_ref, ga_ref = torch.autograd.grad(y_ref, (x, att), grad)
    tol = tol or TOL[x.dtype]
    torch.testing.assert_close(y, y_ref, **tol)
    torch.testing.assert_close(gx, gx_ref, **tol)
    torch.testing.assert_close(ga, ga_ref, **tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m", [2, 3, 5, 8])
@pytest.mark.parametrize("spatial", [(37,), (13, 17), (5, 7, 9)])
def test_matches_reference(backend, dtype, m, spatial):
    _check(*_inputs(2, 5, m, spatial, dtype), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_attention_logits(backend):
    x, att = _inputs(2, 3, 3, (6, 7), torch.float32)
    att[0] = 1e4 * torch.sign(torch.randn(3, 6, 7))  # p exactly 0 / 1 / ties: U = 0 or log 2 / log 3
    att[1, :, :2] = -1e4
    _check(x, att, backend)
    _check(x.double(), att.double(), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    x, att = _inputs(2, 6, 2, (9, 11), torch.float32)
    _check(x.transpose(2, 3), att.transpose(2, 3), backend)
    big = torch.randn(2, 12, 9, 11)
    _check(big[:, ::2], att, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_half_inputs(backend):
    x, att = _inputs(1, 4, 2, (8, 9), torch.float16)
    _check(x, att, backend, tol=dict(rtol=2e-3, atol=2e-3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_propagates(backend):
    x, att = _inputs(1, 3, 2, (4, 5), torch.float32)
    x[0, 1, 2, 3] = float("nan")
    att[0, 0, 1, 1] = float("nan")
    x.requires_grad_()
    y = affseg.uafs_reweight(x, att, backend=backend)
    assert y[0, 1, 2, 3].isnan() and y[0, :, 1, 1].isnan().all()
    assert torch.isfinite(y[0, 0]).sum() == 19
    (gx,) = torch.autograd.grad(y.sum(), x)
    assert gx[0, :, 1, 1].isnan().all() and torch.isfinite(gx[0, :, 0]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_size(backend):
    for x, att in [_inputs(0, 3, 2, (4,), torch.float32), _inputs(2, 0, 2, (4, 3), torch.float32)]:
        x.requires_grad_()
        att.requires_grad_()
        y = affseg.uafs_reweight(x, att, backend=backend)
        assert y.shape == x.shape
        gx, ga = torch.autograd.grad(y.sum(), (x, att), allow_unused=True)
        assert gx.shape == x.shape and (ga is None or (ga == 0).all())


def test_gradcheck_cpu():
    x, att = _inputs(2, 3, 3, (4, 5), torch.float64)
    torch.autograd.gradcheck(lambda a, b: affseg.uafs_reweight(a, b, backend="cpu"),
                             (x.requires_grad_(), att.requires_grad_()))


def test_bad_input():
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match="att_logits must have M >= 2 channels"):
        affseg.uafs_reweight(x, torch.randn(1, 1, 4, 4), backend="cpu")
    with pytest.raises(ValueError, match="att_logits must match x"):
        affseg.uafs_reweight(x, torch.randn(1, 2, 4, 5), backend="cpu")
    with pytest.raises(TypeError, match="att_logits must have the dtype of x"):
        affseg.uafs_reweight(x, torch.randn(1, 2, 4, 4, dtype=torch.float64), backend="cpu")


@pytest.mark.parametrize("prefix", ["", "triton_"])
def test_opcheck(prefix):
    fwd = getattr(torch.ops.affseg, f"{prefix}uafs_fwd").default
    bwd = getattr(torch.ops.affseg, f"{prefix}uafs_bwd").default
    for x, att in [_inputs(2, 3, 2, (5, 6), torch.float32), _inputs(1, 4, 5, (3, 4, 5), torch.float64)]:
        torch.library.opcheck(fwd, (x.requires_grad_(), att.requires_grad_()))
        torch.library.opcheck(bwd, (torch.randn_like(x), x.detach(), att.detach()))


def test_torch_compile_fullgraph():
    # The _ops layer under the public API: backend resolution (a dispatcher query) is not traceable.
    from affseg._ops import uafs as ops

    x, att = _inputs(2, 4, 2, (7, 6), torch.float32)
    x.requires_grad_()
    att.requires_grad_()

    @torch.compile(fullgraph=True)
    def loss(a, b):
        return (ops.uafs_reweight(a, b, "cpu") ** 2).sum()

    got = loss(x, att)
    want = (reference.uafs_reweight(x, att) ** 2).sum()
    torch.testing.assert_close(got, want, **TOL[torch.float32])
    for g, w in zip(torch.autograd.grad(got, (x, att)), torch.autograd.grad(want, (x, att))):
        torch.testing.assert_close(g, w, **TOL[torch.float32])


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m", [2, 5])
def test_cuda_matches_reference(backend, dtype, m):
    for spatial in [(1000,), (67, 45), (19, 21, 17)]:
        x, att = _inputs(2, 24, m, spatial, dtype)
        _check(x.cuda(), att.cuda(), backend)


_ISA_SCRIPT = """
import torch, affseg
from affseg import reference
torch.manual_seed(0)
for spatial in [(1000,), (13, 47), (5, 7, 9)]:
    for m in (2, 3, 8):
        for dtype in (torch.float32, torch.float64):
            x = torch.randn(2, 5, *spatial, dtype=dtype, requires_grad=True)
            att = (torch.randn(2, m, *spatial, dtype=dtype) * 3).requires_grad_()
            g = torch.randn_like(x)
            got = (affseg.uafs_reweight(x, att, backend="cpu"),)
            got += torch.autograd.grad(got[0], (x, att), g)
            want = (reference.uafs_reweight(x, att),)
            want += torch.autograd.grad(want[0], (x, att), g)
            tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, **tol)
print("ok")
"""


@pytest.mark.parametrize("isa", ISAS)
def test_every_cpu_simd_path(isa):
    assert_passes_under(isa, _ISA_SCRIPT)
