"""Build affseg's C++ extension `affseg._C`.

The CPU kernels (OpenMP) are always built. The CUDA kernels are added when the installed torch is a
CUDA build and a CUDA toolkit (nvcc and its headers under CUDA_HOME) is found; a CUDA torch without
a toolkit builds the CPU kernels only and says why (cuda_decision). AFFSEG_FORCE_CUDA=1 requires
the CUDA kernels (an error when they cannot be built), AFFSEG_FORCE_CUDA=0 skips them. On a machine
without a visible GPU, TORCH_CUDA_ARCH_LIST must be set. DEBUG=1 builds with -O0 -g.

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


def cuda_decision(torch_cuda, cuda_home, force):
    """Whether to build the CUDA kernels, and why: (build, reason).

    torch_cuda: torch.version.cuda (None for a CPU build of torch); cuda_home: the toolkit root torch
    found (torch.utils.cpp_extension.CUDA_HOME, None when none); force: AFFSEG_FORCE_CUDA ("1", "0" or
    None). Raises SystemExit when force="1" and the toolkit is missing: a build that was asked for CUDA
    must not quietly come out without it.
    """
    if force not in (None, "", "0", "1"):
        sys.exit(f"affseg: AFFSEG_FORCE_CUDA must be 0 or 1, got {force!r}")
    if force == "0":
        return False, "AFFSEG_FORCE_CUDA=0"
    if torch_cuda is None and force != "1":
        return False, "torch is a CPU build (torch.version.cuda is None)"
    missing = None
    if not cuda_home:
        missing = "no CUDA toolkit found (CUDA_HOME is not set and no nvcc on PATH)"
    elif not os.path.isfile(os.path.join(cuda_home, "bin", "nvcc")):
        missing = f"CUDA_HOME={cuda_home} has no bin/nvcc"
    elif not os.path.isfile(os.path.join(cuda_home, "include", "cuda_runtime.h")):
        missing = f"CUDA_HOME={cuda_home} has no include/cuda_runtime.h (set CUDA_HOME to the toolkit root, e.g. /usr/local/cuda)"
    if missing is None:
        return True, f"torch {torch_cuda or '(forced)'} with the CUDA toolkit at {cuda_home}"
    if force == "1":
        sys.exit(f"affseg: AFFSEG_FORCE_CUDA=1 but {missing}")
    return False, f"torch is a CUDA {torch_cuda} build but {missing}; building the CPU kernels only"


def decide_cuda():
    """cuda_decision for this environment: the installed torch and the toolkit torch detected."""
    from torch.utils import cpp_extension

    return cuda_decision(torch.version.cuda, cpp_extension.CUDA_HOME, os.environ.get("AFFSEG_FORCE_CUDA"))


def _extension():
    _require_compiler()
    debug = os.environ.get("DEBUG") == "1"
    use_cuda, reason = decide_cuda()
    print(f"affseg: {'building' if use_cuda else 'skipping'} the CUDA kernels: {reason}", file=sys.stderr)
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


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import it for cuda_decision
    setup(
        packages=["affseg", "affseg.functional", "affseg._ops", "affseg.nn", "affseg.kernels", "affseg.data",
                  "affseg.models", "affseg.train"],
        package_dir={"affseg.kernels": "kernels"},
        ext_modules=[_extension()],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )
