"""Loss modules for PDCR and soft SupCon.

Like MONAI's losses they subclass ``torch.nn.modules.loss._Loss`` (``reduction`` is that class's
attribute) and check their options at construction, through the same `affseg._validate` functions
the functional forms call, so a typo fails where the loss is built, not at the first batch.
"""
from __future__ import annotations

from torch.nn.modules.loss import _Loss

from affseg import _validate
from affseg.functional import pdcr_loss, soft_supcon_loss


class PDCRLoss(_Loss):
    """Module twin of :func:`affseg.pdcr_loss`: the PDCR term for a hidden feature map.

    Args:
        num_classes, window_sizes, num_samples, sampling, tau, ignore_index, orientation,
        divergence, exclude_self, reduction, window_align, backend: as in :func:`affseg.pdcr_loss`
            (the same keyword names and defaults).

    Returns:
        ``forward(features, labels, features_b=None, generator=None, valid=None, valid_b=None)``
        returns the loss (a scalar, or ``(B, N)`` for ``reduction="none"``); the call-time
        arguments are those of :func:`affseg.pdcr_loss`.

    Shape:
        features ``(B, C, *s)``, labels ``(B, *S)``, 2D or 3D; valid ``(B, *s)``.

    Raises:
        ValueError/TypeError: at construction for bad options (e.g. ``reduction="avg"``,
            ``tau=-1``), naming the argument; at call time for bad tensors, as
            :func:`affseg.pdcr_loss`.

    Example:
        >>> crit = affseg.nn.PDCRLoss(num_classes=3, window_sizes=(5, 7, 9))
        >>> hidden = torch.randn(2, 16, 8, 8, requires_grad=True)  # a decoder feature map
        >>> logits = torch.randn(2, 3, 32, 32, requires_grad=True)
        >>> labels = torch.randint(0, 3, (2, 32, 32))
        >>> loss = torch.nn.functional.cross_entropy(logits, labels) + 0.1 * crit(hidden, labels)
        >>> loss.backward()
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
        window_align: str = "center",
        backend: str = "auto",
    ):
        _validate.pdcr_options(
            num_classes=num_classes, window_sizes=window_sizes, num_samples=num_samples, sampling=sampling, tau=tau,
            ignore_index=ignore_index, orientation=orientation, divergence=divergence, exclude_self=exclude_self,
            reduction=reduction, window_align=window_align,
        )
        super().__init__(reduction=reduction)
        self.num_classes = num_classes
        self.window_sizes = tuple(window_sizes) if not isinstance(window_sizes, int) else (window_sizes,)
        self.num_samples = num_samples
        self.sampling = sampling
        self.tau = tau
        self.ignore_index = ignore_index
        self.orientation = orientation
        self.divergence = divergence
        self.exclude_self = exclude_self
        self.window_align = window_align
        self.backend = backend

    def forward(self, features, labels, features_b=None, generator=None, valid=None, valid_b=None):
        return pdcr_loss(
            features, labels, num_classes=self.num_classes, window_sizes=self.window_sizes,
            num_samples=self.num_samples, sampling=self.sampling, tau=self.tau, ignore_index=self.ignore_index,
            features_b=features_b, valid=valid, valid_b=valid_b, generator=generator, orientation=self.orientation,
            divergence=self.divergence, exclude_self=self.exclude_self, reduction=self.reduction,
            window_align=self.window_align, backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, window_sizes={self.window_sizes}, num_samples={self.num_samples}, "
            f"sampling={self.sampling!r}, tau={self.tau}, orientation={self.orientation!r}, "
            f"divergence={self.divergence!r}, reduction={self.reduction!r}, window_align={self.window_align!r}"
        )


class SoftSupConLoss(_Loss):
    """Module twin of :func:`affseg.soft_supcon_loss` (SupCon with continuous label affinity).

    Args:
        tau, reduction, ignore_index, backend: as in :func:`affseg.soft_supcon_loss`.

    Returns:
        ``forward(features, labels)`` returns the loss (per-row losses for ``reduction="none"``).

    Shape:
        features ``(N, C)`` or ``(B, N, C)``; labels ``(N,)``/``(B, N)`` int or ``(..., N, K)`` float.

    Raises:
        ValueError/TypeError: at construction for bad options (tau ≤ 0, unknown reduction,
            non-int ignore_index); at call time for bad tensors, as :func:`affseg.soft_supcon_loss`.

    Example:
        >>> crit = affseg.nn.SoftSupConLoss(tau=0.1)
        >>> loss = crit(torch.randn(128, 64), torch.randint(0, 4, (128,)))
        >>> loss.shape
        torch.Size([])
    """

    def __init__(self, tau: float = 0.1, reduction: str = "mean", ignore_index: int | None = None, backend: str = "auto"):
        _validate.supcon_options(tau=tau, reduction=reduction, ignore_index=ignore_index)
        super().__init__(reduction=reduction)
        self.tau = tau
        self.ignore_index = ignore_index
        self.backend = backend

    def forward(self, features, labels):
        return soft_supcon_loss(
            features, labels, tau=self.tau, reduction=self.reduction, ignore_index=self.ignore_index, backend=self.backend
        )

    def extra_repr(self) -> str:
        return f"tau={self.tau}, reduction={self.reduction!r}, ignore_index={self.ignore_index}"
