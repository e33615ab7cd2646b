"""Public API: backend dispatch (SPEC §8), argument validation (SPEC §9), module twins, `affseg info`."""
import inspect
import math
import subprocess
import sys

import pytest
import torch

import affseg
from affseg import _backend, _extension

META = torch.device("meta")


def _pdcr_inputs(B=2, N=9, C=4, W=2, K=3):
    return torch.randn(B, N, C), torch.rand(B, W, N, K).softmax(-1)


# ---------------------------------------------------------------- every op through the reference

@pytest.mark.parametrize("spatial", [(12, 10), (6, 8, 10)], ids=["2d", "3d"])
def test_every_op_runs_on_reference(spatial):
    nd = len(spatial)
    feats = torch.randn(2, 5, *[s // 2 for s in spatial], requires_grad=True)
    labels = torch.randint(0, 3, (2, *spatial))
    loss = affseg.pdcr_loss(feats, labels, num_classes=3, backend="reference")
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss) and feats.grad is not None

    centers = affseg.grid_centers([s // 2 for s in spatial], spatial)
    assert centers.shape == (feats[0, 0].numel(), nd)
    phi, valid = affseg.patch_label_ratios(labels, centers.expand(2, -1, -1), (3, 5), 3, backend="reference")
    assert phi.shape == (2, 2, centers.shape[0], 3) and valid.all()
    assert affseg.patch_affinity(phi[:, 0]).shape == (2, centers.shape[0], centers.shape[0])

    logits = torch.randn(2, 3, *spatial)
    stats = affseg.patch_entropy(logits, 4, backend="reference")
    assert stats.entropy.shape == (2, 3, *[-(-s // 4) for s in spatial])
    assert affseg.patch_entropy(logits, 4, mode="shannon", backend="reference").entropy.shape[1] == 1

    x = torch.randn(2, 5, *spatial, requires_grad=True)
    affseg.uafs_reweight(x, torch.randn(2, 2, *spatial), backend="reference").sum().backward()
    assert x.grad.shape == x.shape


def test_contrastive_and_graph_ops_run_on_reference():
    emb = torch.randn(2, 16, 8, requires_grad=True)
    affseg.soft_supcon_loss(emb, torch.randint(0, 3, (2, 16)), backend="reference").backward()
    affseg.soft_supcon_loss(emb, torch.rand(2, 16, 3).softmax(-1), backend="reference")
    y_t, y_s = torch.rand(12, 4).softmax(-1), torch.rand(12, 4, requires_grad=True)
    affseg.affinity_graph_loss(y_t, y_s.softmax(-1), backend="reference").backward()
    assert y_s.grad is not None
    q = torch.randn(4, 8, requires_grad=True)
    g = torch.Generator().manual_seed(3)
    loss = affseg.mixed_negative_infonce(q, torch.randn(4, 8), torch.randn(32, 8), torch.rand(32), n_hard=8, n_mix=5,
                                         generator=g, backend="reference")
    loss.backward()
    assert q.grad is not None


# ---------------------------------------------------------------- dispatch

# What this build has (the extension built from csrc/ by `make`): a C++ CPU kernel for every op.
# Update these facts when an op without one is added.
CPU_KERNEL_OPS = ("patch_label_ratios", "pdcr_loss_from_ratios", "soft_supcon_loss", "patch_entropy", "uafs_reweight",
                  "affinity_graph_loss", "mixed_negative_infonce")
REFERENCE_ONLY_OPS = ()


def test_auto_on_cpu_tensors_picks_the_cpu_kernel_where_built():
    assert _extension.HAS_C, _extension.C_ERROR
    cpu = torch.device("cpu")
    got = {op: _backend.resolve(op, "auto", cpu) for op in CPU_KERNEL_OPS + REFERENCE_ONLY_OPS}
    assert got == {**{op: "cpu" for op in CPU_KERNEL_OPS}, **{op: "reference" for op in REFERENCE_ONLY_OPS}}
    assert set(got) == set(_backend._C_OPS), "an op was added: state its backends here"


@pytest.mark.parametrize("op", CPU_KERNEL_OPS + REFERENCE_ONLY_OPS)
def test_explicit_cuda_on_cpu_tensors_says_it_needs_cuda_tensors(op):
    with pytest.raises(RuntimeError, match=f"backend 'cuda' cannot run {op}: backend 'cuda' needs CUDA tensors"):
        _backend.resolve(op, "cuda", torch.device("cpu"))


def test_explicit_backend_that_cannot_run_says_why(monkeypatch):
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        affseg.uafs_reweight(torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4), backend="cuda")
    monkeypatch.setitem(_backend._C_OPS, "affinity_graph_loss", None)  # as a build without its kernel
    with pytest.raises(RuntimeError, match="affseg's CPU kernel for affinity_graph_loss is not built yet"):
        affseg.affinity_graph_loss(torch.rand(4, 3), torch.rand(4, 3), backend="cpu")


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="backend must be one of"):
        affseg.uafs_reweight(torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4), backend="gpu")


def test_environment_variable_forces_a_backend(monkeypatch):
    monkeypatch.setenv("AFFSEG_BACKEND", "reference")
    assert _backend.resolve("uafs_reweight", "auto", torch.device("cpu")) == "reference"
    # an explicit argument still wins over the environment
    assert _backend.resolve("uafs_reweight", "reference", torch.device("cpu")) == "reference"
    monkeypatch.setenv("AFFSEG_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        affseg.uafs_reweight(torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4))
    monkeypatch.setenv("AFFSEG_BACKEND", "fastest")
    with pytest.raises(ValueError, match="AFFSEG_BACKEND"):
        affseg.uafs_reweight(torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4))


# ---------------------------------------------------------------- validation (before any kernel)

def test_pdcr_loss_rejects_bad_input():
    feats, labels = torch.randn(2, 4, 6, 6), torch.randint(0, 3, (2, 12, 12))
    with pytest.raises(ValueError, match="features must have 4 dimensions"):
        affseg.pdcr_loss(feats[0], labels, num_classes=3)
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        affseg.pdcr_loss(feats, labels.float(), num_classes=3)
    with pytest.raises(TypeError, match="features must be a floating-point tensor"):
        affseg.pdcr_loss(feats.long(), labels, num_classes=3)
    with pytest.raises(ValueError, match="labels must lie in \\[0, 3\\).*got a label 7"):
        affseg.pdcr_loss(feats, labels.clone().index_fill_(1, torch.tensor([0]), 7), num_classes=3)
    with pytest.raises(ValueError, match="tau must be a finite number > 0, got 0"):
        affseg.pdcr_loss(feats, labels, num_classes=3, tau=0)
    with pytest.raises(ValueError, match="tau"):
        affseg.pdcr_loss(feats, labels, num_classes=3, tau=-1.0)
    with pytest.raises(ValueError, match="batch size"):
        affseg.pdcr_loss(feats[:1], labels, num_classes=3)
    with pytest.raises(ValueError, match="num_samples must be <= the 36 locations"):
        affseg.pdcr_loss(feats, labels, num_classes=3, num_samples=37)
    with pytest.raises(ValueError, match="sampling must be one of"):
        affseg.pdcr_loss(feats, labels, num_classes=3, num_samples=4, sampling="poisson")
    with pytest.raises(TypeError, match="unexpected keyword"):
        affseg.pdcr_loss(feats, labels, num_classes=3, temperature=0.1)
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        affseg.pdcr_loss(feats, labels.clamp(max=0), num_classes=1)
    with pytest.raises(ValueError, match="on the same device"):
        affseg.pdcr_loss(feats.to(META), labels, num_classes=3)


def test_pdcr_core_rejects_bad_input():
    feats, phi = _pdcr_inputs()
    with pytest.raises(ValueError, match="phi must have 4 dimensions"):
        affseg.pdcr_loss_from_ratios(feats, phi[:, 0])
    with pytest.raises(ValueError, match="number of locations"):
        affseg.pdcr_loss_from_ratios(feats[:, :5], phi)
    with pytest.raises(ValueError, match="given together"):
        affseg.pdcr_loss_from_ratios(feats, phi, feats_b=feats)
    with pytest.raises(ValueError, match="exclude_self applies to intra-layer"):
        affseg.pdcr_loss_from_ratios(feats, phi, feats_b=feats, phi_b=phi, exclude_self=True)
    with pytest.raises(ValueError, match="valid must have shape \\(2, 9\\)"):
        affseg.pdcr_loss_from_ratios(feats, phi, valid=torch.ones(2, 8, dtype=torch.bool))
    with pytest.raises(TypeError, match="valid must be a bool tensor"):
        affseg.pdcr_loss_from_ratios(feats, phi, valid=torch.ones(2, 9))
    with pytest.raises(ValueError, match="orientation must be one of"):
        affseg.pdcr_loss_from_ratios(feats, phi, orientation="reversed")
    with pytest.raises(ValueError, match="reduction must be one of"):
        affseg.pdcr_loss_from_ratios(feats, phi, reduction="avg")
    with pytest.raises(ValueError, match="number of channels"):
        affseg.pdcr_loss_from_ratios(feats, phi, feats_b=torch.randn(2, 9, 5), phi_b=phi)


def test_other_ops_reject_bad_input():
    with pytest.raises(ValueError, match="att_logits must have M >= 2"):
        affseg.uafs_reweight(torch.randn(1, 3, 4, 4), torch.randn(1, 1, 4, 4))
    with pytest.raises(ValueError, match="att_logits must match x"):
        affseg.uafs_reweight(torch.randn(1, 3, 4, 4), torch.randn(1, 2, 4, 5))
    with pytest.raises(ValueError, match="logits must have 4 or 5 dimensions"):
        affseg.patch_entropy(torch.randn(3, 4, 4), 2)
    with pytest.raises(ValueError, match="patch_size must contain values >= 1"):
        affseg.patch_entropy(torch.randn(1, 3, 4, 4), 0)
    with pytest.raises(ValueError, match="class_mask must have shape"):
        affseg.patch_entropy(torch.randn(1, 3, 4, 4), 2, class_mask=torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="mode must be one of"):
        affseg.patch_entropy(torch.randn(1, 3, 4, 4), 2, mode="renyi")
    with pytest.raises(ValueError, match="tau must be a finite number > 0"):
        affseg.soft_supcon_loss(torch.randn(8, 4), torch.randint(0, 2, (8,)), tau=0.0)
    with pytest.raises(ValueError, match="labels must be int labels"):
        affseg.soft_supcon_loss(torch.randn(8, 4), torch.randint(0, 2, (7,)))
    with pytest.raises(ValueError, match="ignore_index applies to integer labels"):
        affseg.soft_supcon_loss(torch.randn(8, 4), torch.rand(8, 3), ignore_index=0)
    with pytest.raises(ValueError, match="labels must be >= 0 or ignore_index"):
        affseg.soft_supcon_loss(torch.randn(8, 4), torch.full((8,), -1))
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        affseg.affinity_graph_loss(torch.rand(4, 3), torch.rand(4, 3), sigma=0)
    with pytest.raises(ValueError, match="y_s must have the shape of y_t"):
        affseg.affinity_graph_loss(torch.rand(4, 3), torch.rand(5, 3))
    with pytest.raises(ValueError, match="number of negatives"):
        affseg.mixed_negative_infonce(torch.randn(2, 4), torch.randn(2, 4), torch.randn(8, 4), torch.rand(7))
    with pytest.raises(TypeError, match="centers must be an integer tensor"):
        affseg.patch_label_ratios(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 2, 2), (3,), 2)
    with pytest.raises(ValueError, match="centers must have shape \\(B, N, 2\\)"):
        affseg.patch_label_ratios(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 2, 3, dtype=torch.long), (3,), 2)


# ---------------------------------------------------------------- modules

# Each functional loss, its module twin, and the arguments passed at call time (tensors, generator).
TWINS = [
    (affseg.nn.PDCRLoss, affseg.pdcr_loss, {"features", "labels", "features_b", "valid", "valid_b", "generator"}),
    (affseg.nn.SoftSupConLoss, affseg.soft_supcon_loss, {"features", "labels"}),
    (affseg.nn.AffinityGraphLoss, affseg.affinity_graph_loss, {"y_t", "y_s"}),
    (affseg.nn.MixedNegativeInfoNCE, affseg.mixed_negative_infonce,
     {"q", "k_pos", "negatives", "alpha", "generator", "q_classes", "neg_classes"}),
]


@pytest.mark.parametrize("module,fn,call_args", TWINS, ids=[m.__name__ for m, _, _ in TWINS])
def test_module_twins_share_keyword_names(module, fn, call_args):
    fn_params = inspect.signature(fn).parameters
    assert not any(p.kind is p.VAR_KEYWORD for p in fn_params.values()), f"{fn.__name__} hides keywords in **kwargs"
    init = inspect.signature(module.__init__).parameters
    options = set(init) - {"self"}
    assert options == set(fn_params) - call_args, (options ^ (set(fn_params) - call_args))
    for name in options:  # and the same defaults
        assert init[name].default == fn_params[name].default, name


@pytest.mark.parametrize("module", [m for m, _, _ in TWINS] + [affseg.nn.SemiAGCLLoss], ids=lambda m: m.__name__)
def test_loss_modules_are_torch_losses(module):
    crit = module(num_classes=3) if module is affseg.nn.PDCRLoss else module()
    assert isinstance(crit, torch.nn.modules.loss._Loss)
    assert crit.reduction == "mean"


BAD_OPTIONS = [
    (affseg.nn.PDCRLoss, dict(num_classes=3, reduction="avg"), ValueError, "reduction must be one of"),
    (affseg.nn.PDCRLoss, dict(num_classes=3, tau=-1), ValueError, "tau must be a finite number > 0, got -1"),
    (affseg.nn.PDCRLoss, dict(num_classes=1), ValueError, "num_classes must be >= 2"),
    (affseg.nn.PDCRLoss, dict(num_classes=3, window_sizes=(5, 0)), ValueError, "window_sizes must contain values >= 1"),
    (affseg.nn.PDCRLoss, dict(num_classes=3, num_samples=0), ValueError, "num_samples must be >= 1"),
    (affseg.nn.PDCRLoss, dict(num_classes=3, sampling="poisson"), ValueError, "sampling must be one of"),
    (affseg.nn.PDCRLoss, dict(num_classes=3, orientation="reversed"), ValueError, "orientation must be one of"),
    (affseg.nn.PDCRLoss, dict(num_classes=3, divergence="kl"), ValueError, "divergence must be one of"),
    (affseg.nn.PDCRLoss, dict(num_classes=3, window_align="corner"), ValueError, "window_align must be one of"),
    (affseg.nn.PDCRLoss, dict(num_classes=3, exclude_self="yes"), TypeError, "exclude_self must be a bool"),
    (affseg.nn.PDCRLoss, dict(num_classes=3, ignore_index=0.5), TypeError, "ignore_index must be an int"),
    (affseg.nn.SoftSupConLoss, dict(tau=0.0), ValueError, "tau must be a finite number > 0"),
    (affseg.nn.SoftSupConLoss, dict(reduction="avg"), ValueError, "reduction must be one of"),
    (affseg.nn.SoftSupConLoss, dict(ignore_index="none"), TypeError, "ignore_index must be an int"),
    (affseg.nn.AffinityGraphLoss, dict(sigma=0), ValueError, "sigma must be a finite number > 0"),
    (affseg.nn.AffinityGraphLoss, dict(gamma=math.inf), ValueError, "gamma must be finite"),
    (affseg.nn.AffinityGraphLoss, dict(distance="cosine"), ValueError, "distance must be one of"),
    (affseg.nn.AffinityGraphLoss, dict(diag="minus"), ValueError, "diag must be one of"),
    (affseg.nn.AffinityGraphLoss, dict(reduction="avg"), ValueError, "reduction must be one of"),
    (affseg.nn.MixedNegativeInfoNCE, dict(tau=-0.1), ValueError, "tau must be a finite number > 0"),
    (affseg.nn.MixedNegativeInfoNCE, dict(n_hard=0), ValueError, "n_hard must be >= 1"),
    (affseg.nn.MixedNegativeInfoNCE, dict(n_mix=-1), ValueError, "n_mix must be >= 0"),
    (affseg.nn.MixedNegativeInfoNCE, dict(mode="mixed"), ValueError, "mode must be one of"),
    (affseg.nn.MixedNegativeInfoNCE, dict(reduction="avg"), ValueError, "reduction must be one of"),
    (affseg.nn.SemiAGCLLoss, dict(reduction="none"), ValueError, "reduction must be one of \\('mean', 'sum'\\)"),
    (affseg.nn.SemiAGCLLoss, dict(rampup_steps=-1), ValueError, "rampup_steps must be >= 0"),
    (affseg.nn.SemiAGCLLoss, dict(lambda_mix=math.nan), ValueError, "lambda_mix must be finite"),
    (affseg.nn.SemiAGCLLoss, dict(sigma=-1.0), ValueError, "sigma must be a finite number > 0"),
    (affseg.nn.SemiAGCLLoss, dict(n_hard=0), ValueError, "n_hard must be >= 1"),
]


@pytest.mark.parametrize("module,kwargs,error,match", BAD_OPTIONS,
                         ids=[f"{m.__name__}-{list(k)[-1]}" for m, k, _, _ in BAD_OPTIONS])
def test_loss_modules_reject_bad_options_at_construction(module, kwargs, error, match):
    with pytest.raises(error, match=match):
        module(**kwargs)


def _twin_call(fn):
    """A valid call of each functional loss, for its option checks."""
    if fn is affseg.pdcr_loss:
        return lambda **kw: fn(torch.randn(1, 4, 4, 4), torch.randint(0, 3, (1, 8, 8)), **kw)
    if fn is affseg.soft_supcon_loss:
        return lambda **kw: fn(torch.randn(6, 4), torch.randint(0, 2, (6,)), **kw)
    if fn is affseg.affinity_graph_loss:
        return lambda **kw: fn(torch.rand(4, 3), torch.rand(4, 3), **kw)
    return lambda **kw: fn(torch.randn(2, 4), torch.randn(2, 4), torch.randn(8, 4), torch.rand(8), **kw)


@pytest.mark.parametrize("module,kwargs,error,match", [b for b in BAD_OPTIONS if b[0] is not affseg.nn.SemiAGCLLoss],
                         ids=[f"{m.__name__}-{list(k)[-1]}" for m, k, _, _ in BAD_OPTIONS if m is not affseg.nn.SemiAGCLLoss])
def test_functional_losses_share_the_module_option_checks(module, kwargs, error, match):
    fn = next(f for m, f, _ in TWINS if m is module)
    with pytest.raises(error, match=match) as from_module:
        module(**kwargs)
    with pytest.raises(error, match=match) as from_function:
        _twin_call(fn)(**kwargs)
    assert str(from_function.value) == str(from_module.value)


def test_semi_agcl_terms_reduce_none_per_node_and_per_query():
    y_t, y_s = torch.rand(6, 3).softmax(-1), torch.rand(6, 3).softmax(-1)
    rows = affseg.affinity_graph_loss(y_t, y_s, reduction="none")
    assert rows.shape == (6,)
    torch.testing.assert_close(rows.mean(), affseg.affinity_graph_loss(y_t, y_s))
    torch.testing.assert_close(rows.sum(), affseg.affinity_graph_loss(y_t, y_s, reduction="sum"))
    torch.testing.assert_close(affseg.nn.AffinityGraphLoss(reduction="none")(y_t, y_s), rows)
    q, k, neg, alpha = torch.randn(4, 8), torch.randn(4, 8), torch.randn(16, 8), torch.rand(16)
    call = lambda reduction: affseg.mixed_negative_infonce(  # noqa: E731
        q, k, neg, alpha, n_hard=8, n_mix=4, generator=torch.Generator().manual_seed(1), reduction=reduction)
    per_query = call("none")
    assert per_query.shape == (4,)
    torch.testing.assert_close(per_query.mean(), call("mean"))
    torch.testing.assert_close(per_query.sum(), call("sum"))
    module = affseg.nn.MixedNegativeInfoNCE(n_hard=8, n_mix=4, reduction="none")
    torch.testing.assert_close(module(q, k, neg, alpha, generator=torch.Generator().manual_seed(1)), per_query)


def test_pdcr_module_matches_functional():
    feats, labels = torch.randn(2, 6, 8, 8), torch.randint(0, 3, (2, 16, 16))
    module = affseg.nn.PDCRLoss(num_classes=3, window_sizes=(3, 5), tau=0.3, orientation="swapped")
    expected = affseg.pdcr_loss(feats, labels, num_classes=3, window_sizes=(3, 5), tau=0.3, orientation="swapped")
    torch.testing.assert_close(module(feats, labels), expected)


def test_uafs_block_trains_its_attention():
    block = affseg.nn.UAFS(6, dims=3, hidden=4, m=3)
    x = torch.randn(2, 6, 5, 6, 7, requires_grad=True)
    y = block(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    assert block.attention[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="m must be >= 2"):
        affseg.nn.UAFS(6, m=1)


def test_uafs_block_output_is_x_times_two_minus_entropy_of_its_attention():
    block = affseg.nn.UAFS(6, dims=2, hidden=4, m=3).eval()
    with torch.no_grad():  # sharper attention logits, so U spreads over (0, 1) instead of sitting near 1
        block.attention[3].weight.mul_(8)
    x = torch.randn(2, 6, 5, 7)
    with torch.no_grad():
        p = block.attention(x).double().softmax(dim=1)
        U = -(p * p.log()).sum(dim=1, keepdim=True) / math.log(3)
        y = block(x).double()
    assert ((U > 0.2) & (U < 0.8)).double().mean() > 0.4, "the case must tell 2 - U from 1 + U, U, 1 - U"
    torch.testing.assert_close(y, x.double() * (2 - U), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(y, x.double() * (1 + U), rtol=1e-3, atol=1e-4)


def test_semi_agcl_loss_combines_terms_with_rampup():
    crit = affseg.nn.SemiAGCLLoss(lambda_u=0.5, lambda_graph=0.7, lambda_mix=1.3, rampup_steps=10, sigma=0.4,
                                  gamma=0.2, tau=0.2, n_hard=8, n_mix=4)
    y_t = torch.rand(6, 3, dtype=torch.float64).softmax(-1)
    y_s = torch.rand(6, 3, dtype=torch.float64).softmax(-1).requires_grad_(True)
    sup, pseudo = torch.tensor(1.0, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64)
    q = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    k, neg, alpha = (torch.randn(4, 8, dtype=torch.float64), torch.randn(16, 8, dtype=torch.float64),
                     torch.rand(16, dtype=torch.float64))
    # The terms, from independent calls of the functional losses with the module's options.
    graph = affseg.affinity_graph_loss(y_t, y_s, sigma=0.4, gamma=0.2)
    mix = affseg.mixed_negative_infonce(q, k, neg, alpha, tau=0.2, n_hard=8, n_mix=4,
                                        generator=torch.Generator().manual_seed(0))
    assert graph.item() != 0 and mix.item() != 0
    # Sigmoid ramp-up exp(-5 (1 - t/T)^2) by hand, on the two affinity-graph terms only (SPEC §7).
    for step, w in [(0, math.exp(-5.0)), (3, math.exp(-5.0 * 0.7**2)), (10, 1.0), (25, 1.0)]:
        terms = crit(sup, pseudo, y_t, y_s, q, k, neg, alpha, step=step, generator=torch.Generator().manual_seed(0))
        assert terms["weight"] == pytest.approx(w, rel=1e-12)
        torch.testing.assert_close(terms["graph"], graph)
        torch.testing.assert_close(terms["mix"], mix)
        expected = 1.0 + 0.5 * 2.0 + w * (0.7 * graph.item() + 1.3 * mix.item())
        assert terms["total"].item() == pytest.approx(expected, rel=1e-12)
    terms["total"].backward()
    assert y_s.grad is not None and q.grad is not None
    # Without q there is no mixed term; with rampup_steps=0 no ramp-up.
    terms = affseg.nn.SemiAGCLLoss(sigma=0.4, gamma=0.2)(sup, pseudo, y_t, y_s, step=0)
    assert terms["weight"] == 1.0 and terms["mix"].item() == 0.0
    assert terms["total"].item() == pytest.approx(1.0 + 2.0 + graph.item(), rel=1e-12)


# ---------------------------------------------------------------- info / CLI

def test_info_is_truthful():
    from affseg import info

    table = info.backend_table()
    runs = lambda row: {op for op, status in row.items() if status.split(" ")[0] == "yes"}  # noqa: E731 ("yes (limits)")
    assert set(table["reference"]) == set(CPU_KERNEL_OPS + REFERENCE_ONLY_OPS) == runs(table["reference"])
    assert runs(table["cpu"]) == set(CPU_KERNEL_OPS)
    assert {op: table["cpu"][op] for op in REFERENCE_ONLY_OPS} == {
        op: f"affseg's CPU kernel for {op} is not built yet" for op in REFERENCE_ONLY_OPS
    }
    if not torch.cuda.is_available():
        assert all(v.startswith("no CUDA device visible to torch") for v in table["cuda"].values()), table["cuda"]


def test_cli_info_runs_from_outside_the_repo(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "affseg", "info"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "affseg._C: loaded" in proc.stdout
    assert "reference" in proc.stdout


def test_public_api_traces_with_fullgraph_compile():
    """Backend resolution is a trace-time constant and value checks are eager-only, so models that
    use affseg losses compile without graph breaks."""
    feats = torch.randn(2, 8, 6, 6, requires_grad=True)
    labels = torch.randint(0, 3, (2, 12, 12))

    def loss_fn(x, y):
        return affseg.pdcr_loss(x, y, num_classes=3, window_sizes=(3, 5))

    compiled = torch.compile(loss_fn, fullgraph=True)
    torch.testing.assert_close(compiled(feats, labels), loss_fn(feats, labels))
