"""Intensity normalisation, resampling of images and labels, and random crops (plain torch)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from affseg import _validate

NORMALIZATIONS = ("zscore", "minmax", "none")


def normalize_intensity(image: torch.Tensor, mode: str = "zscore") -> torch.Tensor:
    """Per-channel intensity normalisation of one image or volume.

    Args:
        image: float tensor (C, *S), one case (a whole volume: normalise before slicing it).
        mode: "zscore" (subtract the mean, divide by the standard deviation, over all voxels of
            the channel; a constant channel becomes 0), "minmax" (rescale to [0, 1]; a constant
            channel becomes 0) or "none".

    Returns:
        A new float32 tensor of the same shape.

    Shape:
        (C, *S) -> (C, *S).

    Raises:
        ValueError: unknown mode. TypeError: image is not a floating-point tensor.

    Example:
        >>> x = normalize_intensity(torch.tensor([[0.0, 2.0, 4.0]]), "minmax")
        >>> x.tolist()
        [[0.0, 0.5, 1.0]]
    """
    _validate.choice(mode, "normalize", NORMALIZATIONS)
    _validate.floating(image, "image")
    x = image.to(torch.float32)
    if mode == "none":
        return x.clone()
    out = torch.empty_like(x)
    for c in range(x.shape[0]):  # statistics in float64, one channel at a time (bounded memory)
        v = x[c].to(torch.float64)
        if mode == "zscore":
            shift, scale = v.mean(), v.std(unbiased=False)
        else:
            shift, scale = v.min(), v.max() - v.min()
        scale = scale if scale > 0 else torch.ones_like(scale)
        out[c] = ((v - shift) / scale).to(torch.float32)
    return out


def _interpolate(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(N, C, *S) float -> (N, C, *size): area averaging when no axis grows, else (bi/tri)linear."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[2:]) == size:
        return x
    if all(s <= t for s, t in zip(size, x.shape[2:])):
        return F.interpolate(x, size=size, mode="area")
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def resize_image(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resample an image to a spatial size.

    Shrinking uses area averaging (each output voxel is the mean of the input voxels it covers,
    which does not alias); where any axis grows, (bi/tri)linear interpolation with
    align_corners=False is used for all axes.

    Args:
        image: float tensor (C, *S), S 2D or 3D.
        size: the output spatial size, len(size) == len(S).

    Returns:
        float32 tensor (C, *size) (the input itself when the size already matches).

    Shape:
        (C, *S) -> (C, *size).

    Raises:
        ValueError: len(size) != len(S) or an entry < 1.

    Example:
        >>> resize_image(torch.arange(16.0).view(1, 4, 4), (2, 2)).tolist()
        [[[2.5, 4.5], [10.5, 12.5]]]
    """
    _validate.floating(image, "image")
    size = _validate.int_tuple(tuple(size), "size", length=image.dim() - 1)
    return _interpolate(image.to(torch.float32)[None], size)[0]


def resize_label(label: torch.Tensor, size: Sequence[int], num_classes: int | None = None) -> torch.Tensor:
    """Resample an integer label map by resampling each class's indicator map, then argmax.

    Each class k's map (label == k) is resampled like an image (`resize_image`: area averaging
    when shrinking, so each output voxel gets the class covering most of it; linear when
    growing), and each output voxel takes the class of the largest value (ties go to the lower
    class). Thin structures survive shrinking better than with nearest-neighbour sampling.
    Memory stays at two output-sized maps whatever the number of classes.

    Args:
        label: integer tensor (*S) with values in [0, num_classes).
        size: the output spatial size, len(size) == len(S).
        num_classes: number of classes; default label.max() + 1.

    Returns:
        int64 tensor (*size).

    Shape:
        (*S) -> (*size).

    Raises:
        ValueError: len(size) != len(S), or labels outside [0, num_classes).

    Example:
        >>> lab = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 1], [2, 2, 2, 2]])
        >>> resize_label(lab, (2, 2)).tolist()
        [[0, 1], [2, 2]]
    """
    _validate.integer(label, "label")
    size = _validate.int_tuple(tuple(size), "size", length=label.dim())
    if tuple(label.shape) == size:
        return label.to(torch.int64).clone()
    if num_classes is None:
        num_classes = int(label.max()) + 1 if label.numel() else 1
    _validate.labels_in_range(label, num_classes, None, "label")
    return _resize_label_batch(label[None], size, num_classes)[0]


