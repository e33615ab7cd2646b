"""Fake kernels and autograd for the fused PDCR ops (SPEC §3) on every backend, and the switch.

`pdcr_rows` returns the per-row loss (B, N) of the contrastive term on unit rows; it is
differentiable w.r.t. `fa` and `fb`. Intra-layer callers pass the same tensor as `fa` and `fb`:
every backend then runs its intra ops (`affseg::pdcr_intra_fwd`/`pdcr_intra_bwd`, Triton
`affseg::triton_pdcr_intra_fwd`/`_bwd`), whose one gradient is the derivative of the loss in both
roles. The C++ ops (`affseg::pdcr_fwd`/`pdcr_bwd`, CPU and CUDA) and the
Triton ops (`affseg::triton_pdcr_fwd`/`triton_pdcr_bwd`) share one contract, so they share the
fake kernels and the autograd declaration.
"""
from __future__ import annotations

import torch
from torch import Tensor

from affseg import _backend, _extension
from affseg._ops._register import Gradient, define, differentiable


def _fwd_fake(fa, pa, fb, pb, va, vb, *options):
    torch._check(fa.dim() == 3 and fb.dim() == 3 and pa.dim() == 4 and pb.dim() == 4,
                 lambda: "pdcr: fa, fb must be (B, N, C) and phia, phib (B, W, N, K)")
    B, N, C = fa.shape
    torch._check(fb.shape[0] == B and fb.shape[2] == C, lambda: "pdcr: fa and fb must share B and C")
    torch._check(pa.shape[0] == B and pa.shape[2] == N, lambda: "pdcr: phia must be (B, W, N, K)")
    return fa.new_empty((B, N)), fa.new_empty((B, N, pa.shape[1]))


def _bwd_fake(grad_row, fa, pa, fb, pb, va, vb, row_lse, *options):
    torch._check(grad_row.shape == fa.shape[:2], lambda: "pdcr: grad_row must be (B, N)")
    return torch.empty_like(fa), torch.empty_like(fb)


def _intra_fwd_fake(f, phi, valid, *options):
    return _fwd_fake(f, phi, f, phi, valid, valid, *options)


def _intra_bwd_fake(grad_row, f, phi, valid, row_lse, *options):
    torch._check(grad_row.shape == f.shape[:2], lambda: "pdcr: grad_row must be (B, N)")
    return torch.empty_like(f)


def _gradient(bwd) -> Gradient:
    # fwd(fa, phia, fb, phib, valid_a, valid_b, *options) -> (row_loss, row_lse);
    # bwd(grad_row, fa, phia, fb, phib, valid_a, valid_b, row_lse, *options) -> (grad_fa, grad_fb).
    return Gradient("pdcr_loss_from_ratios", bwd, tensor_inputs=6, grad_inputs=(0, 2), saved_outputs=(1,))


def _intra_gradient(bwd) -> Gradient:
    # fwd(f, phi, valid, *options) -> (row_loss, row_lse);
    # bwd(grad_row, f, phi, valid, row_lse, *options) -> grad_f (both roles of f).
    return Gradient("pdcr_loss_from_ratios", bwd, tensor_inputs=3, grad_inputs=(0,), saved_outputs=(1,))


if _extension.HAS_C:
    define("pdcr_fwd", fake=_fwd_fake)
    differentiable("pdcr_fwd", _gradient(define("pdcr_bwd", fake=_bwd_fake)))
    define("pdcr_intra_fwd", fake=_intra_fwd_fake)
    differentiable("pdcr_intra_fwd", _intra_gradient(define("pdcr_intra_bwd", fake=_intra_bwd_fake)))


_kernels = _backend.load_triton_kernels("pdcr")

