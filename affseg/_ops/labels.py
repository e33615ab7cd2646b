"""Registrations for patch_label_ratios (SPEC §1): the C++ op's fake kernel and the Triton op.

φ and valid are counts of integer labels, so neither op has autograd: their outputs carry no grad.
"""
from __future__ import annotations

from typing import Optional

import torch

from affseg import _backend, _extension
from affseg._ops._register import define


def _empty_outputs(labels: torch.Tensor, centers: torch.Tensor, window_sizes, num_classes: int):
    torch._check(labels.dim() in (3, 4), lambda: f"labels must be (B, *S) with 2 or 3 spatial dims, got {labels.dim()} dims")
    torch._check(centers.dim() == 3 and centers.shape[2] == labels.dim() - 1, lambda: "centers must be (B, N, ndim)")
    torch._check(centers.shape[0] == labels.shape[0], lambda: "labels and centers must share the batch size")
    shape = (labels.shape[0], len(window_sizes), centers.shape[1])
    phi = labels.new_empty((*shape, num_classes), dtype=torch.float32)
    return phi, labels.new_empty(shape, dtype=torch.bool)


def _fake(labels, centers, window_sizes, num_classes, ignore_index):
    return _empty_outputs(labels, centers, window_sizes, num_classes)


if _extension.HAS_C:
    define("patch_label_ratios", fake=_fake)


_kernels = _backend.load_triton_kernels("labels")

if _kernels is not None:

    def _triton(
        labels: torch.Tensor, centers: torch.Tensor, window_sizes: list[int], num_classes: int,
        ignore_index: Optional[int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return _kernels.patch_label_ratios(labels, centers, window_sizes, num_classes, ignore_index)

    define("triton_patch_label_ratios", impl=_triton, fake=_fake)
    _backend.register_triton("patch_label_ratios", _kernels)


def patch_label_ratios(labels, centers, window_sizes, num_classes, ignore_index, backend):
    """(phi, valid) of SPEC §1 on a concrete backend ("cpu", "cuda" or "triton"); inputs validated."""
    window_sizes = [int(w) for w in window_sizes]
    if backend == "triton":
        return torch.ops.affseg.triton_patch_label_ratios(labels, centers, window_sizes, num_classes, ignore_index)
    return torch.ops.affseg.patch_label_ratios(labels, centers, window_sizes, num_classes, ignore_index)
