"""Registrations for the soft SupCon denominator cos_lse (SPEC §4): fake kernels and autograd for the
C++ ops (cos_lse_fwd/cos_lse_bwd), and the Triton ops with the same contract.

Forward saves only f, valid and the per-row lse; backward recomputes the logits tile by tile.
The backward ops are not themselves differentiable (no double backward).
"""
from __future__ import annotations

import torch

from affseg import _backend, _extension


def _lse_fake(f, valid, inv_tau):
    torch._check(f.dim() == 3, lambda: f"f must be (B, N, C), got {f.dim()} dims")
    torch._check(valid.shape == f.shape[:2], lambda: "valid must be (B, N) like f")
    return f.new_empty(f.shape[:2])


def _grad_fake(grad_lse, f, valid, lse, inv_tau):
    torch._check(grad_lse.shape == f.shape[:2] and lse.shape == f.shape[:2], lambda: "grad_lse and lse must be (B, N)")
    return torch.empty_like(f)


def _setup_context(ctx, inputs, output):
    f, valid, inv_tau = inputs
    ctx.save_for_backward(f, valid, output)
    ctx.inv_tau = inv_tau


def _make_backward(bwd_op):
    def backward(ctx, grad_lse):
        f, valid, lse = ctx.saved_tensors
        return bwd_op(grad_lse.contiguous(), f, valid, lse, ctx.inv_tau), None, None

    return backward


if _extension.HAS_C:
    torch.library.register_fake("affseg::cos_lse_fwd")(_lse_fake)
    torch.library.register_fake("affseg::cos_lse_bwd")(_grad_fake)
    torch.library.register_autograd(
        "affseg::cos_lse_fwd", _make_backward(torch.ops.affseg.cos_lse_bwd), setup_context=_setup_context
    )


_kernels = _backend.load_triton_kernels("supcon")

if _kernels is not None:

    @torch.library.custom_op("affseg::triton_cos_lse_fwd", mutates_args=())
    def triton_cos_lse_fwd(f: torch.Tensor, valid: torch.Tensor, inv_tau: float) -> torch.Tensor:
        return _kernels.cos_lse_fwd(f, valid, inv_tau)

    @torch.library.custom_op("affseg::triton_cos_lse_bwd", mutates_args=())
    def triton_cos_lse_bwd(
        grad_lse: torch.Tensor, f: torch.Tensor, valid: torch.Tensor, lse: torch.Tensor, inv_tau: float
    ) -> torch.Tensor:
        return _kernels.cos_lse_bwd(grad_lse, f, valid, lse, inv_tau)

    triton_cos_lse_fwd.register_fake(_lse_fake)
    triton_cos_lse_bwd.register_fake(_grad_fake)
    triton_cos_lse_fwd.register_autograd(_make_backward(triton_cos_lse_bwd), setup_context=_setup_context)
    _backend.register_triton("soft_supcon_loss")


def cos_lse(f, valid, *, inv_tau, backend):
    """lse (B, N) of SPEC §4's denominator on a concrete backend; differentiable w.r.t. the unit rows f."""
    if backend == "triton":
        return torch.ops.affseg.triton_cos_lse_fwd(f, valid, float(inv_tau))
    return torch.ops.affseg.cos_lse_fwd(f, valid, float(inv_tau))
