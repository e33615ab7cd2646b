"""affseg.data: the MNI152 stand-in data set, folder loading in every format and layout, the
splits (by position with gaps, by case, labelled subsets), resampling, crops and the errors."""
import doctest
import importlib
import json
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from affseg import data as D
from affseg.data import (
    SegmentationDataset,
    Split,
    UnlabelledDataset,
    load_folder,
    load_mni152,
    random_crop,
    resize_label,
    split_cases,
    split_labelled,
    split_positions,
)

nib = pytest.importorskip("nibabel")
Image = pytest.importorskip("PIL.Image")
tifffile = pytest.importorskip("tifffile")
pytest.importorskip("nilearn")


# ---------------------------------------------------------------- MNI152


@pytest.fixture(scope="module")
def mni2d():
    return load_mni152(dims=2, size=64)


def _z(name: str) -> tuple[int, int]:
    """(first, last + 1) plane of a sample name "mni152:z=k" or "mni152:z=a-b"."""
    a, _, b = name.split("=")[1].partition("-")
    return int(a), int(b) if b else int(a) + 1


def test_mni2d_shapes_classes_and_metadata(mni2d):
    assert (mni2d.num_classes, mni2d.in_channels, mni2d.dims) == (3, 1, 2)
    assert mni2d.class_names == ("background", "grey matter", "white matter")
    assert "not a benchmark" in mni2d.description
    for part in (mni2d.train, mni2d.val, mni2d.test):
        images, labels = part.stack()
        assert images.dtype == torch.float32 and labels.dtype == torch.int64
        assert images.shape[1:] == (1, 64, 64) and labels.shape[1:] == (64, 64)
        share = torch.bincount(labels.flatten(), minlength=3).double() / labels.numel()
        assert share.numel() == 3 and (share > 0.02).all(), share  # every class in every part
    share = torch.bincount(mni2d.train.stack()[1].flatten()).double()
    assert share[1] > share[2]  # more grey than white matter, as in the template (12% vs 7%)
    assert len(mni2d.train) > len(mni2d.val) > 10 and len(mni2d.test) > 10
    x = torch.cat([mni2d.train.stack()[0], mni2d.val.stack()[0], mni2d.test.stack()[0]])
    assert torch.isfinite(x).all() and x.std() > 0.5  # z-scored over the volume


def test_mni2d_split_by_position_with_gaps(mni2d):
    spans = [[_z(n) for n in part.names] for part in (mni2d.train, mni2d.val, mni2d.test)]
    for a, b in zip(spans, spans[1:]):
        assert max(z for _, z in a) + 8 <= min(z for z, _ in b)  # train < gap < val < gap < test
    names = [n for part in (mni2d.train, mni2d.val, mni2d.test) for n in part.names]
    assert len(set(names)) == len(names)
    assert list(mni2d.train.cases) == list(mni2d.train.names)  # each slice its own case


def test_mni_is_deterministic_and_cached(mni2d):
    t0 = time.perf_counter()
    again = load_mni152(dims=2, size=64)
    assert time.perf_counter() - t0 < 2.0  # the template is read once per process
    assert again.train.names == mni2d.train.names and again.test.names == mni2d.test.names
    for a, b in zip(again.train.images + again.val.labels, mni2d.train.images + mni2d.val.labels):
        assert torch.equal(a, b)
    again.train.images[0].add_(1.0)  # samples are fresh tensors: changing one changes no later load
    assert torch.equal(load_mni152(dims=2, size=64).train.images[0], mni2d.train.images[0])


def test_mni_sizes_and_downsampling():
    d = load_mni152(dims=2, downsample=4, normalize="minmax")
    assert tuple(d.train.images[0].shape) == (1, 37, 46)  # (149, 185) / 4, rounded
    x = torch.cat([d.train.stack()[0], d.test.stack()[0]])
    assert x.min() >= 0 and x.max() <= 1
    d = load_mni152(dims=2, size=(48, 56))
    assert tuple(d.val.images[0].shape) == (1, 48, 56) and tuple(d.val.labels[0].shape) == (48, 56)


