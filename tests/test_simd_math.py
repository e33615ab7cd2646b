"""Accuracy of the one vectorised exp/log (csrc/include/affseg/simd_math.h) in every ISA build.

tests/cpp/simd_math_check.cpp runs the functions inside `omp simd` loops of each AFFSEG_FOR_EACH_ISA
build (as the kernels call them) over about 2.5 M inputs per function and type, against long-double
expl/logl, and counts special values (±0, ±inf, NaN, negatives, subnormals, overflow, underflow) whose
result differs from the contract stated in simd_math.h. The bounds below are the header's claims.
"""
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CXX = shutil.which("g++")
pytestmark = pytest.mark.skipif(CXX is None, reason="g++ not found")

# Relative-error bounds stated in simd_math.h (2 ulp: 2 * 2^-23 and 2 * 2^-52).
BOUNDS = {("exp", "float"): 2.4e-7, ("log", "float"): 2.4e-7, ("exp", "double"): 4.5e-16, ("log", "double"): 4.5e-16}
LINE = re.compile(r"^(exp|log) (float|double) (\w+) max_rel=(\S+) bad_special=(\d+)$")


@pytest.fixture(scope="module")
def check_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("simd") / "simd_math_check"
    build = subprocess.run(
        [CXX, "-std=c++17", "-O3", "-fopenmp", "-fopt-info-vec-optimized", "-I", str(ROOT / "csrc" / "include"),
         str(ROOT / "tests" / "cpp" / "simd_math_check.cpp"), "-o", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    return build.stderr, run.stdout


def test_every_runnable_isa_within_stated_accuracy(check_run):
    _, report = check_run
    rows = [LINE.match(line) for line in report.splitlines() if not line.startswith("skip")]
    assert rows and all(rows), report
    isas = {m.group(3) for m in rows}
    assert "baseline" in isas, report
    for m in rows:
        fn, ty, isa, err, bad = m.group(1), m.group(2), m.group(3), float(m.group(4)), int(m.group(5))
        assert err <= BOUNDS[(fn, ty)], f"{fn} {ty} on {isa}: max relative error {err:.3e} > {BOUNDS[(fn, ty)]:.1e}"
        assert bad == 0, f"{fn} {ty} on {isa}: {bad} inputs break the special-value contract"


def test_polynomials_vectorise_in_every_build(check_run):
    # exp float, exp double and log float loops vectorise (log double is std::log, a scalar call):
    # at least three loops per vector width, 16-byte (SSE2), 32-byte (AVX2) and 64-byte (AVX-512).
    vec_report, _ = check_run
    widths = re.findall(r"simd_math_check\.cpp:\d+:\d+: optimized: loop vectorized using (\d+) byte vectors", vec_report)
    for width in ("16", "32", "64"):
        assert widths.count(width) >= 3, f"fewer than 3 loops vectorised with {width}-byte vectors:\n{vec_report}"
