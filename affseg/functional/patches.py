"""Semi-AGCL's entropy-driven patch sampling and class-masked patch embeddings (SPEC §7).

Both are built on the fused :func:`affseg.patch_entropy` (one pass over the logits) and on
scatter-adds keyed by (image, tile, class) slots, so they hold no K full-size temporaries and loop
over neither tiles nor classes in Python.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from affseg import _validate
from affseg._types import PatchSample
from affseg.functional.entropy import patch_entropy

METRICS = ("entropy", "confidence", "cosine")


def _tile_ids(spatial, patch, device) -> torch.Tensor:
    """Flat raster tile index of every pixel of a ``spatial`` grid tiled by ``patch``: ``spatial``."""
    grid = [math.ceil(s / p) for s, p in zip(spatial, patch)]
    ids = torch.zeros((), dtype=torch.long, device=device)
    for d, (s, p, g) in enumerate(zip(spatial, patch, grid)):
        axis = torch.arange(s, device=device) // p
        ids = ids * g + axis.view(*([1] * d), s, *([1] * (len(spatial) - d - 1)))
    return ids


def _feature_tiles(feature_spatial, strides, patch, grid, device) -> torch.Tensor:
    """The tile (input coordinates) holding the centre of each feature location's stride cell."""
    ids = torch.zeros((), dtype=torch.long, device=device)
    for d, (f, r, p, g) in enumerate(zip(feature_spatial, strides, patch, grid)):
        axis = (torch.arange(f, device=device) * r + r // 2) // p
        ids = ids * g + axis.view(*([1] * d), f, *([1] * (len(feature_spatial) - d - 1)))
    return ids


def _tile_pixels(spatial, patch, device) -> torch.Tensor:
    """Pixels each (possibly partial) tile holds: ``(*P)`` int64."""
    sizes = torch.ones((), dtype=torch.long, device=device)
    for d, (s, p) in enumerate(zip(spatial, patch)):
        g = math.ceil(s / p)
        extent = torch.clamp(s - torch.arange(g, device=device) * p, max=p)
        sizes = sizes * extent.view(*([1] * d), g, *([1] * (len(spatial) - d - 1)))
    return sizes


def _slot_sums(values, class_mask, tiles, num_tiles, num_classes, slots, num_slots):
    """Per selected (image, tile, class) slot, the sum and count of ``values`` over its pixels.

    Args:
        values: ``(B, C, *S)`` per-pixel values.
        class_mask: ``(B, *S)`` class of each pixel (values outside ``[0, K)`` belong to none).
        tiles: ``(*S)`` tile of each pixel.
        slots: ``(B·T·K,)`` int64, the output row of each (image, tile, class) or -1.

    Returns:
        ``(num_slots, C)`` sums and ``(num_slots,)`` pixel counts.
    """
    B, C = values.shape[:2]
    in_range = (class_mask >= 0) & (class_mask < num_classes)
    key = (torch.arange(B, device=values.device).view(B, *([1] * tiles.dim())) * num_tiles + tiles) * num_classes
    key = key + torch.where(in_range, class_mask, torch.zeros_like(class_mask)).long()
    row = torch.where(in_range, slots[key], torch.full_like(key, -1)).flatten()
    keep = row >= 0
    flat = values.flatten(2).transpose(1, 2).reshape(-1, C)[keep]
    sums = torch.zeros(num_slots, C, dtype=values.dtype, device=values.device).index_add_(0, row[keep], flat)
    counts = torch.zeros(num_slots, dtype=values.dtype, device=values.device).index_add_(
        0, row[keep], torch.ones_like(row[keep], dtype=values.dtype))
    return sums, counts


def _slot_table(sample: PatchSample, num_tiles_per_dim, num_classes, batch, device) -> torch.Tensor:
    """(B·T·K,) lookup: the sample index of each (image, tile, class), -1 where none was sampled."""
    T = math.prod(num_tiles_per_dim)
    tile_flat = torch.zeros(sample.tile.shape[0], dtype=torch.long, device=device)
    for d, g in enumerate(num_tiles_per_dim):
        tile_flat = tile_flat * g + sample.tile[:, d]
    slots = torch.full((batch * T * num_classes,), -1, dtype=torch.long, device=device)
    index = (sample.batch * T + tile_flat) * num_classes + sample.cls
    slots[index] = torch.arange(index.numel(), device=device)
    return slots


def _coarse(class_mask, feature_spatial, name):
    """The class of each feature location: the label at the centre of its stride cell."""
    strides = []
    for d, (s, f) in enumerate(zip(class_mask.shape[1:], feature_spatial)):
        if s % f:
            raise ValueError(
                f"{name} must tile the labels by an integer stride per dim: labels {tuple(class_mask.shape[1:])} "
                f"vs {name} {tuple(feature_spatial)} (dim {d})")
        strides.append(s // f)
    index = tuple(slice(r // 2, None, r) for r in strides)
    return class_mask[(slice(None), *index)], strides


def sample_patches(logits, class_mask, patch_size, *, n_per_class=64, metric="entropy", min_fraction=0.05,
                   features=None, generator=None, backend="auto") -> PatchSample:
    """Sample reliable patches per class by average patch entropy (Semi-AGCL §2, SPEC §7).

    The image is tiled without overlap by ``patch_size`` (border tiles are partial). For class k,
    a tile is a candidate when at least ``min_fraction`` of its pixels are of class k in
    ``class_mask``; its class-masked binary entropy Ent^k (Eq. 1, from the fused
    :func:`affseg.patch_entropy`) ranks it, lowest first. Each class present gets
    min(n_per_class, its candidate count) tiles of the whole batch, so classes are balanced. Ties
    (and the order among equal scores) are broken by a random permutation from ``generator``.
    ŷ (``probs``) is the mean softmax over the tile's class-k pixels.

    Args:
        logits: teacher logits (detached inside).
        class_mask: int pseudo- or true labels; values outside ``[0, K)`` belong to no class.
        patch_size: tile side, an int or one per spatial dim.
        n_per_class: the most tiles per class.
        metric: ``"entropy"`` (lowest Ent^k, the paper's), ``"confidence"`` (highest mean p_k, the
            paper's ablation) or ``"cosine"`` (highest cosine between the tile's class-masked
            mean feature and the class's mean feature over the batch; needs ``features``).
        min_fraction: smallest share of the tile's pixels that must be of the class, in [0, 1].
        features: ``(B, C, *s)`` feature map for ``metric="cosine"`` (may be coarser than the
            logits by an integer stride).
        generator: ``torch.Generator`` for the tie-breaking permutation.
        backend: backend of the patch-entropy kernel.

    Returns:
        :class:`PatchSample` ``(batch, tile, cls, score, probs)``, grouped by class, best first.

    Shape:
        logits ``(B, K, *S)``; class_mask ``(B, *S)``; batch, cls, score ``(S,)``; tile
        ``(S, ndim)``; probs ``(S, K)``.

    Raises:
        TypeError/ValueError: bad dtypes or shapes, unknown metric, min_fraction outside [0, 1],
            ``metric="cosine"`` without features.

    Example:
        >>> logits = torch.randn(2, 3, 64, 64)
        >>> sample = affseg.sample_patches(logits, logits.argmax(1), 16, n_per_class=8)
        >>> sample.probs.shape[1], bool((sample.cls.bincount() <= 8).all())
        (3, True)
    """
    _validate.floating(logits, "logits", ndims=(4, 5))
    B, K, *spatial = logits.shape
    if K < 2:
        raise ValueError(f"logits must have K >= 2 classes in dim 1, got shape {tuple(logits.shape)}")
    _validate.integer(class_mask, "class_mask")
    if tuple(class_mask.shape) != (B, *spatial):
        raise ValueError(f"class_mask must have shape {(B, *spatial)} (logits without the class dim), "
                         f"got {tuple(class_mask.shape)}")
    patch = _validate.int_tuple(patch_size, "patch_size", length=len(spatial))
    n_per_class = _validate.int_value(n_per_class, "n_per_class", minimum=1)
    _validate.choice(metric, "metric", METRICS)
    min_fraction = _validate.unit_interval(min_fraction, "min_fraction")
    if metric == "cosine":
        if features is None:
            raise ValueError('metric="cosine" ranks tiles by their features: pass features=(B, C, *s)')
        _validate.floating(features, "features", ndims=(logits.dim(),))
        _validate.dim_match("logits", logits, 0, "features", features, 0, "batch size")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    _validate.same_device(logits=logits, class_mask=class_mask, features=features)
    device = logits.device

    stats = patch_entropy(logits, patch, mode="binary", class_mask=class_mask, backend=backend)
    grid = list(stats.count.shape[2:])
    T = math.prod(grid)
    need = torch.clamp(torch.ceil(min_fraction * _tile_pixels(spatial, patch, device).double()), min=1)
    candidate = (stats.count >= need).transpose(0, 1).reshape(K, B * T)  # (K, B·T)
    if metric == "entropy":
        score = stats.entropy.transpose(0, 1).reshape(K, B * T)
        key = score
    elif metric == "confidence":
        score = stats.mean_conf.transpose(0, 1).reshape(K, B * T)
        key = -score
    else:
        score = _cosine_scores(features.detach(), class_mask, patch, K, B, grid).transpose(0, 1).reshape(K, B * T)
        key = -score
    # A NaN score (NaN/Inf logits or features in the tile's class pixels) ranks first, so that it
    # reaches ŷ and the losses (SPEC §9) instead of sorting after the +inf non-candidates and
    # letting a non-candidate tile into the sample.
    key = torch.nan_to_num(key.to(torch.float64), nan=-math.inf)
    key = torch.where(candidate, key, torch.full_like(key, math.inf))

    # A random permutation first, then a stable sort by the key: equal keys keep a random order
    # that the generator reproduces.
    draw = torch.rand(K, B * T, generator=generator, device=generator.device if generator is not None else "cpu")
    shuffle = draw.to(device).argsort(dim=1)
    order = torch.gather(shuffle, 1, torch.gather(key, 1, shuffle).argsort(dim=1, stable=True))
    taken = torch.arange(B * T, device=device) < candidate.sum(1, keepdim=True).clamp(max=n_per_class)
    cls, position = taken.nonzero(as_tuple=True)  # the one host sync: how many were taken
    flat = order[cls, position]
    batch, tile_flat = flat // T, flat % T
    tile = torch.stack(torch.unravel_index(tile_flat, grid), dim=1) if grid else tile_flat[:, None]
    chosen_score = score[cls, flat]
    sample = PatchSample(batch, tile, cls, chosen_score, None)

    # ŷ: mean softmax over each sampled tile's class-k pixels, summed into its slot.
    slots = _slot_table(sample, grid, K, B, device)
    probs = torch.softmax(logits.detach().to(stats.mean_conf.dtype), dim=1)
    sums, counts = _slot_sums(probs, class_mask, _tile_ids(spatial, patch, device), T, K, slots, flat.numel())
    return sample._replace(probs=sums / counts.clamp(min=1)[:, None])


def _cosine_scores(features, class_mask, patch, K, B, grid):
    """(B, K, *P) cosine between each tile's class-k mean feature and the batch's class-k mean."""
    coarse, strides = _coarse(class_mask, features.shape[2:], "features")
    T = math.prod(grid)
    every = torch.arange(B * T * K, device=features.device)
    tiles = _feature_tiles(features.shape[2:], strides, patch, grid, features.device)
    sums, counts = _slot_sums(features, coarse, tiles, T, K, every, B * T * K)
    sums, counts = sums.view(B, T, K, -1), counts.view(B, T, K)
    class_mean = sums.sum((0, 1)) / counts.sum((0, 1)).clamp(min=1)[:, None]  # (K, C)
    tile_mean = sums / counts.clamp(min=1)[..., None]
    cos = F.cosine_similarity(tile_mean, class_mean[None, None], dim=-1, eps=1e-8)
    return cos.permute(0, 2, 1).reshape(B, K, *grid)


def patch_embed(features, sample, class_mask, patch_size):
    """Mean feature over the class-k pixels of each sampled tile (SPEC §7), in one pass.

    ``features`` may be coarser than ``class_mask`` by an integer stride r per dim: each feature
    location takes the class of the label at the centre of its r-cell and the tile that centre
    falls in. A sampled tile none of whose feature locations is of its class gets a zero vector.
    Differentiable in ``features``.

    Args:
        features: feature map (e.g. the last decoder stage of the student or teacher).
        sample: a :class:`PatchSample` from :func:`sample_patches`.
        class_mask: the int labels the sample was drawn with, at input resolution.
        patch_size: the tile side used by :func:`sample_patches`.

    Returns:
        ``(S, C)`` per-sample mean features.

    Shape:
        features ``(B, C, *s)``; class_mask ``(B, *S)`` with S_d = r_d·s_d.

    Raises:
        TypeError/ValueError: bad dtypes or ranks, mismatched batch or device, a non-integer stride.

    Example:
        >>> logits, feats = torch.randn(2, 3, 64, 64), torch.randn(2, 16, 32, 32)
        >>> sample = affseg.sample_patches(logits, logits.argmax(1), 16, n_per_class=4)
        >>> affseg.patch_embed(feats, sample, logits.argmax(1), 16).shape[1]
        16
    """
    _validate.integer(class_mask, "class_mask", ndims=(3, 4))
    _validate.floating(features, "features", ndims=(class_mask.dim() + 1,))
    _validate.dim_match("class_mask", class_mask, 0, "features", features, 0, "batch size")
    if not isinstance(sample, PatchSample):
        raise TypeError(f"sample must be a PatchSample from affseg.sample_patches, got {type(sample).__name__}")
    _validate.same_device(features=features, class_mask=class_mask, sample=sample.batch)
    spatial = tuple(class_mask.shape[1:])
    patch = _validate.int_tuple(patch_size, "patch_size", length=len(spatial))
    grid = [math.ceil(s / p) for s, p in zip(spatial, patch)]
    coarse, strides = _coarse(class_mask, features.shape[2:], "features")
    centre_tiles = _feature_tiles(features.shape[2:], strides, patch, grid, features.device)
    K = int(sample.probs.shape[1]) if sample.probs is not None else int(sample.cls.max()) + 1
    slots = _slot_table(sample, grid, K, features.shape[0], features.device)
    sums, counts = _slot_sums(features, coarse, centre_tiles, math.prod(grid), K, slots, sample.batch.numel())
    return sums / counts.clamp(min=1)[:, None]
