"""Loss modules for PDCR and soft SupCon."""
from __future__ import annotations

import torch

from affseg.functional import pdcr_loss, soft_supcon_loss


class PDCRLoss(torch.nn.Module):
    """Module twin of :func:`affseg.pdcr_loss`: the PDCR term for a hidden feature map.

    Args:
        num_classes, window_sizes, num_samples, sampling, tau, ignore_index, orientation,
        divergence, exclude_self, reduction, backend: as in :func:`affseg.pdcr_loss`.

    Returns:
        ``forward(features, labels, features_b=None, generator=None)`` returns the loss.

    Shape:
        features ``(B, C, *s)``, labels ``(B, *S)``, 2D or 3D.

    Raises:
        ValueError/TypeError: as :func:`affseg.pdcr_loss`, at call time.

    Example:
        >>> crit = affseg.nn.PDCRLoss(num_classes=3, window_sizes=(5, 7, 9))
        >>> loss = dice_ce(logits, labels) + 0.1 * crit(hidden, labels)
    """

    def __init__(
        self,
        num_classes: int,
        window_sizes=(5, 7, 9),
        num_samples: int | None = None,
        sampling: str = "grid",
        tau: float = 0.5,
        ignore_index: int | None = None,
        orientation: str = "paper",
        divergence: str = "tv",
        exclude_self: bool = False,
        reduction: str = "mean",
        backend: str = "auto",
    ):
        super().__init__()
        self.num_classes = num_classes
        self.window_sizes = tuple(window_sizes) if not isinstance(window_sizes, int) else (window_sizes,)
        self.num_samples = num_samples
        self.sampling = sampling
        self.tau = tau
        self.ignore_index = ignore_index
        self.orientation = orientation
        self.divergence = divergence
        self.exclude_self = exclude_self
        self.reduction = reduction
        self.backend = backend

    def forward(self, features, labels, features_b=None, generator=None):
        return pdcr_loss(
            features, labels, num_classes=self.num_classes, window_sizes=self.window_sizes,
            num_samples=self.num_samples, sampling=self.sampling, tau=self.tau, ignore_index=self.ignore_index,
            features_b=features_b, generator=generator, orientation=self.orientation, divergence=self.divergence,
            exclude_self=self.exclude_self, reduction=self.reduction, backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, window_sizes={self.window_sizes}, num_samples={self.num_samples}, "
            f"sampling={self.sampling!r}, tau={self.tau}, orientation={self.orientation!r}, "
            f"divergence={self.divergence!r}, reduction={self.reduction!r}"
        )


class SoftSupConLoss(torch.nn.Module):
    """Module twin of :func:`affseg.soft_supcon_loss` (SupCon with continuous label affinity).

    Args:
        tau, reduction, ignore_index, backend: as in :func:`affseg.soft_supcon_loss`.

    Returns:
        ``forward(features, labels)`` returns the loss.

    Shape:
        features ``(N, C)`` or ``(B, N, C)``; labels ``(N,)``/``(B, N)`` int or ``(..., N, K)`` float.

    Raises:
        ValueError/TypeError: as :func:`affseg.soft_supcon_loss`, at call time.

    Example:
        >>> crit = affseg.nn.SoftSupConLoss(tau=0.1)
        >>> loss = crit(torch.randn(128, 64), torch.randint(0, 4, (128,)))
    """

    def __init__(self, tau: float = 0.1, reduction: str = "mean", ignore_index: int | None = None, backend: str = "auto"):
        super().__init__()
        self.tau = tau
        self.reduction = reduction
        self.ignore_index = ignore_index
        self.backend = backend

    def forward(self, features, labels):
        return soft_supcon_loss(
            features, labels, tau=self.tau, reduction=self.reduction, ignore_index=self.ignore_index, backend=self.backend
        )

    def extra_repr(self) -> str:
        return f"tau={self.tau}, reduction={self.reduction!r}, ignore_index={self.ignore_index}"
