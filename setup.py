"""Build affseg's C++ extension `affseg._C`.

The CPU kernels (OpenMP) are always built. The CUDA kernels are added when the installed torch is a
CUDA build, or when AFFSEG_FORCE_CUDA=1 (for building on a machine without a visible GPU; then
TORCH_CUDA_ARCH_LIST must be set). DEBUG=1 builds with -O0 -g.

Install torch first, then `pip install --no-build-isolation -e .`: with build isolation pip would
build against a different torch than the one that runs.
"""
import glob
import os
import shutil
import sys

from setuptools import setup

try:
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
except ImportError:  # pragma: no cover - exercised only on a broken set-up
    sys.exit(
        "affseg: torch must be installed before building (pip install torch==2.13.0), "
        "then `pip install --no-build-isolation -e .`"
    )

ROOT = os.path.dirname(os.path.abspath(__file__))


def _require_compiler() -> None:
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        sys.exit(
            f"affseg: no C++ compiler found (looked for {cxx!r}). Install g++ (Debian: apt-get install g++) "
            "or set CXX to a C++17 compiler."
        )


def _extension():
    _require_compiler()
    debug = os.environ.get("DEBUG") == "1"
    use_cuda = torch.version.cuda is not None or os.environ.get("AFFSEG_FORCE_CUDA") == "1"
    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # torch.utils.cpp_extension adds the C++ standard torch needs (C++20); do not override it.
    cxx_flags = opt + ["-fopenmp"]
    kwargs = dict(
        name="affseg._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc", "include")],
        extra_link_args=["-fopenmp"],
    )
    if use_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        kwargs["define_macros"] = [("AFFSEG_WITH_CUDA", None)]
        kwargs["extra_compile_args"] = {"cxx": cxx_flags, "nvcc": opt}
        return CUDAExtension(**kwargs)
    kwargs["extra_compile_args"] = {"cxx": cxx_flags}
    return CppExtension(**kwargs)


setup(
    packages=["affseg", "affseg.functional", "affseg._ops", "affseg.nn", "affseg.kernels"],
    package_dir={"affseg.kernels": "kernels"},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
