"""Fused patch statistics (SPEC §5) and UAFS re-weighting (SPEC §6): reference vs the C++ CPU kernels.

    .venv/bin/python benchmarks/bench_patch_stats.py   # -> benchmarks/results/patch_stats.{csv,md}
    .venv/bin/python -m pytest benchmarks/bench_patch_stats.py --benchmark-enable   # pytest-benchmark

Side by side in one run, on the threads torch uses (OpenMP in the kernels):
- patch_entropy (binary and shannon, patch 16) on logits (2, 4, 256, 256) and (2, 2, 96, 96, 96)
  float32: median wall time of `repeats` calls after a warm-up, the speed-up over the reference,
  and the achieved bandwidth = bytes of logits read / time, next to the bandwidth of
  `logits.clone()` on the same tensor (its bytes / its time), as a percentage (= clone time / time).
- uafs_reweight forward + backward (torch.autograd.grad to x and att) on x (4, 64, 128, 128), att
  M = 2, float32: median time, and peak extra memory = rise of the process's resident-set high-water
  mark during one call (affseg.bench.peak_extra_mib: VmHWM reset through /proc/self/clear_refs after
  malloc_trim; Linux only), reported next to the bytes the call must return (y, grad_x, grad_att),
  so "beyond outputs" is what the call held in temporaries.
Targets (issue 4): patch_entropy ≥ 3× faster than the reference and ≥ 25 % of the clone bandwidth;
uafs fwd+bwd ≤ 1/2 of the reference's time with no full-size temporary beyond outputs and inputs.
"""
from __future__ import annotations

import pathlib
import statistics
import sys
import time

import pytest
import torch

import affseg
from affseg import bench, reference

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
ENTROPY_SHAPES = [(2, 4, 256, 256), (2, 2, 96, 96, 96)]
UAFS_X, UAFS_M = (4, 64, 128, 128), 2
MIB = 2**20


def _logits(shape):
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def _entropy_call(logits, mode, backend):
    patch = [16] * (logits.dim() - 2)
    if backend == "reference":
        return lambda: reference.patch_entropy(logits, patch, mode=mode)
    return lambda: affseg.patch_entropy(logits, patch, mode=mode, backend=backend)


def _uafs_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(UAFS_X, generator=g).requires_grad_()
    att = torch.randn((UAFS_X[0], UAFS_M, *UAFS_X[2:]), generator=g).requires_grad_()
    return x, att, torch.randn(UAFS_X, generator=g)


def _uafs_call(x, att, grad, backend):
    if backend == "reference":
        return lambda: torch.autograd.grad(reference.uafs_reweight(x, att), (x, att), grad)
    return lambda: torch.autograd.grad(affseg.uafs_reweight(x, att, backend=backend), (x, att), grad)


