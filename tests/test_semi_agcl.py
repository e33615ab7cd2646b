"""Semi-AGCL losses with class-masked negatives, A_ii, and the affseg.nn.SemiAGCL module (SPEC §7).

mixed_negative_infonce is checked against a per-query Python loop (torch float64 ops, so the same
loop also gives the reference gradient); affinity_graph_loss's A_ii against a loop over nodes;
SemiAGCL against independent calls of the public functions on recomputed ŷ/q/k.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import affseg
from affseg._sampling import draw_mix_pairs

# ----------------------------------------------------------------------------- mixed InfoNCE oracle


def brute_infonce(q, k_pos, negatives, alpha, pairs, *, tau, n_hard, mode="queue_plus_mixed", q_classes=None,
                  neg_classes=None, reduction="mean"):
    """Per query: other-class negatives, top-min(n_hard, Q) by cosine, mixed pairs, −log softmax."""
    qh = q.double() / q.double().norm(dim=1, keepdim=True)
    kh = k_pos.double().detach() / k_pos.double().detach().norm(dim=1, keepdim=True)
    nh = negatives.double().detach()
    nh = nh / nh.norm(dim=1, keepdim=True).clamp(min=1e-30)
    a = alpha.double().detach()
    Q = negatives.shape[0]
    H = min(n_hard, Q)
    losses = []
    for b in range(q.shape[0]):
        valid = [j for j in range(Q) if q_classes is None or int(neg_classes[j]) != int(q_classes[b])]
        sims = {j: float(qh[b].detach() @ nh[j]) for j in valid}
        hard = sorted(valid, key=lambda j: -sims[j])[:H]
        pos = qh[b] @ kh[b] / tau
        terms = [pos]
        if mode != "mixed_only":
            terms += [qh[b] @ nh[j] / tau for j in valid]
        for i, j in pairs[b].tolist():
            if i >= len(hard) or j >= len(hard):
                continue  # beyond this query's count of other-class negatives: dropped
            ni, nj, ai = nh[hard[i]], nh[hard[j]], a[hard[i]]
            h = ai * ni + (1 - ai) * nj
            h = h / h.norm()
            terms.append(qh[b] @ h / tau)
        losses.append(torch.logsumexp(torch.stack(terms), 0) - pos)
    out = torch.stack(losses) if losses else q.new_zeros(0, dtype=torch.float64)
    if reduction == "none":
        return out
    return out.sum() if reduction == "sum" else out.mean()


def random_pairs(B, H, n_mix, seed):
    g = torch.Generator().manual_seed(seed)
    if H < 2:
        return torch.empty(B, 0, 2, dtype=torch.long)
    i = torch.randint(0, H, (B, n_mix), generator=g)
    j = (i + torch.randint(1, H, (B, n_mix), generator=g)) % H  # j != i
    return torch.stack([i, j], -1)


def infonce_case(B=5, C=6, Q=20, K=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, C, generator=g, dtype=torch.float64)
    k = torch.randn(B, C, generator=g, dtype=torch.float64)
    neg = torch.randn(Q, C, generator=g, dtype=torch.float64)
    alpha = torch.rand(Q, generator=g, dtype=torch.float64)
    qc = torch.randint(0, K, (B,), generator=g)
    nc = torch.randint(0, K, (Q,), generator=g)
    return q, k, neg, alpha, qc, nc


@pytest.mark.parametrize("mode", ["queue_plus_mixed", "mixed_only"])
@pytest.mark.parametrize("n_hard", [3, 6, 50])
def test_reference_infonce_matches_loop_explicit_pairs(mode, n_hard):
    q, k, neg, alpha, qc, nc = infonce_case()
    nc[:3] = qc[0]  # make sure query 0 has same-class entries to exclude
    pairs = random_pairs(q.shape[0], min(n_hard, neg.shape[0]), 7, seed=1)
    qg = q.clone().requires_grad_()
    got = affseg.reference.mixed_negative_infonce(qg, k, neg, alpha, tau=0.2, n_hard=n_hard, n_mix=7, mode=mode,
                                                  pairs=pairs, q_classes=qc, neg_classes=nc, reduction="none")
    qb = q.clone().requires_grad_()
    want = brute_infonce(qb, k, neg, alpha, pairs, tau=0.2, n_hard=n_hard, mode=mode, q_classes=qc, neg_classes=nc,
                         reduction="none")
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    got.sum().backward()
    want.sum().backward()
    torch.testing.assert_close(qg.grad, qb.grad, atol=1e-10, rtol=1e-8)


def test_class_masking_changes_the_loss():
    q, k, neg, alpha, qc, nc = infonce_case()
    pairs = random_pairs(5, 6, 7, seed=2)
    masked = affseg.reference.mixed_negative_infonce(q, k, neg, alpha, tau=0.2, n_hard=6, n_mix=7, pairs=pairs,
                                                     q_classes=qc, neg_classes=nc)
    plain = affseg.reference.mixed_negative_infonce(q, k, neg, alpha, tau=0.2, n_hard=6, n_mix=7, pairs=pairs)
    torch.testing.assert_close(plain, brute_infonce(q, k, neg, alpha, pairs, tau=0.2, n_hard=6))
    assert not torch.allclose(masked, plain)


@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("mode", ["queue_plus_mixed", "mixed_only"])
def test_public_infonce_draws_pairs_with_draw_mix_pairs(backend, mode):
    q, k, neg, alpha, qc, nc = infonce_case(seed=3)
    q, k, neg, alpha = q.float(), k.float(), neg.float(), alpha.float()
    n_hard, n_mix = 8, 6
    got = affseg.mixed_negative_infonce(q, k, neg, alpha, tau=0.1, n_hard=n_hard, n_mix=n_mix, mode=mode,
                                        generator=torch.Generator().manual_seed(9), q_classes=qc, neg_classes=nc,
                                        backend=backend)
    pairs = draw_mix_pairs(q.shape[0], min(n_hard, neg.shape[0]), n_mix, torch.Generator().manual_seed(9))
    want = brute_infonce(q, k, neg, alpha, pairs, tau=0.1, n_hard=n_hard, mode=mode, q_classes=qc, neg_classes=nc)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_infonce_gradient_to_q_only():
    q, k, neg, alpha, qc, nc = infonce_case()
    q, k, neg, alpha = (t.clone().requires_grad_() for t in (q, k, neg, alpha))
    loss = affseg.mixed_negative_infonce(q, k, neg, alpha, tau=0.2, n_hard=6, n_mix=4, q_classes=qc, neg_classes=nc,
                                         generator=torch.Generator().manual_seed(0), backend="reference")
    loss.backward()
    assert q.grad is not None and torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0
    for t in (k, neg, alpha):
        assert t.grad is None or not t.grad.any()


@pytest.mark.parametrize("case", ["empty_queue", "all_same_class", "n_hard_gt_Q", "one_negative", "some_same_class"])
def test_infonce_degenerate_cases_finite(case):
    q, k, neg, alpha, qc, nc = infonce_case(B=4, Q=6)
    n_hard = 4
    if case == "empty_queue":
        neg, alpha, nc = neg[:0], alpha[:0], nc[:0]
    elif case == "all_same_class":
        qc = torch.zeros(4, dtype=torch.long)
        nc = torch.zeros(6, dtype=torch.long)
    elif case == "n_hard_gt_Q":
        n_hard = 50
    elif case == "one_negative":
        neg, alpha, nc = neg[:1], alpha[:1], nc[:1]
    else:  # only one other-class entry for some queries: their pairs are all dropped
        qc = torch.tensor([0, 0, 1, 1])
        nc = torch.tensor([0, 0, 0, 0, 0, 1])
    qg = q.clone().requires_grad_()
    gen = torch.Generator().manual_seed(5)
    for mode in ("queue_plus_mixed", "mixed_only"):
        qg.grad = None
        got = affseg.mixed_negative_infonce(qg, k, neg, alpha, tau=0.2, n_hard=n_hard, n_mix=5, mode=mode,
                                            generator=gen, q_classes=qc, neg_classes=nc, backend="reference")
        assert torch.isfinite(got)
        got.backward()
        assert torch.isfinite(qg.grad).all()
    pairs = random_pairs(4, min(n_hard, neg.shape[0]), 5, seed=6)
    for mode in ("queue_plus_mixed", "mixed_only"):
        got = affseg.reference.mixed_negative_infonce(q, k, neg, alpha, tau=0.2, n_hard=n_hard, n_mix=5, mode=mode,
                                                      pairs=pairs, q_classes=qc, neg_classes=nc, reduction="none")
        want = brute_infonce(q, k, neg, alpha, pairs, tau=0.2, n_hard=n_hard, mode=mode, q_classes=qc,
                             neg_classes=nc, reduction="none")
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
        if case in ("empty_queue", "all_same_class"):
            assert torch.equal(got, torch.zeros(4, dtype=got.dtype))  # only the positive in the denominator


@pytest.mark.parametrize("where", ["q", "k_pos", "negatives", "alpha"])
def test_infonce_nan_input_gives_nan(where):
    q, k, neg, alpha, qc, nc = infonce_case()
    tensors = dict(q=q, k_pos=k, negatives=neg, alpha=alpha)
    tensors[where] = tensors[where].clone()
    tensors[where].view(-1)[0] = float("nan")
    for backend in ("reference", "auto"):
        got = affseg.mixed_negative_infonce(tensors["q"], tensors["k_pos"], tensors["negatives"], tensors["alpha"],
                                            tau=0.2, n_hard=6, n_mix=4, q_classes=qc, neg_classes=nc,
                                            generator=torch.Generator().manual_seed(0), backend=backend)
        assert torch.isnan(got), backend


# ----------------------------------------------------------------------------- affinity graph


def loop_affinity(y_t, y_s, sigma, l1=False):
    N = y_t.shape[0]
    A = torch.empty(N, N, dtype=torch.float64)
    for i in range(N):
        for j in range(N):
            d = (y_t[i].double() - y_s[j].double())
            dist = d.abs().sum() if l1 else (d * d).sum()
            A[i, j] = math.exp(-float(dist) / (2 * sigma**2))
    return A


@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("distance", ["sqeuclidean", "l1"])
def test_graph_return_diag_matches_loop(backend, distance):
    g = torch.Generator().manual_seed(0)
    y_t = torch.softmax(torch.randn(7, 4, generator=g), 1)
    y_s = torch.softmax(torch.randn(7, 4, generator=g), 1).requires_grad_()
    loss, diag = affseg.affinity_graph_loss(y_t, y_s, sigma=0.4, gamma=0.3, distance=distance, return_diag=True,
                                            backend=backend)
    A = loop_affinity(y_t, y_s.detach(), 0.4, l1=distance == "l1")
    assert not diag.requires_grad and diag.shape == (7,)
    torch.testing.assert_close(diag.double(), torch.diagonal(A), atol=1e-6, rtol=1e-6)
    want = (1 - torch.diagonal(A)).mean() + 0.3 / 7 * torch.linalg.svdvals(A).sum()
    torch.testing.assert_close(loss.double(), want, atol=1e-6, rtol=1e-6)
    loss.backward()
    assert torch.isfinite(y_s.grad).all()


@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("case", ["rank_one", "repeated_sv", "near_identity"])
def test_graph_degenerate_spectra_finite(backend, case):
    if case == "rank_one":  # identical rows: A = c·11ᵀ, rank 1, N−1 zero singular values
        y_t = torch.tensor([[0.7, 0.2, 0.1]]).repeat(5, 1)
        y_s = torch.tensor([[0.1, 0.3, 0.6]]).repeat(5, 1)
        sigma = 0.5
    elif case == "repeated_sv":  # A = (1−e)I + e·11ᵀ: singular value 1−e repeated N−1 times
        y_t = torch.eye(4)
        y_s = torch.eye(4)
        sigma = 0.8
    else:  # A ≈ I: every singular value ≈ 1
        y_t = torch.eye(4)
        y_s = torch.eye(4)
        sigma = 0.1
    y_s = y_s.clone().requires_grad_()
    loss, diag = affseg.affinity_graph_loss(y_t, y_s, sigma=sigma, gamma=0.5, return_diag=True, backend=backend)
    assert torch.isfinite(loss) and torch.isfinite(diag).all()
    A = loop_affinity(y_t, y_s.detach(), sigma)
    torch.testing.assert_close(diag.double(), torch.diagonal(A), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(loss.double(), (1 - torch.diagonal(A)).mean()
                               + 0.5 / y_t.shape[0] * torch.linalg.svdvals(A).sum(), atol=1e-5, rtol=1e-5)
    loss.backward()
    assert torch.isfinite(y_s.grad).all()


# ----------------------------------------------------------------------------- SemiAGCL module

OPTS = dict(patch_size=4, n_per_class=4, metric="entropy", min_fraction=0.05, sigma=0.5, gamma=0.2, tau=0.2,
            n_hard=6, n_mix=5, mode="queue_plus_mixed")


def make_inputs(seed, B=2, K=3, C=8, S=(16, 12), stride=2):
    g = torch.Generator().manual_seed(seed)
    s_logits = torch.randn(B, K, *S, generator=g).requires_grad_()
    t_logits = (s_logits.detach() + 0.5 * torch.randn(B, K, *S, generator=g)).requires_grad_()
    fs = tuple(s // stride for s in S)
    s_feat = torch.randn(B, C, *fs, generator=g).requires_grad_()
    t_feat = (s_feat.detach() + 0.3 * torch.randn(B, C, *fs, generator=g)).requires_grad_()
    labels = t_logits.detach().argmax(1)
    labels[0, :2, :2] = 255  # ignored pixels
    return s_logits, t_logits, s_feat, t_feat, labels


def recompute(inputs, seed, queue_state, *, backend, head=None, teacher_head=None, metric="entropy", mask=True):
    s_logits, t_logits, s_feat, t_feat, labels = inputs
    gen = torch.Generator().manual_seed(seed)
    p = OPTS["patch_size"]
    sample = affseg.sample_patches(t_logits.detach(), labels, p, n_per_class=OPTS["n_per_class"], metric=metric,
                                   min_fraction=OPTS["min_fraction"], generator=gen, backend=backend,
                                   features=t_feat.detach() if metric == "cosine" else None)
    y_t = sample.probs
    y_s = affseg.patch_embed(torch.softmax(s_logits, 1), sample, labels, p)
    q = affseg.patch_embed(s_feat, sample, labels, p)
    k = affseg.patch_embed(t_feat.detach(), sample, labels, p)
    if head is not None:
        q = head(q)
        with torch.no_grad():
            k = teacher_head(k)
    graph, diag = affseg.affinity_graph_loss(y_t, y_s, sigma=OPTS["sigma"], gamma=OPTS["gamma"], return_diag=True,
                                             backend=backend)
    keys, classes, alpha = queue_state
    kw = dict(q_classes=sample.cls, neg_classes=classes) if mask else {}
    mix = affseg.mixed_negative_infonce(q, k, keys, alpha, tau=OPTS["tau"], n_hard=OPTS["n_hard"],
                                        n_mix=OPTS["n_mix"], mode=OPTS["mode"], generator=gen, backend=backend, **kw)
    return dict(sample=sample, graph=graph, mix=mix, diag=diag, k=F.normalize(k, dim=-1))


def snapshot(queue):
    return queue.keys().clone(), queue.classes().clone(), queue.alpha().clone()


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_semi_agcl_matches_independent_calls(backend):
    module = affseg.nn.SemiAGCL(num_classes=3, feature_dim=8, queue_size=64, lambda_graph=0.7, lambda_mix=1.3,
                                rampup_steps=10, backend=backend, **OPTS).train()
    weight = math.exp(-5.0 * (1 - 0.3) ** 2)
    sizes = [0]
    for call, seed in enumerate([0, 1, 2]):
        inputs = make_inputs(10 + call)
        before = snapshot(module.queue)
        terms = module(*inputs, step=3, generator=torch.Generator().manual_seed(seed))
        want = recompute(inputs, seed, before, backend=backend)
        S = want["sample"].cls.numel()
        assert set(terms) >= {"total", "graph", "mix", "weight", "patches"}
        assert terms["patches"] == S > 0
        assert terms["weight"] == pytest.approx(weight)
        torch.testing.assert_close(terms["graph"], want["graph"], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(terms["mix"], want["mix"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(terms["total"], weight * (0.7 * want["graph"] + 1.3 * want["mix"]),
                                   atol=1e-5, rtol=1e-5)
        if call == 0:
            assert before[0].shape[0] == 0
        else:
            # The class masking is used: without it the same queue gives a different loss.
            unmasked = recompute(inputs, seed, before, backend=backend, mask=False)
            assert not torch.allclose(unmasked["mix"], terms["mix"])
        # The queue grew by the patches, with this batch's normalised teacher keys and A_ii.
        sizes.append(sizes[-1] + S)
        assert len(module.queue) == sizes[-1]
        oracle = affseg.nn.ClassQueue(8, 3, 64)
        oracle.push(before[0], before[1], before[2])
        oracle.push(want["k"], want["sample"].cls, want["diag"])
        torch.testing.assert_close(module.queue.keys(), oracle.keys(), atol=1e-6, rtol=1e-6)
        assert torch.equal(module.queue.classes(), oracle.classes())
        torch.testing.assert_close(module.queue.alpha(), oracle.alpha(), atol=1e-6, rtol=1e-6)


def test_semi_agcl_eval_does_not_push_and_gradients():
    module = affseg.nn.SemiAGCL(num_classes=3, feature_dim=8, queue_size=64, backend="reference", **OPTS)
    module(*make_inputs(0), generator=torch.Generator().manual_seed(0))  # fill the queue a little
    module.eval()
    before = snapshot(module.queue)
    inputs = make_inputs(1)
    terms = module(*inputs, generator=torch.Generator().manual_seed(4))
    after = snapshot(module.queue)
    for a, b in zip(before, after):
        assert torch.equal(a, b)
    want = recompute(inputs, 4, before, backend="reference")
    torch.testing.assert_close(terms["total"], want["graph"] + want["mix"], atol=1e-5, rtol=1e-5)
    assert terms["weight"] == 1.0
    terms["total"].backward()
    s_logits, t_logits, s_feat, t_feat, _ = inputs
    for t in (s_logits, s_feat):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    for t in (t_logits, t_feat):
        assert t.grad is None or not t.grad.any()


def test_semi_agcl_each_term_reaches_its_student_input():
    module = affseg.nn.SemiAGCL(num_classes=3, feature_dim=8, queue_size=64, backend="reference", **OPTS)
    module(*make_inputs(0), generator=torch.Generator().manual_seed(0))
    inputs = make_inputs(1)
    terms = module(*inputs, generator=torch.Generator().manual_seed(1))
    s_logits, _, s_feat, _, _ = inputs
    g_logits, g_feat = torch.autograd.grad(terms["graph"], (s_logits, s_feat), allow_unused=True)
    assert g_logits is not None and g_logits.abs().sum() > 0  # the graph term trains the student's ŷ
    assert g_feat is None or not g_feat.any()
    m_logits, m_feat = torch.autograd.grad(terms["mix"], (s_logits, s_feat), allow_unused=True)
    assert m_feat is not None and m_feat.abs().sum() > 0  # the InfoNCE term trains the student's q
    assert m_logits is None or not m_logits.any()


def test_semi_agcl_head_teacher_is_ema():
    torch.manual_seed(0)
    module = affseg.nn.SemiAGCL(num_classes=3, feature_dim=8, head_dim=5, head_ema=0.9, queue_size=64,
                                backend="reference", **OPTS).train()
    assert module.queue.dim == 5
    module(*make_inputs(0), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # move the student head away from the teacher's copy
        for p in module.head.parameters():
            p.add_(torch.randn_like(p))
    teacher_old = [p.clone() for p in module.teacher_head.parameters()]
    student = [p.clone() for p in module.head.parameters()]
    assert any(not torch.allclose(a, b) for a, b in zip(teacher_old, student))
    inputs = make_inputs(1)
    before = snapshot(module.queue)
    terms = module(*inputs, generator=torch.Generator().manual_seed(3))
    for t_new, t_old, s in zip(module.teacher_head.parameters(), teacher_old, student):
        torch.testing.assert_close(t_new, 0.9 * t_old + 0.1 * s, atol=1e-6, rtol=1e-6)
        assert not t_new.requires_grad
    want = recompute(inputs, 3, before, backend="reference", head=module.head, teacher_head=module.teacher_head)
    torch.testing.assert_close(terms["mix"], want["mix"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(terms["total"], want["graph"] + want["mix"], atol=1e-5, rtol=1e-5)
    terms["total"].backward()
    assert all(p.grad is not None for p in module.head.parameters())
    assert all(p.grad is None for p in module.teacher_head.parameters())
    # Eval mode leaves the teacher head alone.
    module.eval()
    frozen = [p.clone() for p in module.teacher_head.parameters()]
    module(*make_inputs(2), generator=torch.Generator().manual_seed(0))
    for a, b in zip(frozen, module.teacher_head.parameters()):
        assert torch.equal(a, b)


def test_semi_agcl_cosine_metric_runs_and_matches():
    module = affseg.nn.SemiAGCL(num_classes=3, feature_dim=8, queue_size=64, backend="reference",
                                **{**OPTS, "metric": "cosine"})
    module(*make_inputs(0), generator=torch.Generator().manual_seed(0))
    inputs = make_inputs(1)
    before = snapshot(module.queue)
    terms = module(*inputs, generator=torch.Generator().manual_seed(2))
    want = recompute(inputs, 2, before, backend="reference", metric="cosine")
    torch.testing.assert_close(terms["total"], want["graph"] + want["mix"], atol=1e-5, rtol=1e-5)


def test_semi_agcl_nan_teacher_logit_gives_nan_and_no_patches_gives_zero():
    module = affseg.nn.SemiAGCL(num_classes=3, feature_dim=8, queue_size=64, backend="reference", **OPTS)
    module(*make_inputs(0), generator=torch.Generator().manual_seed(0))
    s_logits, t_logits, s_feat, t_feat, labels = make_inputs(1)
    bad = t_logits.detach().clone()
    bad[1, :, 9, 9] = float("nan")  # a labelled pixel
    terms = module.eval()(s_logits, bad, s_feat, t_feat, labels, generator=torch.Generator().manual_seed(0))
    assert torch.isnan(terms["total"])
    # Every pixel ignored: no patches, a zero loss that still back-propagates, nothing pushed.
    module.train()
    n = len(module.queue)
    ignored = torch.full_like(labels, 255)
    terms = module(s_logits, t_logits, s_feat, t_feat, ignored, generator=torch.Generator().manual_seed(0))
    assert terms["patches"] == 0 and float(terms["total"].detach()) == 0.0 and terms["total"].requires_grad
    terms["total"].backward()
    assert len(module.queue) == n


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_single_node_and_single_query_finite(backend):
    y_t = torch.tensor([[0.6, 0.3, 0.1]])
    y_s = torch.tensor([[0.2, 0.5, 0.3]], requires_grad=True)
    loss, diag = affseg.affinity_graph_loss(y_t, y_s, sigma=0.5, gamma=0.4, return_diag=True, backend=backend)
    a = math.exp(-((0.4**2 + 0.2**2 + 0.2**2) / (2 * 0.25)))
    torch.testing.assert_close(diag, torch.tensor([a]))
    torch.testing.assert_close(loss, torch.tensor(1 - a + 0.4 * a))  # ‖A‖_* = A_11 for 1×1
    loss.backward()
    assert torch.isfinite(y_s.grad).all()
    q, k, neg, alpha, qc, nc = infonce_case(B=1, Q=5)
    qg = q.clone().requires_grad_()
    got = affseg.mixed_negative_infonce(qg, k, neg, alpha, tau=0.2, n_hard=4, n_mix=3, q_classes=qc, neg_classes=nc,
                                        generator=torch.Generator().manual_seed(1), backend=backend)
    pairs = draw_mix_pairs(1, 4, 3, torch.Generator().manual_seed(1))
    torch.testing.assert_close(got, brute_infonce(q, k, neg, alpha, pairs, tau=0.2, n_hard=4, q_classes=qc,
                                                  neg_classes=nc), atol=1e-8, rtol=1e-8)
    got.backward()
    assert torch.isfinite(qg.grad).all()
