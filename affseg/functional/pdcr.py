"""PDCR: patch-dragsaw contrastive regularisation (SPEC §3)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from affseg import _backend, _sampling, _validate, reference
from affseg._reduce import reduce_rows
from affseg.functional.labels import grid_centers, patch_label_ratios

ORIENTATIONS = _validate.ORIENTATIONS
DIVERGENCES = _validate.DIVERGENCES
SAMPLINGS = _validate.SAMPLINGS


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # SPEC: reductions accumulate in float32; float64 inputs stay float64.
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_core(feats, phi, feats_b, phi_b, valid, valid_b, tau, orientation, divergence, exclude_self, reduction):
    _validate.floating(feats, "feats", ndims=(3,))
    _validate.floating(phi, "phi", ndims=(4,))
    B, N, _ = feats.shape
    _validate.dim_match("feats", feats, 0, "phi", phi, 0, "batch size")
    _validate.dim_match("feats", feats, 1, "phi", phi, 2, "number of locations (phi is (B, W, N, K))")
    if (feats_b is None) != (phi_b is None):
        raise ValueError("feats_b and phi_b must be given together (cross-layer pairs), got only one of them")
    M = N
    if feats_b is not None:
        _validate.floating(feats_b, "feats_b", ndims=(3,))
        _validate.floating(phi_b, "phi_b", ndims=(4,))
        _validate.dim_match("feats", feats, 0, "feats_b", feats_b, 0, "batch size")
        _validate.dim_match("feats", feats, 2, "feats_b", feats_b, 2, "number of channels")
        _validate.dim_match("feats_b", feats_b, 1, "phi_b", phi_b, 2, "number of locations (phi_b is (B, W, M, K))")
        _validate.dim_match("phi", phi, 1, "phi_b", phi_b, 1, "number of windows")
        _validate.dim_match("phi", phi, 3, "phi_b", phi_b, 3, "number of classes")
        _validate.dim_match("phi", phi, 0, "phi_b", phi_b, 0, "batch size")
        M = feats_b.shape[1]
        if exclude_self:
            raise ValueError("exclude_self applies to intra-layer pairs only; got exclude_self=True with feats_b")
    elif valid_b is not None:
        raise ValueError("valid_b applies to cross-layer columns only; got valid_b without feats_b")
    if valid is not None:
        _validate.boolean(valid, "valid", (B, N))
    if valid_b is not None:
        _validate.boolean(valid_b, "valid_b", (B, M))
    _validate.same_device(feats=feats, phi=phi, feats_b=feats_b, phi_b=phi_b, valid=valid, valid_b=valid_b)
    _validate.pdcr_core_options(tau=tau, orientation=orientation, divergence=divergence, exclude_self=exclude_self,
                                reduction=reduction)


def pdcr_loss_from_ratios(
    feats,
    phi,
    *,
    feats_b=None,
    phi_b=None,
    valid=None,
    valid_b=None,
    tau=0.5,
    orientation="paper",
    divergence="tv",
    exclude_self=False,
    reduction="mean",
    backend="auto",
):
    """PDCR contrastive term on gathered features and their patch label ratios (SPEC §3).

    With ŝ_ij = (cos(f_i, g_j) − 1)/τ, affinity a and divergence d between the rows' and columns'
    label ratios, weights (w⁺, w⁻) = (a, d) (``"paper"``) or (d, a) (``"swapped"``, the official 2D
    release), each valid row i and window w contributes
    ``LSE_k(ŝ_ik w⁻_ik) − mean_j ŝ_ij w⁺_ij`` over the valid columns; windows are averaged.
    The fused kernels never build an N×N tensor.

    Args:
        feats: row features.
        phi: row label ratios per window (from :func:`patch_label_ratios`).
        feats_b, phi_b: column features and ratios for cross-layer pairs (default: the rows).
        valid, valid_b: bool masks; False locations drop out as rows and as columns.
        tau: temperature τ > 0.
        orientation: ``"paper"`` (tug same-label, repulse different-label) or ``"swapped"``.
        divergence: ``"tv"`` (½ L1, a ∈ [0, 1]) or ``"fg_l1"`` (official 3D code).
        exclude_self: drop the j = i pairs (intra-layer only).
        reduction: ``"mean"`` over valid rows, ``"sum"`` = Σ n_i·r_i, or ``"none"``.
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"cuda"`` or ``"triton"``.

    Returns:
        A scalar loss, or the per-row loss ``(B, N)`` (0 at invalid rows) for ``reduction="none"``.

    Shape:
        feats ``(B, N, C)``; phi ``(B, W, N, K)``; feats_b ``(B, M, C)``; phi_b ``(B, W, M, K)``;
        valid ``(B, N)``; valid_b ``(B, M)``.

    Raises:
        TypeError/ValueError: bad dtypes, ranks, mismatched sizes or devices, tau ≤ 0, unknown options.
        RuntimeError: an explicitly requested backend that is not available.

    Example:
        >>> feats = torch.randn(2, 64, 32, requires_grad=True)
        >>> phi = torch.rand(2, 3, 64, 2).softmax(-1)
        >>> affseg.pdcr_loss_from_ratios(feats, phi).backward()
    """
    _check_core(feats, phi, feats_b, phi_b, valid, valid_b, tau, orientation, divergence, exclude_self, reduction)
    backend = _resolve(backend, feats, phi, "pdcr_loss_from_ratios")
    if backend == "reference":
        return reference.pdcr_loss_from_ratios(
            feats, phi, feats_b=feats_b, phi_b=phi_b, valid=valid, valid_b=valid_b, tau=tau,
            orientation=orientation, divergence=divergence, exclude_self=exclude_self, reduction=reduction,
        )
    from affseg._ops import pdcr as ops

    B, N, _ = feats.shape
    cdt = _compute_dtype(feats.dtype)
    va = valid.contiguous() if valid is not None else torch.ones(B, N, dtype=torch.bool, device=feats.device)
    fa, pa = _unit_rows(feats, va, cdt), phi.to(cdt).contiguous()
    if feats_b is None:
        fb, pb, vb = fa, pa, va
    else:
        M = feats_b.shape[1]
        vb = valid_b.contiguous() if valid_b is not None else torch.ones(B, M, dtype=torch.bool, device=feats.device)
        fb, pb = _unit_rows(feats_b, vb, cdt), phi_b.to(cdt).contiguous()
    # The dot precision follows the caller's dtype and matmul-precision setting (SPEC §8), read
    # here and passed as a plain option; the fp16/bf16 features themselves run upcast.
    row = ops.pdcr_rows(
        fa, pa, fb, pb, va, vb, inv_tau=1.0 / tau, swapped=orientation == "swapped",
        fg_l1=divergence == "fg_l1", exclude_self=exclude_self, backend=backend,
        input_precision=_backend.dot_precision(feats.dtype),
    )
    # n_i: valid columns per row (self excluded when asked); rows without any column do not count.
    n_cols = vb.sum(dim=1, keepdim=True).to(cdt).expand(B, N)
    if exclude_self:
        n_cols = n_cols - va.to(cdt)
    counted = va & (n_cols > 0)
    row = torch.where(counted, row, torch.zeros_like(row))
    return reduce_rows(row, counted, reduction, weight=n_cols, dtype=feats.dtype)


def _unit_rows(feats, valid, dtype):
    """Unit rows, with invalid locations zeroed first: they drop out even when they hold NaN
    (normalize's backward would turn their zero gradient into NaN)."""
    feats = torch.where(valid[..., None], feats.to(dtype), torch.zeros((), dtype=dtype, device=feats.device))
    return F.normalize(feats, dim=-1, eps=1e-8).contiguous()


def _resolve(backend, feats, phi, caller):
    """The backend for the core on (B, N, C) features and (B, W, N, K) ratios."""
    return _backend.resolve("pdcr_loss_from_ratios", backend, feats.device, caller=caller, dtype=feats.dtype,
                            channels=feats.shape[-1], windows=phi.shape[1], classes=phi.shape[-1],
                            batch=feats.shape[0])


def _window_centers(feature_shape, input_shape, window_sizes, window_align):
    """[(window indices, centres (P, ndim))]: the centres that place each window, grouped.

    ``"center"``: ⌊p·s + s/2⌋ for every window (SPEC §1). ``"official"``: the official 2D code's
    window ⌊p·s − L/2⌋ … ⌊p·s + L/2⌋ − 1, i.e. the centre ⌊p·s − L/2⌋ + L//2 under §1's convention,
    which depends on L's parity: windows are grouped by the centres they need.
    """
    if window_align == "center":
        return [(list(range(len(window_sizes))), grid_centers(feature_shape, input_shape))]
    groups: list[tuple[list[int], torch.Tensor]] = []
    for w, L in enumerate(window_sizes):
        axes = [
            # ⌊p·I/F − L/2⌋ = ⌊(2pI − L·F) / 2F⌋, exact in integers (floor division of negatives too).
            (2 * torch.arange(f) * i - L * f) // (2 * f) + L // 2
            for f, i in zip(feature_shape, input_shape)
        ]
        centers = torch.cartesian_prod(*axes).reshape(-1, len(feature_shape))
        for members, known in groups:
            if torch.equal(known, centers):
                members.append(w)
                break
        else:
            groups.append(([w], centers))
    return groups


def _rows_of(features, mask, labels, window_sizes, num_classes, num_samples, sampling, ignore_index, window_align,
             generator, backend):
    """Sample a feature map; its features, the label ratios φ of its samples and their validity."""
    from affseg.functional.labels import label_ratios

    spatial = tuple(features.shape[2:])
    B = features.shape[0]
    locations = None
    if num_samples is not None:
        locations = _sampling.sample_locations(spatial, num_samples, sampling, B, generator=generator,
                                               device=features.device)
    phi_parts, valid_parts, order = [], [], []
    for members, centers in _window_centers(spatial, tuple(labels.shape[1:]), window_sizes, window_align):
        centers = centers.to(features.device)
        centers = centers.expand(B, -1, -1) if locations is None else centers[locations]
        phi, valid_w = label_ratios(labels, centers, [window_sizes[w] for w in members], num_classes, ignore_index,
                                    backend)
        phi_parts.append(phi)
        valid_parts.append(valid_w)
        order += members
    if len(phi_parts) > 1:
        back = torch.argsort(torch.tensor(order)).to(features.device)
        phi, valid_w = torch.cat(phi_parts, 1)[:, back], torch.cat(valid_parts, 1)[:, back]
    # Centred windows are nested, so all() is the smallest window's validity (SPEC §3).
    valid = valid_w.all(dim=1)
    if mask is not None:
        valid = valid & _sampling.gather_locations(mask[:, None], locations)[..., 0]
    return _sampling.gather_locations(features, locations), phi, valid


def _check_map(features, name, labels, num_samples):
    _validate.floating(features, name, ndims=(labels.dim() + 1,))
    _validate.dim_match("labels", labels, 0, name, features, 0, "batch size")
    if num_samples is not None:
        P = features[0, 0].numel()
        _validate.int_value(num_samples, "num_samples", minimum=1)
        if num_samples > P:
            raise ValueError(f"num_samples must be <= the {P} locations of {name} {tuple(features.shape)}, got {num_samples}")


def _check_mask(mask, name, features):
    if mask is not None:
        want = (features.shape[0], *features.shape[2:])
        _validate.boolean(mask, name, want)


def pdcr_loss(
    features,
    labels,
    *,
    num_classes,
    window_sizes=(5, 7, 9),
    num_samples=None,
    sampling="grid",
    tau=0.5,
    ignore_index=None,
    features_b=None,
    valid=None,
    valid_b=None,
    orientation="paper",
    divergence="tv",
    exclude_self=False,
    reduction="mean",
    window_align="center",
    generator=None,
    backend="auto",
):
    """Drop-in PDCR term for a hidden feature map and the segmentation labels (SPEC §3).

    Samples locations of ``features`` (every location by default), labels each one with the class
    ratios φ of windows of ``labels`` around its input-space centre, and applies
    :func:`pdcr_loss_from_ratios`. Add it to a Dice/CE loss with a small weight (0.01–0.1).

    Args:
        features: hidden feature map of the segmentation network.
        labels: int ground-truth labels at input resolution.
        num_classes: K, background included.
        window_sizes: label window sides in input pixels (H-PDCR; the loss averages them).
        num_samples: locations per image; None = dense (every location).
        sampling: ``"grid"`` (regular lattice), ``"random"`` (without replacement, uses
            ``generator``) or ``"stride"`` (official 2D raster sampler).
        tau: temperature τ > 0.
        ignore_index: label excluded from φ; windows without countable pixels drop out.
        features_b: a second feature map (any resolution) whose locations form the columns
            (cross-layer pairs).
        valid: optional bool mask of the locations of ``features`` that take part (e.g. a
            region of interest); False locations drop out as rows and columns.
        valid_b: the same for the locations of ``features_b``.
        orientation: ``"paper"`` (tug same-label pairs, repulse different-label pairs) or
            ``"swapped"`` (the official 2D release's weights, for parity).
        divergence: ``"tv"`` (½ L1, affinity in [0, 1]) or ``"fg_l1"`` (official 3D code).
        exclude_self: drop the pairs j = i (intra-layer only).
        reduction: ``"mean"`` over valid rows, ``"sum"`` = Σ n_i·r_i, or ``"none"`` (``(B, N)``).
        window_align: ``"center"`` (the window is centred on the middle of the feature location's
            stride cell, ⌊p·s + s/2⌋) or ``"official"`` (the official 2D code's windows
            ⌊p·s − L/2⌋ … ⌊p·s + L/2⌋ − 1, anchored at the cell's corner; 9–17 % of φ differ on a
            128² disk mask). A deliberate deviation from the official code: see SPEC §3.
        generator: ``torch.Generator`` for ``sampling="random"``.
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"cuda"`` or ``"triton"``.

    Returns:
        The loss (a scalar unless ``reduction="none"``, then ``(B, N)``).

    Shape:
        features ``(B, C, *s)``; labels ``(B, *S)``; 2 or 3 spatial dims, s ≤ S any ratio;
        valid ``(B, *s)``; features_b ``(B, C, *s_b)``; valid_b ``(B, *s_b)``.

    Raises:
        TypeError/ValueError: bad dtypes or ranks, mismatched batch or device, labels out of range,
            tau ≤ 0, num_samples larger than the map, unknown options.

    Example:
        >>> feats = torch.randn(2, 32, 16, 16, requires_grad=True)
        >>> labels = torch.randint(0, 3, (2, 64, 64))
        >>> loss = affseg.pdcr_loss(feats, labels, num_classes=3)
        >>> loss.backward()
    """
    _validate.integer(labels, "labels", ndims=(3, 4))
    _check_map(features, "features", labels, num_samples)
    _check_mask(valid, "valid", features)
    if features_b is not None:
        _check_map(features_b, "features_b", labels, num_samples)
        _validate.dim_match("features", features, 1, "features_b", features_b, 1, "number of channels")
        _check_mask(valid_b, "valid_b", features_b)
        if exclude_self:
            raise ValueError("exclude_self applies to intra-layer pairs only; got exclude_self=True with features_b")
    elif valid_b is not None:
        raise ValueError("valid_b applies to the locations of features_b; got valid_b without features_b")
    _validate.same_device(features=features, labels=labels, features_b=features_b, valid=valid, valid_b=valid_b)
    _validate.pdcr_options(
        num_classes=num_classes, window_sizes=window_sizes, num_samples=num_samples, sampling=sampling, tau=tau,
        ignore_index=ignore_index, orientation=orientation, divergence=divergence, exclude_self=exclude_self,
        reduction=reduction, window_align=window_align,
    )
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    window_sizes = _validate.int_tuple(window_sizes, "window_sizes", length=1 if isinstance(window_sizes, int) else None)
    _validate.labels_in_range(labels, num_classes, ignore_index)
    # Both steps' backends are settled (and named for pdcr_loss in errors) before any kernel runs.
    ratios_backend = _backend.resolve("patch_label_ratios", backend, labels.device, caller="pdcr_loss",
                                      windows=len(window_sizes), classes=num_classes)
    _backend.resolve("pdcr_loss_from_ratios", backend, features.device, caller="pdcr_loss", dtype=features.dtype,
                     channels=features.shape[1], windows=len(window_sizes), classes=num_classes,
                     batch=features.shape[0])

    sample = (labels, window_sizes, num_classes, num_samples, sampling, ignore_index, window_align, generator,
              ratios_backend)
    feats, phi, row_valid = _rows_of(features, valid, *sample)
    cols = {}
    if features_b is not None:
        fb, pb, vb = _rows_of(features_b, valid_b, *sample)
        cols = dict(feats_b=fb, phi_b=pb, valid_b=vb)
    return pdcr_loss_from_ratios(
        feats, phi, valid=row_valid, tau=tau, orientation=orientation, divergence=divergence,
        exclude_self=exclude_self, reduction=reduction, backend=backend, **cols,
    )