def test_mni3d_slabs_split_with_gap_and_crop():
    d = load_mni152(dims=3, size=48, slab=8)
    assert d.dims == 3 and d.num_classes == 3
    spans = [[_z(n) for n in part.names] for part in (d.train, d.val, d.test)]
    assert len(spans[0]) >= 2 and spans[1] and spans[2]
    for a, b in zip(spans, spans[1:]):
        assert max(z for _, z in a) + 2 <= min(z for z, _ in b)  # 8 mm at 157/48 mm per plane: 3 planes
    for image, label in zip(d.train.images, d.train.labels):
        assert image.shape[0] == 1 and image.shape[2:] == (48, 48) and image.shape[1] >= 8
        assert tuple(label.shape) == tuple(image.shape[1:])
    ci, cl = random_crop(d.train.images[0], d.train.labels[0], (8, 32, 32), torch.Generator().manual_seed(0))
    assert tuple(ci.shape) == (1, 8, 32, 32) and tuple(cl.shape) == (8, 32, 32)
    lab, unlab = d.train.labelled(0.5, seed=0)
    assert len(lab) >= 1 and sorted(lab + unlab) == list(range(len(d.train)))


def test_mni_bad_arguments():
    with pytest.raises(ValueError, match="size or downsample"):
        load_mni152(size=64, downsample=2)
    with pytest.raises(ValueError, match="dims"):
        load_mni152(dims=4)
    with pytest.raises(ValueError, match="gap"):
        load_mni152(dims=2, size=32, gap_mm=100)


# ---------------------------------------------------------------- splits


def test_split_labelled_reproducible_by_seed():
    a = split_labelled(100, 0.1, seed=0)
    assert a == split_labelled(100, 0.1, seed=0)
    assert a[0] != split_labelled(100, 0.1, seed=1)[0]
    lab, unlab = a
    assert len(lab) == 10 and sorted(lab + unlab) == list(range(100)) and not set(lab) & set(unlab)
    assert split_labelled(7, 1.0)[0] == list(range(7)) and split_labelled(7, 1.0)[1] == []
    assert split_labelled(7, 0.0) == ([], list(range(7)))
    assert len(split_labelled(7, 0.01)[0]) == 1  # at least one labelled case when F > 0
    with pytest.raises(ValueError, match="fraction"):
        split_labelled(7, 1.5)


def test_split_labelled_draws_whole_groups():
    groups = [f"vol{i // 5}" for i in range(50)]  # 10 volumes of 5 slices
    for seed in range(5):
        lab, _ = split_labelled(50, 0.3, seed=seed, groups=groups)
        chosen = {groups[i] for i in lab}
        assert len(chosen) == 3 and len(lab) == 15


def test_split_cases_and_positions():
    train, val, test = split_cases(10, 0.2, 0.2, seed=3)
    assert (len(train), len(val), len(test)) == (6, 2, 2)
    assert sorted(train + val + test) == list(range(10))
    assert (train, val, test) == split_cases(10, 0.2, 0.2, seed=3)
    assert split_cases(10, seed=3) != split_cases(10, seed=4)
    assert [len(p) for p in split_cases(3, 0.2, 0.2)] == [1, 1, 1]
    with pytest.raises(ValueError, match="too few"):
        split_cases(2, 0.2, 0.2)
    assert split_positions(20, 0.2, 0.2, gap=2) == (range(0, 10), range(12, 15), range(17, 20))
    assert split_positions(10, 0.0, 0.0, gap=3) == (range(0, 10), range(10, 10), range(10, 10))


# ---------------------------------------------------------------- folders: writing test data


def _save(path, arr):
    name = path.name
    if name.endswith(".npy"):
        np.save(path, arr)
    elif name.endswith(".png"):
        Image.fromarray(arr).save(path)
    elif name.endswith((".tif", ".tiff")):
        tifffile.imwrite(path, arr)
    elif name.endswith((".nii", ".nii.gz")):
        nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))
    else:
        path.write_bytes(arr)


def _label(shape, case: int, classes: int = 3) -> np.ndarray:
    """A label map whose class k fills a band: every class present, different per case."""
    lab = np.zeros(shape, np.uint8)
    for k in range(1, classes):
        lab[..., (k * 2 + case) % shape[-1]] = k
    return lab


