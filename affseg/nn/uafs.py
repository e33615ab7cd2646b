"""The UAFS block: uncertainty-aware feature selection (SPEC §6)."""
from __future__ import annotations

import torch

from affseg.functional import uafs_reweight


class UAFS(torch.nn.Module):
    """Uncertainty-aware feature selection: ``x * (2 − U(F(x)))``.

    F is Conv(3^dims, C→hidden, no bias) → BatchNorm → ReLU → Conv(1, hidden→m); U is the
    normalised entropy of softmax(F(x)) over its m channels (:func:`affseg.uafs_reweight`).
    Nothing supervises F: it learns through the segmentation (and PDCR) losses.

    Args:
        channels: C, the channels of x.
        dims: 1, 2 or 3 spatial dims.
        hidden: channels of the hidden conv (16 in the paper's 2D code).
        m: M ≥ 2 attention channels (2 is the paper's best).
        backend: backend of the fused re-weighting.

    Returns:
        ``forward(x)`` returns the re-weighted features.

    Shape:
        x ``(B, C, *S)`` -> ``(B, C, *S)``.

    Raises:
        ValueError: m < 2, dims not in {1, 2, 3}, non-positive channels or hidden.

    Example:
        >>> block = affseg.nn.UAFS(64, dims=2)
        >>> y = block(torch.randn(2, 64, 32, 32))
    """

    def __init__(self, channels: int, dims: int = 2, hidden: int = 16, m: int = 2, backend: str = "auto"):
        super().__init__()
        if dims not in (1, 2, 3):
            raise ValueError(f"dims must be 1, 2 or 3, got {dims}")
        if m < 2:
            raise ValueError(f"m must be >= 2 (U divides by log m), got {m}")
        if channels < 1 or hidden < 1:
            raise ValueError(f"channels and hidden must be >= 1, got channels={channels}, hidden={hidden}")
        conv = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)[dims - 1]
        norm = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)[dims - 1]
        self.attention = torch.nn.Sequential(
            conv(channels, hidden, 3, padding=1, bias=False), norm(hidden), torch.nn.ReLU(inplace=True), conv(hidden, m, 1)
        )
        self.channels, self.dims, self.hidden, self.m, self.backend = channels, dims, hidden, m, backend

    def forward(self, x):
        return uafs_reweight(x, self.attention(x), backend=self.backend)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, dims={self.dims}, hidden={self.hidden}, m={self.m}"
