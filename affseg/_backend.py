"""Backend selection (SPEC §8): `backend=` argument > AFFSEG_BACKEND > "auto".

Each backend declares what it takes (:class:`Limits`: the largest C, W, K or M, the dtypes).
"auto" picks the first backend that can take the call: on CUDA tensors Triton, then CUDA C++, then
the reference; on CPU tensors C++, then the reference. An explicit backend that is not available
raises RuntimeError saying why; one that is available but cannot take this call raises ValueError
naming the limit. Both happen before any kernel runs, and both name the public op the user called.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, fields
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
    "affinity_graph_loss": "affinity_matrix",
    "mixed_negative_infonce": "hard_negatives",
}
OPS = tuple(_C_OPS)

# Public ops whose Triton kernels take a dot precision (kernels/_launch.py INPUT_PRECISIONS).
DOT_PRECISION_OPS = ("pdcr_loss_from_ratios", "soft_supcon_loss")
_FLOAT32_DOTS = {"highest": "ieee", "high": "tf32", "medium": "bf16"}


def dot_precision(dtype: torch.dtype) -> str:
    """The GPU dot precision for inputs of `dtype` (SPEC §8), read when the public op is called.

    float32 follows ``torch.get_float32_matmul_precision()``: "highest" -> "ieee" (fp32 FMA),
    "high" -> "tf32", "medium" -> "bf16". float64 -> "ieee". The kernels take float16/bfloat16
    upcast to float32 and dot them on tensor cores at their own precision: bfloat16 -> "bf16", and
    float16 -> "tf32", whose 10 mantissa bits hold an fp16 value exactly while its fp32 exponent
    keeps the backward's small G·f weights (≈ g·p/τ, with g and p ≈ 1/N under a mean: below fp16's
    6e-5 normal range by N ≈ 1000) from flushing to zero as fp16 tiles would. Triton and the CUDA
    C++ kernels (sm_80+, tensor-core tiles) follow it; the CPU kernels check it and compute IEEE.
    Under torch.compile the setting is read once, at trace time.
    """
    if dtype == torch.float64:
        return "ieee"
    if dtype == torch.bfloat16:
        return "bf16"
    if dtype == torch.float16:
        return "tf32"
    return _float32_dots()


@torch.compiler.assume_constant_result
def _float32_dots() -> str:
    return _FLOAT32_DOTS[torch.get_float32_matmul_precision()]


@dataclass(frozen=True)
class Limits:
    """What one backend takes for one op; None means no limit.

    Attributes:
        channels: largest feature dim C.
        windows: largest number of label windows W.
        classes: largest number of classes K.
        att_channels: largest number of attention channels M (UAFS).
        batch: largest batch B (a CUDA grid axis of at most 65,535 blocks).
        hard: largest hard-negative list n_hard (Semi-AGCL).
        queue: largest negative queue Q.
        dtypes: floating dtypes taken (None: every floating dtype; the op casts).
    """

    channels: int | None = None
    windows: int | None = None
    classes: int | None = None
    att_channels: int | None = None
    batch: int | None = None
    hard: int | None = None
    queue: int | None = None
    dtypes: tuple[torch.dtype, ...] | None = None

    _SIZES = {"channels": "C", "windows": "W", "classes": "K", "att_channels": "M", "batch": "B", "hard": "n_hard",
              "queue": "Q"}

    def violation(self, dtype: torch.dtype | None = None, **sizes: int) -> str | None:
        """Why a call with these sizes cannot run here, or None when it can."""
        for name, value in sizes.items():
            limit = getattr(self, name)
            if limit is not None and value is not None and value > limit:
                return f"it takes {self._SIZES[name]} <= {limit}, got {self._SIZES[name]}={value}"
        if dtype is not None and self.dtypes is not None and dtype not in self.dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in self.dtypes)
            return f"it takes dtypes {names}, got {str(dtype).replace('torch.', '')}"
        return None

    def describe(self) -> str:
        parts = [f"{self._SIZES[f.name]} <= {getattr(self, f.name)}" for f in fields(self)
                 if f.name in self._SIZES and getattr(self, f.name) is not None]
        if self.dtypes is not None:
            parts.append("/".join(str(d).replace("torch.", "") for d in self.dtypes))
        return ", ".join(parts) or "no limit"


NO_LIMITS = Limits()

# The C++ kernels' limits, as their sources state them (csrc/cuda/pdcr_kernels.h kPdcrMaxWindows and
# kPdcrMaxBatch, supcon_kernels.h kCosLseMaxBatch, entropy_kernels.h kEntropyMaxClasses and the
# grid check in entropy.cu, agcl_kernels.h). The C++ CPU kernels take any C, W, K and B.
_C_LIMITS = {
    ("cuda", "pdcr_loss_from_ratios"): Limits(windows=8, batch=65535),
    ("cuda", "soft_supcon_loss"): Limits(batch=65535),
    ("cuda", "patch_entropy"): Limits(classes=2048, batch=65535),
    # csrc/cuda/agcl_kernels.h: the affinity tile holds D <= 64; the top-H sort area 2 x 1024 entries.
    ("cuda", "affinity_graph_loss"): Limits(classes=64),
    ("cuda", "mixed_negative_infonce"): Limits(channels=1024, hard=1024),
}

# Public ops with a Triton launcher, and its module's declared LIMITS; filled by affseg._ops.*.
_TRITON_LIMITS: dict[str, Limits] = {}
_TRITON_GPU_LIMITS: dict[str, Limits] = {}
_TRITON_ERROR: list[str] = []
_LIMIT_KEYS = {f.name for f in fields(Limits)}


def _limits_of(kernels: ModuleType, name: str) -> Limits:
    declared = dict(getattr(kernels, name))
    unknown = set(declared) - _LIMIT_KEYS
    if unknown:
        raise ValueError(f"{kernels.__name__}.{name} has unknown keys {sorted(unknown)}")
    if "dtypes" in declared:
        declared["dtypes"] = tuple(declared["dtypes"])
    return Limits(**declared)


def register_triton(op: str, kernels: ModuleType) -> None:
    """Declare that `op` has a Triton launcher in `kernels`, taking what its ``LIMITS`` dict says
    (and on CUDA tensors what its ``GPU_LIMITS`` says, where a compiled kernel takes less than the
    interpreter)."""
    limits_ = _limits_of(kernels, "LIMITS") if hasattr(kernels, "LIMITS") else NO_LIMITS
    _TRITON_LIMITS[op] = limits_
    _TRITON_GPU_LIMITS[op] = _limits_of(kernels, "GPU_LIMITS") if hasattr(kernels, "GPU_LIMITS") else limits_


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


def limits(op: str, backend: str, device_type: str = "cuda") -> Limits:
    """What `backend` takes for `op` on tensors of `device_type` (the reference takes everything)."""
    if backend == "triton":
        return (_TRITON_GPU_LIMITS if device_type == "cuda" else _TRITON_LIMITS).get(op, NO_LIMITS)
    return _C_LIMITS.get((backend, op), NO_LIMITS)


def available(op: str, backend: str, device: torch.device) -> tuple[bool, str]:
    """Whether `backend` can run `op` on `device` at all, and if not, why."""
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
        if _TRITON_ERROR and not _TRITON_LIMITS:
            return False, "; ".join(_TRITON_ERROR)
        if device.type != "cuda" and not triton_interpreting():
            return False, (
                f"Triton kernels need CUDA tensors (got {device}); on CPU they run only under the "
                "Triton interpreter (TRITON_INTERPRET=1 set before importing affseg)"
            )
        if op not in _TRITON_LIMITS:
            return False, f"affseg's Triton kernel for {op} is not built yet"
        return True, ""
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _violation(op: str, backend: str, device: torch.device, dtype, sizes) -> str | None:
    if backend == "reference":
        return None
    if backend == "triton" and device.type != "cuda" and dtype == torch.bfloat16:
        # The interpreter runs tl.dot on raw bf16 bits and truncates casts (BUILDING.md).
        return "the Triton interpreter computes bfloat16 wrongly"
    if (backend == "triton" and device.type != "cuda" and op in DOT_PRECISION_OPS and dtype is not None
            and dot_precision(dtype) == "bf16"):
        return ("the Triton interpreter computes bfloat16 wrongly, and torch.get_float32_matmul_precision() "
                "'medium' runs float32 dots in bfloat16")
    return limits(op, backend, device.type).violation(dtype, **sizes)


def resolve(op: str, backend: str | None, device: torch.device, *, caller: str | None = None,
            dtype: torch.dtype | None = None, **sizes: int) -> str:
    """The concrete backend that runs `op` on `device` for a call of this dtype and these sizes.

    Args:
        op: the op family (a key of ``_C_OPS``).
        backend: ``backend=`` as the user gave it (None: "auto").
        device: where the inputs live.
        caller: the public function the user called, named in messages (default: `op`).
        dtype: the inputs' floating dtype, checked against the backends' declared dtypes.
        **sizes: ``channels``, ``windows``, ``classes``, ``att_channels`` of the call.

    Which backends exist depends only on the build, the environment and the device, so under
    torch.compile that part is computed once at trace time and baked in as a constant
    (`torch.compile(fullgraph=True)` traces through the public API); the limit checks compare
    static sizes.
    """
    caller = caller or op
    if backend is None:
        backend = "auto"
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"affseg.{caller}: backend must be one of {BACKENDS}, got {backend!r}")
    candidates = _candidates(op, backend, device.type, -1 if device.index is None else device.index, caller)
    candidates = candidates.split(",")
    for candidate in candidates:
        why = _violation(op, candidate, device, dtype, sizes)
        if why is None:
            return candidate
        if len(candidates) == 1:
            raise ValueError(f"affseg.{caller}: backend {candidate!r} cannot take this call: {why}")
    raise AssertionError("the reference takes every call")  # "auto" always ends with the reference


@torch.compiler.assume_constant_result
def _candidates(op: str, backend: str, device_type: str, device_index: int, caller: str) -> str:
    """Comma-joined backends to try in order: the one asked for, or auto's available ones."""
    device = torch.device(device_type) if device_index < 0 else torch.device(device_type, device_index)
    if backend == "auto":
        env = os.environ.get("AFFSEG_BACKEND", "").strip()
        if env:
            if env not in BACKENDS:
                raise ValueError(f"AFFSEG_BACKEND must be one of {BACKENDS}, got {env!r}")
            backend = env
    if backend == "auto":
        order = ("triton", "cuda") if device.type == "cuda" else ("cpu",)
        return ",".join([b for b in order if available(op, b, device)[0]] + ["reference"])
    ok, why = available(op, backend, device)
    if not ok:
        raise RuntimeError(f"affseg.{caller}: backend {backend!r} cannot run {op}: {why}")
    return backend