if _kernels is not None:

    def _triton_fwd(
        fa: Tensor, pa: Tensor, fb: Tensor, pb: Tensor, va: Tensor, vb: Tensor,
        inv_tau: float, swapped: bool, fg_l1: bool, exclude_self: bool, input_precision: str,
    ) -> tuple[Tensor, Tensor]:
        return _kernels.pdcr_fwd(fa, pa, fb, pb, va, vb, inv_tau=inv_tau, swapped=swapped, fg_l1=fg_l1,
                                 exclude_self=exclude_self, input_precision=input_precision)

    def _triton_bwd(
        grad_row: Tensor, fa: Tensor, pa: Tensor, fb: Tensor, pb: Tensor, va: Tensor, vb: Tensor,
        row_lse: Tensor, inv_tau: float, swapped: bool, fg_l1: bool, exclude_self: bool, input_precision: str,
    ) -> tuple[Tensor, Tensor]:
        return _kernels.pdcr_bwd(grad_row, fa, pa, fb, pb, va, vb, row_lse, inv_tau=inv_tau, swapped=swapped,
                                 fg_l1=fg_l1, exclude_self=exclude_self, input_precision=input_precision)

    def _triton_intra_fwd(
        f: Tensor, phi: Tensor, valid: Tensor,
        inv_tau: float, swapped: bool, fg_l1: bool, exclude_self: bool, input_precision: str,
    ) -> tuple[Tensor, Tensor]:
        return _kernels.pdcr_intra_fwd(f, phi, valid, inv_tau=inv_tau, swapped=swapped, fg_l1=fg_l1,
                                       exclude_self=exclude_self, input_precision=input_precision)

    def _triton_intra_bwd(
        grad_row: Tensor, f: Tensor, phi: Tensor, valid: Tensor, row_lse: Tensor,
        inv_tau: float, swapped: bool, fg_l1: bool, exclude_self: bool, input_precision: str,
    ) -> Tensor:
        return _kernels.pdcr_intra_bwd(grad_row, f, phi, valid, row_lse, inv_tau=inv_tau, swapped=swapped,
                                       fg_l1=fg_l1, exclude_self=exclude_self, input_precision=input_precision)

    define("triton_pdcr_fwd", impl=_triton_fwd, fake=_fwd_fake)
    differentiable("triton_pdcr_fwd", _gradient(define("triton_pdcr_bwd", impl=_triton_bwd, fake=_bwd_fake)))
    define("triton_pdcr_intra_fwd", impl=_triton_intra_fwd, fake=_intra_fwd_fake)
    differentiable("triton_pdcr_intra_fwd", _intra_gradient(
        define("triton_pdcr_intra_bwd", impl=_triton_intra_bwd, fake=_intra_bwd_fake)))
    _backend.register_triton("pdcr_loss_from_ratios", _kernels)


def pdcr_rows(fa, pa, fb, pb, va, vb, *, inv_tau, swapped, fg_l1, exclude_self, backend, input_precision="ieee"):
    """Per-row PDCR loss (B, N) of unit rows `fa` against unit columns `fb` (SPEC §3).

    All floating inputs contiguous and of one dtype (float32 or float64); `va` (B, N) and `vb`
    (B, M) bool. Intra-layer pairs (`fb is fa`, `pb is pa`, `vb is va`) take the intra ops, whose
    backward sweeps the symmetric similarity matrix once (on every backend). Rows
    that are invalid or have no valid column give 0. ``input_precision`` is the dot precision
    (kernels/_launch.py INPUT_PRECISIONS, picked by affseg._backend.dot_precision): Triton and CUDA
    C++ run "tf32"/"bf16" on tensor cores (CUDA C++ on sm_80+ and float32; IEEE otherwise), the CPU
    kernels check it and compute IEEE.
    """
    options = (float(inv_tau), bool(swapped), bool(fg_l1), bool(exclude_self))
    intra = fb is fa and pb is pa and vb is va
    if backend == "triton":
        if intra:
            return torch.ops.affseg.triton_pdcr_intra_fwd(fa, pa, va, *options, input_precision)[0]
        return torch.ops.affseg.triton_pdcr_fwd(fa, pa, fb, pb, va, vb, *options, input_precision)[0]
    if intra:
        return torch.ops.affseg.pdcr_intra_fwd(fa, pa, va, *options, input_precision)[0]
    return torch.ops.affseg.pdcr_fwd(fa, pa, fb, pb, va, vb, *options, input_precision)[0]
