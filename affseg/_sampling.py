"""Backend-independent random and lattice sampling for affseg.

Every backend calls these helpers before dispatch, so that the same arguments (and the same
generator state) select the same locations and mixing pairs whatever kernel runs afterwards.
Random draws happen on the generator's device (the CPU by default) and are then moved to the
target device, which keeps the draws independent of where the data lives.
"""

import math

import torch


def _draw_device(generator):
    # A generator can only feed draws made on its own device.
    return generator.device if generator is not None else torch.device("cpu")


def _lattice_side(size, num_locations, num_samples, ndim):
    """Smallest n >= 1 with n >= size / g, where g = (num_locations / num_samples) ** (1 / ndim).

    Decided in integers (n**ndim * P >= size**ndim * N) so that rounding in the float root can
    never give a lattice with fewer than N points.
    """
    g = (num_locations / num_samples) ** (1.0 / ndim)
    n = max(1, math.ceil(size / g) - 1)
    while n**ndim * num_locations < size**ndim * num_samples:
        n += 1
    return min(n, size)


def _grid_locations(feature_shape, num_samples):
    ndim = len(feature_shape)
    num_locations = math.prod(feature_shape)
    axes = []
    for size in feature_shape:
        n = _lattice_side(size, num_locations, num_samples, ndim)
        # floor((i + 0.5) * size / n) in integer arithmetic.
        axes.append((2 * torch.arange(n) + 1) * size // (2 * n))
    coords = torch.cartesian_prod(*axes).reshape(-1, ndim)  # raster order, (L, ndim)
    strides = [math.prod(feature_shape[d + 1:]) for d in range(ndim)]
    lattice = (coords * torch.tensor(strides)).sum(dim=1)
    # L >= N by construction; spread the N picks evenly over the raster-ordered lattice.
    picks = torch.arange(num_samples) * lattice.numel() // num_samples
    return lattice[picks]


def sample_locations(feature_shape, num_samples, sampling, batch, generator=None, device=None):
    """Choose the feature-map locations that become PDCR rows.

    Args:
        feature_shape: Spatial shape ``(s_1, ..., s_ndim)`` of the feature map.
        num_samples: Locations per image N, ``1 <= N <= P`` (P = prod(feature_shape)), or
            ``None`` for every location (dense).
        sampling: ``"grid"`` (regular lattice, same for every image), ``"random"`` (uniform
            without replacement, independently per image) or ``"stride"`` (the official 2D
            raster sampler ``1 + (P // N) * t``, clamped to ``P - 1``; may repeat the last
            location).
        batch: Number of images B.
        generator: ``torch.Generator`` for ``"random"``; ignored otherwise.
        device: Device of the returned tensor.

    Returns:
        int64 tensor ``(B, N)`` of flat raster (C-order) indices into the feature map.

    Example:
        >>> sample_locations((4, 4), 4, "grid", batch=1)
        tensor([[ 5,  7, 13, 15]])
    """
    num_locations = math.prod(feature_shape)
    if num_samples is None:
        flat = torch.arange(num_locations)
    elif sampling == "grid":
        flat = _grid_locations(tuple(feature_shape), num_samples)
    elif sampling == "stride":
        step = max(num_locations // num_samples, 1)
        flat = (1 + step * torch.arange(num_samples)).clamp(max=num_locations - 1)
    elif sampling == "random":
        keys = torch.rand(batch, num_locations, generator=generator,
                          device=_draw_device(generator))
        return keys.argsort(dim=1)[:, :num_samples].to(device)
    else:
        raise ValueError(f"sampling must be 'grid', 'random' or 'stride', got {sampling!r}")
    return flat.expand(batch, -1).contiguous().to(device)


def draw_mix_pairs(batch, n_hard, n_mix, generator=None, device=None):
    """Draw the (i, j) positions mixed into synthetic hard negatives (MoCHi / Semi-AGCL Eq. 6).

    i is uniform on ``[0, n_hard)`` and j uniform on the other ``n_hard - 1`` positions, so
    every ordered pair with i != j is equally likely.

    Args:
        batch: Number of queries B.
        n_hard: Length of each query's hard-negative list.
        n_mix: Pairs per query.
        generator: Optional ``torch.Generator``; draws are made on its device.
        device: Device of the returned tensor.

    Returns:
        int64 tensor ``(B, n_mix, 2)`` of positions; ``(B, 0, 2)`` when ``n_hard < 2``.

    Example:
        >>> pairs = draw_mix_pairs(2, 8, 16, torch.Generator().manual_seed(0))
        >>> bool((pairs[..., 0] != pairs[..., 1]).all())
        True
    """
    if n_hard < 2:
        return torch.empty(batch, 0, 2, dtype=torch.long, device=device)
    draw_device = _draw_device(generator)
    i = torch.randint(0, n_hard, (batch, n_mix), generator=generator, device=draw_device)
    j = torch.randint(0, n_hard - 1, (batch, n_mix), generator=generator, device=draw_device)
    j = j + (j >= i).long()
    return torch.stack([i, j], dim=-1).to(device)


def gather_locations(features, locations):
    """Features of a (B, C, *s) map at flat raster locations (B, N) → (B, N, C).

    ``locations=None`` means every location in raster order and returns a view (no copy).
    """
    flat = features.flatten(2)
    if locations is None:
        return flat.transpose(1, 2)
    index = locations.unsqueeze(1).expand(-1, flat.shape[1], -1)
    return flat.gather(2, index).transpose(1, 2)
