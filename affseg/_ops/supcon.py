"""Registrations for the soft SupCon denominator cos_lse (SPEC §4): fake kernels and autograd for the
C++ ops (cos_lse_fwd/cos_lse_bwd, CPU and CUDA) and the Triton ops with the same contract.

Forward saves only f, valid and the per-row lse; backward recomputes the logits tile by tile.
"""
from __future__ import annotations

import torch

from affseg import _backend, _extension
from affseg._ops._register import Gradient, define, differentiable


def _lse_fake(f, valid, *options):
    torch._check(f.dim() == 3, lambda: f"cos_lse: f must be (B, N, C), got {f.dim()} dims")
    torch._check(valid.shape == f.shape[:2], lambda: "cos_lse: valid must be (B, N) like f")
    return f.new_empty(f.shape[:2])


def _grad_fake(grad_lse, f, valid, lse, *options):
    torch._check(grad_lse.shape == f.shape[:2] and lse.shape == f.shape[:2],
                 lambda: "cos_lse: grad_lse and lse must be (B, N)")
    return torch.empty_like(f)


def _gradient(bwd) -> Gradient:
    # fwd(f, valid, inv_tau[, input_precision]) -> lse;  bwd(grad_lse, f, valid, lse, inv_tau[, ...]) -> grad_f.
    return Gradient("soft_supcon_loss", bwd, tensor_inputs=2, grad_inputs=(0,), saved_outputs=(0,))


if _extension.HAS_C:
    define("cos_lse_fwd", fake=_lse_fake)
    differentiable("cos_lse_fwd", _gradient(define("cos_lse_bwd", fake=_grad_fake)))


_kernels = _backend.load_triton_kernels("supcon")

if _kernels is not None:

    # input_precision is a plain option, read by the caller (affseg._backend.dot_precision): the
    # backward gets the forward's, and torch.compile and opcheck see a constant string.
    def _triton_fwd(f: torch.Tensor, valid: torch.Tensor, inv_tau: float,
                    input_precision: str = "ieee") -> torch.Tensor:
        return _kernels.cos_lse_fwd(f, valid, inv_tau, input_precision)

    def _triton_bwd(grad_lse: torch.Tensor, f: torch.Tensor, valid: torch.Tensor, lse: torch.Tensor,
                    inv_tau: float, input_precision: str = "ieee") -> torch.Tensor:
        return _kernels.cos_lse_bwd(grad_lse, f, valid, lse, inv_tau, input_precision)

    define("triton_cos_lse_fwd", impl=_triton_fwd, fake=_lse_fake)
    differentiable("triton_cos_lse_fwd", _gradient(define("triton_cos_lse_bwd", impl=_triton_bwd, fake=_grad_fake)))
    _backend.register_triton("soft_supcon_loss", _kernels)


def cos_lse(f, valid, *, inv_tau, backend, input_precision="ieee"):
    """lse (B, N) of SPEC §4's denominator on a concrete backend; differentiable w.r.t. the unit rows f.

    ``input_precision`` is the dot precision (kernels/_launch.py INPUT_PRECISIONS, picked by
    affseg._backend.dot_precision): Triton and CUDA C++ run "tf32"/"bf16" on tensor cores (CUDA C++ on
    sm_80+ and float32; IEEE otherwise), the CPU kernels check it and compute IEEE.
    """
    if backend == "triton":
        return torch.ops.affseg.triton_cos_lse_fwd(f, valid, float(inv_tau), input_precision)
    return torch.ops.affseg.cos_lse_fwd(f, valid, float(inv_tau), input_precision)
