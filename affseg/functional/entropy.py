"""Average patch entropy (Semi-AGCL Eq. 1) and per-tile confidence (SPEC §5)."""
from __future__ import annotations

import torch

from affseg import _backend, _validate, reference
from affseg._types import PatchStats


def patch_entropy(logits, patch_size, *, mode="binary", class_mask=None, backend="auto") -> PatchStats:
    """Per-tile average entropy and confidence of a softmax prediction, in one pass.

    p = softmax(logits) over K classes. Tiles of side ``patch_size`` tile the image without
    overlap (border tiles are partial and average over the pixels they hold).
    ``mode="binary"``: per class, the one-vs-rest entropy −[p_k log p_k + (1−p_k) log(1−p_k)]
    averaged over the tile (Semi-AGCL Eq. 1). ``mode="shannon"``: −Σ_k p_k log p_k / log K.
    With ``class_mask``, class-k statistics average only over the tile's pixels of class k
    (PLGCL's class-masked patches); mask values outside ``[0, K)`` belong to no class. Empty
    tiles give entropy 0 and count 0. The outputs carry no gradient.

    Args:
        logits: raw network outputs (float16/32/64).
        patch_size: tile side, an int or one int per spatial dim.
        mode: ``"binary"`` or ``"shannon"``.
        class_mask: int pseudo or true labels, or None.
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"cuda"`` or ``"triton"``.

    Returns:
        :class:`PatchStats` ``(entropy, mean_conf, count)`` (float32, float64 for float64 logits;
        count int64).

    Shape:
        logits ``(B, K, *S)``, class_mask ``(B, *S)``; with P_d = ⌈S_d / patch_d⌉:
        entropy ``(B, K, *P)`` (binary, or shannon with class_mask) or ``(B, 1, *P)`` (shannon);
        mean_conf and count ``(B, K, *P)``.

    Raises:
        TypeError/ValueError: non-floating logits, wrong rank, K < 2, bad patch_size, class_mask
            of the wrong dtype, shape or device, unknown mode.

    Example:
        >>> stats = affseg.patch_entropy(torch.randn(2, 4, 256, 256), 32)
        >>> stats.entropy.shape
        torch.Size([2, 4, 8, 8])
    """
    _validate.floating(logits, "logits", ndims=(4, 5))
    if logits.shape[1] < 2:
        raise ValueError(f"logits must have K >= 2 classes in dim 1, got shape {tuple(logits.shape)}")
    ndim = logits.dim() - 2
    patch = _validate.int_tuple(patch_size, "patch_size", length=ndim)
    _validate.choice(mode, "mode", ("binary", "shannon"))
    if class_mask is not None:
        _validate.integer(class_mask, "class_mask")
        want = (logits.shape[0],) + tuple(logits.shape[2:])
        if tuple(class_mask.shape) != want:
            raise ValueError(f"class_mask must have shape {want} (logits without the class dim), got {tuple(class_mask.shape)}")
        _validate.same_device(logits=logits, class_mask=class_mask)
    backend = _backend.resolve("patch_entropy", backend, logits.device, dtype=logits.dtype, classes=logits.shape[1],
                               batch=logits.shape[0])
    with torch.no_grad():
        if backend == "reference":
            return reference.patch_entropy(logits, patch, mode=mode, class_mask=class_mask)
        from affseg._ops import entropy as ops

        mask = None if class_mask is None else class_mask.long().contiguous()
        return PatchStats(*ops.patch_entropy(logits.contiguous(), patch, mode == "shannon", mask, backend))
