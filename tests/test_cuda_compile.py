"""Every csrc/cuda file compiles with nvcc, so the GPU code stays honest on machines without a GPU.

- The torch-free kernel files (*_kernels.cu) compile for sm_80 and sm_90 with `-Xptxas -v` and no
  register spills (the arithmetic itself is shared with the CPU kernels and tested there).
- The thin torch glue (the other .cu files) compiles against the installed torch's headers with
  C10_CUDA_NO_CMAKE_CONFIGURE_FILE: a CPU build of torch cannot link CUDA code, but compiling
  catches type and API errors before a GPU machine sees the file.
"""
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if pathlib.Path("/usr/local/cuda/bin/nvcc").exists() else None)
CUDA_FILES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
KERNEL_FILES = [p for p in CUDA_FILES if p.name.endswith("_kernels.cu")]
GLUE_FILES = [p for p in CUDA_FILES if not p.name.endswith("_kernels.cu")]

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found (install the CUDA toolkit to run this check)")


def test_kernel_files_exist():
    assert KERNEL_FILES, "no csrc/cuda/*_kernels.cu files found"


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("path", KERNEL_FILES, ids=lambda p: p.name)
def test_nvcc_compiles_without_spills(path, arch, tmp_path):
    cmd = [NVCC, f"-arch={arch}", "-O3", "-std=c++20", "-Xptxas", "-v", "-I", str(ROOT / "csrc" / "include"),
           "-c", str(path), "-o", str(tmp_path / "out.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    report = proc.stdout + proc.stderr
    print(report)  # registers / shared memory / spills per kernel, shown with -s or on failure
    assert proc.returncode == 0, report
    assert "Used" in report, "ptxas reported no kernel: are the templates instantiated?"
    spills = [int(m) for m in re.findall(r"(\d+) bytes spill (?:stores|loads)", report)]
    assert spills and max(spills) == 0, f"register spills in {path.name} for {arch}:\n{report}"


# Kernel files whose float32 kernels have tensor-core instantiations (csrc/cuda/block_tiles.cuh), and
# the mangled precision argument of those instantiations (DotPrecision 1 = tf32, 2 = bf16).
TENSOR_CORE_FILES = {"pdcr_kernels.cu": ("pdcr_forward_kernel", "pdcr_backward_kernel"),
                     "supcon_kernels.cu": ("cos_lse_fwd_kernel", "cos_lse_bwd_kernel")}
MMA = {1: "wmma.mma.sync.aligned.row.{}.m16n16k8.f32.tf32.tf32.f32",
       2: "wmma.mma.sync.aligned.row.{}.m16n16k16.f32.bf16.bf16.f32"}


def _ptx_entries(path, arch, tmp_path):
    """{entry name: body} of the PTX nvcc writes for `path`."""
    out = tmp_path / "out.ptx"
    cmd = [NVCC, f"-arch={arch}", "-O3", "-std=c++20", "-I", str(ROOT / "csrc" / "include"), "-ptx", str(path),
           "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    entries, name = {}, None
    for line in out.read_text().splitlines():
        m = re.match(r"(?:\.visible\s+)?\.entry\s+(\S+)\(", line)
        if m:
            name = m.group(1)
            entries[name] = []
        elif name is not None:
            entries[name].append(line)
    return {k: "\n".join(v) for k, v in entries.items()}


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("name", sorted(TENSOR_CORE_FILES))
def test_tensor_core_kernels_use_mma_and_ieee_kernels_do_not(name, arch, tmp_path):
    """Each tf32/bf16 instantiation runs its dots (and the backward its G·f product) on tensor cores;
    the IEEE ones (float32 "highest", float64) never touch them."""
    entries = _ptx_entries(ROOT / "csrc" / "cuda" / name, arch, tmp_path)
    for kernel in TENSOR_CORE_FILES[name]:
        mine = {k: v for k, v in entries.items() if kernel in k}
        assert mine, f"no {kernel} in the PTX of {name}"
        backward = "bwd" in kernel or "backward" in kernel
        for prec, mma in MMA.items():
            tc = {k: v for k, v in mine.items() if re.search(rf"{kernel}If(?:Li[0-2]E)?Li{prec}EE", k)}
            # pdcr_backward_kernel: the rows, columns and intra-layer sweeps
            assert len(tc) == (3 if kernel == "pdcr_backward_kernel" else 1), sorted(tc)
            for entry, body in tc.items():
                assert mma.format("col") in body, f"{entry}: no tensor-core dot tile"
                # pdcr_backward and cos_lse_bwd also run G·f (row-major B) on tensor cores
                assert (mma.format("row") in body) == backward, f"{entry}: G·f product"
        ieee = {k: v for k, v in mine.items() if re.search(rf"{kernel}I[fd](?:Li[0-2]E)?Li0EE", k)}
        assert ieee and not any("wmma" in body for body in ieee.values())


@pytest.mark.parametrize("name", sorted(TENSOR_CORE_FILES))
def test_tensor_core_files_compile_below_sm80_without_tensor_cores(name, tmp_path):
    """An arch list with sm_75 (TORCH_CUDA_ARCH_LIST="7.5;...") still builds: the tf32/bf16 bodies
    compile to __trap() there (never launched: tiles::tensor_cores_fit) and the PTX has no wmma."""
    entries = _ptx_entries(ROOT / "csrc" / "cuda" / name, "sm_75", tmp_path)
    assert entries and not any("wmma" in body for body in entries.values())


def test_every_kernel_file_has_torch_glue():
    glue = {p.name for p in GLUE_FILES}
    missing = [p.name for p in KERNEL_FILES if p.name.replace("_kernels.cu", ".cu") not in glue]
    assert not missing, f"kernel files without a torch glue file: {missing}"


@pytest.mark.parametrize("path", GLUE_FILES, ids=lambda p: p.name)
def test_torch_glue_compiles(path, tmp_path):
    import torch.utils.cpp_extension as ext

    includes = [f"-I{d}" for d in ext.include_paths()] + [f"-I{ROOT / 'csrc' / 'include'}"]
    cmd = [NVCC, "-arch=sm_90", "-std=c++20", "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE", "-DAFFSEG_WITH_CUDA", *includes,
           "-c", str(path), "-o", str(tmp_path / "glue.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
