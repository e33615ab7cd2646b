"""Loads the compiled extension `affseg._C` once and records why it is missing, if it is."""
from __future__ import annotations

import torch

try:
    from affseg import _C  # noqa: F401  (importing runs the TORCH_LIBRARY registrars)

    HAS_C = True
    C_ERROR = ""
except ImportError as exc:  # a source checkout that was never built, or an ABI mismatch
    HAS_C = False
    C_ERROR = f"affseg._C could not be imported ({exc}); reinstall with `pip install --no-build-isolation -e .`"


def compiled_with_cuda() -> bool:
    return HAS_C and bool(torch.ops.affseg._compiled_with_cuda())


def compiled_with_openmp() -> bool:
    return HAS_C and bool(torch.ops.affseg._compiled_with_openmp())


def cpu_isa() -> str:
    """The SIMD level the C++ CPU kernels run at ("baseline", "avx2", "avx512"), after AFFSEG_CPU_ISA."""
    return str(torch.ops.affseg._cpu_isa())


def has_op(op: str) -> bool:
    """Whether this build of affseg._C defines the schema ``affseg::<op>`` (an older build may not)."""
    if not HAS_C:
        return False
    try:
        torch._C._get_schema(f"affseg::{op}", "")
        return True
    except RuntimeError:
        return False


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether `torch.ops.affseg.<op>` has a kernel registered for `dispatch_key` ("CPU", "CUDA")."""
    if not HAS_C:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"affseg::{op}", dispatch_key)
