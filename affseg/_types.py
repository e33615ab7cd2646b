"""Result types shared by every backend of affseg."""

from typing import NamedTuple, Optional

from torch import Tensor


class PatchStats(NamedTuple):
    """Per-tile statistics returned by :func:`affseg.patch_entropy`.

    All three tensors have the tile grid ``*P`` as trailing dims, with
    ``P_d = ceil(S_d / patch_d)``, and carry no gradient.

    Attributes:
        entropy: Mean entropy over the tile's averaged pixels. ``(B, K, *P)`` for
            ``mode="binary"`` (per-class one-vs-rest entropy) and for ``mode="shannon"``
            with a ``class_mask``; ``(B, 1, *P)`` for ``mode="shannon"`` without one.
            Shannon entropy is divided by ``log K``, so it lies in ``[0, 1]``.
        mean_conf: ``(B, K, *P)`` mean softmax probability of class k over the same pixels.
        count: ``(B, K, *P)`` int64 number of pixels averaged: the tile's pixel count, or the
            number of its class-k pixels when a ``class_mask`` is given. Where it is 0,
            ``entropy`` and ``mean_conf`` are 0.
    """

    entropy: Tensor
    mean_conf: Tensor
    count: Tensor


class PatchSample(NamedTuple):
    """Patches chosen by :func:`affseg.sample_patches`, grouped by class, best first.

    Attributes:
        batch: ``(S,)`` int64 image index of each sampled tile.
        tile: ``(S, ndim)`` int64 tile coordinates (tile ``t`` covers pixels ``t·p … t·p + p − 1``).
        cls: ``(S,)`` int64 class the tile was sampled for.
        score: ``(S,)`` the metric that ranked it (entropy: lower is better; confidence and
            cosine: higher is better).
        probs: ``(S, K)`` ŷ, the mean softmax over the tile's pixels of class ``cls``.
    """

    batch: Tensor
    tile: Tensor
    cls: Tensor
    score: Tensor
    probs: Optional[Tensor]
