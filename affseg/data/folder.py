"""A user's folder of images and labels, in the layouts people already have."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from affseg import _validate
from affseg.data.containers import SegmentationData, Split
from affseg.data.readers import EXTENSIONS, SIDE_FILES, as_image, as_label, read_array, split_name
from affseg.data.split import split_cases
from affseg.data.transforms import (
    NORMALIZATIONS,
    _interpolate,
    _resize_label_batch,
    normalize_intensity,
    target_size,
)

#: (images folder, labels folder, layout name), in the order they are looked for.
LAYOUTS = (("images", "labels", "images/labels"), ("imagesTr", "labelsTr", "Medical Segmentation Decathlon"))
_CHANNEL = re.compile(r"(.+)_(\d{4})")


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case: its image files (one per channel group, in channel order) and label."""

    name: str
    images: tuple[Path, ...]
    label: Path


def find_layout(root: Path) -> tuple[Path, Path, str]:
    """(images folder, labels folder, layout name) of a data folder."""
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such folder")
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder (pass the folder that holds images/ and labels/)")
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir() if not p.name.startswith("."))
    if not entries:
        raise ValueError(f"{root}: the folder is empty (expected images/ + labels/, or imagesTr/ + labelsTr/)")
    found = [(root / i, root / l, name) for i, l, name in LAYOUTS if (root / i).is_dir() and (root / l).is_dir()]
    if len(found) > 1:
        raise ValueError(f"{root}: ambiguous layout: both images/ + labels/ and imagesTr/ + labelsTr/ are present")
    if not found:
        shown = ", ".join(entries[:10]) + (", ..." if len(entries) > 10 else "")
        raise ValueError(
            f"{root}: unknown layout: expected images/ + labels/ (same file names) or the Medical "
            f"Segmentation Decathlon's imagesTr/ + labelsTr/, found {shown}"
        )
    return found[0]


def _scan(folder: Path) -> dict[str, Path]:
    """{stem: path} of the data files in a folder (hidden files, sub-folders and side files skipped)."""
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.is_dir():  # ._x.nii.gz (macOS forks), .DS_Store, imagesTs/
            continue
        kind = split_name(p)
        if kind is None:
            if p.suffix.lower() in SIDE_FILES:
                continue
            raise ValueError(f"{p}: unsupported file type; supported: {', '.join(EXTENSIONS)}")
        stem = kind[0]
        if stem in out:
            raise ValueError(f"{out[stem]} and {p}: two files for one case name {stem!r}")
        out[stem] = p
    return out


def pair_files(images_dir: Path, labels_dir: Path) -> list[CaseFiles]:
    """The cases of a layout, sorted by name: each label with its image file(s).

    An image pairs with the label of the same name (any supported extension), or, named
    `case_0000`, `case_0001`, ... (the Decathlon's channel suffix), is channel k of the case
    whose label is `case`."""
    images, labels = _scan(images_dir), _scan(labels_dir)
    if not images and not labels:
        raise ValueError(f"{images_dir.parent}: the folder is empty: no image or label files in {images_dir} and {labels_dir}")
    channels: dict[str, dict[int | None, Path]] = {}
    for stem, path in images.items():
        match = _CHANNEL.fullmatch(stem)
        if stem in labels:
            key: tuple[str, int | None] = (stem, None)
        elif match and match[1] in labels:
            key = (match[1], int(match[2]))
        else:
            alt = f" or {labels_dir / match[1]}.<ext>" if match else ""
            raise FileNotFoundError(f"{path}: image without a label: expected {labels_dir / stem}.<ext>{alt}")
        channels.setdefault(key[0], {})[key[1]] = path
    cases = []
    for stem, label in labels.items():
        if stem not in channels:
            raise FileNotFoundError(
                f"{label}: label without an image: expected {images_dir / stem}.<ext> or "
                f"{images_dir / stem}_0000.<ext>"
            )
        files = channels[stem]
        if None in files and len(files) > 1:
            others = sorted(str(p) for k, p in files.items() if k is not None)
            raise ValueError(f"{files[None]}: case {stem!r} has both this image and channel files {others}")
        if None in files:
            cases.append(CaseFiles(stem, (files[None],), label))
            continue
        missing = [k for k in range(max(files) + 1) if k not in files]
        if missing:
            raise FileNotFoundError(
                f"{label}: case {stem!r} lacks channel file(s) "
                + ", ".join(f"{stem}_{k:04d}" for k in missing)
                + f" in {images_dir} (found {sorted(p.name for p in files.values())})"
            )
        cases.append(CaseFiles(stem, tuple(files[k] for k in sorted(files)), label))
    return sorted(cases, key=lambda c: c.name)


