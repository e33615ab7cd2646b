"""PDCR: patch-dragsaw contrastive regularisation (SPEC §3)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from affseg import _backend, _sampling, _validate, reference
from affseg.functional.labels import grid_centers, patch_label_ratios

ORIENTATIONS = ("paper", "swapped")
DIVERGENCES = ("tv", "fg_l1")
SAMPLINGS = ("grid", "random", "stride")


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
    _validate.positive(tau, "tau")
    _validate.choice(orientation, "orientation", ORIENTATIONS)
    _validate.choice(divergence, "divergence", DIVERGENCES)
    if not isinstance(exclude_self, bool):
        raise TypeError(f"exclude_self must be a bool, got {type(exclude_self).__name__}")
    _validate.reduction(reduction)


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
    backend = _backend.resolve("pdcr_loss_from_ratios", backend, feats.device)
    if backend == "reference":
        return reference.pdcr_loss_from_ratios(
            feats, phi, feats_b=feats_b, phi_b=phi_b, valid=valid, valid_b=valid_b, tau=tau,
            orientation=orientation, divergence=divergence, exclude_self=exclude_self, reduction=reduction,
        )
    from affseg._ops import pdcr as ops

    B, N, _ = feats.shape
    cdt = _compute_dtype(feats.dtype)
    fa = F.normalize(feats.to(cdt), dim=-1, eps=1e-8).contiguous()
    pa = phi.to(cdt).contiguous()
    va = valid.contiguous() if valid is not None else torch.ones(B, N, dtype=torch.bool, device=feats.device)
    if feats_b is None:
        fb, pb, vb = fa, pa, va
    else:
        fb = F.normalize(feats_b.to(cdt), dim=-1, eps=1e-8).contiguous()
        pb = phi_b.to(cdt).contiguous()
        vb = valid_b.contiguous() if valid_b is not None else torch.ones(B, fb.shape[1], dtype=torch.bool, device=feats.device)
    row = ops.pdcr_rows(
        fa, pa, fb, pb, va, vb, inv_tau=1.0 / tau, swapped=orientation == "swapped",
        fg_l1=divergence == "fg_l1", exclude_self=exclude_self, backend=backend,
    )
    # n_i: valid columns per row (self excluded when asked); rows without any column do not count.
    n_cols = vb.sum(dim=1, keepdim=True).to(cdt).expand(B, N)
    if exclude_self:
        n_cols = n_cols - va.to(cdt)
    counted = va & (n_cols > 0)
    row = torch.where(counted, row, torch.zeros_like(row))
    if reduction == "none":
        return row.to(feats.dtype)
    if reduction == "sum":
        return (row * n_cols).sum().to(feats.dtype)
    return (row.sum() / counted.sum().clamp_min(1).to(cdt)).to(feats.dtype)


def _rows_of(features, labels, window_sizes, num_classes, num_samples, sampling, ignore_index, generator, backend):
    """Sample a feature map, find each sample's input-space centre and label ratios."""
    spatial = tuple(features.shape[2:])
    B = features.shape[0]
    centers = grid_centers(spatial, tuple(labels.shape[1:])).to(features.device)
    if num_samples is None:  # dense: every location, no gather
        locations, centers = None, centers.expand(B, -1, -1)
    else:
        locations = _sampling.sample_locations(spatial, num_samples, sampling, B, generator=generator, device=features.device)
        centers = centers[locations]
    phi, valid_w = patch_label_ratios(labels, centers, window_sizes, num_classes, ignore_index, backend=backend)
    # Windows are nested, so all() is the smallest window's validity.
    return _sampling.gather_locations(features, locations), phi, valid_w.all(dim=1)


def _check_map(features, name, labels, num_samples):
    _validate.floating(features, name, ndims=(labels.dim() + 1,))
    _validate.dim_match("labels", labels, 0, name, features, 0, "batch size")
    if num_samples is not None:
        P = features[0, 0].numel()
        _validate.int_value(num_samples, "num_samples", minimum=1)
        if num_samples > P:
            raise ValueError(f"num_samples must be <= the {P} locations of {name} {tuple(features.shape)}, got {num_samples}")


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
    generator=None,
    backend="auto",
    **core_kwargs,
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
        generator: ``torch.Generator`` for ``sampling="random"``.
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"cuda"`` or ``"triton"``.
        **core_kwargs: ``orientation``, ``divergence``, ``exclude_self``, ``reduction`` of
            :func:`pdcr_loss_from_ratios`.

    Returns:
        The loss (a scalar unless ``reduction="none"``, then ``(B, N)``).

    Shape:
        features ``(B, C, *s)``; labels ``(B, *S)``; 2 or 3 spatial dims, s ≤ S any ratio.

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
    _validate.same_device(features=features, labels=labels, features_b=features_b)
    _validate.choice(sampling, "sampling", SAMPLINGS)
    unknown = set(core_kwargs) - {"orientation", "divergence", "exclude_self", "reduction"}
    if unknown:
        raise TypeError(f"pdcr_loss got unexpected keyword arguments {sorted(unknown)}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    rows = _rows_of(features, labels, window_sizes, num_classes, num_samples, sampling, ignore_index, generator, backend)
    cols = {}
    if features_b is not None:
        _check_map(features_b, "features_b", labels, num_samples)
        _validate.dim_match("features", features, 1, "features_b", features_b, 1, "number of channels")
        fb, pb, vb = _rows_of(features_b, labels, window_sizes, num_classes, num_samples, sampling, ignore_index, generator, backend)
        cols = dict(feats_b=fb, phi_b=pb, valid_b=vb)
    feats, phi, valid = rows
    return pdcr_loss_from_ratios(feats, phi, valid=valid, tau=tau, backend=backend, **cols, **core_kwargs)
