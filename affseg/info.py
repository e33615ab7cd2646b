"""`affseg info`: versions, and which backend can run which op (and if not, why)."""
from __future__ import annotations

import os
import platform
import sys

import torch

from affseg import _backend, _extension

OPS = _backend.OPS


def _triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except ImportError as exc:
        return f"not installed ({exc})"


def _device_for(backend: str) -> torch.device:
    """Where a backend's kernels run here: Triton runs on CPU tensors only in the interpreter."""
    on_gpu = backend == "cuda" or (
        backend == "triton" and (torch.cuda.is_available() or not _backend.triton_interpreting())
    )
    return torch.device("cuda" if on_gpu else "cpu")


def backend_table() -> dict[str, dict[str, str]]:
    """{backend: {op: "yes (its declared limits)" or the reason it cannot run}} on this machine."""
    table = {}
    for backend in ("reference", "cpu", "cuda", "triton"):
        device = _device_for(backend)
        row = {}
        for op in OPS:
            if backend in ("cuda", "triton") and device.type == "cuda" and not torch.cuda.is_available():
                ok, why = False, "no CUDA device visible to torch" + (
                    "" if torch.version.cuda else f" (torch {torch.__version__} is a CPU build)"
                )
                if backend == "triton":
                    why += "; set TRITON_INTERPRET=1 to run the Triton kernels on CPU tensors (slow, for tests)"
            else:
                ok, why = _backend.available(op, backend, device)
            row[op] = f"yes ({_backend.limits(op, backend, device.type).describe()})" if ok else why
        table[backend] = row
    return table


def report() -> str:
    import affseg

    lines = [
        f"affseg {affseg.__version__} ({os.path.dirname(affseg.__file__)})",
        f"python {sys.version.split()[0]} on {platform.platform()}, {os.cpu_count()} CPUs",
        f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'}; CUDA devices: {torch.cuda.device_count()}; "
        f"threads: {torch.get_num_threads()})",
        f"triton {_triton_version()} (TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')})",
        "affseg._C: " + (
            f"loaded (OpenMP: {'yes' if _extension.compiled_with_openmp() else 'no'}, "
            f"CUDA kernels: {'yes' if _extension.compiled_with_cuda() else 'no'})"
            if _extension.HAS_C else _extension.C_ERROR
        ),
        f"CPU kernels' ISA: {_cpu_isa()} "
        f"(AFFSEG_CPU_ISA={os.environ.get('AFFSEG_CPU_ISA', '') or '(unset: the best this CPU has)'})",
        f"AFFSEG_BACKEND={os.environ.get('AFFSEG_BACKEND', '') or '(unset: auto)'}",
        "",
        "backend    op                       status",
    ]
    for backend, row in backend_table().items():
        for op, status in row.items():
            lines.append(f"{backend:<10} {op:<24} {status}")
    lines += ["", "declared limits (\"auto\" skips a backend for calls beyond them; an explicit backend raises)"]
    for backend in ("cpu", "cuda", "triton"):
        for op in OPS:
            lines.append(f"{backend:<10} {op:<24} {_backend.limits(op, backend).describe()}")
    lines.append("(Triton on CPU tensors, in the interpreter: " + "; ".join(
        f"{op} {_backend.limits(op, 'triton', 'cpu').describe()}" for op in OPS
        if _backend.limits(op, "triton", "cpu") != _backend.limits(op, "triton")) + ")")
    return "\n".join(lines)


def _cpu_isa() -> str:
    if not _extension.HAS_C:
        return "n/a (affseg._C not loaded)"
    try:
        return _extension.cpu_isa()
    except (ValueError, RuntimeError) as exc:  # an unknown AFFSEG_CPU_ISA: every CPU kernel refuses to run
        return f"error: {exc}"
