"""Reproducible splits: train/val/test by case or by position, and the labelled subset of train."""
from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import torch

from affseg import _validate


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))


def _part_sizes(n: int, val_fraction: float, test_fraction: float, what: str) -> tuple[int, int, int]:
    """(train, val, test) sizes of n items: round(fraction * n), at least 1 where fraction > 0."""
    val_fraction = _validate.unit_interval(val_fraction, "val_fraction")
    test_fraction = _validate.unit_interval(test_fraction, "test_fraction")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1 to leave training data, got "
            f"{val_fraction} + {test_fraction}"
        )
    n_val = max(1, _round(val_fraction * n)) if val_fraction > 0 else 0
    n_test = max(1, _round(test_fraction * n)) if test_fraction > 0 else 0
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ValueError(
            f"{n} {what} are too few for val_fraction={val_fraction} and test_fraction={test_fraction}: "
            f"they need at least {n_val + n_test + 1} (lower the fractions, or set them to 0)"
        )
    return n_train, n_val, n_test


def split_cases(
    n: int, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0
) -> tuple[list[int], list[int], list[int]]:
    """A seeded random train/val/test split of n cases (volumes, files), by case.

    Args:
        n: number of cases, >= 1.
        val_fraction, test_fraction: shares of the cases for validation and test, each in [0, 1)
            with a sum < 1; each part gets round(fraction * n) cases, at least one where its
            fraction is > 0; train gets the rest (at least one).
        seed: seed of the permutation (torch.Generator); the same seed gives the same split.

    Returns:
        (train, val, test): sorted, disjoint lists of case indices covering range(n).

    Shape:
        Three lists of ints.

    Raises:
        ValueError: fractions outside [0, 1] or summing to >= 1, or too few cases to fill every
            part with a fraction > 0.

    Example:
        >>> train, val, test = split_cases(10, 0.2, 0.2, seed=0)
        >>> len(train), len(val), len(test), sorted(train + val + test) == list(range(10))
        (6, 2, 2, True)
    """
    n = _validate.int_value(n, "n", minimum=1)
    _, n_val, n_test = _part_sizes(n, val_fraction, test_fraction, "cases")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    val = sorted(perm[:n_val])
    test = sorted(perm[n_val : n_val + n_test])
    train = sorted(perm[n_val + n_test :])
    return train, val, test


def split_positions(
    n: int, val_fraction: float = 0.2, test_fraction: float = 0.2, gap: int = 0
) -> tuple[range, range, range]:
    """A fixed split of n ordered positions (e.g. slices along z): train, gap, val, gap, test.

    Neighbouring slices of one volume are nearly the same image, so a random split of slices
    leaks; this one keeps `gap` unused positions between the parts. The parts cover different
    stretches of the volume, so they differ in content too (a shifted, harder test than a random
    split).

    Args:
        n: number of positions, >= 1.
        val_fraction, test_fraction: shares of the n - 2*gap positions left after the gaps, as in
            `split_cases`.
        gap: positions left out between train and val and between val and test (>= 0); only
            between parts that are not empty.

    Returns:
        (train, val, test): three ranges of positions, in this order along the axis.

    Shape:
        Three ranges.

    Raises:
        ValueError: bad fractions, or too few positions for the parts and gaps.

    Example:
        >>> split_positions(20, 0.2, 0.2, gap=2)
        (range(0, 10), range(12, 15), range(17, 20))
    """
    n = _validate.int_value(n, "n", minimum=1)
    gap = _validate.int_value(gap, "gap", minimum=0)
    n_gaps = int(val_fraction > 0) + int(test_fraction > 0)
    usable = n - n_gaps * gap
    if usable < 1:
        raise ValueError(f"{n} positions are too few for {n_gaps} gaps of {gap}: lower gap")
    n_train, n_val, n_test = _part_sizes(usable, val_fraction, test_fraction, "positions (after the gaps)")
    train = range(0, n_train)
    start = n_train + (gap if n_val else 0)
    val = range(start, start + n_val)
    start = val.stop + (gap if n_test else 0)
    test = range(start, start + n_test)
    return train, val, test


def split_labelled(
    n: int, fraction: float, seed: int = 0, groups: Sequence[Hashable] | None = None
) -> tuple[list[int], list[int]]:
    """A reproducible labelled subset of n training samples; the rest are the unlabelled ones.

    For semi-supervised training at a label fraction F: the labelled samples keep their labels,
    the unlabelled ones are used as images only. With `groups` (e.g. `Split.cases`, the volume
    each 2D slice comes from) whole groups are drawn, so the labelled slices come from
    `F` of the volumes, as in the label-efficient literature.

    Args:
        n: number of samples, >= 0.
        fraction: share of the samples (or of the groups) labelled, in [0, 1]: round(F * count),
            at least 1 when F > 0; F = 1 labels all, F = 0 none.
        seed: seed of the draw (torch.Generator); the same (n, fraction, seed, groups) always
            gives the same subset, and different seeds give different subsets (when there is a
            choice to make).
        groups: optional, one key per sample; samples sharing a key are labelled together.

    Returns:
        (labelled, unlabelled): sorted, disjoint lists of sample indices covering range(n).

    Shape:
        Two lists of ints.

    Raises:
        ValueError: fraction outside [0, 1], n < 0, or len(groups) != n.

    Example:
        >>> lab, unlab = split_labelled(20, fraction=0.1, seed=0)
        >>> len(lab), len(unlab), lab == split_labelled(20, 0.1, seed=0)[0]
        (2, 18, True)
        >>> split_labelled(4, 0.5, seed=0, groups=["a", "a", "b", "b"])[0] in ([0, 1], [2, 3])
        True
    """
    n = _validate.int_value(n, "n", minimum=0)
    fraction = _validate.unit_interval(fraction, "fraction")
    if groups is None:
        keys: list[Hashable] = list(range(n))
        member = list(range(n))
    else:
        groups = list(groups)
        if len(groups) != n:
            raise ValueError(f"groups must have one key per sample (n={n}), got {len(groups)}")
        keys = list(dict.fromkeys(groups))  # distinct, in order of first appearance
        index = {k: i for i, k in enumerate(keys)}
        member = [index[g] for g in groups]
    count = len(keys)
    if fraction == 0 or count == 0:
        k = 0
    elif fraction == 1:
        k = count
    else:
        k = min(count, max(1, _round(fraction * count)))
    perm = torch.randperm(count, generator=torch.Generator().manual_seed(int(seed))).tolist()
    chosen = set(perm[:k])
    labelled = [i for i in range(n) if member[i] in chosen]
    unlabelled = [i for i in range(n) if member[i] not in chosen]
    return labelled, unlabelled
