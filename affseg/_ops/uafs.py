"""Registrations for uafs_reweight (SPEC §6): fake kernels and autograd for the C++ ops, and the
Triton ops.

Backward saves only x and att (the inputs) and recomputes U from att, so no softmax or entropy
map is kept alive between forward and backward.
"""
from __future__ import annotations

import torch

from affseg import _backend, _extension


def _check_pair(x: torch.Tensor, att: torch.Tensor):
    torch._check(x.dim() in (3, 4, 5), lambda: f"x must be (B, C, *S) with 1 to 3 spatial dims, got {x.dim()} dims")
    torch._check(att.dim() == x.dim(), lambda: "att must have the rank of x")
    torch._check(att.shape[1] >= 2, lambda: "att needs M >= 2 channels")


def _setup_context(ctx, inputs, output):
    x, att = inputs
    ctx.save_for_backward(x, att)


if _extension.HAS_C:

    @torch.library.register_fake("affseg::uafs_fwd")
    def _uafs_fwd_fake(x, att):
        _check_pair(x, att)
        return torch.empty_like(x)

    @torch.library.register_fake("affseg::uafs_bwd")
    def _uafs_bwd_fake(grad_out, x, att):
        _check_pair(x, att)
        return torch.empty_like(x), torch.empty_like(att)

    def _uafs_backward(ctx, grad):
        x, att = ctx.saved_tensors
        return torch.ops.affseg.uafs_bwd(grad.contiguous(), x, att)

    torch.library.register_autograd("affseg::uafs_fwd", _uafs_backward, setup_context=_setup_context)


_kernels = _backend.load_triton_kernels("uafs")

if _kernels is not None:

    @torch.library.custom_op("affseg::triton_uafs_fwd", mutates_args=())
    def triton_uafs_fwd(x: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        return _kernels.uafs_fwd(x, att)

    @triton_uafs_fwd.register_fake
    def _triton_uafs_fwd_fake(x, att):
        _check_pair(x, att)
        return torch.empty_like(x)

    @torch.library.custom_op("affseg::triton_uafs_bwd", mutates_args=())
    def triton_uafs_bwd(
        grad_out: torch.Tensor, x: torch.Tensor, att: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return _kernels.uafs_bwd(grad_out, x, att)

    @triton_uafs_bwd.register_fake
    def _triton_uafs_bwd_fake(grad_out, x, att):
        _check_pair(x, att)
        return torch.empty_like(x), torch.empty_like(att)

    def _triton_uafs_backward(ctx, grad):
        x, att = ctx.saved_tensors
        return torch.ops.affseg.triton_uafs_bwd(grad.contiguous(), x, att)

    triton_uafs_fwd.register_autograd(_triton_uafs_backward, setup_context=_setup_context)
    _backend.register_triton("uafs_reweight")


def uafs_reweight(x, att, backend):
    """x·(2 − U) on a concrete backend ("cpu", "cuda" or "triton"), differentiable in x and att.

    Inputs may arrive non-contiguous; the kernels index flat (B, C, S), so they are made contiguous
    here. The Triton kernels read float16 directly; the C++ kernels take float32/float64, so half
    inputs are upcast (full-size float32 copies, for half inputs only) and y is cast back.
    """
    x, att = x.contiguous(), att.contiguous()
    if backend == "triton":
        return torch.ops.affseg.triton_uafs_fwd(x, att)
    if x.dtype in (torch.float32, torch.float64):
        return torch.ops.affseg.uafs_fwd(x, att)
    return torch.ops.affseg.uafs_fwd(x.float(), att.float()).to(x.dtype)
