"""The Semi-AGCL C++ ops (SPEC §7) called directly, against affseg.reference.

torch.ops.affseg.affinity_matrix / hard_negatives / mixed_logits and their backward ops on CPU (the
C++ kernels of csrc/cpu/agcl.cpp, which run the math of csrc/include/affseg/agcl_math.h that the CUDA
kernels share): values against the reference functions, backward ops against torch.autograd through
the reference, opcheck of the forward ops (fake kernels and autograd from affseg/_ops/agcl.py), every
compiled SIMD build, and the CUDA kernels against the CPU ones where a GPU is visible.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import affseg  # noqa: F401  (loads affseg._C and the registrations)
import affseg._ops.agcl  # noqa: F401  (fake kernels + autograd of these ops)
from affseg import reference
from isa_paths import ISAS, assert_passes_under

ops = torch.ops.affseg
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}
K = 1.0 / (2 * 0.5**2)
INV_TAU = 1.0 / 0.1
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")


def unit(*shape, dtype=torch.float64):
    return F.normalize(torch.randn(*shape, dtype=dtype), dim=-1)


scl = reference.unit_row_scales  # the queue's unit-row scales the kernels take with the raw queue


def scaled(args):
    """(q, neg, ...) -> (q, neg, scl(neg), ...): the argument order of the queue ops."""
    q, neg, *rest = args
    return (q, neg, scl(neg), *rest)


# ---------------------------------------------------------------------------------------------------
# affinity_matrix


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("l1", [False, True])
@pytest.mark.parametrize("shape", [(37, 53, 3), (5, 1100, 64), (130, 7, 2)])
def test_affinity_matches_reference(dtype, l1, shape):
    n, m, d = shape
    y_t = torch.softmax(torch.randn(n, d, dtype=dtype) * 2, -1)
    y_s = torch.softmax(torch.randn(m, d, dtype=dtype) * 2, -1)
    got = ops.affinity_matrix(y_t, y_s, K, l1)
    want = reference.affinity_matrix(y_t, y_s, K, l1)
    assert got.dtype == dtype and got.shape == (n, m)
    torch.testing.assert_close(got, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("l1", [False, True])
@pytest.mark.parametrize("shape", [(37, 53, 3), (20, 130, 17)])
def test_affinity_bwd_matches_autograd(dtype, l1, shape):
    n, m, d = shape
    y_t = torch.rand(n, d, dtype=dtype)
    y_s = torch.rand(m, d, dtype=dtype)
    y_s[0] = y_t[0]  # t − s = 0 in every dimension: sign(0) = 0 for L1
    y_s[1, 0] = y_t[2, 0]
    y_s.requires_grad_()
    want = reference.affinity_matrix(y_t, y_s, K, l1)
    grad_a = torch.randn_like(want)
    (want_grad,) = torch.autograd.grad(want, y_s, grad_a)
    got = ops.affinity_matrix_bwd(grad_a, y_t, y_s.detach(), K, l1)
    assert got.shape == y_s.shape and got.dtype == dtype
    torch.testing.assert_close(got, want_grad, **TOL[dtype])


def test_affinity_empty_and_nan():
    y_t, y_s = torch.rand(0, 3), torch.rand(4, 3)
    assert ops.affinity_matrix(y_t, y_s, K, False).shape == (0, 4)
    assert torch.equal(ops.affinity_matrix_bwd(torch.zeros(0, 4), y_t, y_s, K, False), torch.zeros(4, 3))
    y_t = torch.rand(6, 3, dtype=torch.float64)
    y_s = torch.rand(5, 3, dtype=torch.float64)
    y_t[2, 1] = math.nan
    for l1 in (False, True):
        got = ops.affinity_matrix(y_t, y_s, K, l1)
        torch.testing.assert_close(got, reference.affinity_matrix(y_t, y_s, K, l1), equal_nan=True)
        assert got[2].isnan().all() and not got[[0, 1, 3, 4, 5]].isnan().any()
        ys = y_s.clone().requires_grad_()
        grad_a = torch.rand(6, 5, dtype=torch.float64)
        (want,) = torch.autograd.grad(reference.affinity_matrix(y_t, ys, K, l1), ys, grad_a)
        torch.testing.assert_close(ops.affinity_matrix_bwd(grad_a, y_t, y_s, K, l1), want, equal_nan=True)


def test_affinity_bwd_deterministic():
    y_t, y_s = torch.rand(300, 8), torch.rand(257, 8)
    grad_a = torch.randn(300, 257)
    first = ops.affinity_matrix_bwd(grad_a, y_t, y_s, K, False)
    for _ in range(3):
        assert torch.equal(ops.affinity_matrix_bwd(grad_a, y_t, y_s, K, False), first)


def test_affinity_opcheck():
    y_t = torch.rand(9, 4, dtype=torch.float64)
    y_s = torch.rand(11, 4, dtype=torch.float64, requires_grad=True)
    for l1 in (False, True):
        torch.library.opcheck(ops.affinity_matrix, (y_t, y_s, K, l1))


# ---------------------------------------------------------------------------------------------------
# hard_negatives / queue_lse_bwd


def stable_hard(q, neg, q_cls, neg_cls, inv_tau, n_hard, use_classes):
    """The reference, with the kernels' tie rule made explicit: descending dot, lower index first."""
    lse, _, count = reference.hard_negatives(q, neg, scl(neg), q_cls, neg_cls, inv_tau, n_hard, use_classes)
    hard = min(n_hard, neg.shape[0])
    sim = q @ (neg * scl(neg)[:, None]).T
    valid = q_cls[:, None] != neg_cls[None, :] if use_classes else torch.ones_like(sim, dtype=torch.bool)
    key = torch.where(valid, sim, torch.full_like(sim, -math.inf))
    order = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :hard]
    idx = torch.where(torch.arange(hard) < count[:, None], order, torch.full_like(order, -1))
    return lse, idx, count


