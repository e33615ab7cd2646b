"""Run a check under each compiled SIMD build of the CPU kernels.

The CPU kernels pick their widest build (baseline SSE2, AVX2+FMA, AVX-512) once, when the library
loads; AFFSEG_CPU_ISA caps that choice, so the narrower builds run in a fresh process.
"""
import os
import subprocess
import sys

ISAS = ["baseline", "avx2"]


def assert_passes_under(isa: str, script: str) -> None:
    """Run `script` (which prints "ok" when its checks pass) with AFFSEG_CPU_ISA=isa."""
    env = dict(os.environ, AFFSEG_CPU_ISA=isa)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr
