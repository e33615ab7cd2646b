"""The Triton Semi-AGCL kernels (kernels/agcl.py) against brute-force float64 torch.

On CPU the kernels run in the Triton interpreter (conftest sets TRITON_INTERPRET=1), so sizes stay
small. The brute force here materialises everything (N×M×D differences, the B×Q dot matrix, every
mixed vector); the backward launchers are checked against torch.autograd through it.
"""
import pytest
import torch
import torch.nn.functional as F

import affseg

agcl = pytest.importorskip("affseg.kernels.agcl", reason="Triton could not be imported on this machine")

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-6), torch.float64: dict(rtol=1e-10, atol=1e-12),
       torch.float16: dict(rtol=1e-2, atol=1e-3)}
DTYPES = [torch.float32, torch.float64]
INF = float("inf")
scl = affseg.reference.unit_row_scales  # the kernels take the raw queue and these unit-row scales


def _close(actual, expected, dtype, **kw):
    tol = dict(TOL[dtype], **kw)
    torch.testing.assert_close(actual.double(), expected.double(), equal_nan=True, **tol)


# ------------------------------------------------------------------------------------------------
# brute force (float64)
# ------------------------------------------------------------------------------------------------
def ref_affinity(t, s, kappa, l1):
    diff = t.double()[:, None, :] - s.double()[None, :, :]
    dist = diff.abs().sum(-1) if l1 else (diff * diff).sum(-1)
    return torch.exp(-dist * kappa)


def ref_valid(q_cls, neg_cls, use_classes):
    v = neg_cls[None, :] != q_cls[:, None]
    return v if use_classes else torch.ones_like(v)


def ref_lse(q, neg, q_cls, neg_cls, inv_tau, use_classes):
    s = q.double() @ neg.double().T * inv_tau
    s = torch.where(ref_valid(q_cls, neg_cls, use_classes), s, -INF)
    return torch.logsumexp(s, dim=1)


def ref_hard(q, neg, q_cls, neg_cls, n_hard, use_classes):
    """(idx (B, H) padded with −1, count (B,), sorted dots (list of tensors))."""
    dots = q.double() @ neg.double().T
    valid = ref_valid(q_cls, neg_cls, use_classes)
    H = min(n_hard, neg.shape[0])
    idx = torch.full((q.shape[0], H), -1, dtype=torch.int64)
    cnt = torch.zeros(q.shape[0], dtype=torch.int64)
    vals = []
    for b in range(q.shape[0]):
        cand = valid[b].nonzero().flatten()
        v = dots[b, cand]
        order = torch.sort(v, descending=True, stable=True).indices[:H]  # NaN first, ties: lower index
        idx[b, :len(order)] = cand[order]
        cnt[b] = len(order)
        vals.append(v[order])
    return idx, cnt, vals


def ref_mixed(q, neg, alpha, hard_idx, hard_count, pairs, inv_tau):
    q, neg, alpha = q.double(), neg.double(), alpha.double()
    B, P = pairs.shape[:2]
    H = hard_idx.shape[1]
    a, c = pairs[..., 0], pairs[..., 1]
    cnt = hard_count[:, None]
    valid = (a >= 0) & (c >= 0) & (a < cnt) & (c < cnt) & (a != c)
    ai, ci = a.clamp(0, max(H - 1, 0)), c.clamp(0, max(H - 1, 0))
    if H == 0:
        return torch.full((B, P), -INF, dtype=torch.float64)
    i = torch.gather(hard_idx, 1, ai).clamp(min=0)
    j = torch.gather(hard_idx, 1, ci).clamp(min=0)
    al = alpha[i][..., None]
    m = al * neg[i] + (1 - al) * neg[j]  # (B, P, C): materialised here on purpose
    logit = (m * q[:, None, :]).sum(-1) / m.norm(dim=-1).clamp(min=1e-8) * inv_tau
    return torch.where(valid, logit, -INF)


# ------------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------------
def _probs(n, d, dtype, gen):
    return torch.softmax(torch.randn(n, d, dtype=torch.float64, generator=gen) * 2, dim=1).to(dtype)


def _unit(n, c, dtype, gen):
    return F.normalize(torch.randn(n, c, dtype=torch.float64, generator=gen), dim=1).to(dtype)


def _queue(B, Q, C, dtype, K=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = _unit(B, C, dtype, gen)
    neg = _unit(Q, C, dtype, gen)
    q_cls = torch.randint(0, K, (B,), generator=gen)
    neg_cls = torch.randint(0, K, (Q,), generator=gen)
    return q, neg, q_cls, neg_cls


# ------------------------------------------------------------------------------------------------
# 1. affinity
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("l1", [False, True])
@pytest.mark.parametrize("N,M,D", [(37, 53, 3), (33, 20, 64), (5, 70, 17)])
def test_affinity_fwd_bwd(dtype, l1, N, M, D):
    gen = torch.Generator().manual_seed(N + D)
    t, s = _probs(N, D, dtype, gen), _probs(M, D, dtype, gen)
    kappa = 2.0 if D < 10 else 0.7
    A = agcl.affinity_matrix(t, s, kappa, l1)
    assert A.dtype == dtype and A.shape == (N, M)
    _close(A, ref_affinity(t, s, kappa, l1), dtype)

    gA = torch.randn(N, M, dtype=torch.float64, generator=gen)
    s64 = s.double().requires_grad_()
    (expected,) = torch.autograd.grad(ref_affinity(t.double(), s64, kappa, l1), s64, gA)
    got = agcl.affinity_matrix_bwd(gA.to(dtype), t, s, kappa, l1)
    assert got.dtype == dtype and got.shape == (M, D)
    _close(got, expected, dtype, atol=1e-5 if dtype == torch.float32 else 1e-11)


@pytest.mark.parametrize("dtype", DTYPES)
def test_affinity_l1_sign_zero_and_ties(dtype):
    """Equal entries (t_id == s_jd) take sign 0, as torch's abs gradient does; repeated rows agree."""
    t = torch.tensor([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25], [0.0, 1.0, 0.0]], dtype=dtype)
    s = torch.tensor([[0.5, 0.25, 0.25], [0.5, 0.5, 0.0], [0.0, 1.0, 0.0]], dtype=dtype)
    for l1 in (False, True):
        gA = torch.ones(3, 3, dtype=torch.float64)
        s64 = s.double().requires_grad_()
        (expected,) = torch.autograd.grad(ref_affinity(t.double(), s64, 2.0, l1), s64, gA)
        _close(agcl.affinity_matrix(t, s, 2.0, l1), ref_affinity(t, s, 2.0, l1), dtype)
        _close(agcl.affinity_matrix_bwd(gA.to(dtype), t, s, 2.0, l1), expected, dtype)


def test_affinity_nan_propagates():
    gen = torch.Generator().manual_seed(1)
    t, s = _probs(37, 3, torch.float32, gen), _probs(53, 3, torch.float32, gen)
    t[4, 1] = float("nan")
    s[7, 0] = float("nan")
    A = agcl.affinity_matrix(t, s, 2.0, False)
    assert A[4].isnan().all() and A[:, 7].isnan().all()
    assert not A[torch.arange(37) != 4][:, torch.arange(53) != 7].isnan().any()
    g = agcl.affinity_matrix_bwd(torch.ones(37, 53), t, s, 2.0, True)
    assert g.isnan().all()  # every column takes row 4's NaN
    g = agcl.affinity_matrix_bwd(torch.ones(37, 53), t[torch.arange(37) != 4], s, 2.0, False)
    assert g[7].isnan().all() and not g[torch.arange(53) != 7].isnan().any()


def test_affinity_empty():
    t, s = torch.rand(0, 3), torch.rand(4, 3)
    assert agcl.affinity_matrix(t, s, 2.0, False).shape == (0, 4)
    assert torch.equal(agcl.affinity_matrix_bwd(torch.rand(0, 4), t, s, 2.0, False), torch.zeros(4, 3))


# ------------------------------------------------------------------------------------------------
# 2. hard negatives and queue LSE
# ------------------------------------------------------------------------------------------------
def _check_hard(q, neg, q_cls, neg_cls, inv_tau, n_hard, use_classes, dtype, exact_idx=None):
    lse, idx, cnt = agcl.hard_negatives(q, neg, scl(neg), q_cls, neg_cls, inv_tau, n_hard, use_classes)
    H = min(n_hard, neg.shape[0])
    assert lse.dtype == dtype and idx.dtype == torch.int64 and cnt.dtype == torch.int64
    assert idx.shape == (q.shape[0], H) and cnt.shape == (q.shape[0],)
    # The kernels rank by the unit rows' dots; the callers' rows all have one norm, so the raw dots
    # (exact in the ties test) rank them the same, and the LSE is the unit rows'.
    _close(lse, ref_lse(q, neg.double() * scl(neg.double())[:, None], q_cls, neg_cls, inv_tau, use_classes), dtype)
    r_idx, r_cnt, r_vals = ref_hard(q, neg, q_cls, neg_cls, n_hard, use_classes)
    assert torch.equal(cnt, r_cnt)
    exact = dtype == torch.float64 if exact_idx is None else exact_idx
    if exact:
        assert torch.equal(idx, r_idx)
    else:  # float32 dots may order near-ties (|Δ| ≲ 1e-7) differently from float64
        dots = q.double() @ neg.double().T
        for b in range(q.shape[0]):
            k = int(cnt[b])
            assert (idx[b, k:] == -1).all()
            assert len(set(idx[b, :k].tolist())) == k
            valid = ref_valid(q_cls, neg_cls, use_classes)[b]
            assert valid[idx[b, :k]].all()
            _close(dots[b, idx[b, :k]], r_vals[b], torch.float32, atol=1e-6)
            v = r_vals[b]
            gap = torch.ones(k, dtype=torch.bool)
            if k > 1:
                d = (v[1:] - v[:-1]).abs() > 1e-5
                gap[1:] &= d
                gap[:-1] &= d
            assert torch.equal(idx[b, :k][gap], r_idx[b, :k][gap])
    return lse, idx, cnt


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("use_classes", [False, True])
def test_hard_negatives_basic(dtype, use_classes):
    q, neg, qc, nc = _queue(5, 300, 24, dtype)
    _check_hard(q, neg, qc, nc, 10.0, 40, use_classes, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Q,n_hard,C", [(300, 500, 24), (700, 3, 80), (90, 1, 5)])
def test_hard_negatives_sizes(dtype, Q, n_hard, C):
    """n_hard > Q (H = Q), many chunks with a small buffer (the skip path), n_hard = 1, C-chunk loop."""
    q, neg, qc, nc = _queue(3, Q, C, dtype, seed=Q)
    _check_hard(q, neg, qc, nc, 7.0, n_hard, True, dtype)
    _check_hard(q, neg, qc, nc, 7.0, n_hard, False, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_hard_negatives_ties_exact(dtype):
    """Query entries in {−½, 0, ½}, queue entries ±½ (one norm, so one unit-row scale): every dot is
    exact in both dtypes and many tie; ties keep the lower index."""
    gen = torch.Generator().manual_seed(3)
    q = (torch.randint(-1, 2, (4, 6), generator=gen) * 0.5).to(dtype)
    neg = ((torch.randint(0, 2, (300, 6), generator=gen) * 2 - 1) * 0.5).to(dtype)
    neg[100:120] = neg[3]  # repeated rows
    qc, nc = torch.randint(0, 2, (4,), generator=gen), torch.randint(0, 2, (300,), generator=gen)
    _check_hard(q, neg, qc, nc, 3.0, 64, False, dtype, exact_idx=True)
    _check_hard(q, neg, qc, nc, 3.0, 300, True, dtype, exact_idx=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_hard_negatives_no_valid(dtype):
    """Q = 0, or every negative of the query's class: lse −inf, count 0, indices −1, gradients 0."""
    q, neg, qc, nc = _queue(3, 50, 8, dtype)
    lse, idx, cnt = agcl.hard_negatives(q, neg[:0], scl(neg[:0]), qc, nc[:0], 10.0, 16, True)
    assert idx.shape == (3, 0) and (cnt == 0).all() and (lse == -INF).all()
    g = agcl.queue_lse_bwd(torch.ones(3, dtype=dtype), q, neg[:0], scl(neg[:0]), qc, nc[:0], lse, 10.0, True)
    assert torch.equal(g, torch.zeros(3, 8, dtype=dtype))

    nc = torch.zeros(50, dtype=torch.int64)
    qc = torch.tensor([0, 1, 0])
    lse, idx, cnt = _check_hard(q, neg, qc, nc, 10.0, 16, True, dtype)
    assert lse[0] == -INF and lse[2] == -INF and torch.isfinite(lse[1])
    assert cnt.tolist() == [0, 16, 0] and (idx[0] == -1).all()
    g = agcl.queue_lse_bwd(torch.ones(3, dtype=dtype), q, neg, scl(neg), qc, nc, lse, 10.0, True)
    assert not g.isnan().any() and (g[0] == 0).all() and (g[2] == 0).all() and (g[1] != 0).any()


def test_hard_negatives_nan():
    q, neg, qc, nc = _queue(4, 200, 16, torch.float32)
    q[1, 3] = float("nan")  # query 1: every dot NaN
    neg[17, 0] = float("nan")  # negative 17: NaN for the queries that may use it
    nc[17] = qc[2]  # ... but invalid for query 2 under use_classes
    for use_classes in (False, True):
        lse, idx, cnt = agcl.hard_negatives(q, neg, scl(neg), qc, nc, 10.0, 20, use_classes)
        r_idx, r_cnt, _ = ref_hard(q, neg, qc, nc, 20, use_classes)
        assert lse[1].isnan() and lse[0].isnan() and lse[3].isnan() == (use_classes is False or nc[17] != qc[3])
        assert lse[2].isnan() == (not use_classes)
        # NaN ranks above every number, ties by index (torch.sort(descending, stable) order)
        assert torch.equal(idx[1], r_idx[1]) and torch.equal(cnt, r_cnt)
        for b in (0, 3):
            if not use_classes or nc[17] != qc[b]:
                assert idx[b, 0] == 17


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("use_classes", [False, True])
@pytest.mark.parametrize("C", [24, 80])
def test_queue_lse_bwd(dtype, use_classes, C):
    q, neg, qc, nc = _queue(5, 130, C, dtype, seed=C)
    inv_tau = 5.0
    lse, _, _ = agcl.hard_negatives(q, neg, scl(neg), qc, nc, inv_tau, 8, use_classes)
    g = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    q64 = q.double().requires_grad_()
    (expected,) = torch.autograd.grad(ref_lse(q64, neg, qc, nc, inv_tau, use_classes), q64, g)
    got = agcl.queue_lse_bwd(g.to(dtype), q, neg, scl(neg), qc, nc, lse, inv_tau, use_classes)
    assert got.dtype == dtype and got.shape == q.shape
    _close(got, expected, dtype, atol=1e-5 if dtype == torch.float32 else 1e-11)


def test_queue_lse_bwd_nan_drops_out_when_invalid():
    q, neg, qc, nc = _queue(3, 64, 8, torch.float64)
    neg[5] = float("nan")
    nc[5] = qc[0]
    lse, _, _ = agcl.hard_negatives(q, neg, scl(neg), qc, nc, 10.0, 4, True)
    g = agcl.queue_lse_bwd(torch.ones(3, dtype=torch.float64), q, neg, scl(neg), qc, nc, lse, 10.0, True)
    assert not g[0].isnan().any()
    for b in (1, 2):
        assert g[b].isnan().all() == bool(nc[5] != qc[b])


# ------------------------------------------------------------------------------------------------
# 3. mixed negatives
# ------------------------------------------------------------------------------------------------
def _mixed_inputs(dtype, B=5, Q=300, C=24, n_hard=40, P=33, use_classes=True, seed=0):
    q, neg, qc, nc = _queue(B, Q, C, dtype, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    alpha = torch.rand(Q, dtype=torch.float64, generator=gen).to(dtype)
    idx, cnt, _ = ref_hard(q, neg, qc, nc, n_hard, use_classes)
    H = idx.shape[1]
    pairs = torch.randint(0, max(H, 1), (B, P, 2), generator=gen)
    pairs[:, 0, 1] = pairs[:, 0, 0]  # a == c: invalid
    pairs[:, 1, 0] = H + 3  # out of the list: invalid
    pairs[:, 2, 1] = -1  # negative position: invalid
    return q, neg, alpha, idx, cnt, pairs


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", [24, 80])
def test_mixed_logits_fwd_bwd(dtype, C):
    q, neg, alpha, idx, cnt, pairs = _mixed_inputs(dtype, C=C, seed=C)
    cnt[3] = 5  # a short list: pairs beyond position 5 are invalid for query 3
    inv_tau = 10.0
    got = agcl.mixed_logits(q, neg, scl(neg), alpha, idx, cnt, pairs, inv_tau)
    expected = ref_mixed(q, neg, alpha, idx, cnt, pairs, inv_tau)
    assert got.dtype == dtype and got.shape == pairs.shape[:2]
    assert (expected[:, :3] == -INF).all() and (expected[3] == -INF).sum() > 3
    _close(got, expected, dtype)

    g = torch.randn(*pairs.shape[:2], dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    q64 = q.double().requires_grad_()
    out = ref_mixed(q64, neg, alpha, idx, cnt, pairs, inv_tau)
    (exp_grad,) = torch.autograd.grad(torch.where(torch.isfinite(out), out, 0.0), q64, g)
    got_grad = agcl.mixed_logits_bwd(g.to(dtype), q, neg, scl(neg), alpha, idx, cnt, pairs, inv_tau)
    assert got_grad.dtype == dtype and got_grad.shape == q.shape
    _close(got_grad, exp_grad, dtype, atol=1e-5 if dtype == torch.float32 else 1e-11)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mixed_logits_kernel_hard_list_and_degenerate(dtype):
    """Hard lists straight from hard_negatives (−1 padding, n_hard > Q); n_j = −n_i with α = ½ gives
    m = 0 (norm clamped to 1e-8: logit 0, gradient 0)."""
    q, neg, qc, nc = _queue(4, 30, 8, dtype)
    neg[1] = -neg[0]
    alpha = torch.full((30,), 0.5, dtype=dtype)
    _, idx, cnt = agcl.hard_negatives(q, neg, scl(neg), qc, nc, 10.0, 64, True)
    pairs = torch.randint(0, 30, (4, 40, 2), generator=torch.Generator().manual_seed(0))
    # put the (0, 1) pair at position 0 of every query whose list holds both
    for b in range(4):
        lst = idx[b, : cnt[b]].tolist()
        if 0 in lst and 1 in lst:
            pairs[b, 0] = torch.tensor([lst.index(0), lst.index(1)])
    got = agcl.mixed_logits(q, neg, scl(neg), alpha, idx, cnt, pairs, 10.0)
    _close(got, ref_mixed(q, neg, alpha, idx, cnt, pairs, 10.0), dtype)
    g = torch.ones(4, 40, dtype=torch.float64)
    q64 = q.double().requires_grad_()
    out = ref_mixed(q64, neg, alpha, idx, cnt, pairs, 10.0)
    (exp_grad,) = torch.autograd.grad(torch.where(torch.isfinite(out), out, 0.0), q64, g)
    _close(agcl.mixed_logits_bwd(g.to(dtype), q, neg, scl(neg), alpha, idx, cnt, pairs, 10.0), exp_grad, dtype,
           atol=1e-5 if dtype == torch.float32 else 1e-11)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mixed_no_valid(dtype):
    """Empty hard lists (Q = 0 or all same class): every logit −inf, gradient 0 (not NaN)."""
    q, neg, alpha, idx, cnt, pairs = _mixed_inputs(dtype, B=3, Q=50, C=8, n_hard=10, P=7)
    cnt.zero_()
    idx.fill_(-1)
    out = agcl.mixed_logits(q, neg, scl(neg), alpha, idx, cnt, pairs, 10.0)
    assert (out == -INF).all()
    g = agcl.mixed_logits_bwd(torch.ones(3, 7, dtype=dtype), q, neg, scl(neg), alpha, idx, cnt, pairs, 10.0)
    assert torch.equal(g, torch.zeros_like(q))
    empty = torch.zeros(3, 0, dtype=torch.int64)
    out = agcl.mixed_logits(q, neg[:0], scl(neg[:0]), alpha[:0], empty, cnt, pairs, 10.0)
    assert (out == -INF).all()
    g = agcl.mixed_logits_bwd(torch.ones(3, 7, dtype=dtype), q, neg[:0], scl(neg[:0]), alpha[:0], empty, cnt, pairs, 10.0)
    assert torch.equal(g, torch.zeros_like(q))


def test_mixed_nan_propagates():
    q, neg, alpha, idx, cnt, pairs = _mixed_inputs(torch.float32, B=3, Q=60, C=8, n_hard=10, P=9)
    unused = [n for n in range(60) if n not in idx.flatten().tolist()]
    neg[unused[0]] = float("nan")  # never gathered: drops out
    alpha[idx[0, 0]] = float("nan")
    q[2, 0] = float("nan")
    out = agcl.mixed_logits(q, neg, scl(neg), alpha, idx, cnt, pairs, 10.0)
    ref = ref_mixed(q, neg, alpha, idx, cnt, pairs, 10.0)
    _close(out, ref, torch.float32)
    uses = ref[0].isnan().any()  # a valid pair of query 0 mixes with the NaN α
    assert out[2][ref[2] != -INF].isnan().all()
    assert not out[1].isnan().any()
    g = agcl.mixed_logits_bwd(torch.ones(3, 9), q, neg, scl(neg), alpha, idx, cnt, pairs, 10.0)
    assert not g[1].isnan().any() and not g[2].isnan().any()  # d logit/dq = m/‖m‖ does not involve q
    assert g[0].isnan().all() == bool(uses)


# ------------------------------------------------------------------------------------------------
# float16 (GPU dtype; the interpreter runs it too, accumulating in float32); bf16 only on GPUs
# ------------------------------------------------------------------------------------------------
def test_float16_forwards():
    gen = torch.Generator().manual_seed(0)
    t, s = _probs(37, 3, torch.float16, gen), _probs(40, 3, torch.float16, gen)
    A = agcl.affinity_matrix(t, s, 2.0, False)
    assert A.dtype == torch.float16
    _close(A, ref_affinity(t, s, 2.0, False), torch.float16)
    q, neg, qc, nc = _queue(3, 100, 16, torch.float16)
    lse, idx, cnt = agcl.hard_negatives(q, neg, scl(neg), qc, nc, 10.0, 8, True)
    assert lse.dtype == torch.float16
    _close(lse, ref_lse(q, neg, qc, nc, 10.0, True), torch.float16)
    alpha = torch.rand(100).half()
    pairs = torch.randint(0, 8, (3, 11, 2), generator=gen)
    _close(agcl.mixed_logits(q, neg, scl(neg), alpha, idx, cnt, pairs, 10.0),
           ref_mixed(q, neg, alpha, idx, cnt, pairs, 10.0), torch.float16, atol=1e-2)


def test_limits_declared():
    assert agcl.LIMITS["classes"] == 64 and agcl.LIMITS["channels"] == 256 and agcl.LIMITS["hard"] == 1024
    with pytest.raises(ValueError, match="D <= 64"):
        agcl.affinity_matrix(torch.rand(3, 65), torch.rand(3, 65), 1.0, False)
    with pytest.raises(ValueError, match="n_hard <= 1024"):
        agcl.hard_negatives(torch.rand(2, 4), torch.rand(5, 4), scl(torch.rand(5, 4)), torch.zeros(2, dtype=torch.long),
                            torch.zeros(5, dtype=torch.long), 1.0, 1025, False)
    with pytest.raises(ValueError, match="C <= 256"):
        agcl.queue_lse_bwd(torch.rand(2), torch.rand(2, 257), torch.rand(5, 257), scl(torch.rand(5, 257)), torch.zeros(2, dtype=torch.long),
                           torch.zeros(5, dtype=torch.long), torch.rand(2), 1.0, False)


def test_compile_configs_listed():
    cfgs = agcl.compile_configs()
    names = {k.fn.__name__ if hasattr(k, "fn") else k.__name__ for k, _, _, _ in cfgs}
    assert {"_affinity_fwd_kernel", "_affinity_bwd_kernel", "_hard_neg_kernel", "_queue_lse_bwd_kernel",
            "_mixed_kernel", "_mixed_bwd_kernel"} <= names
    for kernel, sig, const, opts in cfgs:
        assert set(sig) == set(kernel.arg_names)
        assert {k for k, v in sig.items() if v == "constexpr"} == set(const)
        assert set(opts) == {"num_warps", "num_stages"}


@pytest.mark.parametrize("dtype", DTYPES)
def test_raw_queue_rows_of_any_norm(dtype):
    """The queue enters raw with its unit-row scales: rows of norms 1e-3 .. 1e3 (and a zero row) give
    the brute force on the normalised queue, values and gradients."""
    gen = torch.Generator().manual_seed(11)
    q, unit_neg = _unit(3, 12, dtype, gen), _unit(90, 12, torch.float64, gen)
    norms = 10.0 ** (torch.rand(90, 1, generator=gen, dtype=torch.float64) * 6 - 3)
    raw = (unit_neg * norms).to(dtype)
    raw[7] = 0
    want_neg = F.normalize(raw.double(), dim=-1, eps=1e-8)
    qc, nc = torch.randint(0, 3, (3,), generator=gen), torch.randint(0, 3, (90,), generator=gen)
    lse, idx, cnt = agcl.hard_negatives(q, raw, scl(raw), qc, nc, 10.0, 16, True)
    _close(lse, ref_lse(q, want_neg, qc, nc, 10.0, True), dtype)
    sim = q.double() @ want_neg.T
    exp_idx, exp_cnt, _ = ref_hard(q, want_neg, qc, nc, 16, True)
    assert torch.equal(cnt, exp_cnt)
    live = idx >= 0
    assert torch.equal(live, exp_idx >= 0)
    _close(sim.gather(1, idx.clamp(min=0))[live], sim.gather(1, exp_idx.clamp(min=0))[live], dtype)
    qr = q.double().requires_grad_()
    g = torch.rand(3, dtype=torch.float64, generator=gen)
    (exp_grad,) = torch.autograd.grad(ref_lse(qr, want_neg, qc, nc, 10.0, True), qr, g)
    _close(agcl.queue_lse_bwd(g.to(dtype), q, raw, scl(raw), qc, nc, lse, 10.0, True), exp_grad, dtype)
    alpha = torch.rand(90, generator=gen, dtype=torch.float64).to(dtype)
    pairs = torch.randint(0, 16, (3, 9, 2), generator=gen)
    exp = ref_mixed(qr, want_neg, alpha, idx, cnt, pairs, 10.0)
    _close(agcl.mixed_logits(q, raw, scl(raw), alpha, idx, cnt, pairs, 10.0), exp, dtype)
    gm = torch.where(exp.isfinite(), torch.rand(exp.shape, generator=gen, dtype=torch.float64), 0.0)
    (exp_grad,) = torch.autograd.grad(exp, qr, gm)
    _close(agcl.mixed_logits_bwd(gm.to(dtype), q, raw, scl(raw), alpha, idx, cnt, pairs, 10.0), exp_grad, dtype)