def check_hard(q, neg, q_cls, neg_cls, n_hard, use_classes, exact_idx=None):
    dtype = q.dtype
    lse, idx, count = ops.hard_negatives(q, neg, scl(neg), q_cls, neg_cls, INV_TAU, n_hard, use_classes)
    want_lse, want_idx, want_count = stable_hard(q, neg, q_cls, neg_cls, INV_TAU, n_hard, use_classes)
    hard = min(n_hard, neg.shape[0])
    assert lse.dtype == dtype and idx.dtype == torch.long and count.dtype == torch.long
    assert idx.shape == (q.shape[0], hard) and count.shape == (q.shape[0],)
    torch.testing.assert_close(lse, want_lse, **TOL[dtype])
    assert torch.equal(count, want_count)
    if exact_idx is None:
        exact_idx = dtype == torch.float64
    if exact_idx:
        assert torch.equal(idx, want_idx)
    else:  # float32: near-ties may swap under rounding; the ranked dots must agree
        sim = (q.double() @ neg.double().T)
        live = idx >= 0
        assert torch.equal(live, want_idx >= 0)
        got_dots = sim.gather(1, idx.clamp(min=0))[live]
        want_dots = sim.gather(1, want_idx.clamp(min=0))[live]
        torch.testing.assert_close(got_dots, want_dots, rtol=0, atol=1e-6)
        for b in range(q.shape[0]):  # distinct indices, each valid
            row = idx[b][idx[b] >= 0]
            assert row.unique().numel() == row.numel()
            if use_classes:
                assert (neg_cls[row] != q_cls[b]).all()
    return lse, idx, count


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("use_classes", [False, True])
@pytest.mark.parametrize("n_hard", [40, 1, 500])
def test_hard_negatives_matches_reference(dtype, use_classes, n_hard):
    q, neg = unit(5, 24, dtype=dtype), unit(300, 24, dtype=dtype)
    q_cls, neg_cls = torch.randint(0, 4, (5,)), torch.randint(0, 4, (300,))
    check_hard(q, neg, q_cls, neg_cls, n_hard, use_classes)


@pytest.mark.parametrize("dtype", DTYPES)
def test_hard_negatives_long_queue_and_list(dtype):
    # Q spans many chunks and the 2H buffer is cut back many times; H = 1024.
    q, neg = unit(6, 40, dtype=dtype), unit(9000, 40, dtype=dtype)
    q_cls, neg_cls = torch.randint(0, 3, (6,)), torch.randint(0, 3, (9000,))
    for use_classes in (False, True):
        check_hard(q, neg, q_cls, neg_cls, 1024, use_classes)


