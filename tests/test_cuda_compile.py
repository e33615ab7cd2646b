"""Every torch-free CUDA kernel file compiles with nvcc for sm_80 and sm_90 without spills.

These are the files the CUDA build links; compiling them here keeps the GPU code honest on
machines without a GPU (the arithmetic itself is shared with the CPU kernels and tested there).
"""
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if pathlib.Path("/usr/local/cuda/bin/nvcc").exists() else None)
KERNEL_FILES = sorted((ROOT / "csrc" / "cuda").glob("*_kernels.cu"))

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found (install the CUDA toolkit to run this check)")


def test_kernel_files_exist():
    assert KERNEL_FILES, "no csrc/cuda/*_kernels.cu files found"


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("path", KERNEL_FILES, ids=lambda p: p.name)
def test_nvcc_compiles_without_spills(path, arch, tmp_path):
    cmd = [NVCC, f"-arch={arch}", "-O3", "-std=c++17", "-Xptxas", "-v", "-I", str(ROOT / "csrc" / "include"),
           "-c", str(path), "-o", str(tmp_path / "out.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    report = proc.stdout + proc.stderr
    print(report)  # registers / shared memory / spills per kernel, shown with -s or on failure
    assert proc.returncode == 0, report
    assert "Used" in report, "ptxas reported no kernel: are the templates instantiated?"
    spills = [int(m) for m in re.findall(r"(\d+) bytes spill (?:stores|loads)", report)]
    assert spills and max(spills) == 0, f"register spills in {path.name} for {arch}:\n{report}"
