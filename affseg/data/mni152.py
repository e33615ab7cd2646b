"""The default data set: the MNI152 T1 template and its grey/white-matter maps, offline via nilearn.

One template brain: a stand-in for a benchmark, not a benchmark. It is real MR anatomy that ships
with nilearn (no download), small enough to train on a CPU, with three tissue classes. But it is
a single, smooth average of 152 registered brains: scores on it say that a pipeline runs and
learns, not how a method compares on patient scans.
"""
from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import torch

from affseg import _validate
from affseg.data._deps import require
from affseg.data.containers import SegmentationData, Split
from affseg.data.split import split_positions
from affseg.data.transforms import NORMALIZATIONS, _interpolate, normalize_intensity, target_size

CLASS_NAMES = ("background", "grey matter", "white matter")
#: A z-plane is used when it holds at least this share of the brain voxels of the fullest plane.
MIN_BRAIN = 0.1
_MARGIN = 2  # voxels kept around the template's bounding box


@functools.lru_cache(maxsize=1)
def _template() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T1, GM, WM) float32 (Z, X, Y), cropped to the head's bounding box, read-only (cached)."""
    datasets = require("nilearn.datasets", "the MNI152 data set (load_mni152)")
    loaders = (datasets.load_mni152_template, datasets.load_mni152_gm_template, datasets.load_mni152_wm_template)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nilearn's notes on template versions / resampling
        t1, gm, wm = (np.asarray(load(resolution=1).get_fdata(dtype=np.float32)) for load in loaders)
    inside = np.nonzero(t1 > 0)
    box = tuple(
        slice(max(0, int(ix.min()) - _MARGIN), min(n, int(ix.max()) + 1 + _MARGIN)) for ix, n in zip(inside, t1.shape)
    )
    out = []
    for a in (t1, gm, wm):
        a = np.ascontiguousarray(np.moveaxis(a[box], 2, 0))  # (X, Y, Z) -> (Z, X, Y)
        a.flags.writeable = False
        out.append(a)
    return out[0], out[1], out[2]


def _tissue(gm: torch.Tensor, wm: torch.Tensor) -> torch.Tensor:
    """0 background, 1 where GM > 0.5, 2 where WM > 0.5; where both are, the larger (ties: GM)."""
    lab = torch.zeros(gm.shape, dtype=torch.int64)
    lab[(gm > 0.5) & (gm >= wm)] = 1
    lab[(wm > 0.5) & (wm > gm)] = 2
    return lab


def _span(r: range) -> str:
    return f"{r.start}-{r.stop - 1}" if len(r) else "none"


