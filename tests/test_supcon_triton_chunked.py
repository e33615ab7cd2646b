"""SupCon Triton kernels (kernels/supcon.py) at a C that needs the channel chunk loops, under the
interpreter: C = 600 is above the old whole-row limit of shared memory and runs both the BLOCK_C
loop of the logits and the BLOCK_D split of the backward. Oracle: float64 torch on the same inputs.
"""
import pytest
import torch

import affseg
from affseg import reference

kernels = pytest.importorskip("affseg.kernels.supcon")

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-6), torch.float64: dict(rtol=1e-10, atol=1e-12)}


def _oracle(f, valid, inv_tau, grad):
    """lse_i = LSE_{k≠i, valid_k} inv_tau·f_i·f_k and d(Σ grad·lse)/df, in float64 by autograd."""
    x = f.detach().double().requires_grad_()
    s = inv_tau * x @ x.transpose(-1, -2)
    n = f.shape[1]
    keep = valid[:, None, :] & ~torch.eye(n, dtype=torch.bool)[None]
    lse = torch.logsumexp(s.masked_fill(~keep, float("-inf")), dim=-1)
    (g,) = torch.autograd.grad((lse * grad.double()).sum(), x)
    return lse, g


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_cos_lse_chunked_c600(dtype):
    B, N, C = 2, 40, 600
    cfg = kernels._launch_config(N, C, dtype, gpu=False)
    # the point of this test: several channel chunks in both loops
    assert cfg["BLOCK_C"] < C and cfg["BLOCK_D"] < C and C % cfg["BLOCK_D"] != 0
    f = torch.nn.functional.normalize(torch.randn(B, N, C, dtype=dtype), dim=-1)
    valid = torch.rand(B, N) > 0.2
    valid[:, :2] = True
    grad = torch.rand(B, N, dtype=dtype) + 0.5
    grad[:, 3] = 0.0  # a row without gradient contributes nothing, in either role
    inv_tau = 1 / 0.07
    want_lse, want_grad = _oracle(f, valid, inv_tau, grad)
    lse = kernels.cos_lse_fwd(f, valid, inv_tau)
    got_grad = kernels.cos_lse_bwd(grad, f, valid, lse, inv_tau)
    assert lse.dtype == dtype and got_grad.dtype == dtype
    torch.testing.assert_close(lse.double(), want_lse, **TOL[dtype])
    torch.testing.assert_close(got_grad.double(), want_grad, **TOL[dtype])


def test_triton_cos_lse_float64_scalar_keeps_its_bits():
    """1/τ travels as a float64 tensor: a float32 1/τ would be off by ~1e-8 relative, which shows in
    lse at 1e-12 (the GPU side, Python floats typed fp32, is checked by test_triton_sm90.py)."""
    f = torch.nn.functional.normalize(torch.randn(1, 20, 24, dtype=torch.float64), dim=-1)
    valid = torch.ones(1, 20, dtype=torch.bool)
    inv_tau = 1 / 0.0703125001
    want, _ = _oracle(f, valid, inv_tau, torch.ones(1, 20))
    torch.testing.assert_close(kernels.cos_lse_fwd(f, valid, inv_tau), want, rtol=1e-12, atol=1e-12)


def test_triton_soft_supcon_c600_float64_matches_reference():
    features = torch.randn(2, 36, 600, dtype=torch.float64)
    labels = torch.randint(0, 4, (2, 36))
    labels[:, ::7] = -1
    x = features.clone().requires_grad_()
    out = affseg.soft_supcon_loss(x, labels, tau=0.1, ignore_index=-1, backend="triton")
    (g,) = torch.autograd.grad(out, x)
    x_ref = features.clone().requires_grad_()
    ref = reference.soft_supcon_loss(x_ref, labels, tau=0.1, ignore_index=-1)
    (g_ref,) = torch.autograd.grad(ref, x_ref)
    torch.testing.assert_close(out, ref, **TOL[torch.float64])
    torch.testing.assert_close(g, g_ref, **TOL[torch.float64])


def test_triton_cos_lse_refuses_out_of_limit_channels():
    f = torch.zeros(1, 4, kernels.LIMITS["channels"] + 1)
    with pytest.raises(ValueError, match="C <= 1024"):
        kernels.cos_lse_fwd(f, torch.ones(1, 4, dtype=torch.bool), 10.0)


@pytest.mark.parametrize("N, C, precision, tiles", [
    (100, 120, "ieee", (64, 32, 32, 64)), (70, 600, "tf32", (64, 32, 64, 128)),
    (30, 40, "ieee", (32, 16, 16, 32)), (30, 100, "bf16", (32, 32, 32, 32))])
def test_triton_cos_lse_gpu_tiles_match_the_oracle(monkeypatch, N, C, precision, tiles):
    """The GPU's own tile choice, run in the interpreter: the backward's column tiles are half as wide as
    its row tiles (64 x 32, 32 x 16), or its channel chunks narrower (BLOCK_C, BLOCK_D = 32 at N ≤ 32
    tf32/bf16), and N is no multiple of any. The interpreter computes every precision in IEEE fp32:
    what is tested is the tiling (the arithmetic of tf32/bf16 is test_triton_precision.py's)."""
    real = kernels._launch_config
    seen = []

    def gpu_config(N, C, dtype, input_precision="ieee", gpu=True, backward=False):
        cfg = real(N, C, dtype, precision, True, backward)
        seen.append((backward, cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_C"], cfg["BLOCK_D"]))
        return cfg

    monkeypatch.setattr(kernels, "_launch_config", gpu_config)
    f = torch.nn.functional.normalize(torch.randn(2, N, C), dim=-1)
    valid = torch.rand(2, N) > 0.2
    grad = torch.rand(2, N) + 0.5
    grad[:, 1] = 0.0
    want_lse, want_grad = _oracle(f, valid, 1 / 0.1, grad)
    lse = kernels.cos_lse_fwd(f, valid, 1 / 0.1)
    got_grad = kernels.cos_lse_bwd(grad, f, valid, lse, 1 / 0.1)
    assert [s[1:] for s in seen if s[0]] == [tiles]
    torch.testing.assert_close(lse.double(), want_lse, **TOL[torch.float32])
    torch.testing.assert_close(got_grad.double(), want_grad, **TOL[torch.float32])
