"""UAFS: uncertainty-aware feature selection / re-weighting (SPEC §6)."""
from __future__ import annotations

from affseg import _backend, _validate, reference


def uafs_reweight(x, att_logits, *, backend="auto"):
    """Re-weight features by prediction certainty: ``x * (2 − U)``.

    U = −Σ_m p_m log p_m / log M with p = softmax(att_logits) over its M channels, broadcast over
    the C channels of x: confident locations are amplified up to ×2, uncertain ones kept at ×1.
    Differentiable in both inputs; the fused kernels keep no softmax or entropy maps.

    Args:
        x: feature map.
        att_logits: attention logits with M ≥ 2 channels (UAFS uses M = 2).
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"cuda"`` or ``"triton"``.

    Returns:
        The re-weighted features, same shape and dtype as x.

    Shape:
        x ``(B, C, *S)``; att_logits ``(B, M, *S)``; 1 to 3 spatial dims.

    Raises:
        TypeError: non-floating inputs or differing dtypes.
        ValueError: M < 2, mismatched batch/spatial shape or device.

    Example:
        >>> x = torch.randn(2, 16, 32, 32, requires_grad=True)
        >>> affseg.uafs_reweight(x, torch.randn(2, 2, 32, 32)).sum().backward()
    """
    _validate.floating(x, "x", ndims=(3, 4, 5))
    _validate.floating(att_logits, "att_logits", ndims=(x.dim(),))
    if att_logits.shape[1] < 2:
        raise ValueError(f"att_logits must have M >= 2 channels (U divides by log M), got M={att_logits.shape[1]}")
    if att_logits.shape[0] != x.shape[0] or att_logits.shape[2:] != x.shape[2:]:
        raise ValueError(
            f"att_logits must match x {tuple(x.shape)} in batch and spatial dims, got {tuple(att_logits.shape)}"
        )
    if att_logits.dtype != x.dtype:
        raise TypeError(f"att_logits must have the dtype of x ({x.dtype}), got {att_logits.dtype}")
    _validate.same_device(x=x, att_logits=att_logits)
    backend = _backend.resolve("uafs_reweight", backend, x.device, dtype=x.dtype, channels=x.shape[1],
                               att_channels=att_logits.shape[1])
    if backend == "reference":
        return reference.uafs_reweight(x, att_logits)
    from affseg._ops import uafs as ops

    return ops.uafs_reweight(x, att_logits, backend)
