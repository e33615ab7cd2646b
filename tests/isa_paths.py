"""Run a check under each compiled SIMD build of the CPU kernels.

The CPU kernels pick their widest build (baseline SSE2, AVX2+FMA, AVX-512) once per process;
AFFSEG_CPU_ISA caps that choice, so the narrower builds run in a fresh process. Each run first checks
that torch.ops.affseg._cpu_isa() reports the build asked for, so a cap that stopped working fails
here instead of silently re-testing the default build.
"""
import os
import subprocess
import sys

ISAS = ["baseline", "avx2"]
_ORDER = ["baseline", "avx2", "avx512"]


def cpu_flags():
    """The CPU's feature flags from /proc/cpuinfo, or None where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def supported_isa():
    flags = cpu_flags() or set()
    if {"avx2", "fma"} <= flags:
        if {"avx512f", "avx512vl", "avx512dq", "avx512bw"} <= flags:
            return "avx512"
        return "avx2"
    return "baseline"


def expected_isa(cap):
    """What _cpu_isa() must report under AFFSEG_CPU_ISA=cap (None: unset)."""
    best = supported_isa()
    if cap is None or cap.lower() in ("", "auto"):
        return best
    return _ORDER[min(_ORDER.index(cap.lower()), _ORDER.index(best))]


def assert_passes_under(isa: str, script: str) -> None:
    """Run `script` (which prints "ok" when its checks pass) with AFFSEG_CPU_ISA=isa."""
    env = dict(os.environ, AFFSEG_CPU_ISA=isa)
    guard = (
        "import torch, affseg\n"
        f"_got = torch.ops.affseg._cpu_isa()\n"
        f"assert _got == {expected_isa(isa)!r}, 'AFFSEG_CPU_ISA={isa} selected ' + _got\n"
    )
    proc = subprocess.run([sys.executable, "-c", guard + script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr
