"""What every launcher in this package does the same way around a Triton launch.

- Launches run under the inputs' device: Triton launches on the *current* CUDA device, so a tensor
  on cuda:1 launched from a cuda:0 context would read foreign memory. CPU tensors (interpreter) and
  meta tensors (the sm_90 compile test traces launchers with them) need no guard.
- float64 scalars travel as 1-element tensors: the GPU launcher types a Python float as fp32, which
  would cost float64 its precision (the interpreter keeps them double, so only a GPU shows it).
- Grid axes 1 and 2 hold at most 65,535 programs; axis 0 holds 2^31 − 1. Large counts go on axis 0.
"""
from __future__ import annotations

import contextlib

import torch

GRID_AXIS0_MAX = 2**31 - 1
GRID_AXIS12_MAX = 65535


def device_of(t: torch.Tensor):
    """Context manager making t's CUDA device current for a launch (a no-op off CUDA)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def scalar(value: float, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """value as a 1-element tensor of dtype (default: like's) on like's device, read in-kernel
    with tl.load so a float64 kernel sees every bit of it."""
    return torch.full((1,), value, dtype=dtype or like.dtype, device=like.device)


def on_gpu(t: torch.Tensor) -> bool:
    """Whether the launch is (or is traced as) a compiled GPU launch: CPU tensors only ever run in the
    interpreter, whose cost is per tile step, so launchers pick different tiles for it."""
    return t.device.type != "cpu"


def batch_chunks(batch: int):
    """(start, stop) slices of at most 65,535 images, for kernels that keep the batch on grid axis 1."""
    for start in range(0, batch, GRID_AXIS12_MAX):
        yield start, min(batch, start + GRID_AXIS12_MAX)


def check_grid(name: str, programs: int) -> int:
    """programs, after checking that they fit grid axis 0."""
    if programs > GRID_AXIS0_MAX:
        raise ValueError(f"{name}: {programs} programs exceed the grid limit of {GRID_AXIS0_MAX}")
    return programs
