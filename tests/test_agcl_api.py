"""The fused Semi-AGCL losses through the public API (affinity_graph_loss, mixed_negative_infonce) on
every backend against affseg.reference: values and gradients, float32/float64, class masking,
degenerate inputs, NaN, gradcheck, opcheck and torch.compile."""
import pytest
import torch

import affseg
from conftest import INTERPRETING

scl = affseg.reference.unit_row_scales
FUSED = ["cpu"] + (["triton"] if INTERPRETING else [])
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}


def _graph_inputs(n, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    y_t = torch.randn(n, d, dtype=dtype, generator=g).softmax(-1)
    logits = torch.randn(n, d, dtype=dtype, generator=g, requires_grad=True)
    return y_t, logits


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("distance", ["sqeuclidean", "l1"])
@pytest.mark.parametrize("diag", ["one_minus", "literal"])
def test_affinity_graph_loss_matches_the_reference(backend, dtype, distance, diag):
    y_t, logits = _graph_inputs(37, 5, dtype)
    kwargs = dict(sigma=0.4, gamma=-0.3 if diag == "literal" else 0.2, distance=distance, diag=diag, reduction="none")
    got = affseg.affinity_graph_loss(y_t, logits.softmax(-1), backend=backend, **kwargs)
    want = affseg.affinity_graph_loss(y_t, logits.softmax(-1), backend="reference", **kwargs)
    torch.testing.assert_close(got, want, **TOL[dtype])
    (g,), (w,) = torch.autograd.grad(got.sum(), logits), torch.autograd.grad(want.sum(), logits)
    torch.testing.assert_close(g, w, **TOL[dtype])


@pytest.mark.parametrize("backend", FUSED)
def test_affinity_graph_loss_return_diag_and_degenerate_graphs(backend):
    y = torch.full((6, 3), 1 / 3, dtype=torch.float64, requires_grad=True)  # identical rows: rank-1 A
    loss, diag = affseg.affinity_graph_loss(y.detach(), y, return_diag=True, backend=backend)
    (grad,) = torch.autograd.grad(loss, y)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    torch.testing.assert_close(diag, torch.ones(6, dtype=torch.float64))
    one = torch.rand(1, 4, dtype=torch.float64, requires_grad=True)
    assert torch.isfinite(affseg.affinity_graph_loss(one.detach(), one, backend=backend))


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_affinity_graph_loss_non_finite_input_gives_nan(backend, bad):
    y_t, logits = _graph_inputs(8, 3, torch.float64)
    y_s = logits.softmax(-1).detach().clone()
    y_s[2, 1] = bad
    assert torch.isnan(affseg.affinity_graph_loss(y_t, y_s.requires_grad_(), backend=backend))


def test_affinity_graph_loss_gradcheck():
    y_t, logits = _graph_inputs(7, 3, torch.float64, seed=3)
    assert torch.autograd.gradcheck(lambda x: affseg.affinity_graph_loss(y_t, x.softmax(-1), backend="cpu"), (logits,))


def _infonce_inputs(B, Q, C, dtype, seed=0, classes=3):
    g = torch.Generator().manual_seed(seed)
    return dict(
        q=torch.randn(B, C, dtype=dtype, generator=g, requires_grad=True),
        k_pos=torch.randn(B, C, dtype=dtype, generator=g),
        negatives=torch.randn(Q, C, dtype=dtype, generator=g),
        alpha=torch.rand(Q, dtype=dtype, generator=g),
        q_classes=torch.randint(0, classes, (B,), generator=g),
        neg_classes=torch.randint(0, classes, (Q,), generator=g),
    )


def _infonce(inputs, backend, *, classes=True, **kwargs):
    args = dict(inputs)
    if not classes:
        args.pop("q_classes"), args.pop("neg_classes")
    q, k, neg, alpha = args.pop("q"), args.pop("k_pos"), args.pop("negatives"), args.pop("alpha")
    return affseg.mixed_negative_infonce(q, k, neg, alpha, backend=backend, reduction="none",
                                         generator=torch.Generator().manual_seed(9), **args, **kwargs)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["queue_plus_mixed", "mixed_only"])
