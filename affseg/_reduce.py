"""The one reducer of every affseg loss (SPEC §3, §4, §7): ``reduction="mean" | "sum" | "none"``.

Shared by the functional API and `affseg.reference`, so a loss reduces the same way on every
backend.
"""
from __future__ import annotations

import torch

REDUCTIONS = ("mean", "sum", "none")


def reduce_rows(row: torch.Tensor, counted: torch.Tensor | None = None, reduction: str = "mean",
                weight: torch.Tensor | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Reduce per-row losses.

    Args:
        row: per-row losses, already 0 where a row is not counted.
        counted: bool mask of the rows that count (None: every row counts).
        reduction: ``"mean"`` (over counted rows; 0 when none counts), ``"sum"`` (Σ weight·row) or
            ``"none"`` (``row`` itself).
        weight: per-row weights of ``"sum"`` (PDCR's n_i); None for 1.
        dtype: dtype of the result (default: ``row``'s).

    Returns:
        A scalar, or ``row`` for ``"none"``.
    """
    dtype = row.dtype if dtype is None else dtype
    if reduction == "none":
        return row.to(dtype)
    if reduction == "sum":
        return (row if weight is None else row * weight).sum().to(dtype)
    if reduction != "mean":
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    n = torch.tensor(row.numel(), dtype=row.dtype) if counted is None else counted.sum()
    return (row.sum() / n.clamp_min(1).to(row.dtype)).to(dtype)