def _timed(fn, repeats):
    """(median, best) wall time in ms of `repeats` calls after one warm-up, from the same samples.

    The best is reported too: on a shared machine the median also carries other processes' time
    slices (an OpenMP region waits for its slowest thread)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times)


def _measure(repeats: int, threads: int) -> list[dict]:
    torch.set_num_threads(threads)  # ATen's intra-op pool and the kernels' OpenMP regions
    cpu = torch.device("cpu")
    rows = []
    for shape in ENTROPY_SHAPES:
        logits = _logits(shape)
        nbytes = logits.numel() * logits.element_size()
        clone = _timed(logits.clone, repeats)
        for mode in ("binary", "shannon"):
            ref = _entropy_call(logits, mode, "reference")
            fused = _entropy_call(logits, mode, "cpu")
            for got, want in zip(fused(), ref()):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
            ref_t = _timed(ref, repeats)
            for name, fn in (("reference", ref), ("cpu", fused)):
                t = ref_t if name == "reference" else _timed(fn, repeats)
                rows.append({
                    "threads": threads, "op": f"patch_entropy {mode}", "shape": "x".join(map(str, shape)),
                    "provider": name,
                    "ms": round(t[0], 3), "min_ms": round(t[1], 3),
                    "speedup": round(ref_t[0] / t[0], 2), "speedup_min": round(ref_t[1] / t[1], 2),
                    "GB_s": round(nbytes / t[0] / 1e6, 2), "clone_ms": round(clone[0], 3),
                    "clone_min_ms": round(clone[1], 3), "pct_of_clone": round(100 * clone[0] / t[0], 1),
                    "pct_of_clone_min": round(100 * clone[1] / t[1], 1),
                    "peak_extra_mib": round(bench.peak_extra_mib(fn, cpu), 1), "outputs_mib": "",
                })
                print(rows[-1], flush=True)

    x, att, grad = _uafs_inputs()
    out_mib = (2 * x.numel() + att.numel()) * x.element_size() / MIB  # y, grad_x, grad_att
    ref = _uafs_call(x, att, grad, "reference")
    fused = _uafs_call(x, att, grad, "cpu")
    for got, want in zip(fused(), ref()):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    ref_t = _timed(ref, repeats)
    for name, fn in (("reference", ref), ("cpu", fused)):
        t = ref_t if name == "reference" else _timed(fn, repeats)
        rows.append({
            "threads": threads, "op": "uafs_reweight fwd+bwd", "shape": "x".join(map(str, UAFS_X)) + f" M={UAFS_M}",
            "provider": name,
            "ms": round(t[0], 3), "min_ms": round(t[1], 3),
            "speedup": round(ref_t[0] / t[0], 2), "speedup_min": round(ref_t[1] / t[1], 2),
            "GB_s": "", "clone_ms": "", "clone_min_ms": "", "pct_of_clone": "", "pct_of_clone_min": "",
            "peak_extra_mib": round(bench.peak_extra_mib(fn, cpu), 1), "outputs_mib": round(out_mib, 1),
        })
        print(rows[-1], flush=True)

    return rows


def main(repeats: int = 25) -> int:
    # Every thread count torch would use, and 1: on a loaded machine a 2-thread OpenMP region waits
    # for whichever thread lost its time slice, so the 1-thread table is the steadier comparison.
    counts = sorted({torch.get_num_threads(), 1}, reverse=True)
    rows = [row for threads in counts for row in _measure(repeats, threads)]
    out_mib = next(r["outputs_mib"] for r in rows if r["outputs_mib"] != "")
    bench.write_csv(RESULTS / "patch_stats.csv", rows)
    lines = [
        f"## patch_entropy and uafs_reweight (CPU, float32, {' and '.join(map(str, counts))} threads)",
        "",
        f"Median and best of the same {repeats} calls after a warm-up; outputs checked against the "
        "reference first. The best is shown because on a shared machine the median also carries "
        "other processes' time slices. "
        "Bandwidth = bytes of logits / time; `% clone` = the same against `logits.clone()` of that "
        "tensor (= clone time / time). Peak extra = rise of the resident-set high-water mark during "
        "one call (affseg.bench.peak_extra_mib); uafs must return y, grad_x and grad_att "
        f"({out_mib:.1f} MiB), so peak extra − that is what the call held in temporaries.",
        "",
        "| threads | op | shape | provider | median ms | min ms | × faster (median / min) | GB/s (median) "
        "| clone ms (median / min) | % clone (median / min) | peak extra MiB | beyond outputs MiB |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        beyond = "" if r["outputs_mib"] == "" else f"{r['peak_extra_mib'] - r['outputs_mib']:.1f}"
        lines.append(
            f"| {r['threads']} | {r['op']} | {r['shape']} | {r['provider']} | {r['ms']:.3f} | {r['min_ms']:.3f} | "
            f"{r['speedup']:.2f} / {r['speedup_min']:.2f} | {r['GB_s']} | "
            + (f"{r['clone_ms']} / {r['clone_min_ms']} | {r['pct_of_clone']} / {r['pct_of_clone_min']} | "
               if r["clone_ms"] != "" else "| | ")
            + f"{r['peak_extra_mib']} | {beyond} |"
        )
    lines += [
        "",
        "Targets (issue 4): patch_entropy ≥ 3× faster than the reference and ≥ 25 % of the clone "
        "bandwidth; uafs_reweight fwd+bwd ≤ 0.5× the reference's time, no full-size temporary beyond "
        "the outputs and the saved inputs.",
    ]
    (RESULTS / "patch_stats.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


# pytest-benchmark entries (collected only when this file is named on the pytest command line).
@pytest.mark.parametrize("provider", ["reference", "cpu"])
@pytest.mark.parametrize("shape", ENTROPY_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mode", ["binary", "shannon"])
def test_patch_entropy(benchmark, shape, mode, provider):
    benchmark(_entropy_call(_logits(shape), mode, provider))


@pytest.mark.parametrize("shape", ENTROPY_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_logits_clone(benchmark, shape):
    benchmark(_logits(shape).clone)


@pytest.mark.parametrize("provider", ["reference", "cpu"])
def test_uafs_fwd_bwd(benchmark, provider):
    benchmark(_uafs_call(*_uafs_inputs(), provider))


if __name__ == "__main__":
    sys.exit(main())