@pytest.mark.parametrize("classes", [True, False], ids=["classes", "no-classes"])
def test_mixed_negative_infonce_matches_the_reference(backend, dtype, mode, classes):
    inputs = _infonce_inputs(5, 300, 24, dtype)
    got = _infonce(inputs, backend, classes=classes, mode=mode, n_hard=40, n_mix=33, tau=0.2)
    want = _infonce(inputs, "reference", classes=classes, mode=mode, n_hard=40, n_mix=33, tau=0.2)
    torch.testing.assert_close(got, want, **TOL[dtype])
    (g,), (w,) = torch.autograd.grad(got.sum(), inputs["q"]), torch.autograd.grad(want.sum(), inputs["q"])
    torch.testing.assert_close(g, w, **TOL[dtype])


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("case", ["empty-queue", "one-class", "n_hard>Q", "single"])
def test_mixed_negative_infonce_degenerate_inputs_stay_finite(backend, case):
    Q = {"empty-queue": 0, "one-class": 50, "n_hard>Q": 7, "single": 1}[case]
    inputs = _infonce_inputs(4, Q, 8, torch.float64)
    if case == "one-class":  # every entry of every query's class: no negative at all
        inputs["neg_classes"] = torch.zeros(Q, dtype=torch.long)
        inputs["q_classes"] = torch.zeros(4, dtype=torch.long)
    got = _infonce(inputs, backend, n_hard=16, n_mix=8)
    want = _infonce(inputs, "reference", n_hard=16, n_mix=8)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, **TOL[torch.float64])
    (grad,) = torch.autograd.grad(got.sum(), inputs["q"])
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("where", ["q", "negatives", "alpha"])
def test_mixed_negative_infonce_nan_input_gives_nan(backend, where):
    inputs = _infonce_inputs(3, 40, 8, torch.float64)
    inputs[where] = inputs[where].detach().clone()
    inputs[where].view(-1)[5] = float("nan")
    inputs["q"].requires_grad_()
    assert torch.isnan(_infonce(inputs, backend, n_hard=8, n_mix=4)).all()


def test_mixed_negative_infonce_gradcheck():
    inputs = _infonce_inputs(3, 30, 6, torch.float64, seed=4)
    q = inputs.pop("q")

    def fn(x):
        return affseg.mixed_negative_infonce(x, inputs["k_pos"], inputs["negatives"], inputs["alpha"], n_hard=8,
                                             n_mix=6, q_classes=inputs["q_classes"], neg_classes=inputs["neg_classes"],
                                             generator=torch.Generator().manual_seed(1), backend="cpu")
    assert torch.autograd.gradcheck(fn, (q,))


@pytest.mark.parametrize("backend", FUSED)
def test_opcheck_on_the_registered_ops(backend):
    prefix = "triton_" if backend == "triton" else ""
    ops = torch.ops.affseg
    g = torch.Generator().manual_seed(5)
    t, s = torch.rand(9, 3, dtype=torch.float64, generator=g), torch.rand(7, 3, dtype=torch.float64, generator=g)
    torch.library.opcheck(getattr(ops, f"{prefix}affinity_matrix").default, (t, s.requires_grad_(), 2.0, False))
    q = torch.nn.functional.normalize(torch.randn(4, 8, dtype=torch.float64, generator=g), dim=-1).requires_grad_()
    neg = torch.nn.functional.normalize(torch.randn(20, 8, dtype=torch.float64, generator=g), dim=-1)
    q_cls, neg_cls = torch.randint(0, 2, (4,), generator=g), torch.randint(0, 2, (20,), generator=g)
    torch.library.opcheck(getattr(ops, f"{prefix}hard_negatives").default, (q, neg, scl(neg), q_cls, neg_cls, 5.0, 6, True))
    _, idx, count = getattr(ops, f"{prefix}hard_negatives")(q.detach(), neg, scl(neg), q_cls, neg_cls, 5.0, 6, True)
    pairs = torch.randint(0, 6, (4, 5, 2), generator=g)
    alpha = torch.rand(20, dtype=torch.float64, generator=g)
    torch.library.opcheck(getattr(ops, f"{prefix}mixed_logits").default, (q, neg, scl(neg), alpha, idx, count, pairs, 5.0))


def test_torch_compile_fullgraph():
    y_t, logits = _graph_inputs(12, 3, torch.float32)
    inputs = _infonce_inputs(4, 64, 8, torch.float32)

    def loss_fn(x, q):
        graph = affseg.affinity_graph_loss(y_t, x.softmax(-1), backend="cpu")
        # n_mix=0: the pair draws use a torch.Generator, which dynamo cannot trace; the three fused
        # ops are still all in the graph (mixed_logits on zero pairs).
        mix = affseg.mixed_negative_infonce(q, inputs["k_pos"], inputs["negatives"], inputs["alpha"], n_hard=8,
                                            n_mix=0, q_classes=inputs["q_classes"],
                                            neg_classes=inputs["neg_classes"], backend="cpu")
        return graph + mix

    got = torch.compile(loss_fn, fullgraph=True)(logits, inputs["q"])
    want = loss_fn(logits, inputs["q"])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