def _folder(root, ext, n=5, shape=(8, 10), channels=None, layout="images", classes=3):
    """Write n cases; channels: None (grey), ("last", C), ("first", C) or ("files", C)."""
    img_dir, lab_dir = ("images", "labels") if layout == "images" else ("imagesTr", "labelsTr")
    (root / img_dir).mkdir(parents=True)
    (root / lab_dir).mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        lab = _label(shape, i, classes)
        grey = (lab * 60 + rng.integers(0, 20, shape)).astype(np.uint8)
        if channels is None:
            _save(root / img_dir / f"case{i}{ext}", grey)
        else:
            where, c = channels
            stack = [grey + 3 * k for k in range(c)]
            if where == "files":
                for k in range(c):
                    _save(root / img_dir / f"case{i}_{k:04d}{ext}", stack[k])
            else:
                _save(root / img_dir / f"case{i}{ext}", np.stack(stack, axis=-1 if where == "last" else 0))
        _save(root / lab_dir / f"case{i}{ext}", lab)
    return root


# ---------------------------------------------------------------- folders: formats and layouts


@pytest.mark.parametrize("ext", [".npy", ".png", ".tif", ".tiff", ".nii.gz", ".nii"])
def test_folder_2d_grey_each_format(tmp_path, ext):
    root = _folder(tmp_path, ext)
    d = load_folder(root, normalize="none", val_fraction=0.2, test_fraction=0.2)
    assert (d.num_classes, d.in_channels, d.dims) == (3, 1, 2)
    assert (len(d.train), len(d.val), len(d.test)) == (3, 1, 1)
    names = d.train.names + d.val.names + d.test.names
    assert sorted(names) == [f"case{i}" for i in range(5)]
    for name, image, label in zip(d.train.names, d.train.images, d.train.labels):
        i = int(name[4:])
        assert image.dtype == torch.float32 and label.dtype == torch.int64
        assert tuple(image.shape) == (1, 8, 10)
        assert torch.equal(label, torch.from_numpy(_label((8, 10), i).astype(np.int64)))
        assert torch.equal(image[0] // 60, label.float())  # intensities unchanged with normalize="none"


@pytest.mark.parametrize("ext,where", [(".png", "last"), (".tif", "last"), (".npy", "first"), (".npy", "last")])
def test_folder_2d_rgb(tmp_path, ext, where):
    root = _folder(tmp_path, ext, channels=(where, 3))
    d = load_folder(root, normalize="none")
    assert d.in_channels == 3 and tuple(d.train.images[0].shape) == (3, 8, 10)
    image = d.train.images[0]
    assert torch.equal(image[1] - image[0], torch.full((8, 10), 3.0))  # channel order kept


def test_folder_png_palette_label_and_grey_rgb_label(tmp_path):
    root = _folder(tmp_path, ".png", n=3)
    lab = _label((8, 10), 0)
    pal = Image.fromarray(lab, mode="L").convert("P")  # palette indices = class ids
    pal.putpalette([v for k in range(256) for v in (k, k, k)])
    pal.save(root / "labels" / "case0.png")
    Image.fromarray(np.stack([_label((8, 10), 1)] * 3, -1)).save(root / "labels" / "case1.png")
    d = load_folder(root, val_fraction=0, test_fraction=0)
    got = dict(zip(d.train.names, d.train.labels))
    assert torch.equal(got["case0"], torch.from_numpy(lab.astype(np.int64)))
    assert torch.equal(got["case1"], torch.from_numpy(_label((8, 10), 1).astype(np.int64)))


@pytest.mark.parametrize("ext", [".npy", ".tif", ".nii.gz"])
def test_folder_3d_volumes_as_3d_and_as_slices(tmp_path, ext):
    root = _folder(tmp_path, ext, shape=(6, 7, 8))
    d3 = load_folder(root, dims=None)
    assert d3.dims == 3
    sample = d3.train.images[0]
    # NIfTI volumes (X, Y, Z) are returned (Z, X, Y): axial planes first
    spatial = (8, 6, 7) if ext == ".nii.gz" else (6, 7, 8)
    assert tuple(sample.shape) == (1,) + spatial and tuple(d3.train.labels[0].shape) == spatial

    d2 = load_folder(root, dims=2, seed=1)
    assert d2.dims == 2 and tuple(d2.train.images[0].shape) == (1,) + spatial[1:]
    assert len(d2.train) == 3 * spatial[0] and len(d2.val) == spatial[0] == len(d2.test)
    parts = [set(p.cases) for p in (d2.train, d2.val, d2.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])  # split by volume
    assert d2.val.names[0].startswith(d2.val.cases[0] + ":z=")
    lab, unlab = d2.train.labelled(0.34, seed=0)  # one of the 3 training volumes, all its slices
    assert len({d2.train.cases[i] for i in lab}) == 1 and len(lab) == spatial[0]


def test_nifti_axes_are_z_x_y(tmp_path):
    root = tmp_path
    (root / "images").mkdir()
    (root / "labels").mkdir()
    vol = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)  # (X, Y, Z)
    lab = (np.arange(24).reshape(2, 3, 4) % 3).astype(np.uint8)
    for i in range(3):
        _save(root / "images" / f"v{i}.nii.gz", vol)
        _save(root / "labels" / f"v{i}.nii.gz", lab)
    d = load_folder(root, normalize="none", val_fraction=0, test_fraction=0)
    assert torch.equal(d.train.images[0][0], torch.from_numpy(np.moveaxis(vol, 2, 0)))
    assert torch.equal(d.train.labels[0], torch.from_numpy(np.moveaxis(lab, 2, 0).astype(np.int64)))


