"""Data for segmentation training: the offline MNI152 template, a user's folder, splits, crops.

`load_mni152` gives the default data set (one template brain through nilearn: a stand-in for a
benchmark, not a benchmark); `load_folder` reads images/ + labels/ or a Decathlon imagesTr/ +
labelsTr/ folder of NIfTI, PNG, TIFF or NPY files. Both return a `SegmentationData` of plain
tensors split into train/val/test; `Split.labelled` / `split_labelled` draw the labelled subset
for a label fraction, `SegmentationDataset` / `UnlabelledDataset` wrap a split for a DataLoader,
`random_crop` cuts the fixed-size patches of 3D training.

nibabel, nilearn, Pillow and tifffile are imported only when a file of their kind is read
(`pip install affseg[data]`).
"""
from affseg.data.containers import SegmentationData, Split
from affseg.data.datasets import SegmentationDataset, UnlabelledDataset
from affseg.data.folder import load_folder
from affseg.data.mni152 import load_mni152
from affseg.data.split import split_cases, split_labelled, split_positions
from affseg.data.transforms import normalize_intensity, random_crop, resize_image, resize_label, target_size

__all__ = [
    "SegmentationData",
    "SegmentationDataset",
    "Split",
    "UnlabelledDataset",
    "load_folder",
    "load_mni152",
    "normalize_intensity",
    "random_crop",
    "resize_image",
    "resize_label",
    "split_cases",
    "split_labelled",
    "split_positions",
    "target_size",
]
