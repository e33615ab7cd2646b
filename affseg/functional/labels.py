"""Patch label ratios φ, feature-location centres and label affinity (SPEC §1, §2)."""
from __future__ import annotations

import torch

from affseg import _backend, _validate, reference


def grid_centers(feature_shape, input_shape) -> torch.Tensor:
    """Input-space centre of every location of a feature map.

    For a per-dim stride s = input/feature (non-integer strides allowed), the centre of feature
    index p is ⌊p·s + s/2⌋. Pure index arithmetic, so it has no kernel of its own.

    Args:
        feature_shape: spatial shape of the feature map, e.g. ``(h, w)`` or ``(d, h, w)``.
        input_shape: spatial shape of the input (label) map, same length.

    Returns:
        int64 tensor of centres in raster (C) order of the feature map.

    Shape:
        ``(prod(feature_shape), ndim)``.

    Raises:
        TypeError/ValueError: if the shapes are not sequences of positive ints of equal length 2 or 3.

    Example:
        >>> affseg.grid_centers((2, 2), (8, 8)).tolist()
        [[2, 2], [2, 6], [6, 2], [6, 6]]
    """
    feature_shape = _validate.int_tuple(feature_shape, "feature_shape")
    input_shape = _validate.int_tuple(input_shape, "input_shape")
    if len(feature_shape) not in (2, 3):
        raise ValueError(f"feature_shape must have 2 or 3 entries (2D or 3D), got {feature_shape}")
    if len(input_shape) != len(feature_shape):
        raise ValueError(f"input_shape must have {len(feature_shape)} entries like feature_shape, got {input_shape}")
    return reference.grid_centers(feature_shape, input_shape)


def patch_label_ratios(labels, centers, window_sizes, num_classes, ignore_index=None, *, backend="auto"):
    """Continuous patch labels φ: per-class fractions of a window of the label map (SPEC §1).

    The window of side L around centre c covers ``c - L//2 … c - L//2 + L - 1`` in every dim,
    clipped to the image; φ_k = (#pixels of class k) / (#pixels that are not ``ignore_index``).
    Computed from per-class summed-area tables in one pass, without a loop over centres.

    Args:
        labels: int tensor of class indices at input resolution.
        centers: int64 window centres in input coordinates (e.g. from :func:`grid_centers`).
        window_sizes: window sides in input pixels (int or tuple of ints).
        num_classes: number of classes K (background included), K ≥ 2.
        ignore_index: label value counted in no class and excluded from the denominator.
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"cuda"`` or ``"triton"`` (SPEC §8).

    Returns:
        ``(phi, valid)``: float32 ratios and a bool mask, False where a window holds no countable
        pixel (there φ = 0).

    Shape:
        labels ``(B, *S)`` with 2 or 3 spatial dims; centers ``(B, N, ndim)``;
        phi ``(B, len(window_sizes), N, K)``; valid ``(B, len(window_sizes), N)``.

    Raises:
        TypeError: non-integer labels or centers.
        ValueError: wrong ranks, mismatched batch or device, labels outside ``[0, num_classes)``
            other than ``ignore_index``, non-positive window sizes.

    Example:
        >>> labels = torch.zeros(1, 8, 8, dtype=torch.long); labels[:, :, 4:] = 1
        >>> phi, valid = affseg.patch_label_ratios(labels, affseg.grid_centers((2, 2), (8, 8))[None], (4,), 2)
        >>> phi[0, 0, :, 1].tolist()
        [0.0, 1.0, 0.0, 1.0]
    """
    _validate.integer(labels, "labels", ndims=(3, 4))
    _validate.integer(centers, "centers", ndims=(3,))
    ndim = labels.dim() - 1
    _validate.dim_match("labels", labels, 0, "centers", centers, 0, "batch size")
    if centers.shape[2] != ndim:
        raise ValueError(
            f"centers must have shape (B, N, {ndim}) for {ndim}D labels, got {tuple(centers.shape)}"
        )
    _validate.same_device(labels=labels, centers=centers)
    window_sizes = _validate.int_tuple(window_sizes, "window_sizes", length=1 if isinstance(window_sizes, int) else None)
    num_classes = _validate.int_value(num_classes, "num_classes", minimum=2)
    if ignore_index is not None:
        _validate.int_value(ignore_index, "ignore_index")
    _validate.labels_in_range(labels, num_classes, ignore_index)
    backend = _backend.resolve("patch_label_ratios", backend, labels.device, windows=len(window_sizes),
                               classes=num_classes)
    return label_ratios(labels, centers, window_sizes, num_classes, ignore_index, backend)


def label_ratios(labels, centers, window_sizes, num_classes, ignore_index, backend):
    """:func:`patch_label_ratios` on validated inputs and a concrete backend (for callers that
    validated and resolved already, such as :func:`affseg.pdcr_loss`)."""
    if backend == "reference":
        return reference.patch_label_ratios(labels.long(), centers.long(), window_sizes, num_classes, ignore_index)
    from affseg._ops import labels as ops

    return ops.patch_label_ratios(labels.long().contiguous(), centers.long().contiguous(), window_sizes, num_classes,
                                  ignore_index, backend)


def patch_affinity(phi_a, phi_b=None, *, divergence="tv"):
    """Materialised label-affinity matrix a = 1 − d between patch label ratios (SPEC §2).

    d is the total-variation distance ½‖φ_i − φ_j‖₁ (``divergence="tv"``, a ∈ [0, 1]) or the
    official 3D code's L1 over foreground classes without ½ (``"fg_l1"``, a may be negative).
    For inspection and small N: the losses never build this matrix.

    Args:
        phi_a: row ratios, ``(B, N, K)`` or ``(B, W, N, K)``.
        phi_b: column ratios with the same leading dims and K; defaults to ``phi_a``.
        divergence: ``"tv"`` or ``"fg_l1"``.

    Returns:
        The affinity matrix.

    Shape:
        phi_a ``(B, N, K)`` -> ``(B, N, M)``; phi_a ``(B, W, N, K)`` -> ``(B, W, N, M)``.

    Raises:
        TypeError: non-floating inputs. ValueError: mismatched shapes or devices, unknown divergence.

    Example:
        >>> phi = torch.tensor([[[1.0, 0.0], [0.5, 0.5]]])
        >>> affseg.patch_affinity(phi)
        tensor([[[1.0000, 0.5000],
                 [0.5000, 1.0000]]])
    """
    _validate.floating(phi_a, "phi_a", ndims=(3, 4))
    if phi_b is not None:
        _validate.floating(phi_b, "phi_b", ndims=(phi_a.dim(),))
        _validate.same_device(phi_a=phi_a, phi_b=phi_b)
        for d, what in ((0, "batch size"), (-1, "number of classes")) + (((1, "number of windows"),) if phi_a.dim() == 4 else ()):
            _validate.dim_match("phi_a", phi_a, d, "phi_b", phi_b, d, what)
    _validate.choice(divergence, "divergence", ("tv", "fg_l1"))
    return reference.patch_affinity(phi_a, phi_b, divergence=divergence)