def test_msd_layout_channel_files_and_dataset_json(tmp_path):
    root = _folder(tmp_path, ".nii.gz", shape=(6, 7, 8), channels=("files", 2), layout="msd")
    (root / "imagesTs").mkdir()  # test images without labels: ignored
    _save(root / "imagesTs" / "other_0000.nii.gz", np.zeros((6, 7, 8), np.float32))
    (root / "imagesTr" / "._case0_0000.nii.gz").write_bytes(b"macOS fork")  # hidden: ignored
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "edema", "2": "tumour"}}))
    d = load_folder(root, dims=3, normalize="none")
    assert d.in_channels == 2 and d.class_names == ("background", "edema", "tumour")
    image = d.train.images[0]
    assert tuple(image.shape) == (2, 8, 6, 7)
    assert torch.equal(image[1] - image[0], torch.full((8, 6, 7), 3.0))  # _0000 then _0001
    assert "Decathlon" in d.description


def test_msd_4d_nifti_channels_and_plain_names(tmp_path):
    root = _folder(tmp_path, ".nii.gz", shape=(6, 7, 8), channels=("last", 4), layout="msd")
    d = load_folder(root, dims=2, size=(5, 5))
    assert d.in_channels == 4 and tuple(d.train.images[0].shape) == (4, 5, 5)
    assert tuple(d.train.labels[0].shape) == (5, 5)
    assert len(d.train) == 3 * 8


def test_num_classes_inferred_or_given(tmp_path):
    root = _folder(tmp_path, ".npy", classes=3)
    lab = _label((8, 10), 0)
    lab[0, 0] = 6
    np.save(root / "labels" / "case0.npy", lab)
    assert load_folder(root).num_classes == 7
    assert load_folder(root, num_classes=9).num_classes == 9
    assert len(load_folder(root, num_classes=9).class_names) == 9


def test_folder_resampling_and_normalisation(tmp_path):
    root = _folder(tmp_path, ".npy", shape=(16, 20))
    d = load_folder(root, size=8)
    images, labels = d.train.stack()
    assert images.shape == (3, 1, 8, 8) and labels.shape == (3, 8, 8)
    assert set(labels.unique().tolist()) <= {0, 1, 2}
    flat = load_folder(root).train.images[0].flatten()
    assert abs(float(flat.mean())) < 1e-5 and abs(float(flat.std(unbiased=False)) - 1) < 1e-4  # z-score
    assert torch.equal(D.normalize_intensity(torch.full((2, 3, 3), 7.0)), torch.zeros(2, 3, 3))  # constant
    d = load_folder(root, downsample=2)
    assert tuple(d.test.images[0].shape) == (1, 8, 10)


def test_resize_label_keeps_majority_class():
    lab = torch.zeros(8, 8, dtype=torch.long)
    lab[:, 4:] = 2
    lab[0:2, 0:2] = 1
    out = resize_label(lab, (4, 4), num_classes=3)
    assert out[0, 0] == 1 and (out[:, 2:] == 2).all() and out[3, 0] == 0


# ---------------------------------------------------------------- folders: errors name the file


def _raises(exc, text, fn, *args, **kwargs):
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    assert text in str(info.value), str(info.value)
    return str(info.value)


