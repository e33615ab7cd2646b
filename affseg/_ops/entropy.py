"""Registrations for patch_entropy (SPEC §5): the C++ op's fake kernel and the Triton op.

The statistics are detached summaries of a prediction (SPEC §5: "outputs carry no gradient"), so
neither op has autograd.
"""
from __future__ import annotations

from typing import Optional

import torch

from affseg import _backend, _extension
from affseg._ops._register import define


def _empty_outputs(logits: torch.Tensor, patch_size, shannon: bool, class_mask: Optional[torch.Tensor]):
    torch._check(
        logits.dim() in (4, 5), lambda: f"logits must be (B, K, *S) with 2 or 3 spatial dims, got {logits.dim()} dims"
    )
    torch._check(len(patch_size) == logits.dim() - 2, lambda: "patch_size needs one entry per spatial dim")
    batch, classes, *spatial = logits.shape
    grid = [(s + p - 1) // p for s, p in zip(spatial, patch_size)]
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    k_out = 1 if (shannon and class_mask is None) else classes
    entropy = logits.new_empty((batch, k_out, *grid), dtype=dtype)
    mean_conf = logits.new_empty((batch, classes, *grid), dtype=dtype)
    return entropy, mean_conf, logits.new_empty((batch, classes, *grid), dtype=torch.int64)


if _extension.HAS_C:
    define("patch_entropy", fake=_empty_outputs)


_kernels = _backend.load_triton_kernels("entropy")

if _kernels is not None:

    def _triton(
        logits: torch.Tensor, patch_size: list[int], shannon: bool, class_mask: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _kernels.patch_entropy(logits, patch_size, shannon, class_mask)

    define("triton_patch_entropy", impl=_triton, fake=_empty_outputs)
    _backend.register_triton("patch_entropy", _kernels)


def patch_entropy(logits, patch_size, shannon, class_mask, backend):
    """(entropy, mean_conf, count) of SPEC §5 on a concrete backend; contiguous inputs, validated.

    The Triton kernel reads float16 logits directly; the C++ kernels take float32/float64, so
    float16 logits are upcast first (a full-size float32 copy, for half inputs only).
    """
    patch_size = [int(p) for p in patch_size]
    if backend == "triton":
        return torch.ops.affseg.triton_patch_entropy(logits, patch_size, shannon, class_mask)
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    return torch.ops.affseg.patch_entropy(logits, patch_size, shannon, class_mask)