def load_mni152(
    dims: int = 2,
    size: int | tuple[int, ...] | None = None,
    downsample: float | None = None,
    normalize: str = "zscore",
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    gap_mm: float = 8.0,
    slab: int = 16,
) -> SegmentationData:
    """The MNI152 T1 template as a 3-class tissue segmentation task (offline, via nilearn).

    **One template brain: a stand-in for a benchmark, not a benchmark.** The image is nilearn's
    skull-stripped 1 mm MNI152 (ICBM 2009a) T1 template; the labels come from its grey- and
    white-matter probability maps: 0 background (incl. CSF), 1 grey matter (GM > 0.5), 2 white
    matter (WM > 0.5; where both exceed 0.5 the larger wins). It is an average of 152 brains, so
    it is smoother than any scan and every part comes from the same head.

    The volume is cropped to the head's bounding box (2 voxels of margin) and stored (Z, X, Y):
    axial planes first. The train/val/test split is fixed and by position along z (inferior to
    superior): train, gap, val, gap, test, with `gap_mm` of unused planes between parts so no
    neighbouring planes are shared; planes with less brain than 10% of the fullest one are
    skipped. The parts therefore cover different anatomy (a harder, shifted test).

    Resampling: the image by area averaging (linear where an axis grows); the labels by
    resampling the GM and WM probability maps the same way and thresholding them as above, so
    the classes are defined at the output resolution. dims=2 resamples each axial slice
    in-plane only (every 1 mm plane is a sample); dims=3 resamples the whole volume, then cuts
    each part into axial slabs of `slab` or more planes (the whole part if it is thinner), each
    a case, for `random_crop` at training time. The template is read once per process
    (functools.lru_cache, ~3 s); later calls only resample.

    Args:
        dims: 2 (axial slices) or 3 (slabs of the volume).
        size: dims=2: the slice size (H, W) (an int for both); dims=3: the size (D, H, W) of the
            whole cropped volume (an int for all three). Default: 1 mm, (149, 185) in-plane and
            157 planes.
        downsample: instead of size, divide the resampled axes by this factor (dims=2: in-plane).
        normalize: "zscore" (default), "minmax" or "none", over the whole cropped volume.
        val_fraction, test_fraction: shares of the used planes (after the gaps) for val and test.
        gap_mm: at least this many millimetres of planes left out between train and val and between val and test.
        slab: dims=3: the least number of planes of a slab (parts are cut into len // slab slabs).

    Returns:
        SegmentationData with 3 classes and 1 channel; sample names "mni152:z=k" (dims=2, k the
        plane in the cropped volume) or "mni152:z=a-b" (dims=3, planes a..b-1 of the resampled
        volume). Each sample is its own case (so `Split.labelled` draws slices or slabs).

    Shape:
        dims=2: images (1, H, W) float32, labels (H, W) int64.
        dims=3: images (1, d, H, W), labels (d, H, W), d >= slab (or the part's depth).

    Raises:
        ValueError: bad arguments, or too few planes for the fractions and the gap.
        ImportError: nilearn (or nibabel) is not installed (`pip install affseg[data]`).

    Example:
        >>> data = load_mni152(dims=2, size=64)
        >>> data.num_classes, data.in_channels, tuple(data.train.images[0].shape)
        (3, 1, (1, 64, 64))
        >>> len(data.train) > len(data.val) > 0 and len(data.test) > 0
        True
    """
    _validate.choice(dims, "dims", (2, 3))
    _validate.choice(normalize, "normalize", NORMALIZATIONS)
    gap_mm = _validate.finite(gap_mm, "gap_mm")
    if gap_mm < 0:
        raise ValueError(f"gap_mm must be >= 0, got {gap_mm}")
    slab = _validate.int_value(slab, "slab", minimum=1)
    t1, gm, wm = _template()
    shape = t1.shape  # (Z, X, Y)
    image = normalize_intensity(torch.from_numpy(t1.copy())[None], normalize)  # (1, Z, X, Y)
    probs = torch.from_numpy(np.stack([gm, wm]))  # (2, Z, X, Y)
    if dims == 2:
        target = target_size(shape[1:], size, downsample)
        image = _interpolate(image.permute(1, 0, 2, 3), target).permute(1, 0, 2, 3)  # (1, Z, h, w)
        probs = _interpolate(probs.permute(1, 0, 2, 3), target).permute(1, 0, 2, 3)
        spacing = 1.0
    else:
        target = target_size(shape, size, downsample)
        image = _interpolate(image[None], target)[0]
        probs = _interpolate(probs[None], target)[0]
        spacing = shape[0] / target[0]
    label = _tissue(probs[0], probs[1])  # (Z', h, w)
    brain = (label > 0).sum((1, 2))
    used = torch.nonzero(brain >= MIN_BRAIN * brain.max()).flatten()
    z0, z1 = int(used[0]), int(used[-1]) + 1
    gap = math.ceil(gap_mm / spacing - 1e-9)
    try:
        ranges = split_positions(z1 - z0, val_fraction, test_fraction, gap)
    except ValueError as e:
        raise ValueError(f"MNI152 at {target}: {e}") from e
    ranges = tuple(range(r.start + z0, r.stop + z0) for r in ranges)

    def part(r: range) -> Split:
        if dims == 2:
            windows = [(z, z + 1) for z in r]
        else:
            chunks = np.array_split(np.arange(r.start, r.stop), max(1, len(r) // slab)) if len(r) else []
            windows = [(int(c[0]), int(c[-1]) + 1) for c in chunks]
        ims, labs, names = [], [], []
        for a, b in windows:
            if dims == 2:
                ims.append(image[:, a].clone())
                labs.append(label[a].clone())
                names.append(f"mni152:z={a}")
            else:
                ims.append(image[:, a:b].clone())
                labs.append(label[a:b].clone())
                names.append(f"mni152:z={a}-{b}")
        return Split(tuple(ims), tuple(labs), tuple(names), tuple(names))

    parts = tuple(part(r) for r in ranges)
    (tr, va, te), unit = ranges, ("slices" if dims == 2 else "slabs")
    what = f"2D axial slices of {target[0]}x{target[1]}" if dims == 2 else f"3D slabs of a {'x'.join(map(str, target))} volume"
    description = (
        "MNI152 (ICBM 2009a, nilearn) T1 template with grey/white-matter labels: ONE template brain, "
        "a stand-in for a benchmark, not a benchmark. "
        f"{what}; 3 classes ({', '.join(CLASS_NAMES)}); 1 channel, {normalize} over the volume. "
        f"Fixed split by axial position: train planes {_span(tr)}, val {_span(va)}, "
        f"test {_span(te)} (gaps of {gap} planes, {gap_mm:g} mm) = {len(parts[0])} / "
        f"{len(parts[1])} / {len(parts[2])} {unit}. Image by area averaging, labels by resampled GM/WM "
        "probabilities thresholded at 0.5."
    )
    return SegmentationData(
        *parts, num_classes=3, in_channels=1, dims=dims, description=description, class_names=CLASS_NAMES
    )