def test_error_image_without_label(tmp_path):
    root = _folder(tmp_path, ".npy")
    np.save(root / "images" / "extra.npy", np.zeros((8, 10)))
    _raises(FileNotFoundError, "extra.npy", load_folder, root)


def test_error_label_without_image(tmp_path):
    root = _folder(tmp_path, ".png")
    (root / "images" / "case3.png").unlink()
    msg = _raises(FileNotFoundError, "case3.png", load_folder, root)
    assert "label without an image" in msg


def test_error_missing_channel_file(tmp_path):
    root = _folder(tmp_path, ".npy", channels=("files", 3), layout="msd")
    (root / "imagesTr" / "case2_0001.npy").unlink()
    _raises(FileNotFoundError, "case2_0001", load_folder, root)


def test_error_mismatched_shapes(tmp_path):
    root = _folder(tmp_path, ".tif")
    tifffile.imwrite(root / "images" / "case1.tif", np.zeros((8, 9), np.uint8))
    msg = _raises(ValueError, "case1.tif", load_folder, root)
    assert "(8, 9)" in msg and "(8, 10)" in msg


def test_error_non_integer_labels(tmp_path):
    root = _folder(tmp_path, ".npy")
    np.save(root / "labels" / "case2.npy", np.full((8, 10), 0.5, np.float32))
    _raises(ValueError, "case2.npy", load_folder, root)
    np.save(root / "labels" / "case2.npy", np.full((8, 10), 1.0, np.float32))  # integral floats are fine
    assert load_folder(root).num_classes == 3


def test_error_negative_and_out_of_range_labels(tmp_path):
    root = _folder(tmp_path, ".nii.gz")
    bad = _label((8, 10), 4).astype(np.int16)
    bad[1, 1] = -1
    _save(root / "labels" / "case4.nii.gz", bad)
    _raises(ValueError, "case4.nii.gz", load_folder, root)
    _save(root / "labels" / "case4.nii.gz", _label((8, 10), 4))
    msg = _raises(ValueError, "num_classes=2", load_folder, root, num_classes=2)
    assert "case0.nii.gz" in msg  # the first case, in name order, with a label 2


def test_error_empty_unknown_and_missing_folders(tmp_path):
    _raises(FileNotFoundError, "nowhere", load_folder, tmp_path / "nowhere")
    _raises(ValueError, "empty", load_folder, tmp_path)
    (tmp_path / "scans").mkdir()
    msg = _raises(ValueError, "unknown layout", load_folder, tmp_path)
    assert str(tmp_path) in msg and "scans/" in msg
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    _raises(ValueError, "empty", load_folder, tmp_path)


def test_error_unsupported_and_corrupt_files(tmp_path):
    root = _folder(tmp_path, ".png")
    (root / "images" / "notes.txt").write_text("side files are skipped")
    (root / "images" / "case9.jpg").write_bytes(b"\xff\xd8")
    _raises(ValueError, "case9.jpg", load_folder, root)
    (root / "images" / "case9.jpg").unlink()
    (root / "labels" / "case1.png").write_bytes(b"not a png")
    _raises(ValueError, "case1.png", load_folder, root)


def test_error_colour_label_nan_image_channels_dims_background(tmp_path):
    root = _folder(tmp_path / "a", ".png")
    rgb = np.stack([_label((8, 10), 0), np.zeros((8, 10), np.uint8), _label((8, 10), 0)], -1)
    Image.fromarray(rgb).save(root / "labels" / "case0.png")
    _raises(ValueError, "case0.png", load_folder, root)

    root = _folder(tmp_path / "b", ".npy")
    img = np.zeros((8, 10), np.float32)
    img[0, 0] = np.nan
    np.save(root / "images" / "case3.npy", img)
    _raises(ValueError, "case3.npy", load_folder, root)

    root = _folder(tmp_path / "c", ".npy")
    np.save(root / "images" / "case2.npy", np.zeros((2, 8, 10), np.float32))
    _raises(ValueError, "case2.npy", load_folder, root)  # 2 channels among grey images

    root = _folder(tmp_path / "d", ".npy")
    _raises(ValueError, "dims=3", load_folder, root, dims=3)

    root = _folder(tmp_path / "e", ".npy", classes=1)
    _raises(ValueError, "background only", load_folder, root)

    root = _folder(tmp_path / "f", ".npy", n=2)
    _raises(ValueError, "too few", load_folder, root)
    assert len(load_folder(root, val_fraction=0, test_fraction=0).train) == 2


