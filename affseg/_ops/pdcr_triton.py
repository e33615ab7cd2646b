"""The Triton PDCR kernels (kernels/pdcr.py) as torch.library custom ops with autograd.

`affseg::triton_pdcr_fwd` returns the per-row loss and the per-(row, window) log-sum-exp that
`affseg::triton_pdcr_bwd` recomputes the pair tiles from. Both are `custom_op`s with fake kernels
(torch.compile traces them; `triton_op` fails opcheck on CPU under the interpreter), and the forward
has a registered backward, so `pdcr_rows_triton` is differentiable in fa and fb. Intra-layer callers
pass the same tensor as fa and fb; autograd then adds the two gradients.

If Triton cannot be imported, the reason is recorded for `affseg._backend` and no op is defined.
"""
from __future__ import annotations

import torch
from torch import Tensor

from affseg import _backend

_kernels = _backend.load_triton_kernels("pdcr")


if _kernels is not None:

    @torch.library.custom_op("affseg::triton_pdcr_fwd", mutates_args=())
    def _pdcr_fwd(
        fa: Tensor, pa: Tensor, fb: Tensor, pb: Tensor, va: Tensor, vb: Tensor,
        inv_tau: float, swapped: bool, fg_l1: bool, exclude_self: bool, input_precision: str = "ieee",
    ) -> tuple[Tensor, Tensor]:
        return _kernels.pdcr_fwd(
            fa, pa, fb, pb, va, vb, inv_tau=inv_tau, swapped=swapped, fg_l1=fg_l1,
            exclude_self=exclude_self, input_precision=input_precision,
        )

    @_pdcr_fwd.register_fake
    def _(fa, pa, fb, pb, va, vb, inv_tau, swapped, fg_l1, exclude_self, input_precision="ieee"):
        B, N, C = fa.shape
        torch._check(fb.shape[0] == B and fb.shape[2] == C, lambda: "fa and fb must share B and C")
        torch._check(pa.shape[0] == B and pa.shape[2] == N, lambda: "pa must be (B, W, N, K)")
        return fa.new_empty((B, N)), fa.new_empty((B, N, pa.shape[1]))

    @torch.library.custom_op("affseg::triton_pdcr_bwd", mutates_args=())
    def _pdcr_bwd(
        grad_row: Tensor, fa: Tensor, pa: Tensor, fb: Tensor, pb: Tensor, va: Tensor, vb: Tensor,
        row_lse: Tensor, inv_tau: float, swapped: bool, fg_l1: bool, exclude_self: bool,
        input_precision: str = "ieee",
    ) -> tuple[Tensor, Tensor]:
        return _kernels.pdcr_bwd(
            grad_row, fa, pa, fb, pb, va, vb, row_lse, inv_tau=inv_tau, swapped=swapped, fg_l1=fg_l1,
            exclude_self=exclude_self, input_precision=input_precision,
        )

    @_pdcr_bwd.register_fake
    def _(grad_row, fa, pa, fb, pb, va, vb, row_lse, inv_tau, swapped, fg_l1, exclude_self,
          input_precision="ieee"):
        return torch.empty_like(fa), torch.empty_like(fb)

    def _setup_context(ctx, inputs, output):
        fa, pa, fb, pb, va, vb, inv_tau, swapped, fg_l1, exclude_self, input_precision = inputs
        ctx.save_for_backward(fa, pa, fb, pb, va, vb, output[1])
        ctx.options = (inv_tau, swapped, fg_l1, exclude_self, input_precision)
        ctx.mark_non_differentiable(output[1])

    def _backward(ctx, grad_row, _grad_lse):
        if grad_row is None:  # only row_lse was used, and it is a statistic, not differentiable
            return (None,) * 11
        fa, pa, fb, pb, va, vb, row_lse = ctx.saved_tensors
        grad_fa, grad_fb = torch.ops.affseg.triton_pdcr_bwd(
            grad_row.to(fa.dtype).contiguous(), fa, pa, fb, pb, va, vb, row_lse, *ctx.options)
        return grad_fa, None, grad_fb, None, None, None, None, None, None, None, None

    _pdcr_fwd.register_autograd(_backward, setup_context=_setup_context)

    def pdcr_rows_triton(fa, pa, fb, pb, va, vb, *, inv_tau, swapped, fg_l1, exclude_self,
                         input_precision="ieee"):
        """Per-row PDCR loss (B, N) from the Triton kernels, differentiable in fa and fb.

        Args:
            fa, fb: unit-norm row / column features ``(B, N, C)`` / ``(B, M, C)``.
            pa, pb: label ratios ``(B, W, N, K)`` / ``(B, W, M, K)``.
            va, vb: bool row / column masks ``(B, N)`` / ``(B, M)``.
            inv_tau: 1/τ.
            swapped: weights (w⁺, w⁻) = (d, a) instead of (a, d).
            fg_l1: divergence Σ_{k≥1}|Δφ_k| instead of ½ Σ_k |Δφ_k|.
            exclude_self: drop the pairs j = i (intra-layer).
            input_precision: ``tl.dot`` precision for float32 (``"ieee"`` or ``"tf32"``).

        Returns:
            ``(B, N)`` row losses, 0 at invalid rows and rows without a valid column.
        """
        row_loss, _ = torch.ops.affseg.triton_pdcr_fwd(
            fa, pa, fb, pb, va, vb, float(inv_tau), bool(swapped), bool(fg_l1), bool(exclude_self),
            input_precision,
        )
        return row_loss

    _backend.register_triton("pdcr_loss_from_ratios")