def _resize_label_batch(label: torch.Tensor, size: Sequence[int], num_classes: int) -> torch.Tensor:
    """(N, *S) int -> (N, *size) int64, as resize_label, one class at a time."""
    best = best_k = None
    for k in range(num_classes):
        p = _interpolate((label == k).to(torch.float32)[:, None], size)[:, 0]
        if best is None:
            best, best_k = p, torch.zeros(p.shape, dtype=torch.int64)
        else:
            better = p > best
            best = torch.where(better, p, best)
            best_k[better] = k
    return best_k


def random_crop(
    image: torch.Tensor,
    label: torch.Tensor | None,
    size: int | Sequence[int],
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A random fixed-size crop of an image and its label (the same window in both).

    For 3D training on patches (and 2D training on crops of large slices). An axis shorter than
    the crop is padded first, evenly on both sides: the image with its per-channel minimum (the
    background of a normalised scan), the label with 0 (background).

    Args:
        image: tensor (C, *S), S 2D or 3D.
        label: tensor (*S), or None for an unlabelled image.
        size: crop size, an int (the same on every axis) or one int per spatial axis.
        generator: torch.Generator for the offsets; default torch's global RNG (use that in
            DataLoader workers, which seed it per worker).

    Returns:
        (image_crop, label_crop): (C, *size) and (*size) (label_crop None when label is None).

    Shape:
        (C, *S), (*S) -> (C, *size), (*size).

    Raises:
        ValueError: label shape differs from the image's spatial shape, or a bad size.

    Example:
        >>> img, lab = torch.randn(1, 40, 50, 60), torch.zeros(40, 50, 60, dtype=torch.long)
        >>> ci, cl = random_crop(img, lab, 32, generator=torch.Generator().manual_seed(0))
        >>> tuple(ci.shape), tuple(cl.shape)
        ((1, 32, 32, 32), (32, 32, 32))
    """
    _validate.tensor(image, "image")
    spatial = tuple(image.shape[1:])
    size = _validate.int_tuple(size, "size", length=len(spatial))
    if label is not None and tuple(label.shape) != spatial:
        raise ValueError(f"label shape {tuple(label.shape)} must equal the image's spatial shape {spatial}")
    short = [max(0, s - n) for s, n in zip(size, spatial)]
    if any(short):
        pad: list[int] = []
        for d in reversed(short):  # F.pad wants the last axis first
            pad += [d // 2, d - d // 2]
        fill = image.reshape(image.shape[0], -1).min(1).values
        image = torch.stack([F.pad(image[c], pad, value=float(fill[c])) for c in range(image.shape[0])])
        if label is not None:
            label = F.pad(label, pad, value=0)
        spatial = tuple(image.shape[1:])
    starts = [
        int(torch.randint(0, n - s + 1, (1,), generator=generator)) if n > s else 0
        for s, n in zip(size, spatial)
    ]
    window = tuple(slice(a, a + s) for a, s in zip(starts, size))
    crop_img = image[(slice(None),) + window].clone()
    crop_lab = label[window].clone() if label is not None else None
    return crop_img, crop_lab


def target_size(
    shape: Sequence[int], size: int | Sequence[int] | None = None, downsample: float | None = None
) -> tuple[int, ...]:
    """The spatial size a sample of spatial `shape` is resampled to: `size` (an int for every axis,
    or one per axis), or each axis divided by `downsample` and rounded (at least 1), or `shape`.

    Args:
        shape: the sample's spatial shape.
        size: the target size, or None.
        downsample: the factor, or None (not both with size).

    Returns:
        A tuple of ints, one per axis of `shape`.

    Shape:
        len(result) == len(shape).

    Raises:
        ValueError: both size and downsample, a bad size or a factor <= 0.

    Example:
        >>> target_size((189, 197), downsample=2), target_size((189, 197), size=64)
        ((95, 99), (64, 64))
    """
    shape = tuple(int(s) for s in shape)
    if size is not None and downsample is not None:
        raise ValueError("pass size or downsample, not both")
    if size is not None:
        return _validate.int_tuple(size, "size", length=len(shape))
    if downsample is not None:
        f = _validate.positive(downsample, "downsample")
        return tuple(max(1, int(s / f + 0.5)) for s in shape)
    return shape
