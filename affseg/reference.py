"""Plain-PyTorch reference implementation of every affseg op (SPEC §1–§7).

This module is the test oracle for the C++, CUDA and Triton backends and the baseline in every
benchmark. It is written for readability, straight from the SPEC: it materialises the full
pairwise matrices the fused kernels avoid, and it performs no argument validation (the public
API validates before dispatching here). Floating-point work runs in float32, or in float64 when
an input is float64; losses come back in the dtype of their main input.
"""

import itertools
import math

import torch
import torch.nn.functional as F

from affseg._reduce import reduce_rows
from affseg._sampling import draw_mix_pairs, gather_locations, sample_locations
from affseg._types import PatchStats

__all__ = [
    "grid_centers",
    "patch_label_ratios",
    "patch_affinity",
    "pdcr_loss_from_ratios",
    "pdcr_loss",
    "soft_supcon_loss",
    "patch_entropy",
    "uafs_reweight",
    "affinity_graph_loss",
    "mixed_negative_infonce",
    "PatchStats",
]

_NORM_EPS = 1e-8


def _acc_dtype(*tensors):
    """float64 if any input is float64, else float32 (half inputs accumulate in float32)."""
    if any(t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


# --------------------------------------------------------------------------------------------
# §1 Patch label ratios
# --------------------------------------------------------------------------------------------


def grid_centers(feature_shape, input_shape):
    """Input-space centre of every feature-map location.

    Stride per dim is ``s_d = input_d / feature_d`` (not necessarily an integer), and location
    ``p`` maps to ``floor(p * s_d + s_d / 2)``.

    Args:
        feature_shape: Spatial shape of the feature map, ndim ints.
        input_shape: Spatial shape of the input/labels, ndim ints.

    Returns:
        int64 CPU tensor of coordinates, locations in raster (C) order.

    Shape:
        Output ``(prod(feature_shape), ndim)``.

    Example:
        >>> grid_centers((2, 3), (4, 9)).tolist()
        [[1, 1], [1, 4], [1, 7], [3, 1], [3, 4], [3, 7]]
    """
    axes = [
        # floor((2p + 1) * input / (2 * feature)) == floor(p*s + s/2), exact in integers.
        (2 * torch.arange(f) + 1) * i // (2 * f)
        for f, i in zip(feature_shape, input_shape)
    ]
    return torch.cartesian_prod(*axes).reshape(-1, len(feature_shape))


def patch_label_ratios(labels, centers, window_sizes, num_classes, ignore_index=None):
    """Class ratios φ of the label windows around each centre (SPEC §1).

    Counts come from per-class summed-area tables (integral image/volume) read at the window
    corners by inclusion–exclusion, so the cost does not depend on the window size.

    Args:
        labels: int64 label map at input resolution.
        centers: int64 input-space centre coordinates.
        window_sizes: Window sides L (input pixels); the window spans
            ``c - L//2 … c - L//2 + L - 1`` per dim, clipped to the image.
        num_classes: Number of classes K (background included).
        ignore_index: Label value counted in no class and left out of the denominator.

    Returns:
        ``(phi, valid)``: float32 class ratios (rows sum to 1) and a bool mask, False where a
        window holds no countable pixel (its φ is all zero).

    Shape:
        labels ``(B, *S)`` (2D or 3D), centers ``(B, N, ndim)``, phi ``(B, W, N, K)``,
        valid ``(B, W, N)`` with W = len(window_sizes).

    Example:
        >>> labels = torch.tensor([[[0, 1], [1, 1]]])
        >>> phi, valid = patch_label_ratios(labels, torch.tensor([[[0, 0]]]), (3,), 2)
        >>> phi
        tensor([[[[0.2500, 0.7500]]]])
    """
    batch, spatial = labels.shape[0], labels.shape[1:]
    ndim = len(spatial)
    classes = torch.arange(num_classes, device=labels.device).view(1, -1, *([1] * ndim))
    onehot = labels.unsqueeze(1) == classes  # (B, K, *S)
    if ignore_index is not None:
        onehot &= (labels != ignore_index).unsqueeze(1)

    # Summed-area table with a leading zero slice per dim: sat[..., x] = count over [0, x).
    sat = onehot.long()
    for d in range(ndim):
        sat = F.pad(sat.cumsum(dim=2 + d), (0, 0) * (ndim - 1 - d) + (1, 0))
    sat = sat.flatten(2)  # (B, K, prod(S + 1))

    sizes = torch.tensor(spatial, device=labels.device)
    windows = torch.tensor(window_sizes, device=labels.device).view(1, -1, 1, 1)
    start = centers.unsqueeze(1) - windows // 2  # (B, W, N, ndim)
    lo = start.clamp(min=0).minimum(sizes)
    hi = (start + windows).clamp(min=0).minimum(sizes)  # exclusive
    sat_strides = [math.prod(s + 1 for s in spatial[d + 1:]) for d in range(ndim)]

    # Inclusion–exclusion over the 2**ndim corners: sign (-1)**(number of lower bounds).
    counts = 0
    for corner in itertools.product((0, 1), repeat=ndim):
        flat = 0
        for d, use_hi in enumerate(corner):
            flat = flat + (hi if use_hi else lo)[..., d] * sat_strides[d]
        # flat is (B, W, N); W·N spelled out because with B = 0 reshape cannot infer a -1
        index = flat.reshape(batch, 1, flat.shape[1] * flat.shape[2]).expand(-1, num_classes, -1)
        box = sat.gather(2, index).view(batch, num_classes, *flat.shape[1:])
        sign = (-1) ** (ndim - sum(corner))
        counts = counts + sign * box
    counts = counts.permute(0, 2, 3, 1)  # (B, W, N, K)

    total = counts.sum(dim=-1, keepdim=True)
    phi = counts.float() / total.clamp(min=1).float()
    return phi, total.squeeze(-1) > 0


# --------------------------------------------------------------------------------------------
# §2–§3 Label affinity and PDCR
# --------------------------------------------------------------------------------------------


def patch_affinity(phi_a, phi_b=None, divergence="tv"):
    """Label affinity a = 1 - d between two sets of class-ratio vectors (SPEC §2).

    Args:
        phi_a: Row ratios.
        phi_b: Column ratios; defaults to ``phi_a``.
        divergence: ``"tv"``: d = ½ Σ_k |φ_ik − φ_jk| (in [0, 1]); ``"fg_l1"``:
            d = Σ_{k≥1} |φ_ik − φ_jk| (foreground classes only, no ½; a may be negative).

    Returns:
        The affinity matrix, in the dtype of ``phi_a``.

    Shape:
        phi_a ``(B, N, K)`` or ``(B, W, N, K)``, phi_b ``(B, M, K)`` or ``(B, W, M, K)``,
        output ``(B, N, M)`` or ``(B, W, N, M)``.

    Example:
        >>> phi = torch.tensor([[[1.0, 0.0], [0.25, 0.75]]])
        >>> patch_affinity(phi)
        tensor([[[1.0000, 0.2500],
                 [0.2500, 1.0000]]])
    """
    if phi_b is None:
        phi_b = phi_a
    diff = (phi_a.unsqueeze(-2) - phi_b.unsqueeze(-3)).abs()  # (..., N, M, K)
    if divergence == "tv":
        dist = 0.5 * diff.sum(dim=-1)
    else:  # "fg_l1": class 0 is background
        dist = diff[..., 1:].sum(dim=-1)
    return 1 - dist


def _masked_logsumexp(logits, mask, dim=-1):
    """LSE over the entries where ``mask`` holds; 0 (not −inf) for rows with no such entry,
    so that those rows stay finite in the backward pass too."""
    has_any = mask.any(dim=dim, keepdim=True)
    logits = logits.masked_fill(~mask, float("-inf")).masked_fill(~has_any, 0.0)
    return torch.logsumexp(logits, dim=dim)


def pdcr_loss_from_ratios(feats, phi, *, feats_b=None, phi_b=None, valid=None, valid_b=None,
                          tau=0.5, orientation="paper", divergence="tv", exclude_self=False,
                          reduction="mean"):
    """PDCR loss from sampled features and their label ratios (SPEC §3, the core).

    With ŝ_ij = (cos(f_i, g_j) − 1)/τ, weights from the affinity a and d = 1 − a
    (``"paper"``: w⁺ = a, w⁻ = d; ``"swapped"``: w⁺ = d, w⁻ = a) and sums over the n_i valid
    columns, each valid row i and window w gives
    r_i^w = LSE_k(ŝ_ik w⁻_ik) − (1/n_i) Σ_j ŝ_ij w⁺_ij, and r_i is the mean over windows.

    Args:
        feats: Row features.
        phi: Row class ratios per window size.
        feats_b: Column features for cross-layer pairs; ``None`` means columns = rows.
        phi_b: Column class ratios (with ``feats_b``).
        valid: bool row mask (rows and, intra-layer, columns); ``None`` = all valid.
        valid_b: bool column mask for cross-layer pairs; ``None`` = all valid. Intra-layer
            the column mask is ``valid``.
        tau: Temperature τ.
        orientation: ``"paper"`` or ``"swapped"`` (official 2D release).
        divergence: ``"tv"`` or ``"fg_l1"``, see :func:`patch_affinity`.
        exclude_self: Drop the pair j = i (intra-layer only).
        reduction: ``"mean"`` over valid rows, ``"sum"`` = Σ_i n_i r_i, or ``"none"``.
            Rows with n_i = 0 count as invalid.

    Returns:
        Scalar loss, or ``(B, N)`` per-row losses (0 at invalid rows) for ``"none"``, in the
        dtype of ``feats``.

    Shape:
        feats ``(B, N, C)``, phi ``(B, W, N, K)``, feats_b ``(B, M, C)``,
        phi_b ``(B, W, M, K)``, valid ``(B, N)``, valid_b ``(B, M)``.

    Example:
        >>> feats, phi = torch.randn(2, 16, 8), torch.rand(2, 3, 16, 2)
        >>> phi = phi / phi.sum(-1, keepdim=True)
        >>> pdcr_loss_from_ratios(feats, phi).shape
        torch.Size([])
    """
    batch, num_rows = feats.shape[:2]
    cross = feats_b is not None
    if valid is None:
        valid = torch.ones(batch, num_rows, dtype=torch.bool, device=feats.device)
    if not cross:
        feats_b, phi_b, valid_b = feats, phi, valid
    elif valid_b is None:
        valid_b = torch.ones(feats_b.shape[:2], dtype=torch.bool, device=feats.device)
    dtype = _acc_dtype(feats, feats_b)
    # Invalid locations drop out even when they hold NaN (SPEC §9): masking the products is not
    # enough, the matmul's backward would still multiply their zero gradients by NaN.
    feats = torch.where(valid.unsqueeze(-1), feats, torch.zeros_like(feats))
    feats_b = torch.where(valid_b.unsqueeze(-1), feats_b, torch.zeros_like(feats_b))

    f = F.normalize(feats.to(dtype), dim=-1, eps=_NORM_EPS)
    g = F.normalize(feats_b.to(dtype), dim=-1, eps=_NORM_EPS)
    s_hat = ((f @ g.transpose(1, 2) - 1) / tau).unsqueeze(1)  # (B, 1, N, M)

    affinity = patch_affinity(phi.to(dtype), phi_b.to(dtype), divergence)  # (B, W, N, M)
    if orientation == "paper":
        w_pos, w_neg = affinity, 1 - affinity
    else:  # "swapped"
        w_pos, w_neg = 1 - affinity, affinity

    columns = valid_b.unsqueeze(1).expand(-1, num_rows, -1)  # (B, N, M)
    if exclude_self and not cross:
        columns = columns & ~torch.eye(num_rows, dtype=torch.bool, device=feats.device)
    n_cols = columns.sum(dim=-1)  # (B, N)
    columns = columns.unsqueeze(1)  # broadcast over windows

    lse = _masked_logsumexp(s_hat * w_neg, columns)
    positive = (s_hat * w_pos).masked_fill(~columns, 0.0).sum(dim=-1)
    row_loss = (lse - positive / n_cols.clamp(min=1).unsqueeze(1)).mean(dim=1)  # (B, N)

    rows = valid & (n_cols > 0)
    row_loss = torch.where(rows, row_loss, torch.zeros_like(row_loss))
    # "mean": a batch without valid rows gives 0 (sum over nothing), graph kept
    return reduce_rows(row_loss, rows, reduction, weight=n_cols, dtype=feats.dtype)


def _sampled_ratios(features, labels, locations, window_sizes, num_classes, ignore_index):
    """Features, φ and row validity at the sampled locations of one feature map."""
    centers = grid_centers(features.shape[2:], labels.shape[1:]).to(labels.device)
    phi, valid_w = patch_label_ratios(labels, centers[locations], window_sizes, num_classes,
                                      ignore_index)
    # Windows are nested, so "valid in every window" is the smallest window's validity.
    return gather_locations(features, locations), phi, valid_w.all(dim=1)


def pdcr_loss(features, labels, *, num_classes, window_sizes=(5, 7, 9), num_samples=None,
              sampling="grid", tau=0.5, ignore_index=None, features_b=None, generator=None,
              **core_kwargs):
    """PDCR loss on a feature map and an input-resolution label map (SPEC §3, drop-in).

    Samples locations (:func:`affseg._sampling.sample_locations`), maps them to input-space
    centres (:func:`grid_centers`), computes φ (:func:`patch_label_ratios`) and calls
    :func:`pdcr_loss_from_ratios`. With ``features_b`` the columns are that map's own sampled
    locations, with φ from the same windows (cross-layer pairs); it is sampled after
    ``features``, with the same ``num_samples`` and ``sampling``.

    Args:
        features: Hidden feature map.
        labels: int64 labels at input resolution.
        num_classes: Number of classes K.
        window_sizes: Label window sides in input pixels.
        num_samples: Rows per image, or ``None`` for every location (dense).
        sampling: ``"grid"``, ``"random"`` or ``"stride"``.
        tau: Temperature τ.
        ignore_index: Label value left out of φ.
        features_b: Optional second feature map (any resolution) for cross-layer pairs.
        generator: ``torch.Generator`` for ``sampling="random"``.
        **core_kwargs: ``orientation``, ``divergence``, ``exclude_self``, ``reduction``.

    Returns:
        The loss, as :func:`pdcr_loss_from_ratios` returns it.

    Shape:
        features ``(B, C, *s)``, labels ``(B, *S)``, features_b ``(B, C, *s_b)``.

    Example:
        >>> features = torch.randn(2, 8, 6, 6, requires_grad=True)
        >>> labels = torch.randint(0, 3, (2, 24, 24))
        >>> pdcr_loss(features, labels, num_classes=3, num_samples=16).backward()
    """
    def sample(feature_map):
        locations = sample_locations(feature_map.shape[2:], num_samples, sampling,
                                     feature_map.shape[0], generator, feature_map.device)
        return _sampled_ratios(feature_map, labels, locations, window_sizes, num_classes,
                               ignore_index)

    feats, phi, valid = sample(features)
    if features_b is None:
        return pdcr_loss_from_ratios(feats, phi, valid=valid, tau=tau, **core_kwargs)
    feats_b, phi_b, valid_b = sample(features_b)
    return pdcr_loss_from_ratios(feats, phi, feats_b=feats_b, phi_b=phi_b, valid=valid,
                                 valid_b=valid_b, tau=tau, **core_kwargs)


# --------------------------------------------------------------------------------------------
# §4 Soft supervised contrastive loss
# --------------------------------------------------------------------------------------------


def soft_supcon_loss(features, labels, *, tau=0.1, reduction="mean", ignore_index=None):
    """Supervised contrastive loss with hard or soft labels (SPEC §4).

    With s_ij = cos(f_i, f_j)/τ and affinity w_ij (one-hot agreement for integer labels,
    φ_i·φ_j for soft labels), each row with Σ_{j≠i} w_ij > 0 gives
    ℓ_i = −Σ_{j≠i} w_ij (s_ij − LSE_{k≠i} s_ik) / Σ_{j≠i} w_ij. For integer labels this is
    SupCon (Khosla et al. 2020, "out" form).

    Args:
        features: Embeddings; with a batch dim, pairs stay within each item.
        labels: int class labels or float soft label vectors.
        tau: Temperature τ.
        reduction: ``"mean"`` over counted rows, ``"sum"``, or ``"none"``.
        ignore_index: Integer label whose rows drop out as rows and columns (integer labels
            only).

    Returns:
        Scalar loss, or per-row losses shaped like ``labels``' leading dims (0 at rows not
        counted) for ``"none"``; in the dtype of ``features``.

    Shape:
        features ``(N, C)`` or ``(B, N, C)``; labels ``(N,)``/``(B, N)`` int or
        ``(N, K)``/``(B, N, K)`` float.

    Example:
        >>> features = torch.randn(8, 4)
        >>> soft_supcon_loss(features, torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])).shape
        torch.Size([])
    """
    dtype = _acc_dtype(features)
    unbatched = features.dim() == 2
    if unbatched:
        features, labels = features.unsqueeze(0), labels.unsqueeze(0)
    n = features.shape[1]

    if labels.is_floating_point():
        soft = labels.to(dtype)
        weights = soft @ soft.transpose(1, 2)
        keep = torch.ones(labels.shape[:2], dtype=torch.bool, device=labels.device)
    else:
        weights = (labels.unsqueeze(2) == labels.unsqueeze(1)).to(dtype)
        keep = torch.ones_like(labels, dtype=torch.bool)
        if ignore_index is not None:
            keep = labels != ignore_index
            # Ignored rows drop out even when they hold NaN: 0 weight times a NaN similarity
            # would still be NaN, in the forward and in the matmul's backward.
            features = torch.where(keep.unsqueeze(-1), features, torch.zeros_like(features))

    f = F.normalize(features.to(dtype), dim=-1, eps=_NORM_EPS)
    sim = f @ f.transpose(1, 2) / tau  # (B, N, N)
    pairs = keep.unsqueeze(2) & keep.unsqueeze(1)
    pairs &= ~torch.eye(n, dtype=torch.bool, device=features.device)

    weights = weights.masked_fill(~pairs, 0.0)
    weight_sum = weights.sum(dim=-1)
    lse = _masked_logsumexp(sim, pairs)
    positive = (weights * sim).sum(dim=-1)
    counted = weight_sum > 0  # ignored rows have no pairs, hence no weight
    row_loss = -(positive - weight_sum * lse) / weight_sum.masked_fill(~counted, 1.0)
    row_loss = torch.where(counted, row_loss, torch.zeros_like(row_loss))

    if unbatched:
        row_loss, counted = row_loss.squeeze(0), counted.squeeze(0)
    # "mean" over counted rows; none counted gives 0 with the graph kept
    return reduce_rows(row_loss, counted, reduction, dtype=features.dtype)


# --------------------------------------------------------------------------------------------
# §5 Patch entropy
# --------------------------------------------------------------------------------------------


def _tile_sum(x, patch):
    """Sum (B, C, *S) over non-overlapping tiles of side ``patch`` → (B, C, *P).

    Zero padding up to a whole number of tiles keeps partial border tiles exact (average
    pooling with ``ceil_mode`` would not divide by the right count)."""
    spatial = x.shape[2:]
    grid = [math.ceil(s / p) for s, p in zip(spatial, patch)]
    pad = []
    for s, p, g in reversed(list(zip(spatial, patch, grid))):
        pad += [0, g * p - s]
    x = F.pad(x, pad)
    x = x.reshape(*x.shape[:2], *itertools.chain.from_iterable(zip(grid, patch)))
    return x.sum(dim=tuple(range(3, x.dim(), 2)))


def patch_entropy(logits, patch_size, *, mode="binary", class_mask=None):
    """Average patch entropy and confidence over non-overlapping tiles (SPEC §5).

    p = softmax over classes. ``"binary"``: h_k = −[p_k log p_k + (1−p_k) log(1−p_k)] per
    class; ``"shannon"``: H = −Σ_k p_k log p_k / log K. Each is averaged over the tile's pixels,
    or, with ``class_mask``, over the tile's pixels of class k only. 0·log 0 = 0.

    Args:
        logits: Class scores.
        patch_size: Tile side, int or one int per spatial dim; border tiles may be partial.
        mode: ``"binary"`` or ``"shannon"``.
        class_mask: Optional int labels; values outside ``[0, K)`` belong to no class.

    Returns:
        :class:`PatchStats` ``(entropy, mean_conf, count)``, detached, float32 (float64 for
        float64 logits); count is int64.

    Shape:
        logits ``(B, K, *S)``, class_mask ``(B, *S)``; outputs ``(B, K, *P)`` (entropy
        ``(B, 1, *P)`` for shannon without class_mask), ``P_d = ceil(S_d / patch_d)``.

    Example:
        >>> stats = patch_entropy(torch.zeros(1, 2, 5, 5), 4)
        >>> stats.entropy.shape, stats.count[0, 0].tolist()
        (torch.Size([1, 2, 2, 2]), [[16, 4], [4, 1]])
    """
    dtype = _acc_dtype(logits)
    batch, num_classes, *spatial = logits.shape
    ndim = len(spatial)
    patch = (patch_size,) * ndim if isinstance(patch_size, int) else tuple(patch_size)

    log_p = torch.log_softmax(logits.detach().to(dtype), dim=1)
    p = log_p.exp()
    p_log_p = p * log_p  # log_p is finite, so underflowed p gives exactly 0
    if mode == "binary":
        # 1 − p_k as the sum of the other classes' probabilities: no cancellation when p_k ≈ 1,
        # and it is exactly 0 only when they all underflow (then xlogy gives 0, not NaN).
        not_k = 1 - torch.eye(num_classes, dtype=dtype, device=logits.device)
        others = torch.einsum("jk,bj...->bk...", not_k, p)
        entropy = -(p_log_p + torch.xlogy(others, others))
    else:
        entropy = -p_log_p.sum(dim=1, keepdim=True) / math.log(num_classes)

    if class_mask is None:
        ones = torch.ones(1, 1, *spatial, dtype=torch.long, device=logits.device)
        count = _tile_sum(ones, patch)  # every tile holds at least one pixel
        entropy_mean = _tile_sum(entropy, patch) / count
        mean_conf = _tile_sum(p, patch) / count
        count = count.expand(batch, num_classes, *[-1] * ndim)
    else:
        classes = torch.arange(num_classes, device=logits.device).view(1, -1, *[1] * ndim)
        member = class_mask.unsqueeze(1) == classes  # (B, K, *S)
        count = _tile_sum(member.long(), patch)
        # A tile without class-k pixels has zero sums, so dividing by 1 yields the 0 we want.
        denom = count.clamp(min=1)
        entropy_mean = _tile_sum(entropy * member, patch) / denom
        mean_conf = _tile_sum(p * member, patch) / denom
    return PatchStats(entropy_mean, mean_conf, count.contiguous())


# --------------------------------------------------------------------------------------------
# §6 UAFS
# --------------------------------------------------------------------------------------------


def uafs_reweight(x, att_logits):
    """Uncertainty-aware feature re-weighting ``x * (2 − U)`` (SPEC §6).

    U = −Σ_m p_m log p_m / log M with p = softmax over the M channels of ``att_logits``, so U
    lies in [0, 1] and confident locations get weights near 2, uncertain ones near 1.

    Args:
        x: Features to re-weight.
        att_logits: Attention logits, M ≥ 2 channels, same spatial shape as ``x``.

    Returns:
        The re-weighted features, in the dtype of ``x``; differentiable in both inputs.

    Shape:
        x ``(B, C, *S)``, att_logits ``(B, M, *S)``, output ``(B, C, *S)``.

    Example:
        >>> y = uafs_reweight(torch.ones(1, 3, 4, 4), torch.zeros(1, 2, 4, 4))
        >>> bool((y == 1).all())  # uniform attention: U = 1, weight 1
        True
    """
    dtype = _acc_dtype(x, att_logits)
    log_p = torch.log_softmax(att_logits.to(dtype), dim=1)
    # log_p is finite, so p·log p is exactly 0 where p underflows (0·log 0 = 0).
    uncertainty = -(log_p.exp() * log_p).sum(dim=1, keepdim=True) / math.log(att_logits.shape[1])
    return (x.to(dtype) * (2 - uncertainty)).to(x.dtype)


# --------------------------------------------------------------------------------------------
# §7 Semi-AGCL losses
# --------------------------------------------------------------------------------------------


def affinity_matrix(y_t, y_s, inv_two_sigma2, l1=False):
    """A_ij = exp(−dist(y_t_i, y_s_j) · inv_two_sigma2), dist = squared L2 or L1 (Semi-AGCL Eq. 2).

    Builds the (N, M, D) difference tensor, which the fused kernels avoid.

    Args:
        y_t: Teacher rows. y_s: Student columns.
        inv_two_sigma2: 1/(2σ²).
        l1: L1 distance instead of squared L2.

    Returns:
        The affinity matrix.

    Shape:
        y_t ``(N, D)``, y_s ``(M, D)`` → ``(N, M)``.

    Example:
        >>> affinity_matrix(torch.zeros(2, 3), torch.zeros(1, 3), 2.0)
        tensor([[1.],
                [1.]])
    """
    diff = y_t.unsqueeze(1) - y_s.unsqueeze(0)
    dist = diff.abs().sum(-1) if l1 else diff.square().sum(-1)
    return torch.exp(-dist * inv_two_sigma2)


def graph_loss_from_affinity(affinity, finite, *, gamma, diag, reduction, dtype, return_diag=False):
    """Semi-AGCL Eq. 3 from the affinity matrix A of finite stand-ins (shared with the fused path).

    ℓ_i = (1 − A_ii) (``diag="one_minus"``) or A_ii (``"literal"``), plus (γ/N)‖A‖_*; the nuclear
    norm's gradient is the polar factor U Vᵀ (torch's svdvals backward), finite when A is
    rank-deficient or has repeated singular values. ``finite`` (a bool scalar tensor) False makes
    every ℓ_i NaN (SPEC §9).
    """
    num_nodes = affinity.shape[0]
    diag_term = affinity.diagonal()
    if diag == "one_minus":
        diag_term = 1 - diag_term
    row = diag_term + gamma * torch.linalg.svdvals(affinity).sum() / num_nodes  # ℓ_i, (N,)
    row = row * torch.where(finite, 1.0, float("nan")).to(row.dtype)
    loss = reduce_rows(row, None, reduction, dtype=dtype)
    if return_diag:
        return loss, affinity.diagonal().detach().to(dtype)
    return loss


def finite_stand_ins(*tensors):
    """(all finite?, the tensors with non-finite entries zeroed): the SVD raises LinAlgError on NaN,
    and an Inf only zeroes entries of A (a finite loss), so the graph is built from stand-ins and
    the result multiplied by NaN instead, without a host sync."""
    finite = torch.stack([all_finite(t) for t in tensors]).all()
    return finite, [torch.where(torch.isfinite(t), t, torch.zeros_like(t)) for t in tensors]


def affinity_graph_loss(y_t, y_s, *, sigma=0.5, gamma=0.1, distance="sqeuclidean",
                        diag="one_minus", reduction="mean", return_diag=False):
    """Teacher–student affinity-graph loss (Semi-AGCL Eq. 3, SPEC §7).

    A_ij = exp(−dist(ŷᵗ_i, ŷˢ_j) / (2σ²)) and
    L = (1/N) Σ_i (1 − A_ii) + (γ/N) ‖A‖_* (nuclear norm); ``diag="literal"`` uses
    +(1/N) Σ_i A_ii instead. Per node, ℓ_i = (1 − A_ii) + (γ/N) ‖A‖_*, so L = mean_i ℓ_i.
    NaN or Inf in either input makes every ℓ_i NaN (SPEC §9).

    Args:
        y_t: Teacher node vectors (detached here).
        y_s: Student node vectors; the only input that receives gradient.
        sigma: Gaussian kernel width σ.
        gamma: Nuclear-norm weight γ (may be negative).
        distance: ``"sqeuclidean"`` (squared L2) or ``"l1"``.
        diag: ``"one_minus"`` or ``"literal"``.
        reduction: ``"mean"`` (as above), ``"sum"`` (N times it) or ``"none"`` (ℓ_i).
        return_diag: also return A_ii (detached), the α of Semi-AGCL Eq. 6.

    Returns:
        Scalar loss, or ``(N,)`` per-node terms for ``"none"``, in the dtype of ``y_s``;
        0 (with a graph) when N = 0. With ``return_diag``, ``(loss, A_ii)``.

    Shape:
        y_t ``(N, D)``, y_s ``(N, D)``.

    Example:
        >>> y = torch.softmax(torch.randn(6, 3), dim=1)
        >>> affinity_graph_loss(y, y, gamma=0.0)
        tensor(0.)
    """
    num_nodes = y_s.shape[0]
    if num_nodes == 0:  # SPEC §9: zero loss that still has a grad_fn
        loss = reduce_rows(y_s.sum(-1) * 0, None, reduction)
        return (loss, y_s.new_zeros(0)) if return_diag else loss
    dtype = _acc_dtype(y_t, y_s)
    finite, (y_t, y_s_acc) = finite_stand_ins(y_t.detach().to(dtype), y_s.to(dtype))
    affinity = affinity_matrix(y_t, y_s_acc, 1.0 / (2 * sigma**2), distance == "l1")
    return graph_loss_from_affinity(affinity, finite, gamma=gamma, diag=diag, reduction=reduction, dtype=y_s.dtype,
                                    return_diag=return_diag)


def all_finite(t):
    """A 0-d bool tensor: every element of ``t`` is finite. No t-sized temporary (``isfinite(t)``
    builds a bool copy): the min and the max are finite iff every element is, NaN propagating."""
    if t.numel() == 0:
        return torch.ones((), dtype=torch.bool, device=t.device)
    lo, hi = torch.aminmax(t.detach())
    return torch.isfinite(lo) & torch.isfinite(hi)


def unit_row_scales(rows):
    """1 / max(‖row‖, eps) per row: ``rows * scales[:, None]`` is ``F.normalize(rows)`` (up to one
    rounding), so the Semi-AGCL kernels take the raw queue and these (Q,) scales instead of a
    normalised (Q, C) copy."""
    return 1.0 / torch.linalg.vector_norm(rows, dim=-1).clamp_min(_NORM_EPS)


def hard_negatives(q, neg, neg_scale, q_cls, neg_cls, inv_tau, n_hard, use_classes):
    """Per query: the log-sum-exp of its queue logits and its hardest negatives (SPEC §7).

    The queue's unit rows are ``neg_scale[:, None] * neg`` (see :func:`unit_row_scales`). The valid
    negatives of query b are all queue entries, or with ``use_classes`` those whose class differs
    from b's. Builds the (B, Q) similarity matrix, which the fused kernels avoid.

    Returns:
        ``(queue_lse (B,), hard_idx (B, H), hard_count (B,))``, H = min(n_hard, Q): the
        log-sum-exp of (q·n)·inv_tau over valid n (−inf when none), the indices of the H valid n
        with the largest q·n, descending (−1 after hard_count_b = min(H, #valid)).
    """
    neg = neg * neg_scale[:, None]
    sim = q @ neg.T
    valid = torch.ones_like(sim, dtype=torch.bool)
    if use_classes:
        valid = q_cls[:, None] != neg_cls[None, :]
    logits = torch.where(valid, sim * inv_tau, torch.full_like(sim, -math.inf))
    queue_lse = torch.logsumexp(logits, dim=1) if neg.shape[0] else q.new_full(q.shape[:1], -math.inf)
    hard = min(n_hard, neg.shape[0])
    masked = torch.where(valid, sim, torch.full_like(sim, -math.inf)).detach()
    idx = masked.topk(hard, dim=1, sorted=True).indices
    count = valid.sum(1).clamp(max=hard)
    idx = torch.where(torch.arange(hard, device=q.device) < count[:, None], idx, torch.full_like(idx, -1))
    return queue_lse, idx, count


def mixed_logits(q, neg, neg_scale, alpha, hard_idx, hard_count, pairs, inv_tau):
    """Logits (q·h)·inv_tau of the mixed negatives h = normalise(α_i n̂_i + (1 − α_i) n̂_j) (n̂ the unit
    rows ``neg_scale[:, None] * neg``), where
    (i, j) are the hard negatives at positions ``pairs`` of each query's list; −inf for pairs
    beyond the query's hard_count (SPEC §7). Builds every h, which the fused kernels avoid."""
    ok = (pairs < hard_count[:, None, None]).all(-1) & (pairs[..., 0] != pairs[..., 1])
    safe = torch.where(ok[..., None], pairs, torch.zeros_like(pairs))
    first = hard_idx.gather(1, safe[..., 0]).clamp(min=0)
    second = hard_idx.gather(1, safe[..., 1]).clamp(min=0)
    if neg.shape[0] == 0:
        return q.new_full(pairs.shape[:2], -math.inf)
    neg = neg * neg_scale[:, None]
    mix = alpha[first].unsqueeze(-1)
    mixed = F.normalize(mix * neg[first] + (1 - mix) * neg[second], dim=-1, eps=_NORM_EPS)  # (B, P, C)
    logits = torch.einsum("bc,bpc->bp", q, mixed) * inv_tau
    return torch.where(ok, logits, torch.full_like(logits, -math.inf))


def infonce_from_logits(pos, queue_lse, mixed, mode):
    """−log(e^pos / (e^pos + [e^queue_lse] + Σ e^mixed)) per query (Semi-AGCL Eq. 4/7)."""
    terms = [pos[:, None], mixed] if mode == "mixed_only" else [pos[:, None], queue_lse[:, None], mixed]
    return torch.logsumexp(torch.cat(terms, dim=1), dim=1) - pos


def mixed_negative_infonce(q, k_pos, negatives, alpha, *, tau=0.1, n_hard=256, n_mix=256,
                           mode="queue_plus_mixed", generator=None, pairs=None, reduction="mean",
                           q_classes=None, neg_classes=None):
    """InfoNCE with affinity-mixed hard negatives (Semi-AGCL Eqs. 4, 6, 7; SPEC §7).

    For each query, the top-min(n_hard, Q) negatives by qᵀn are ranked; pair positions (i, j)
    in that list give h = normalise(α_i n_i + (1 − α_i) n_j). The loss is
    −log(e^{qᵀk/τ} / (e^{qᵀk/τ} + Σ_{n∈Q} e^{qᵀn/τ} + Σ_h e^{qᵀh/τ})) per query, reduced over
    queries; ``mode="mixed_only"`` drops the queue sum. With ``q_classes`` and ``neg_classes``, a
    query's negatives are only the entries of other classes (the paper's K⁻); pairs that fall
    beyond a query's count of such negatives are dropped.

    Args:
        q: Queries (gradient flows here only).
        k_pos: Positive keys, detached.
        negatives: Negative queue, detached.
        alpha: Mixing weight of each negative, detached.
        tau: Temperature τ.
        n_hard: Length of each query's hard-negative list.
        n_mix: Mixed negatives per query.
        mode: ``"queue_plus_mixed"`` (MoCHi) or ``"mixed_only"`` (literal Eq. 7).
        generator: Drives :func:`affseg._sampling.draw_mix_pairs` when ``pairs`` is None.
        pairs: Optional int64 positions into each query's top list, i ≠ j.
        reduction: ``"mean"`` over queries, ``"sum"`` or ``"none"`` (per query).
        q_classes, neg_classes: Optional int classes of the queries and of the queue entries.

    Returns:
        Scalar loss, or ``(B,)`` per-query losses for ``"none"``, in the dtype of ``q``. With
        fewer than 2 hard negatives there are no mixed terms.

    Shape:
        q, k_pos ``(B, C)``, negatives ``(Q, C)``, alpha ``(Q,)``, pairs ``(B, n_mix, 2)``,
        q_classes ``(B,)``, neg_classes ``(Q,)``.

    Example:
        >>> q, k, neg = torch.randn(4, 8), torch.randn(4, 8), torch.randn(32, 8)
        >>> gen = torch.Generator().manual_seed(0)
        >>> loss = mixed_negative_infonce(q, k, neg, torch.rand(32), n_hard=8, n_mix=4,
        ...                               generator=gen)
    """
    if pairs is None:
        pairs = draw_mix_pairs(q.shape[0], min(n_hard, negatives.shape[0]), n_mix, generator, q.device)
    return infonce_with(hard_negatives, mixed_logits, q, k_pos, negatives, alpha, q_classes, neg_classes, pairs,
                        tau=tau, n_hard=n_hard, mode=mode, reduction=reduction)


def infonce_with(hard_negatives_op, mixed_logits_op, q, k_pos, negatives, alpha, q_classes, neg_classes, pairs, *,
                 tau, n_hard, mode, reduction):
    """:func:`mixed_negative_infonce` with its two steps supplied, so the fused path (the kernels)
    and the reference (the functions above) share everything around them."""
    dtype = _acc_dtype(q, k_pos, negatives)
    # SPEC §9: a non-finite input gives NaN even where it does not reach a logit (an α or a
    # negative outside every query's drawn pairs, the queue in "mixed_only" mode).
    finite = torch.stack([all_finite(t) for t in (q, k_pos, negatives, alpha)]).all()
    q_hat = F.normalize(q.to(dtype), dim=-1, eps=_NORM_EPS).contiguous()
    k_hat = F.normalize(k_pos.detach().to(dtype), dim=-1, eps=_NORM_EPS)
    # The queue stays raw (no normalised (Q, C) copy: it is the largest tensor of the loss).
    neg = negatives.detach().to(dtype).contiguous()
    neg_scale = unit_row_scales(neg)
    alpha = alpha.detach().to(dtype).contiguous()
    use_classes = q_classes is not None
    q_cls = (q_classes if use_classes else q.new_zeros(q.shape[0], dtype=torch.long)).long().contiguous()
    neg_cls = (neg_classes if use_classes else q.new_zeros(negatives.shape[0], dtype=torch.long)).long().contiguous()
    inv_tau = 1.0 / tau
    queue_lse, hard_idx, hard_count = hard_negatives_op(q_hat, neg, neg_scale, q_cls, neg_cls, inv_tau, n_hard,
                                                        use_classes)
    mixed = mixed_logits_op(q_hat, neg, neg_scale, alpha, hard_idx, hard_count, pairs.contiguous(), inv_tau)
    per_query = infonce_from_logits((q_hat * k_hat).sum(-1) * inv_tau, queue_lse, mixed, mode)
    per_query = per_query * torch.where(finite, 1.0, float("nan")).to(dtype)
    # "mean" divides by a clamped count, so an empty batch gives 0 rather than NaN.
    return reduce_rows(per_query, None, reduction, dtype=q.dtype)