@pytest.mark.parametrize("dtype", DTYPES)
def test_hard_negatives_ascending_queue(dtype):
    # Every entry beats the current H-th best (the filter's worst case): q·n_k increases with k.
    q = torch.zeros(2, 8, dtype=dtype)
    q[:, 0] = 1
    t = torch.linspace(-0.99, 0.99, 3000, dtype=torch.float64)
    neg = torch.zeros(3000, 8, dtype=torch.float64)
    neg[:, 0], neg[:, 1] = t, (1 - t**2).sqrt()
    neg = neg.to(dtype)
    cls = torch.zeros(2, dtype=torch.long), torch.zeros(3000, dtype=torch.long)
    check_hard(q, neg, *cls, 300, False, exact_idx=True)
    check_hard(q, neg.flip(0).contiguous(), *cls, 300, False, exact_idx=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_hard_negatives_ties_lower_index_first(dtype):
    base = unit(7, 24, dtype=dtype)
    neg = base[torch.randint(0, 7, (300,))].contiguous()  # exact repeated rows: exact dot ties
    q = unit(5, 24, dtype=dtype)
    q_cls, neg_cls = torch.randint(0, 3, (5,)), torch.randint(0, 3, (300,))
    for use_classes in (False, True):
        for n_hard in (40, 300):
            check_hard(q, neg, q_cls, neg_cls, n_hard, use_classes, exact_idx=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_hard_negatives_empty_queue_and_no_valid_negative(dtype):
    q = unit(5, 24, dtype=dtype)
    q_cls = torch.tensor([0, 1, 2, 1, 3])
    lse, idx, count = ops.hard_negatives(q, unit(0, 24, dtype=dtype), scl(unit(0, 24, dtype=dtype)), q_cls, torch.zeros(0, dtype=torch.long),
                                         INV_TAU, 40, True)
    assert idx.shape == (5, 0) and torch.equal(count, torch.zeros(5, dtype=torch.long))
    assert (lse == -math.inf).all()
    grad = ops.queue_lse_bwd(torch.ones(5, dtype=dtype), q, unit(0, 24, dtype=dtype), scl(unit(0, 24, dtype=dtype)), q_cls,
                             torch.zeros(0, dtype=torch.long), lse, INV_TAU, True)
    assert torch.equal(grad, torch.zeros_like(q))
    # every negative has class 1: queries 1 and 3 have none
    neg, neg_cls = unit(300, 24, dtype=dtype), torch.ones(300, dtype=torch.long)
    lse, idx, count = check_hard(q, neg, q_cls, neg_cls, 40, True)
    assert lse[1] == -math.inf and lse[3] == -math.inf and count[1] == 0 and (idx[[1, 3]] == -1).all()
    grad = ops.queue_lse_bwd(torch.ones(5, dtype=dtype), q, neg, scl(neg), q_cls, neg_cls, lse, INV_TAU, True)
    assert torch.equal(grad[[1, 3]], torch.zeros(2, 24, dtype=dtype)) and grad[0].abs().sum() > 0
    # n_hard = 0: an empty list, the log-sum-exp still computed
    lse0, idx0, count0 = ops.hard_negatives(q, neg, scl(neg), q_cls, neg_cls, INV_TAU, 0, False)
    assert idx0.shape == (5, 0) and (count0 == 0).all()
    torch.testing.assert_close(lse0, stable_hard(q, neg, q_cls, neg_cls, INV_TAU, 0, False)[0], **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_hard_negatives_nan(dtype):
    q, neg = unit(5, 24, dtype=dtype), unit(300, 24, dtype=dtype)
    q_cls, neg_cls = torch.tensor([0, 1, 2, 1, 3]), torch.randint(0, 4, (300,))
    neg_cls[7] = 1
    q[2, 3] = math.nan
    neg = neg.clone()
    neg[7, 0] = math.nan
    lse, idx, count = ops.hard_negatives(q, neg, scl(neg), q_cls, neg_cls, INV_TAU, 40, True)
    # query 2 is NaN everywhere; queue row 7 (class 1) is a valid NaN negative of queries 0, 2, 4 only
    assert lse[[0, 2, 4]].isnan().all() and not lse[[1, 3]].isnan().any()
    ok = torch.tensor([1, 3])
    torch.testing.assert_close(lse[ok], stable_hard(q, neg, q_cls, neg_cls, INV_TAU, 40, True)[0][ok], **TOL[dtype])
    assert ((idx >= -1) & (idx < 300)).all() and (count == 40).all()
    assert (idx[[0, 4], 0] == 7).all()  # a NaN dot ranks first
    grad = ops.queue_lse_bwd(torch.ones(5, dtype=dtype), q, neg, scl(neg), q_cls, neg_cls, lse, INV_TAU, True)
    assert grad[[0, 2, 4]].isnan().all()
    # as in the reference's (B, Q) @ (Q, C) product, a NaN queue row reaches the other queries'
    # gradients through its zero weight (0 · NaN); the public loss is NaN then anyway (SPEC §9)
    qr = q.clone().requires_grad_()
    want_lse = reference.hard_negatives(qr, neg, scl(neg), q_cls, neg_cls, INV_TAU, 40, True)[0]
    (want,) = torch.autograd.grad(want_lse, qr, torch.ones(5, dtype=dtype))
    torch.testing.assert_close(grad[ok], want[ok], equal_nan=True, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("use_classes", [False, True])
def test_queue_lse_bwd_matches_autograd(dtype, use_classes):
    q, neg = unit(5, 24, dtype=dtype), unit(300, 24, dtype=dtype)
    q_cls, neg_cls = torch.tensor([0, 1, 2, 1, 3]), torch.randint(0, 3, (300,))  # class 3: every entry valid
    q.requires_grad_()
    want_lse = reference.hard_negatives(q, neg, scl(neg), q_cls, neg_cls, INV_TAU, 40, use_classes)[0]
    grad = torch.randn_like(want_lse)
    (want,) = torch.autograd.grad(want_lse, q, grad)
    lse = ops.hard_negatives(q.detach(), neg, scl(neg), q_cls, neg_cls, INV_TAU, 40, use_classes)[0]
    got = ops.queue_lse_bwd(grad, q.detach(), neg, scl(neg), q_cls, neg_cls, lse, INV_TAU, use_classes)
    assert got.shape == q.shape and got.dtype == dtype
    torch.testing.assert_close(got, want, **TOL[dtype])


def test_hard_negatives_opcheck():
    q = unit(5, 24).requires_grad_()
    neg, q_cls, neg_cls = unit(300, 24), torch.randint(0, 3, (5,)), torch.randint(0, 3, (300,))
    for use_classes in (False, True):
        torch.library.opcheck(ops.hard_negatives, (q, neg, scl(neg), q_cls, neg_cls, INV_TAU, 40, use_classes))


# ---------------------------------------------------------------------------------------------------
# mixed_logits / mixed_logits_bwd


def mixed_case(dtype, B=5, Q=300, C=24, n_hard=40, P=33, use_classes=True, scale_neg=False):
    q, neg = unit(B, C, dtype=dtype), unit(Q, C, dtype=dtype)
    if scale_neg:  # the kernel's ‖m‖ uses ‖n_i‖², ‖n_j‖²: not only unit rows
        neg = neg * torch.rand(Q, 1, dtype=dtype).add(0.5)
    q_cls, neg_cls = torch.arange(B) % 4, torch.randint(0, 4, (Q,))
    if Q:
        neg_cls[: Q // 2] = 0  # query 0 has fewer valid negatives than n_hard... sometimes
    alpha = torch.rand(Q, dtype=dtype)
    _, hard_idx, hard_count = ops.hard_negatives(q, neg, scl(neg), q_cls, neg_cls, INV_TAU, n_hard, use_classes)
    pairs = torch.randint(0, n_hard + 3, (B, P, 2))
    pairs[:, 0, 1] = pairs[:, 0, 0]  # i == j: invalid
    return q, neg, alpha, hard_idx, hard_count, pairs


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale_neg", [False, True])
def test_mixed_logits_matches_reference(dtype, scale_neg):
    args = mixed_case(dtype, scale_neg=scale_neg)
    got = ops.mixed_logits(*scaled(args), INV_TAU)
    want = reference.mixed_logits(*scaled(args), INV_TAU)
    assert got.shape == (5, 33) and got.dtype == dtype
    assert torch.equal(got == -math.inf, want == -math.inf) and (got == -math.inf).any() and (got > -math.inf).any()
    torch.testing.assert_close(got, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale_neg", [False, True])
def test_mixed_logits_bwd_matches_autograd(dtype, scale_neg):
    q, *rest = mixed_case(dtype, scale_neg=scale_neg)
    q = q.requires_grad_()
    want_logits = reference.mixed_logits(*scaled((q, *rest)), INV_TAU)
    grad = torch.randn_like(want_logits)
    (want,) = torch.autograd.grad(want_logits, q, grad)
    got = ops.mixed_logits_bwd(grad, *scaled((q.detach(), *rest)), INV_TAU)
    assert got.shape == q.shape and got.dtype == dtype
    torch.testing.assert_close(got, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_mixed_logits_empty_queue_and_bad_positions(dtype):
    q, neg, alpha, hard_idx, hard_count, pairs = mixed_case(dtype, Q=0)
    assert hard_idx.shape == (5, 0)
    assert (ops.mixed_logits(q, neg, scl(neg), alpha, hard_idx, hard_count, pairs, INV_TAU) == -math.inf).all()
    grad = ops.mixed_logits_bwd(torch.ones(5, 33, dtype=dtype), q, neg, scl(neg), alpha, hard_idx, hard_count, pairs, INV_TAU)
    assert torch.equal(grad, torch.zeros_like(q))
    # negative positions, and list entries outside [0, Q) or counts past the list: −inf, no read
    q, neg, alpha, hard_idx, hard_count, pairs = mixed_case(dtype)
    pairs[:, 1] = torch.tensor([-1, 2])
    bad_idx = hard_idx.clone()
    bad_idx[:, 3] = 10**9
    bad_idx[:, 4] = -5
    pairs[:, 2] = torch.tensor([3, 0])
    pairs[:, 3] = torch.tensor([1, 4])
    big_count = torch.full_like(hard_count, 10**6)
    pairs[:, 4] = torch.tensor([0, 45])
    out = ops.mixed_logits(q, neg, scl(neg), alpha, bad_idx, big_count, pairs, INV_TAU)
    assert (out[:, 1:5] == -math.inf).all()
    g = ops.mixed_logits_bwd(torch.ones_like(out), q, neg, scl(neg), alpha, bad_idx, big_count, pairs, INV_TAU)
    assert g.isfinite().all()


def test_mixed_logits_nan():
    q, neg, alpha, hard_idx, hard_count, pairs = mixed_case(torch.float64)
    neg = neg.clone()
    neg[hard_idx[0, 0]] = math.nan
    alpha = alpha.clone()
    alpha[hard_idx[1, 1]] = math.nan
    out = ops.mixed_logits(q, neg, scl(neg), alpha, hard_idx, hard_count, pairs, INV_TAU)
    want = reference.mixed_logits(q, neg, scl(neg), alpha, hard_idx, hard_count, pairs, INV_TAU)
    torch.testing.assert_close(out, want, equal_nan=True)
    assert out.isnan().any()
    ops.mixed_logits_bwd(torch.ones_like(out), q, neg, scl(neg), alpha, hard_idx, hard_count, pairs, INV_TAU)


def test_mixed_logits_opcheck():
    q, *rest = mixed_case(torch.float64)
    torch.library.opcheck(ops.mixed_logits, (*scaled((q.requires_grad_(), *rest)), INV_TAU))


@pytest.mark.parametrize("dtype", DTYPES)
def test_raw_queue_rows_of_any_norm(dtype):
    """The queue enters raw with its unit-row scales (no normalised copy): rows of norms 1e-3 .. 1e3
    and a zero row give the reference on the F.normalize'd queue, values and gradients."""
    q = unit(5, 24, dtype=dtype)
    raw = (unit(300, 24) * 10.0 ** (torch.rand(300, 1, dtype=torch.float64) * 6 - 3)).to(dtype)
    raw[11] = 0
    want_neg = F.normalize(raw, dim=-1, eps=1e-8)
    ones = torch.ones(300, dtype=dtype)
    q_cls, neg_cls = torch.arange(5) % 4, torch.randint(0, 4, (300,))
    lse, idx, count = ops.hard_negatives(q, raw, scl(raw), q_cls, neg_cls, INV_TAU, 40, True)
    w_lse, w_idx, w_count = reference.hard_negatives(q, want_neg, ones, q_cls, neg_cls, INV_TAU, 40, True)
    torch.testing.assert_close(lse, w_lse, **TOL[dtype])
    assert torch.equal(count, w_count)
    sim = q.double() @ want_neg.double().T
    torch.testing.assert_close(sim.gather(1, idx.clamp(min=0)), sim.gather(1, w_idx.clamp(min=0)), rtol=0, atol=1e-6)
    qr = q.clone().requires_grad_()
    g = torch.randn(5, dtype=dtype)
    want = torch.autograd.grad(reference.hard_negatives(qr, want_neg, ones, q_cls, neg_cls, INV_TAU, 40, True)[0],
                               qr, g)[0]
    torch.testing.assert_close(ops.queue_lse_bwd(g, q, raw, scl(raw), q_cls, neg_cls, lse, INV_TAU, True), want,
                               **TOL[dtype])
    alpha = torch.rand(300, dtype=dtype)
    pairs = torch.randint(0, 43, (5, 33, 2))
    m = reference.mixed_logits(qr, want_neg, ones, alpha, idx, count, pairs, INV_TAU)
    torch.testing.assert_close(ops.mixed_logits(q, raw, scl(raw), alpha, idx, count, pairs, INV_TAU), m,
                               **TOL[dtype])
    gm = torch.where(m.isfinite(), torch.randn_like(m), 0.0)
    torch.testing.assert_close(ops.mixed_logits_bwd(gm, q, raw, scl(raw), alpha, idx, count, pairs, INV_TAU),
                               torch.autograd.grad(m, qr, gm)[0], **TOL[dtype])


def test_argument_checks():
    q, neg = unit(5, 24), unit(30, 24)
    cls = torch.zeros(5, dtype=torch.long), torch.zeros(30, dtype=torch.long)
    with pytest.raises(RuntimeError, match="share C"):
        ops.hard_negatives(q, unit(30, 23), scl(unit(30, 23)), *cls, INV_TAU, 4, False)
    with pytest.raises(RuntimeError, match="dtype"):
        ops.hard_negatives(q, neg.float(), scl(neg.float()), *cls, INV_TAU, 4, False)
    with pytest.raises(RuntimeError, match="n_hard"):
        ops.hard_negatives(q, neg, scl(neg), *cls, INV_TAU, -1, False)
    with pytest.raises(RuntimeError, match="share D"):
        ops.affinity_matrix(torch.rand(3, 2), torch.rand(4, 3), K, False)
    with pytest.raises(RuntimeError, match="pairs"):
        ops.mixed_logits(q, neg, scl(neg), torch.rand(30, dtype=torch.float64), torch.zeros(5, 4, dtype=torch.long),
                         torch.zeros(5, dtype=torch.long), torch.zeros(5, 3, 3, dtype=torch.long), INV_TAU)


# ---------------------------------------------------------------------------------------------------
# every SIMD build of the CPU kernels

_ISA_SCRIPT = """
import math
import torch
import torch.nn.functional as F
import affseg
from affseg import reference
ops = torch.ops.affseg
scl = reference.unit_row_scales
torch.manual_seed(0)
for dtype, tol in ((torch.float32, dict(rtol=1e-4, atol=1e-5)), (torch.float64, dict(rtol=1e-10, atol=1e-12))):
    for l1 in (False, True):
        y_t, y_s = torch.rand(37, 3, dtype=dtype), torch.rand(53, 3, dtype=dtype, requires_grad=True)
        a = reference.affinity_matrix(y_t, y_s, 2.0, l1)
        torch.testing.assert_close(ops.affinity_matrix(y_t, y_s.detach(), 2.0, l1), a, **tol)
        g = torch.randn_like(a)
        torch.testing.assert_close(ops.affinity_matrix_bwd(g, y_t, y_s.detach(), 2.0, l1),
                                   torch.autograd.grad(a, y_s, g)[0], **tol)
    q = F.normalize(torch.randn(5, 24, dtype=dtype), dim=-1).requires_grad_()
    neg = F.normalize(torch.randn(300, 24, dtype=dtype), dim=-1)
    q_cls, neg_cls = torch.randint(0, 4, (5,)), torch.randint(0, 4, (300,))
    for use_classes in (False, True):
        lse, idx, count = ops.hard_negatives(q.detach(), neg, scl(neg), q_cls, neg_cls, 10.0, 40, use_classes)
        w_lse, w_idx, w_count = reference.hard_negatives(q, neg, scl(neg), q_cls, neg_cls, 10.0, 40, use_classes)
        torch.testing.assert_close(lse, w_lse, **tol)
        assert torch.equal(count, w_count)
        sim = q.detach().double() @ neg.double().T
        torch.testing.assert_close(sim.gather(1, idx.clamp(min=0)), sim.gather(1, w_idx.clamp(min=0)), rtol=0, atol=1e-6)
        g = torch.randn(5, dtype=dtype)
        torch.testing.assert_close(ops.queue_lse_bwd(g, q.detach(), neg, scl(neg), q_cls, neg_cls, lse, 10.0, use_classes),
                                   torch.autograd.grad(w_lse, q, g)[0], **tol)
        alpha = torch.rand(300, dtype=dtype)
        pairs = torch.randint(0, 43, (5, 33, 2))
        m = reference.mixed_logits(q, neg, scl(neg), alpha, idx, count, pairs, 10.0)
        torch.testing.assert_close(ops.mixed_logits(q.detach(), neg, scl(neg), alpha, idx, count, pairs, 10.0), m, **tol)
        g = torch.randn_like(m)
        torch.testing.assert_close(ops.mixed_logits_bwd(g, q.detach(), neg, scl(neg), alpha, idx, count, pairs, 10.0),
                                   torch.autograd.grad(m, q, g)[0], **tol)
print("ok")
"""


@pytest.mark.parametrize("isa", ISAS)
def test_every_cpu_simd_path(isa):
    assert_passes_under(isa, _ISA_SCRIPT)


# ---------------------------------------------------------------------------------------------------
# CUDA kernels against the CPU kernels (run where a GPU is visible)


def _compiled_with_cuda():
    try:
        return bool(ops._compiled_with_cuda())
    except (AttributeError, RuntimeError):
        return False


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_cpu(dtype):
    if not _compiled_with_cuda():
        pytest.skip("affseg was built without CUDA")
    dev = "cuda"
    for l1 in (False, True):
        for n, m, d in ((37, 53, 3), (300, 1000, 64)):
            y_t, y_s = torch.rand(n, d, dtype=dtype), torch.rand(m, d, dtype=dtype)
            g = torch.randn(n, m, dtype=dtype)
            torch.testing.assert_close(ops.affinity_matrix(y_t.to(dev), y_s.to(dev), K, l1).cpu(),
                                       ops.affinity_matrix(y_t, y_s, K, l1), **TOL[dtype])
            torch.testing.assert_close(ops.affinity_matrix_bwd(g.to(dev), y_t.to(dev), y_s.to(dev), K, l1).cpu(),
                                       ops.affinity_matrix_bwd(g, y_t, y_s, K, l1), **TOL[dtype])
    for B, Q, C, n_hard in ((5, 300, 24, 40), (7, 65536, 256, 1024), (3, 3000, 40, 1), (4, 0, 8, 5)):
        q, neg = unit(B, C, dtype=dtype), unit(Q, C, dtype=dtype)
        q_cls, neg_cls = torch.randint(0, 4, (B,)), torch.randint(0, 4, (Q,))
        for use_classes in (False, True):
            cpu = ops.hard_negatives(q, neg, scl(neg), q_cls, neg_cls, INV_TAU, n_hard, use_classes)
            gpu = ops.hard_negatives(q.to(dev), neg.to(dev), scl(neg.to(dev)), q_cls.to(dev), neg_cls.to(dev), INV_TAU, n_hard,
                                     use_classes)
            torch.testing.assert_close(gpu[0].cpu(), cpu[0], **TOL[dtype])
            assert torch.equal(gpu[2].cpu(), cpu[2])
            if dtype == torch.float64:
                assert torch.equal(gpu[1].cpu(), cpu[1])
            g = torch.randn(B, dtype=dtype)
            torch.testing.assert_close(
                ops.queue_lse_bwd(g.to(dev), q.to(dev), neg.to(dev), scl(neg.to(dev)), q_cls.to(dev), neg_cls.to(dev), gpu[0], INV_TAU,
                                  use_classes).cpu(),
                ops.queue_lse_bwd(g, q, neg, scl(neg), q_cls, neg_cls, cpu[0], INV_TAU, use_classes), **TOL[dtype])
            alpha = torch.rand(Q, dtype=dtype)
            pairs = torch.randint(0, n_hard + 3, (B, 33, 2))
            args = (q, neg, alpha, cpu[1], cpu[2], pairs)
            gpu_args = tuple(t.to(dev) for t in args)
            torch.testing.assert_close(ops.mixed_logits(*scaled(gpu_args), INV_TAU).cpu(), ops.mixed_logits(*scaled(args), INV_TAU),
                                       **TOL[dtype])
            g = torch.randn(B, 33, dtype=dtype)
            torch.testing.assert_close(ops.mixed_logits_bwd(g.to(dev), *scaled(gpu_args), INV_TAU).cpu(),
                                       ops.mixed_logits_bwd(g, *scaled(args), INV_TAU), **TOL[dtype])
