"""The loaded data: `Split` (the samples of one part) and `SegmentationData` (train/val/test)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from affseg.data.split import split_labelled


@dataclass(frozen=True, eq=False)
class Split:
    """The samples of one part (train, val or test) of a segmentation data set, as plain tensors.

    A sample is a 2D image (a slice or a picture) or a 3D volume (a volume or a slab of one).
    Samples of a folder loaded without `size` may differ in spatial shape, so they are kept as a
    tuple of tensors; `stack()` batches them when the shapes agree.

    Args:
        images: one float32 tensor per sample, each (C, *S).
        labels: one int64 tensor per sample, each (*S) with the same S as its image.
        cases: per sample, the case (volume, file or template slice) it comes from; samples of one
            case always lie in the same split, and `labelled` draws whole cases.
        names: per sample, a unique readable name ("case", "case:z=12").

    Returns:
        A frozen container; `len(split)` is the number of samples.

    Shape:
        images[i]: (C, *S) float32, with S = (H, W) or (D, H, W); labels[i]: (*S) int64.
        `stack()` returns (N, C, *S) float32 and (N, *S) int64.

    Raises:
        ValueError: the four sequences differ in length, or a label's shape is not its image's
            spatial shape.

    Example:
        >>> s = Split((torch.zeros(1, 4, 4),), (torch.zeros(4, 4, dtype=torch.long),), ("a",), ("a",))
        >>> len(s), s.stack()[0].shape
        (1, torch.Size([1, 1, 4, 4]))
    """

    images: tuple[torch.Tensor, ...]
    labels: tuple[torch.Tensor, ...]
    cases: tuple[str, ...]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        for field in ("images", "labels", "cases", "names"):
            object.__setattr__(self, field, tuple(getattr(self, field)))
        n = len(self.images)
        if not len(self.labels) == len(self.cases) == len(self.names) == n:
            raise ValueError(
                f"Split needs as many labels, cases and names as images ({n}), got "
                f"{len(self.labels)}, {len(self.cases)} and {len(self.names)}"
            )
        for name, image, label in zip(self.names, self.images, self.labels):
            if tuple(image.shape[1:]) != tuple(label.shape):
                raise ValueError(
                    f"sample {name}: label shape {tuple(label.shape)} must equal the image's spatial "
                    f"shape {tuple(image.shape[1:])}"
                )

    def __len__(self) -> int:
        return len(self.images)

    def stack(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All samples as one batch.

        Args:
            (none)

        Returns:
            (images, labels): float32 (N, C, *S) and int64 (N, *S).

        Shape:
            As above; N = len(self).

        Raises:
            ValueError: the split is empty or its samples differ in shape (load with `size=`).

        Example:
            >>> s = Split((torch.zeros(1, 2, 2),) * 3, (torch.zeros(2, 2, dtype=torch.long),) * 3,
            ...           ("a", "b", "c"), ("a", "b", "c"))
            >>> [tuple(t.shape) for t in s.stack()]
            [(3, 1, 2, 2), (3, 2, 2)]
        """
        if not self.images:
            raise ValueError("cannot stack an empty split")
        shapes = {tuple(im.shape) for im in self.images}
        if len(shapes) > 1:
            raise ValueError(
                f"cannot stack samples of different shapes {sorted(shapes)[:4]}: load with size=... "
                "to resample every sample to one shape"
            )
        return torch.stack(self.images), torch.stack(self.labels)

    def labelled(self, fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
        """A reproducible labelled subset of this split's samples, drawn by whole cases.

        Args:
            fraction: share of the cases whose labels are kept, in [0, 1]; at least one case is
                labelled when fraction > 0, all of them at 1.
            seed: the draw's seed; the same seed gives the same subset.

        Returns:
            (labelled, unlabelled): sorted sample indices, disjoint, covering range(len(self)).

        Shape:
            Two lists of ints.

        Raises:
            ValueError: fraction outside [0, 1].

        Example:
            >>> s = Split((torch.zeros(1, 2, 2),) * 4, (torch.zeros(2, 2, dtype=torch.long),) * 4,
            ...           ("a", "a", "b", "b"), ("a:0", "a:1", "b:0", "b:1"))
            >>> lab, unlab = s.labelled(0.5, seed=0)
            >>> len(lab), len(unlab)
            (2, 2)
        """
        return split_labelled(len(self), fraction, seed=seed, groups=self.cases)


@dataclass(frozen=True, eq=False)
class SegmentationData:
    """A segmentation data set split into train, val and test parts, with its metadata.

    Built by `load_mni152` or `load_folder`.

    Args:
        train, val, test: the three parts (`Split`); they share no case.
        num_classes: number of label classes, 0 being background.
        in_channels: image channels C.
        dims: spatial dimensions of a sample, 2 or 3.
        description: one readable paragraph: source, sizes, how it was split and resampled.
        class_names: one name per class.

    Returns:
        A frozen container.

    Shape:
        See `Split`: images (C, *S) float32, labels (*S) int64, len(S) == dims.

    Raises:
        ValueError: len(class_names) != num_classes.

    Example:
        >>> e = Split((), (), (), ())
        >>> d = SegmentationData(e, e, e, num_classes=2, in_channels=1, dims=2, description="empty",
        ...                      class_names=("background", "organ"))
        >>> d.num_classes, len(d.train)
        (2, 0)
    """

    train: Split
    val: Split
    test: Split
    num_classes: int
    in_channels: int
    dims: int
    description: str
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names must have num_classes={self.num_classes} entries, got {self.class_names}"
            )

    def __repr__(self) -> str:
        return (
            f"SegmentationData(dims={self.dims}, in_channels={self.in_channels}, num_classes="
            f"{self.num_classes}, train={len(self.train)}, val={len(self.val)}, test={len(self.test)})"
        )
