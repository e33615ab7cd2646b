"""Test-split metrics with MONAI: Dice, Jaccard, HD95 and ASD per foreground class.

A case whose prediction or label has no voxel of a class has no defined surface distance (and no
Dice when both are empty): MONAI gives NaN or inf there. Those entries are kept as NaN, counted
(``empty_pred`` / ``empty_label``) and left out of the means, so they are reported, never a crash
and never a silent 0.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

METRICS = ("dice", "jaccard", "hd95", "asd")


def _one_hot(x: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(x.long(), num_classes).movedim(-1, 1).float()


def case_metrics(pred: torch.Tensor, label: torch.Tensor, num_classes: int, spacing=None) -> dict:
    """Per-case, per-foreground-class metrics.

    Args:
        pred, label: integer class maps ``(N, *S)`` (N cases, 2D or 3D).
        num_classes: K, background included.
        spacing: voxel spacing for the distances (default 1 per axis, in voxels).

    Returns:
        ``{"dice", "jaccard", "hd95", "asd"}`` each a float64 tensor ``(N, K − 1)`` (NaN where
        undefined), plus ``"empty_pred"`` and ``"empty_label"`` bool ``(N, K − 1)``.
    """
    from monai.metrics import (compute_average_surface_distance, compute_dice, compute_hausdorff_distance,
                               compute_iou)

    if pred.shape != label.shape:
        raise ValueError(f"pred and label must have the same shape, got {tuple(pred.shape)} and {tuple(label.shape)}")
    p, y = _one_hot(pred, num_classes), _one_hot(label, num_classes)
    empty_pred = p[:, 1:].flatten(2).sum(-1) == 0
    empty_label = y[:, 1:].flatten(2).sum(-1) == 0
    with warnings.catch_warnings():
        # MONAI warns for every empty class; the emptiness is returned instead.
        warnings.simplefilter("ignore")
        out = {
            # ignore_empty=False: a false positive on an empty label scores 0, not NaN.
            "dice": compute_dice(p, y, include_background=False, ignore_empty=False),
            "jaccard": compute_iou(p, y, include_background=False, ignore_empty=False),
            "hd95": compute_hausdorff_distance(p, y, include_background=False, percentile=95, spacing=spacing),
            "asd": compute_average_surface_distance(p, y, include_background=False, symmetric=True, spacing=spacing),
        }
    undefined = empty_pred | empty_label
    for k in ("hd95", "asd"):
        out[k] = torch.where(undefined, float("nan"), out[k].double())
    for k in ("dice", "jaccard"):  # no overlap score when the class is in neither
        out[k] = torch.where(empty_pred & empty_label, float("nan"), out[k].double())
    out["empty_pred"], out["empty_label"] = empty_pred, empty_label
    return out


def summarize(per_case: dict) -> dict:
    """Means over cases per class and over classes, NaN entries left out (and counted)."""
    summary = {}
    for k in METRICS:
        v = per_case[k]
        per_class = torch.nanmean(v, dim=0)
        summary[k] = {"per_class": per_class.tolist(), "mean": float(torch.nanmean(per_class))}
    summary["empty_pred"] = per_case["empty_pred"].sum(0).tolist()
    summary["empty_label"] = per_case["empty_label"].sum(0).tolist()
    summary["cases"] = int(per_case["dice"].shape[0])
    return summary
