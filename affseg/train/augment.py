"""The weak/strong augmentation pair of the semi-supervised methods, on batches, from a generator.

weak: a random flip per axis and sample (labels flipped with their images) — what the teacher sees.
strong: the weak view plus per-sample photometric noise (contrast and brightness jitter, Gaussian
noise) — what the student sees. Only photometric changes separate the two views, so teacher and
student predictions stay aligned pixel for pixel, as the Semi-AGCL losses and the mean-teacher
consistency compare them at the same locations.
"""
from __future__ import annotations

import torch


def flip(x: torch.Tensor, y: torch.Tensor | None, generator: torch.Generator):
    """Flip each sample along each spatial axis with probability ½ (x ``(B, C, *S)``, y ``(B, *S)``)."""
    b, dims = x.shape[0], x.dim() - 2
    draws = torch.rand(b, dims, generator=generator) < 0.5
    xs, ys = [], []
    for i in range(b):
        axes = [a for a in range(dims) if draws[i, a]]
        xs.append(x[i].flip([1 + a for a in axes]) if axes else x[i])
        if y is not None:
            ys.append(y[i].flip(axes) if axes else y[i])
    return torch.stack(xs), (torch.stack(ys) if y is not None else None)


def photometric(x: torch.Tensor, generator: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Per-sample contrast ×U(1 ± 0.2s), brightness +U(± 0.1s)·std, Gaussian noise σ ≤ 0.1s·std."""
    b = x.shape[0]
    shape = (b,) + (1,) * (x.dim() - 1)
    std = x.flatten(1).std(dim=1).clamp_min(1e-6).view(shape)
    contrast = 1 + strength * 0.2 * (2 * torch.rand(shape, generator=generator) - 1)
    shift = strength * 0.1 * (2 * torch.rand(shape, generator=generator) - 1) * std
    sigma = strength * 0.1 * torch.rand(shape, generator=generator) * std
    noise = torch.randn(x.shape, generator=generator) * sigma
    mean = x.flatten(1).mean(dim=1).view(shape)
    return ((x - mean) * contrast + mean + shift + noise).to(x.dtype)


def weak_strong(x: torch.Tensor, generator: torch.Generator):
    """(weak view, strong view) of an unlabelled batch, sharing one flip."""
    weak, _ = flip(x, None, generator)
    return weak, photometric(weak, generator)
