"""Registrations for uafs_reweight (SPEC §6): fake kernels and autograd for the C++ ops (CPU and
CUDA) and the Triton ops with the same contract.

Backward saves only x and att (the inputs) and recomputes U from att, so no softmax or entropy
map is kept alive between forward and backward.
"""
from __future__ import annotations

import torch

from affseg import _backend, _extension
from affseg._ops._register import Gradient, define, differentiable


def _check_pair(x: torch.Tensor, att: torch.Tensor):
    torch._check(x.dim() in (3, 4, 5), lambda: f"uafs: x must be (B, C, *S) with 1 to 3 spatial dims, got {x.dim()} dims")
    torch._check(att.dim() == x.dim(), lambda: "uafs: att must have the rank of x")
    torch._check(att.shape[1] >= 2, lambda: "uafs: att needs M >= 2 channels")


def _fwd_fake(x, att):
    _check_pair(x, att)
    return torch.empty_like(x)


def _bwd_fake(grad_out, x, att):
    _check_pair(x, att)
    return torch.empty_like(x), torch.empty_like(att)


def _gradient(bwd) -> Gradient:
    # fwd(x, att) -> y;  bwd(grad_y, x, att) -> (grad_x, grad_att).
    return Gradient("uafs_reweight", bwd, tensor_inputs=2, grad_inputs=(0, 1))


if _extension.HAS_C:
    define("uafs_fwd", fake=_fwd_fake)
    differentiable("uafs_fwd", _gradient(define("uafs_bwd", fake=_bwd_fake)))


_kernels = _backend.load_triton_kernels("uafs")

if _kernels is not None:

    def _triton_fwd(x: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        return _kernels.uafs_fwd(x, att)

    def _triton_bwd(grad_out: torch.Tensor, x: torch.Tensor, att: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _kernels.uafs_bwd(grad_out, x, att)

    define("triton_uafs_fwd", impl=_triton_fwd, fake=_fwd_fake)
    differentiable("triton_uafs_fwd", _gradient(define("triton_uafs_bwd", impl=_triton_bwd, fake=_bwd_fake)))
    _backend.register_triton("uafs_reweight", _kernels)


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
