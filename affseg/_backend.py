"""Backend selection (SPEC §8): `backend=` argument > AFFSEG_BACKEND > "auto".

"auto" picks Triton, then CUDA, on CUDA tensors and the C++ kernel on CPU tensors; an op with no
fused kernel for that device yet falls back to the reference. An explicit backend that cannot run
raises RuntimeError saying why, never a silent fallback.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch

from affseg import _extension

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")

# Public op -> the compiled op whose registration proves the C++ (CPU/CUDA) backend exists.
_C_OPS = {
    "patch_label_ratios": "patch_label_ratios",
    "pdcr_loss_from_ratios": "pdcr_fwd",
    "soft_supcon_loss": "cos_lse_fwd",
    "patch_entropy": "patch_entropy",
    "uafs_reweight": "uafs_fwd",
    "affinity_graph_loss": None,
    "mixed_negative_infonce": None,
}

# Public ops with a Triton launcher; filled by affseg._ops.* when their kernels import.
_TRITON_OPS: set[str] = set()
_TRITON_ERROR: list[str] = []


def register_triton(op: str) -> None:
    _TRITON_OPS.add(op)


def triton_import_error(message: str) -> None:
    if message not in _TRITON_ERROR:
        _TRITON_ERROR.append(message)


def load_triton_kernels(family: str) -> ModuleType | None:
    """``affseg.kernels.<family>``, or None (recording why for `affseg info`) when Triton cannot load.

    Triton raises ImportError when it is missing and RuntimeError when its driver set-up fails;
    either way affseg still imports and the other backends keep working.
    """
    try:
        return importlib.import_module(f"affseg.kernels.{family}")
    except (ImportError, RuntimeError) as exc:
        triton_import_error(f"Triton could not be imported ({exc})")
        return None


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available(op: str, backend: str, device: torch.device) -> tuple[bool, str]:
    """Whether `backend` can run `op` on `device`, and if not, why."""
    if backend == "reference":
        return True, ""
    if backend in ("cpu", "cuda"):
        if device.type != backend:
            return False, f"backend {backend!r} needs {backend.upper()} tensors, got tensors on {device}"
        if not _extension.HAS_C:
            return False, _extension.C_ERROR
        if backend == "cuda" and not _extension.compiled_with_cuda():
            return False, "affseg was built without CUDA (the torch it was built against is a CPU build)"
        name = _C_OPS[op]
        if name is None or not _extension.has_kernel(name, backend.upper()):
            return False, f"affseg's {backend.upper()} kernel for {op} is not built yet"
        return True, ""
    if backend == "triton":
        if _TRITON_ERROR and not _TRITON_OPS:
            return False, "; ".join(_TRITON_ERROR)
        if device.type != "cuda" and not triton_interpreting():
            return False, (
                f"Triton kernels need CUDA tensors (got {device}); on CPU they run only under the "
                "Triton interpreter (TRITON_INTERPRET=1 set before importing affseg)"
            )
        if op not in _TRITON_OPS:
            return False, f"affseg's Triton kernel for {op} is not built yet"
        return True, ""
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def resolve(op: str, backend: str | None, device: torch.device) -> str:
    """The concrete backend that runs `op` on `device`.

    Under torch.compile the answer is computed once at trace time and baked into the graph as a
    constant (it only depends on the build, the environment and the device), so
    `torch.compile(fullgraph=True)` can trace through the public API.
    """
    if backend is None:
        backend = "auto"
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return _resolve(op, backend, device.type, -1 if device.index is None else device.index)


@torch.compiler.assume_constant_result
def _resolve(op: str, backend: str, device_type: str, device_index: int) -> str:
    device = torch.device(device_type) if device_index < 0 else torch.device(device_type, device_index)
    if backend == "auto":
        env = os.environ.get("AFFSEG_BACKEND", "").strip()
        if env:
            if env not in BACKENDS:
                raise ValueError(f"AFFSEG_BACKEND must be one of {BACKENDS}, got {env!r}")
            backend = env
    if backend == "auto":
        for candidate in (("triton", "cuda") if device.type == "cuda" else ("cpu",)):
            if available(op, candidate, device)[0]:
                return candidate
        return "reference"
    ok, why = available(op, backend, device)
    if not ok:
        raise RuntimeError(f"affseg: backend {backend!r} cannot run {op}: {why}")
    return backend
