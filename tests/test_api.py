"""Public API: backend dispatch (SPEC §8), argument validation (SPEC §9), module twins, `affseg info`."""
import inspect
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

def test_auto_picks_cpu_kernel_when_built_else_reference():
    device = torch.device("cpu")
    for op, c_op in _backend._C_OPS.items():
        expected = "cpu" if c_op is not None and _extension.has_kernel(c_op, "CPU") else "reference"
        assert _backend.resolve(op, "auto", device) == expected


def test_explicit_backend_that_cannot_run_says_why():
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        affseg.uafs_reweight(torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4), backend="cuda")
    with pytest.raises(RuntimeError, match="not built yet"):
        affseg.affinity_graph_loss(torch.rand(4, 3), torch.rand(4, 3), backend="cpu")
    with pytest.raises(RuntimeError, match="not built yet"):
        affseg.mixed_negative_infonce(torch.randn(2, 4), torch.randn(2, 4), torch.randn(8, 4), torch.rand(8), backend="triton")


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

def test_module_twins_share_keyword_names():
    pairs = [(affseg.nn.PDCRLoss, affseg.pdcr_loss), (affseg.nn.SoftSupConLoss, affseg.soft_supcon_loss),
             (affseg.nn.AffinityGraphLoss, affseg.affinity_graph_loss),
             (affseg.nn.MixedNegativeInfoNCE, affseg.mixed_negative_infonce)]
    core = set(inspect.signature(affseg.pdcr_loss_from_ratios).parameters)
    for module, fn in pairs:
        options = set(inspect.signature(module.__init__).parameters) - {"self"}
        accepted = set(inspect.signature(fn).parameters) | (core if fn is affseg.pdcr_loss else set())
        assert options <= accepted, (module.__name__, options - accepted)


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


def test_semi_agcl_loss_combines_terms_with_rampup():
    crit = affseg.nn.SemiAGCLLoss(lambda_u=0.5, rampup_steps=10, n_hard=8, n_mix=4)
    y_t, y_s = torch.rand(6, 3).softmax(-1), torch.rand(6, 3).softmax(-1)
    sup, pseudo = torch.tensor(1.0), torch.tensor(2.0)
    q, k, neg, alpha = torch.randn(4, 8), torch.randn(4, 8), torch.randn(16, 8), torch.rand(16)
    terms = crit(sup, pseudo, y_t, y_s, q, k, neg, alpha, step=0, generator=torch.Generator().manual_seed(0))
    w = terms["weight"]
    assert w == pytest.approx(torch.exp(torch.tensor(-5.0)).item())
    expected = sup + w * (0.5 * pseudo + terms["graph"] + terms["mix"])
    torch.testing.assert_close(terms["total"], expected)
    assert crit(sup, pseudo, y_t, y_s, step=10)["weight"] == 1.0


# ---------------------------------------------------------------- info / CLI

def test_info_is_truthful():
    from affseg import info

    table = info.backend_table()
    assert all(v == "yes" for v in table["reference"].values())
    for op, status in table["cpu"].items():
        c_op = _backend._C_OPS[op]
        built = c_op is not None and _extension.has_kernel(c_op, "CPU")
        assert (status == "yes") == built, (op, status)
    if not torch.cuda.is_available():
        assert all(v != "yes" for v in table["cuda"].values())


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
