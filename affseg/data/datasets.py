"""torch Datasets over a `Split`: labelled (image, label) pairs and unlabelled images."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from affseg.data.containers import Split
from affseg.data.transforms import random_crop


class SegmentationDataset(Dataset):
    """(image, label) pairs of a split, optionally a subset and random crops of them.

    A plain map-style Dataset, so it works with DataLoader, DistributedSampler and Subset.

    Args:
        split: the samples (`SegmentationData.train` etc.).
        indices: the samples to use (e.g. the labelled ones of `Split.labelled`); default all.
        crop: if given, each item is a fresh `random_crop` of this size (an int or one per
            spatial axis), drawn with torch's global RNG (which DataLoader seeds per worker).

    Returns:
        dataset[i] -> (image, label).

    Shape:
        image (C, *S) float32 and label (*S) int64; S = crop size when crop is given.

    Raises:
        IndexError: an index outside the split.

    Example:
        >>> split = Split((torch.randn(1, 8, 8),) * 3, (torch.zeros(8, 8, dtype=torch.long),) * 3,
        ...               ("a", "b", "c"), ("a", "b", "c"))
        >>> ds = SegmentationDataset(split, indices=[0, 2], crop=4)
        >>> len(ds), [tuple(t.shape) for t in ds[0]]
        (2, [(1, 4, 4), (4, 4)])
    """

    def __init__(
        self, split: Split, indices: Sequence[int] | None = None, crop: int | Sequence[int] | None = None
    ) -> None:
        self.split = split
        self.indices = list(range(len(split))) if indices is None else [int(i) for i in indices]
        bad = [i for i in self.indices if not 0 <= i < len(split)]
        if bad:
            raise IndexError(f"indices {bad[:5]} outside the split of {len(split)} samples")
        self.crop = crop

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        j = self.indices[i]
        image, label = self.split.images[j], self.split.labels[j]
        if self.crop is not None:
            image, label = random_crop(image, label, self.crop)
        return image, label


class UnlabelledDataset(Dataset):
    """The images alone of a split's samples (the unlabelled ones of semi-supervised training).

    Args:
        split: the samples.
        indices: the samples to use (e.g. the unlabelled ones of `Split.labelled`); default all.
        crop: as in `SegmentationDataset`.

    Returns:
        dataset[i] -> image.

    Shape:
        image (C, *S) float32.

    Raises:
        IndexError: an index outside the split.

    Example:
        >>> split = Split((torch.randn(1, 8, 8),) * 3, (torch.zeros(8, 8, dtype=torch.long),) * 3,
        ...               ("a", "b", "c"), ("a", "b", "c"))
        >>> tuple(UnlabelledDataset(split, indices=[1])[0].shape)
        (1, 8, 8)
    """

    def __init__(
        self, split: Split, indices: Sequence[int] | None = None, crop: int | Sequence[int] | None = None
    ) -> None:
        self._pairs = SegmentationDataset(split, indices, crop)

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, i: int) -> torch.Tensor:
        j = self._pairs.indices[i]
        image = self._pairs.split.images[j]
        if self._pairs.crop is not None:
            image, _ = random_crop(image, None, self._pairs.crop)
        return image
