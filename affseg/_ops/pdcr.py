"""Fake kernels and autograd for the fused PDCR ops (SPEC §3), and the backend switch.

`pdcr_rows` returns the per-row loss (B, N) of the contrastive term on unit rows; it is
differentiable w.r.t. `fa` and `fb`. Intra-layer callers pass the same tensor as `fa` and `fb`:
autograd then adds the row and column gradients into that one tensor, which is the derivative
of the loss in its two roles.
"""
from __future__ import annotations

import torch

from affseg import _extension

_C_BACKENDS = ("cpu", "cuda")


def _register() -> None:
    @torch.library.register_fake("affseg::pdcr_fwd")
    def _pdcr_fwd_fake(fa, phia, fb, phib, valid_a, valid_b, inv_tau, swapped, fg_l1, exclude_self):
        torch._check(fa.dim() == 3 and fb.dim() == 3 and phia.dim() == 4 and phib.dim() == 4)
        B, N, _ = fa.shape
        return fa.new_empty((B, N)), fa.new_empty((B, N, phia.shape[1]))

    @torch.library.register_fake("affseg::pdcr_bwd")
    def _pdcr_bwd_fake(grad_row, fa, phia, fb, phib, valid_a, valid_b, row_lse, inv_tau, swapped, fg_l1,
                       exclude_self):
        torch._check(grad_row.shape == fa.shape[:2])
        return torch.empty_like(fa), torch.empty_like(fb)

    def _setup_context(ctx, inputs, output):
        fa, phia, fb, phib, valid_a, valid_b, inv_tau, swapped, fg_l1, exclude_self = inputs
        ctx.save_for_backward(fa, phia, fb, phib, valid_a, valid_b, output[1])
        ctx.options = (inv_tau, swapped, fg_l1, exclude_self)

    def _backward(ctx, grad_row, grad_lse):
        # row_lse is a saved statistic, not a differentiable output: its gradient is ignored.
        fa, phia, fb, phib, valid_a, valid_b, row_lse = ctx.saved_tensors
        if grad_row is None:
            return (None,) * 10
        grad_fa, grad_fb = torch.ops.affseg.pdcr_bwd(
            grad_row.contiguous(), fa, phia, fb, phib, valid_a, valid_b, row_lse, *ctx.options
        )
        return grad_fa, None, grad_fb, None, None, None, None, None, None, None

    torch.library.register_autograd("affseg::pdcr_fwd", _backward, setup_context=_setup_context)


if _extension.HAS_C:
    _register()


def pdcr_rows(fa, pa, fb, pb, va, vb, *, inv_tau, swapped, fg_l1, exclude_self, backend):
    """Per-row PDCR loss (B, N) of unit rows `fa` against unit columns `fb` (SPEC §3).

    All floating inputs contiguous and of one dtype (float32 or float64); `va` (B, N) and `vb`
    (B, M) bool. Rows that are invalid or have no valid column give 0.
    """
    if backend == "triton":
        from affseg._ops.pdcr_triton import pdcr_rows_triton

        return pdcr_rows_triton(fa, pa, fb, pb, va, vb, inv_tau=inv_tau, swapped=swapped, fg_l1=fg_l1,
                                exclude_self=exclude_self)
    if backend not in _C_BACKENDS:
        raise ValueError(f"pdcr_rows: backend must be 'cpu', 'cuda' or 'triton', got {backend!r}")
    row, _ = torch.ops.affseg.pdcr_fwd(fa, pa, fb, pb, va, vb, float(inv_tau), bool(swapped), bool(fg_l1),
                                       bool(exclude_self))
    return row
