"""What every launcher in this package does the same way around a Triton launch.

- Launches run under the inputs' device: Triton launches on the *current* CUDA device, so a tensor
  on cuda:1 launched from a cuda:0 context would read foreign memory. CPU tensors (interpreter) and
  meta tensors (the sm_90 compile test traces launchers with them) need no guard.
- float64 scalars travel as 1-element tensors: the GPU launcher types a Python float as fp32, which
  would cost float64 its precision (the interpreter keeps them double, so only a GPU shows it).
- Grid axes 1 and 2 hold at most 65,535 programs; axis 0 holds 2^31 − 1. Large counts go on axis 0.
- Dot products take one of INPUT_PRECISIONS, chosen by the caller (affseg._backend.dot_precision
  maps dtypes and torch.get_float32_matmul_precision() to them) and applied in-kernel by `dot`.
- A similarity tile over a feature dim C of any size is `tile_dots`: the sum of dots over BLOCK_C-wide
  channel chunks, so shared memory and registers are bounded by the tiles, not by C.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

GRID_AXIS0_MAX = 2**31 - 1
GRID_AXIS12_MAX = 65535
# "ieee": fp32 FMA (no tensor cores); "tf32", "bf16": tensor cores with fp32 accumulation.
INPUT_PRECISIONS = ("ieee", "tf32", "bf16")


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


def input_precision_for(name: str, input_precision: str, t: torch.Tensor) -> str:
    """The INPUT_PRECISION a launch on t's dtype compiles with, after checking the mode."""
    if input_precision not in INPUT_PRECISIONS:
        raise ValueError(f"{name}: input_precision must be one of {INPUT_PRECISIONS}, got {input_precision!r}")
    if t.dtype == torch.float64:
        return "ieee"  # float64 dots are DMMA in fp64 whatever the mode
    if input_precision == "bf16" and not on_gpu(t):
        # the interpreter truncates the cast and runs tl.dot on raw bf16 bits (BUILDING.md): wrong numbers
        raise ValueError(f"{name}: input_precision 'bf16' runs only on a GPU (the Triton interpreter "
                         f"computes bfloat16 wrongly)")
    return input_precision


@triton.jit
def dot(a, b, acc, INPUT_PRECISION: tl.constexpr):
    """acc + a·b in acc's dtype. "bf16" rounds both tiles to bfloat16 (round to nearest even) for
    the tensor cores and accumulates in fp32; what the caller does with the result stays fp32."""
    # both branches assign: Triton's code generator would still compile a statement after a return
    # taken under a constexpr if ("bf16" is no tl.dot input_precision)
    if INPUT_PRECISION == "bf16":
        out = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc, out_dtype=tl.float32)
    else:
        out = tl.dot(a, b, acc, input_precision=INPUT_PRECISION, out_dtype=acc.dtype)
    return out


@triton.jit
def tile_dots(x_ptr, x_rows, x_in, y_ptr, y_rows, y_in, C, BLOCK_C: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """x[x_rows] · y[y_rows]ᵀ, an [len(x_rows), len(y_rows)] tile of (·, C) row-major features, in the
    features' dtype: Σ over BLOCK_C-wide chunks of C of `dot` on the chunk tiles (zero outside
    x_in, y_in and C). Offsets are int64."""
    acc = tl.zeros([x_rows.shape[0], y_rows.shape[0]], dtype=x_ptr.dtype.element_ty)
    x_off = x_rows[:, None].to(tl.int64) * C
    y_off = y_rows[:, None].to(tl.int64) * C
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        c_in = cs < C
        x = tl.load(x_ptr + x_off + cs[None, :], mask=x_in[:, None] & c_in[None, :], other=0.0)
        y = tl.load(y_ptr + y_off + cs[None, :], mask=y_in[:, None] & c_in[None, :], other=0.0)
        acc = dot(x, tl.trans(y), acc, INPUT_PRECISION)
    return acc