def read_case(case: CaseFiles, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 (C, *S), label int64 (*S)) of one case, every check done."""
    raw, _ = read_array(case.label, "label")
    label = as_label(raw, case.label)
    if num_classes is not None and label.max() >= num_classes:
        raise ValueError(
            f"{case.label}: labels must lie in [0, {num_classes}) for num_classes={num_classes}, "
            f"got the label {int(label.max())}"
        )
    spatial = tuple(label.shape)
    parts = []
    for path in case.images:
        arr, axes = read_array(path, "image")
        parts.append(as_image(arr, axes, spatial, path, case.label))
    image = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    return image, label


def _class_names(root: Path, num_classes: int) -> tuple[str, ...]:
    """Names from a Decathlon dataset.json's "labels" when it names every class, else generic."""
    names = ["background"] + [f"class {k}" for k in range(1, num_classes)]
    try:
        table = json.loads((root / "dataset.json").read_text())["labels"]
        given = [str(table[str(k)]) for k in range(num_classes)]
        return tuple(given)
    except Exception:  # no file, other keys, other format: the generic names
        return tuple(names)


def load_folder(
    root: str | Path,
    dims: int | None = None,
    num_classes: int | None = None,
    size: int | tuple[int, ...] | None = None,
    downsample: float | None = None,
    normalize: str = "zscore",
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> SegmentationData:
    """Load a folder of images and labels, checked, split by case into train/val/test.

    Layouts: `root/images/` + `root/labels/` with the same file names, or the Medical
    Segmentation Decathlon's `root/imagesTr/` + `root/labelsTr/` (other folders such as
    imagesTs/, and side files such as dataset.json, are ignored; a dataset.json's "labels" names
    the classes). Images named `case_0000`, `case_0001`, ... are the channels of the case whose
    label is `case`; an image of the label's own name is the whole image.

    Formats: NIfTI (.nii, .nii.gz; nibabel), PNG (Pillow), TIFF (.tif, .tiff; tifffile), NPY;
    2D or 3D, grey or multi-channel (PNG RGB -> 3 channels; NIfTI 4th axis = channels; see
    `affseg.data.readers` for the axis rules). A NIfTI volume (X, Y, Z) becomes (Z, X, Y), so a
    3D sample's first spatial axis, along which dims=2 slices, is the axial one. A 2D picture
    stored as a NIfTI of shape (X, Y, 1) is a volume of one plane: pass dims=2 for 2D samples.

    Every file is read and checked before anything is returned (nothing is written); a case's
    intensities are normalised per channel over the whole case, before slicing or resampling.
    All cases are held in memory (resample with `size`/`downsample` to keep that small).

    Args:
        root: the folder holding the layout.
        dims: 2 or 3 for the samples' spatial dimensions, None for the files' own. dims=2 on
            3D volumes gives each volume's slices along its first axis as samples, still split
            by volume (no slice of a test volume is trained on). dims=3 needs 3D volumes.
        num_classes: number of classes; labels must lie in [0, num_classes). Default: the largest
            label in the folder + 1.
        size: resample every sample to this spatial size (an int for every axis, or one per
            axis; for dims=2 on volumes, the in-plane size of each slice). Images: area averaging
            when shrinking, linear when growing; labels: each class's indicator map resampled the
            same way, then argmax (`resize_label`).
        downsample: instead of `size`, divide each spatial axis of a sample by this factor
            (>= 1 shrinks), rounding.
        normalize: "zscore" (default), "minmax" or "none"; see `normalize_intensity`.
        val_fraction, test_fraction: shares of the cases for val and test (`split_cases`).
        seed: seed of the split by case.

    Returns:
        SegmentationData; each sample's `cases` entry is its file's case name, its name
        "case" or "case:z=k" for slice k.

    Shape:
        images (C, *S) float32, labels (*S) int64, len(S) == dims.

    Raises:
        FileNotFoundError: no such folder, an image without a label or a label without an
            image, a missing channel file (the message names the file).
        ValueError: unknown or ambiguous layout, an empty folder, an unsupported or unreadable
            file, an image whose shape does not match its label's, labels that are not
            non-negative integers or (given num_classes) are >= num_classes, only background
            labels, a 2D case with dims=3, cases of different dimensions (dims=None) or channel
            counts, too few cases for the fractions, bad arguments.
        ImportError: the reader of a file type is not installed (`pip install affseg[data]`).

    Example:
        >>> import tempfile, pathlib, numpy as np
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for sub in ("images", "labels"):
        ...     (root / sub).mkdir()
        >>> for i in range(5):
        ...     lab = np.zeros((8, 8), np.uint8); lab[2:6, 2:6] = 1 + i % 2
        ...     np.save(root / "images" / f"c{i}.npy", lab.astype(np.float32) + np.random.rand(8, 8))
        ...     np.save(root / "labels" / f"c{i}.npy", lab)
        >>> data = load_folder(root, val_fraction=0.2, test_fraction=0.2)
        >>> data.num_classes, data.in_channels, data.dims, len(data.train), len(data.val), len(data.test)
        (3, 1, 2, 3, 1, 1)
    """
    root = Path(root)
    if dims is not None:
        _validate.choice(dims, "dims", (2, 3))
    if num_classes is not None:
        num_classes = _validate.int_value(num_classes, "num_classes", minimum=2)
    _validate.choice(normalize, "normalize", NORMALIZATIONS)
    if size is not None and downsample is not None:
        raise ValueError("pass size or downsample, not both")
    images_dir, labels_dir, layout = find_layout(root)
    cases = pair_files(images_dir, labels_dir)
    split_cases(len(cases), val_fraction, test_fraction, seed)  # fail on bad fractions before reading

    native = None  # the cases' own spatial dimensions
    channels = None
    largest = 0
    loaded: list[tuple[list[torch.Tensor], list[torch.Tensor], list[str]]] = []
    for case in cases:
        image, label = read_case(case, num_classes)
        if native is None:
            native = label.ndim
            if dims == 3 and native == 2:
                raise ValueError(f"{case.label}: dims=3 needs 3D volumes, got a 2D label of shape {label.shape}")
            out_dims = dims or native
            if size is not None:
                size = _validate.int_tuple(size, "size", length=out_dims)
        elif label.ndim != native:
            raise ValueError(
                f"{case.label}: a {label.ndim}D label among {native}D ones ({cases[0].label}); "
                "all cases must have the same dimensions"
            )
        if channels is None:
            channels = image.shape[0]
        elif image.shape[0] != channels:
            raise ValueError(
                f"{case.images[0]}: {image.shape[0]} image channel(s), but {cases[0].images[0]} has "
                f"{channels}; all cases must have the same channels"
            )
        largest = max(largest, int(label.max()))
        loaded.append(_samples(case.name, image, label, out_dims, size, downsample, normalize, num_classes))

    if num_classes is None:
        num_classes = largest + 1
        if num_classes < 2:
            raise ValueError(f"{labels_dir}: every label is 0 (background only); pass num_classes to use it anyway")

    train, val, test = split_cases(len(cases), val_fraction, test_fraction, seed)

    def part(indices: list[int]) -> Split:
        ims, labs, case_names, names = [], [], [], []
        for i in indices:
            a, b, n = loaded[i]
            ims += a
            labs += b
            names += n
            case_names += [cases[i].name] * len(n)
        return Split(tuple(ims), tuple(labs), tuple(case_names), tuple(names))

    parts = part(train), part(val), part(test)
    sliced = " (the slices of 3D volumes along their first axis)" if out_dims == 2 and native == 3 else ""
    resampled = (
        f"resampled to {tuple(size)}" if size is not None
        else f"downsampled by {downsample}" if downsample is not None else "at their own size"
    )
    description = (
        f"Folder {root} ({layout} layout): {len(cases)} cases, {out_dims}D samples{sliced}, "
        f"{channels} channel(s), {num_classes} classes. Split by case (seed {seed}): train "
        f"{len(train)} / val {len(val)} / test {len(test)} cases = {len(parts[0])} / {len(parts[1])} / "
        f"{len(parts[2])} samples. Intensities: {normalize} per case and channel; samples {resampled} "
        "(images by area averaging or linear interpolation, labels by per-class resampling + argmax)."
    )
    return SegmentationData(
        *parts,
        num_classes=num_classes,
        in_channels=int(channels),
        dims=out_dims,
        description=description,
        class_names=_class_names(root, num_classes),
    )


def _samples(
    name: str,
    image: np.ndarray,
    label: np.ndarray,
    dims: int,
    size: tuple[int, ...] | None,
    downsample: float | None,
    normalize: str,
    num_classes: int | None,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[str]]:
    """One case's samples: normalised, sliced when 3D -> 2D, resampled."""
    img = normalize_intensity(torch.from_numpy(image), normalize)
    lab = torch.from_numpy(label)
    k = num_classes if num_classes is not None else int(label.max()) + 1
    if dims == 2 and lab.dim() == 3:
        target = target_size(tuple(lab.shape[1:]), size, downsample)
        ims = _interpolate(img.permute(1, 0, 2, 3), target)  # (D, C, h, w)
        labs = _resize_label_batch(lab, target, k) if target != tuple(lab.shape[1:]) else lab
        return (
            [ims[z].clone() for z in range(ims.shape[0])],
            [labs[z].clone() for z in range(labs.shape[0])],
            [f"{name}:z={z}" for z in range(ims.shape[0])],
        )
    target = target_size(tuple(lab.shape), size, downsample)
    im = _interpolate(img[None], target)[0]
    lb = _resize_label_batch(lab[None], target, k)[0] if target != tuple(lab.shape) else lab
    return [im.contiguous()], [lb.contiguous()], [name]