def test_error_mixed_dimensions_and_two_files_for_one_case(tmp_path):
    root = _folder(tmp_path / "a", ".npy")
    np.save(root / "images" / "case4.npy", np.zeros((3, 8, 10), np.float32))
    np.save(root / "labels" / "case4.npy", np.zeros((3, 8, 10), np.uint8))
    _raises(ValueError, "case4.npy", load_folder, root)
    root = _folder(tmp_path / "b", ".npy")
    tifffile.imwrite(root / "images" / "case1.tif", np.zeros((8, 10), np.uint8))
    msg = _raises(ValueError, "case1.npy", load_folder, root)
    assert "case1.tif" in msg


def test_missing_reader_says_how_to_install(tmp_path, monkeypatch):
    root = _folder(tmp_path, ".tif")
    monkeypatch.setitem(sys.modules, "tifffile", None)
    _raises(ImportError, "pip install affseg[data]", load_folder, root)


def test_import_needs_no_data_packages():
    code = (
        "import sys, affseg, affseg.data; "
        "print(sorted(m for m in ('nibabel', 'nilearn', 'PIL', 'tifffile', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


# ---------------------------------------------------------------- datasets and crops


def test_datasets_with_indices_crops_and_dataloader(mni2d):
    lab, unlab = mni2d.train.labelled(0.1, seed=0)
    assert len(lab) == round(0.1 * len(mni2d.train))
    pairs = SegmentationDataset(mni2d.train, lab, crop=32)
    images = UnlabelledDataset(mni2d.train, unlab)
    assert len(pairs) == len(lab) and len(images) == len(unlab)
    x, y = next(iter(torch.utils.data.DataLoader(pairs, batch_size=4, shuffle=True)))
    assert x.shape == (4, 1, 32, 32) and y.shape == (4, 32, 32) and y.dtype == torch.int64
    assert tuple(images[0].shape) == (1, 64, 64)
    with pytest.raises(IndexError):
        SegmentationDataset(mni2d.train, [len(mni2d.train)])


def test_random_crop_pads_short_axes_and_is_seeded():
    image = torch.arange(12.0).view(1, 3, 4)
    label = torch.ones(3, 4, dtype=torch.long)
    ci, cl = random_crop(image, label, (5, 2), torch.Generator().manual_seed(0))
    assert tuple(ci.shape) == (1, 5, 2) and (cl[0] == 0).all() and (cl[-1] == 0).all() and (cl[1:4] == 1).all()
    assert float(ci[0, 0, 0]) == 0.0  # padded with the image's minimum
    image = torch.randn(1, 20, 20)
    a = random_crop(image, None, 8, torch.Generator().manual_seed(5))
    b = random_crop(image, None, 8, torch.Generator().manual_seed(5))
    assert a[1] is None and torch.equal(a[0], b[0])


def test_split_validates_its_parts():
    with pytest.raises(ValueError, match="shape"):
        Split((torch.zeros(1, 4, 4),), (torch.zeros(4, 5, dtype=torch.long),), ("a",), ("a",))
    with pytest.raises(ValueError, match="different shapes"):
        Split(
            (torch.zeros(1, 4, 4), torch.zeros(1, 5, 5)),
            (torch.zeros(4, 4, dtype=torch.long), torch.zeros(5, 5, dtype=torch.long)),
            ("a", "b"),
            ("a", "b"),
        ).stack()


# ---------------------------------------------------------------- docs


MODULES = ["containers", "datasets", "folder", "mni152", "readers", "split", "transforms"]


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_run(module, mni2d):  # mni2d first: the template is then cached
    mod = importlib.import_module(f"affseg.data.{module}")
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    for test in doctest.DocTestFinder().find(mod, mod.__name__, globs={**vars(mod), "torch": torch}):
        runner.run(test, out=report.append)
    assert not report, "".join(report)


@pytest.mark.parametrize("name", D.__all__)
def test_public_symbols_document_their_contract(name):
    import inspect

    doc = inspect.getdoc(getattr(D, name)) or ""
    missing = [s for s in ("Args:", "Returns:", "Shape:", "Raises:", "Example:") if s not in doc]
    assert not missing, f"affseg.data.{name} docstring lacks {missing}"
    assert re.search(r">>> ", doc), name
