"""pdcr_loss_from_ratios: the reference (N×N tensors), torch.compile(reference) and the fused C++ CPU
kernel (tiled, one similarity sweep for all windows, backward by recomputation), side by side.

    .venv/bin/python -m pytest benchmarks/bench_pdcr.py --benchmark-enable   # N = 1024, 4096
    .venv/bin/python benchmarks/bench_pdcr.py      # N = 1024 … 65536 -> benchmarks/results/pdcr.{csv,md}

B = 2, C = 64, W = 3 windows, K = 3 classes, τ = 0.5, float32, every location valid, intra-layer
pairs with exclude_self. For each N and provider: forward (no grad) and forward+backward (the
gradient of the mean loss w.r.t. the features).
Time: median wall time of `repeats` calls after one warm-up call (compilation excluded).
Peak extra memory (affseg.bench.peak_extra_mib): the rise of this process's resident-set high-water
mark over its resident set just before one call, with the high-water mark reset through
/proc/self/clear_refs and free heap returned to the OS first (malloc_trim), so what an earlier case
freed does not hide this one's peak. It counts every byte the call touches (torch's allocator,
the kernel's own panels and scratch, autograd's saved tensors, the returned gradient), not only
torch allocations. Linux only (NaN elsewhere).
The reference is skipped where its N×N temporaries would need more than 8 GB (estimated below).
Matrix-multiply limit: torch.bmm of (B, N, C)·(B, C, N), the dot products the forward needs (the
fused forward computes exactly these B·N² dot products plus the per-window epilogue). The bmm
itself writes a B×N×N output, so it is skipped where that output would not fit (N = 65536: 32 GiB).
At N = 65536 one fused forward+backward takes about a minute on 2 cores, so that size is timed with
a single call after the warm-up (the other sizes: median of `repeats`).
"""
from __future__ import annotations

import math
import os
import pathlib
import sys

import pytest
import torch

import affseg
from affseg import bench, reference

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
B, C, W, K = 2, 64, 3, 3
REFERENCE_LIMIT_BYTES = 8 * 2**30


def _inputs(n: int):
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(B, n, C, generator=g).requires_grad_()
    phi = torch.rand(B, W, n, K, generator=g).softmax(-1)
    return feats, phi


def _reference_bytes(n: int) -> int:
    # Measured at N = 1024 (this file's first rows): the eager reference's fwd+bwd peaks at about 33
    # float32 N×N planes per batch element (the (W, N, N, K) |φ_i − φ_j| tensor, affinity, weights,
    # logits, masks, saved tensors and their gradients); 36 leaves a margin.
    return 36 * B * n * n * 4


def _providers():
    def fused(f, p):
        return affseg.pdcr_loss_from_ratios(f, p, exclude_self=True, backend="cpu")

    def ref(f, p):
        return reference.pdcr_loss_from_ratios(f, p, exclude_self=True)

    return {"reference": ref, "torch.compile(reference)": torch.compile(ref), "cpu": fused}


def _forward(fn, feats, phi):
    def run():
        with torch.no_grad():
            return fn(feats, phi)
    return run


def _forward_backward(fn, feats, phi):
    def run():
        loss = fn(feats, phi)
        loss.backward()
        feats.grad = None
        return loss
    return run


@pytest.mark.parametrize("n", [1024, 4096])
@pytest.mark.parametrize("provider", ["reference", "cpu"])
def test_pdcr_fwd_bwd(benchmark, provider, n):
    feats, phi = _inputs(n)
    fn = _providers()[provider] if provider == "cpu" else (
        lambda f, p: reference.pdcr_loss_from_ratios(f, p, exclude_self=True))
    benchmark(_forward_backward(fn, feats, phi))


BMM_LIMIT_BYTES = 8 * 2**30


def main(sizes=(1024, 4096, 16384, 65536), repeats: int = 3) -> int:
    cpu = torch.device("cpu")
    providers = _providers()
    rows = []
    load_start = os.getloadavg()[0]
    for n in sizes:
        feats, phi = _inputs(n)
        timed = repeats if n < 65536 else 1
        bmm_ms = math.nan
        if B * n * n * 4 <= BMM_LIMIT_BYTES:
            a = torch.nn.functional.normalize(feats.detach(), dim=-1)
            bt = a.transpose(1, 2).contiguous()
            bmm_ms = bench.median_ms(lambda: torch.bmm(a, bt), cpu, repeats=repeats)
            del a, bt
        losses = {}
        for name, fn in providers.items():
            if name != "cpu" and _reference_bytes(n) > REFERENCE_LIMIT_BYTES:
                print(f"N={n} {name}: skipped (needs about {_reference_bytes(n) / 2**30:.0f} GiB)", flush=True)
                continue
            for mode, make in (("fwd", _forward), ("fwd+bwd", _forward_backward)):
                step = make(fn, feats, phi)
                losses[name] = float(step().detach())  # warm-up (and compilation) outside the measurements
                mib = bench.peak_extra_mib(step, cpu)
                ms = bench.median_ms(step, cpu, repeats=timed, warmup=0)
                rows.append({"N": n, "provider": name, "mode": mode, "ms": round(ms, 1),
                             "peak_extra_mib": round(mib, 1), "bmm_ms": round(bmm_ms, 1),
                             "ms_over_bmm": round(ms / bmm_ms, 2)})
                print(rows[-1], flush=True)
        if "reference" in losses:
            assert math.isclose(losses["cpu"], losses["reference"], rel_tol=1e-4), losses
    bench.write_csv(RESULTS / "pdcr.csv", rows)
    # The OpenMP kernel uses every core, so other processes on the machine slow it down far more than
    # their share (threads wait at barriers for a descheduled peer): the load average goes in the table.
    table = _markdown(rows, (load_start, os.getloadavg()[0]))
    (RESULTS / "pdcr.md").write_text(table)
    print(table)
    return 0


def _markdown(rows, load) -> str:
    threads = torch.get_num_threads()
    lines = [
        f"# pdcr_loss_from_ratios, B={B}, C={C}, W={W}, K={K}, float32, exclude_self, CPU ({threads} threads)",
        "",
        f"1-minute load average {load[0]:.2f} at the start, {load[1]:.2f} at the end of the run "
        f"({os.cpu_count()} CPUs).",
        "",
        "| N | provider | mode | median ms | peak extra MiB | bmm ms | ms / bmm | vs reference (time, memory) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ref = {(r["N"], r["mode"]): r for r in rows if r["provider"] == "reference"}
    for r in rows:
        base = ref.get((r["N"], r["mode"]))
        versus = ""
        if base is not None and r["provider"] != "reference":
            mem = base["peak_extra_mib"] / r["peak_extra_mib"] if r["peak_extra_mib"] > 0 else math.inf
            versus = f"{r['ms'] / base['ms']:.3f}×, 1/{mem:.0f}"
        bmm, ratio = ("—", "—") if math.isnan(r["bmm_ms"]) else (r["bmm_ms"], r["ms_over_bmm"])
        lines.append(f"| {r['N']} | {r['provider']} | {r['mode']} | {r['ms']} | {r['peak_extra_mib']} | "
                     f"{bmm} | {ratio} | {versus} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
