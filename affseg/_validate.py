"""Argument checks shared by the public API (SPEC §9).

Every public op calls these before any kernel runs, so bad input fails with a ValueError/TypeError
that names the argument, what was expected and what was given.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from affseg._reduce import REDUCTIONS

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def tensor(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def floating(x, name: str, ndims: Sequence[int] | None = None) -> torch.Tensor:
    tensor(x, name)
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if ndims is not None:
        rank(x, name, ndims)
    return x


def integer(x, name: str, ndims: Sequence[int] | None = None) -> torch.Tensor:
    tensor(x, name)
    if x.dtype not in _INT_DTYPES:
        raise TypeError(f"{name} must be an integer tensor (e.g. torch.int64), got dtype {x.dtype}")
    if ndims is not None:
        rank(x, name, ndims)
    return x


def boolean(x, name: str, shape: Sequence[int]) -> torch.Tensor:
    tensor(x, name)
    if x.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor, got dtype {x.dtype}")
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(x.shape)}")
    return x


def rank(x: torch.Tensor, name: str, ndims: Sequence[int]) -> None:
    if x.dim() not in tuple(ndims):
        want = " or ".join(str(d) for d in ndims)
        raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(x.shape)}")


def same_device(**tensors: torch.Tensor | None) -> torch.device:
    present = {k: v for k, v in tensors.items() if v is not None}
    devices = {k: v.device for k, v in present.items()}
    first_name, first = next(iter(devices.items()))
    for k, d in devices.items():
        if d != first:
            raise ValueError(f"{k} must be on the same device as {first_name} ({first}), got {d}")
    return first


def dim_match(name_a: str, a: torch.Tensor, dim_a: int, name_b: str, b: torch.Tensor, dim_b: int, what: str) -> None:
    if a.shape[dim_a] != b.shape[dim_b]:
        raise ValueError(
            f"{name_b} must match {name_a} in {what}: expected {a.shape[dim_a]} (from {name_a} of shape "
            f"{tuple(a.shape)}), got {b.shape[dim_b]} (shape {tuple(b.shape)})"
        )


def positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def finite(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def unit_interval(value, name: str) -> float:
    value = finite(value, name)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return value


def choice(value, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def int_value(value, name: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def int_tuple(value, name: str, length: int | None = None, minimum: int = 1) -> tuple[int, ...]:
    """An int or a sequence of ints, each >= minimum; an int is repeated `length` times."""
    if isinstance(value, int) and not isinstance(value, bool):
        if length is None:
            raise TypeError(f"{name} must be a sequence of ints, got {value!r}")
        value = (value,) * length
    if not isinstance(value, (tuple, list)) or not value:
        raise TypeError(f"{name} must be an int or a non-empty tuple of ints, got {value!r}")
    out = tuple(value)
    for v in out:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must contain ints, got {value!r}")
        if v < minimum:
            raise ValueError(f"{name} must contain values >= {minimum}, got {value!r}")
    if length is not None and len(out) != length:
        raise ValueError(f"{name} must have {length} entries (one per spatial dim), got {value!r}")
    return out


def reduction(value) -> str:
    return choice(value, "reduction", REDUCTIONS)


def labels_in_range(labels: torch.Tensor, num_classes: int, ignore_index: int | None, name: str = "labels") -> None:
    """Labels must lie in [0, num_classes) or equal ignore_index (one reduction, one host sync on CUDA).

    Skipped while torch.compile traces: a value-dependent check would break the graph. Eager calls
    (and the first eager run of a compiled model's inputs, which users should do) still check.
    """
    if labels.numel() == 0 or torch.compiler.is_compiling():
        return
    bad = (labels < 0) | (labels >= num_classes)
    if ignore_index is not None:
        bad &= labels != ignore_index
    if bool(bad.any()):
        value = int(labels[bad].flatten()[0])
        allowed = f"[0, {num_classes})" + (f" or ignore_index={ignore_index}" if ignore_index is not None else "")
        raise ValueError(f"{name} must lie in {allowed}, got a label {value}")


# ------------------------------------------------------------------------------------------------
# Loss options. One function per loss, called by the functional API before any kernel runs and by
# the module twin at construction, so a bad option fails the same way in both, and as early as the
# module form allows (at construction, not at the first forward).

ORIENTATIONS = ("paper", "swapped")
DIVERGENCES = ("tv", "fg_l1")
SAMPLINGS = ("grid", "random", "stride")
WINDOW_ALIGNS = ("center", "official")
DISTANCES = ("sqeuclidean", "l1")
DIAGS = ("one_minus", "literal")
INFONCE_MODES = ("queue_plus_mixed", "mixed_only")


def optional_int(value, name: str, minimum: int | None = None) -> int | None:
    return None if value is None else int_value(value, name, minimum)


def flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def pdcr_core_options(*, tau, orientation, divergence, exclude_self, reduction) -> None:
    """Options of :func:`affseg.pdcr_loss_from_ratios`."""
    positive(tau, "tau")
    choice(orientation, "orientation", ORIENTATIONS)
    choice(divergence, "divergence", DIVERGENCES)
    flag(exclude_self, "exclude_self")
    choice(reduction, "reduction", REDUCTIONS)


def pdcr_options(*, num_classes, window_sizes, num_samples, sampling, tau, ignore_index, orientation, divergence,
                 exclude_self, reduction, window_align="center") -> None:
    """Options of :func:`affseg.pdcr_loss` and :class:`affseg.nn.PDCRLoss` (the tensor-free ones)."""
    int_value(num_classes, "num_classes", minimum=2)
    int_tuple(window_sizes, "window_sizes", length=1 if isinstance(window_sizes, int) else None)
    optional_int(num_samples, "num_samples", minimum=1)
    choice(sampling, "sampling", SAMPLINGS)
    choice(window_align, "window_align", WINDOW_ALIGNS)
    optional_int(ignore_index, "ignore_index")
    pdcr_core_options(tau=tau, orientation=orientation, divergence=divergence, exclude_self=exclude_self,
                      reduction=reduction)


def supcon_options(*, tau, reduction, ignore_index) -> None:
    """Options of :func:`affseg.soft_supcon_loss` and :class:`affseg.nn.SoftSupConLoss`."""
    positive(tau, "tau")
    choice(reduction, "reduction", REDUCTIONS)
    optional_int(ignore_index, "ignore_index")


def affinity_graph_options(*, sigma, gamma, distance, diag, reduction) -> None:
    """Options of :func:`affseg.affinity_graph_loss` and :class:`affseg.nn.AffinityGraphLoss`."""
    positive(sigma, "sigma")
    finite(gamma, "gamma")  # any sign: γ < 0 maximises the nuclear norm
    choice(distance, "distance", DISTANCES)
    choice(diag, "diag", DIAGS)
    choice(reduction, "reduction", REDUCTIONS)


def infonce_options(*, tau, n_hard, n_mix, mode, reduction) -> None:
    """Options of :func:`affseg.mixed_negative_infonce` and :class:`affseg.nn.MixedNegativeInfoNCE`."""
    positive(tau, "tau")
    int_value(n_hard, "n_hard", minimum=1)
    int_value(n_mix, "n_mix", minimum=0)
    choice(mode, "mode", INFONCE_MODES)
    choice(reduction, "reduction", REDUCTIONS)


def semi_agcl_options(*, lambda_u, lambda_graph, lambda_mix, rampup_steps, reduction) -> None:
    """Options of :class:`affseg.nn.SemiAGCLLoss` beyond those of its two terms."""
    for value, name in ((lambda_u, "lambda_u"), (lambda_graph, "lambda_graph"), (lambda_mix, "lambda_mix")):
        finite(value, name)
    int_value(rampup_steps, "rampup_steps", minimum=0)
    # The total adds per-node graph terms to per-query InfoNCE terms: only a scalar reduction adds up.
    choice(reduction, "reduction", ("mean", "sum"))
