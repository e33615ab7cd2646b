"""Reading image and label files (NIfTI, PNG, TIFF, NPY) into numpy arrays, and checking them.

Axis conventions (what every reader returns):

- NIfTI: a volume stored (X, Y, Z) is returned (Z, X, Y), so axis 0 is the axial slice axis
  (dims=2 slices along it); a 4th axis holds channels: (X, Y, Z, C) -> (C, Z, X, Y). A 2D NIfTI
  (X, Y) is returned as is. The affine is not used (no reorientation, no spacing).
- PNG: (H, W) for grey (L, I, I;16, F, 1), (C, H, W) channels first for RGB / RGBA / LA;
  palette (P) images are converted to RGB(A), palette labels keep their indices.
- TIFF: the array tifffile reads: (H, W), (Z, H, W) for a stack, channels last (H, W, 3) or
  first (C, H, W) for colour.
- NPY: the stored array, channels first if it has a channel axis.

Which axis of an image holds channels is decided against its label, which is single-channel and
so gives the spatial shape: an image of the label's shape is grey; one with one axis more has
channels on the axis whose removal leaves the label's shape (first or last; NIfTI and PNG first,
as returned above; TIFF last, then first; NPY first, then last).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from affseg.data._deps import require

#: Extensions read, longest first (".nii.gz" before ".gz" matters).
EXTENSIONS = (".nii.gz", ".nii", ".png", ".tiff", ".tif", ".npy")
#: Extensions of side files that may sit among the data (dataset.json, notes) and are skipped.
SIDE_FILES = (".json", ".txt", ".md", ".csv", ".yaml", ".yml", ".pkl", ".log")


def split_name(path: Path) -> tuple[str, str] | None:
    """(stem, extension) of a data file, the extension lower-case; None for other files."""
    lower = path.name.lower()
    for ext in EXTENSIONS:
        if lower.endswith(ext) and len(lower) > len(ext):
            return path.name[: -len(ext)], ext
    return None


def read_array(path: Path, role: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """(array, channel-axis candidates in order of preference) of one file; role is "image" or
    "label" (a PNG label keeps palette indices and must be single-channel)."""
    kind = split_name(path)
    if kind is None:
        raise ValueError(f"{path}: unsupported file type; supported: {', '.join(EXTENSIONS)}")
    ext = kind[1]
    try:
        if ext in (".nii", ".nii.gz"):
            return _read_nifti(path), (0,)
        if ext == ".png":
            return _read_png(path, role), (0,)
        if ext in (".tif", ".tiff"):
            tifffile = require("tifffile", "reading TIFF files")
            return np.asarray(tifffile.imread(str(path))), (-1, 0)
        return np.load(path, allow_pickle=False), (0, -1)
    except ImportError:
        raise
    except ValueError as e:
        if str(path) in str(e):
            raise
        raise ValueError(f"{path}: could not read it ({type(e).__name__}: {e})") from e
    except Exception as e:  # corrupt or truncated files raise all sorts of errors
        raise ValueError(f"{path}: could not read it ({type(e).__name__}: {e})") from e


def _read_nifti(path: Path) -> np.ndarray:
    nib = require("nibabel", "reading NIfTI files")
    arr = np.asanyarray(nib.load(str(path)).dataobj)
    if arr.ndim == 5 and arr.shape[3] == 1:  # (X, Y, Z, 1, C): the NIfTI vector-image layout
        arr = arr[:, :, :, 0]
    if arr.ndim == 3:
        return np.moveaxis(arr, 2, 0)
    if arr.ndim == 4:
        return np.transpose(arr, (3, 2, 0, 1))
    return arr


def _read_png(path: Path, role: str) -> np.ndarray:
    Image = require("PIL.Image", "reading PNG files")
    with Image.open(path) as im:
        im.load()
        if role == "label":
            if im.mode in ("P", "L", "I", "I;16", "I;16B", "I;16L", "F", "1"):
                arr = np.asarray(im)
            else:
                arr = np.asarray(im.convert("RGB"))
                if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
                    raise ValueError(
                        f"{path}: a label PNG must be single-channel (mode L, I or P), got mode "
                        f"{im.mode} with differing colour channels"
                    )
                arr = arr[..., 0]
            return arr.astype(np.uint8) if arr.dtype == bool else arr
        if im.mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif im.mode == "1":
            im = im.convert("L")
        elif im.mode not in ("L", "LA", "RGB", "RGBA", "I", "I;16", "I;16B", "I;16L", "F"):
            im = im.convert("RGB")  # CMYK, YCbCr, ...
        arr = np.asarray(im)
    return np.moveaxis(arr, -1, 0) if arr.ndim == 3 else arr


def as_label(arr: np.ndarray, path: Path) -> np.ndarray:
    """A label array as int64 (*S), S 2D or 3D, checked: integer values, none negative.

    A singleton channel axis (first or last) of a 4D label is dropped."""
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    elif arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3):
        raise ValueError(f"{path}: a label must be 2D or 3D (one class id per pixel), got shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError(f"{path}: labels must be integer class ids, got NaN or infinity")
        bad = arr != np.round(arr)
        if bad.any():
            raise ValueError(f"{path}: labels must be integer class ids, got the value {arr[bad].flat[0]!r}")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{path}: labels must be integer class ids, got dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError(f"{path}: the label is empty (shape {arr.shape})")
    low = arr.min()
    if low < 0:
        raise ValueError(f"{path}: labels must be >= 0 (0 is background), got the label {int(low)}")
    return arr.astype(np.int64)


def as_image(
    arr: np.ndarray, channel_axes: tuple[int, ...], spatial: tuple[int, ...], path: Path, label_path: Path
) -> np.ndarray:
    """An image array as float32 (C, *spatial), checked against its label's spatial shape."""
    if np.iscomplexobj(arr) or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{path}: image must be real numbers, got dtype {arr.dtype}")
    out = None
    if tuple(arr.shape) == spatial:
        out = arr[None]
    elif arr.ndim == len(spatial) + 1:
        for axis in channel_axes:
            moved = np.moveaxis(arr, axis, 0)
            if tuple(moved.shape[1:]) == spatial:
                out = moved
                break
    if out is None:
        raise ValueError(
            f"{path}: image shape {tuple(arr.shape)} does not match its label {label_path} of shape "
            f"{spatial} (expected {spatial}, or that with one channel axis first or last)"
        )
    out = np.ascontiguousarray(out, dtype=np.float32)
    if not np.isfinite(out).all():
        raise ValueError(f"{path}: image contains NaN or infinity")
    return out
