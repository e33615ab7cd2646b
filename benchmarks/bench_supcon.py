"""soft_supcon_loss forward+backward: the reference (N×N tensors), torch.compile(reference) and the
fused C++ CPU kernel (tiled online log-sum-exp, O(N·C) memory), side by side.

    .venv/bin/python -m pytest benchmarks/bench_supcon.py --benchmark-enable   # N = 2048, pytest-benchmark
    .venv/bin/python benchmarks/bench_supcon.py     # N = 8192, C = 64 -> benchmarks/results/supcon.{csv,md}

Time: median wall time of `repeats` fwd+bwd calls after one warm-up call (compilation excluded).
Peak extra memory (affseg.bench.peak_extra_mib): the rise of the process's resident-set high-water
mark over its resident set just before one fwd+bwd call, with the high-water mark reset through
/proc/self/clear_refs and free heap returned to the OS first (malloc_trim), so memory a previous
provider freed does not hide this one's peak. It counts every byte the call touches (autograd's
saved tensors, temporaries, the gradient), not just torch's allocator.
"""
from __future__ import annotations

import pathlib
import sys

import pytest
import torch

import affseg
from affseg import bench, reference

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def _inputs(n: int, c: int = 64, classes: int = 4):
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(1, n, c, generator=g).requires_grad_()
    labels = torch.randint(0, classes, (1, n), generator=g)
    return emb, labels


def _step(loss_fn, emb, labels):
    def run():
        loss = loss_fn(emb, labels)
        loss.backward()
        emb.grad = None
        return loss
    return run


def _providers():
    compiled = torch.compile(reference.soft_supcon_loss)
    return {
        "reference": reference.soft_supcon_loss,
        "torch.compile(reference)": compiled,
        "cpu": lambda e, lab: affseg.soft_supcon_loss(e, lab, backend="cpu"),
    }


@pytest.mark.parametrize("provider", ["reference", "cpu"])
def test_supcon_fwd_bwd_2048(benchmark, provider):
    emb, labels = _inputs(2048)
    fn = reference.soft_supcon_loss if provider == "reference" else (
        lambda e, lab: affseg.soft_supcon_loss(e, lab, backend="cpu"))
    benchmark(_step(fn, emb, labels))


def main(n: int = 8192, c: int = 64, repeats: int = 3) -> int:
    emb, labels = _inputs(n, c)
    cpu = torch.device("cpu")
    rows = []
    losses = {}
    for name, fn in _providers().items():
        step = _step(fn, emb, labels)
        losses[name] = float(step().detach())  # warm-up (and compilation) outside the measurements
        mib = bench.peak_extra_mib(step, cpu)
        ms = bench.median_ms(step, cpu, repeats=repeats, warmup=0)
        rows.append({"provider": name, "N": n, "C": c, "fwd_bwd_ms": round(ms, 1), "peak_extra_mib": round(mib, 1)})
        print(rows[-1], flush=True)
    assert abs(losses["cpu"] - losses["reference"]) <= 1e-4 * abs(losses["reference"]), losses
    ref = rows[0]
    bench.write_csv(RESULTS / "supcon.csv", rows)
    lines = [
        f"## soft_supcon_loss fwd+bwd, N={n}, C={c}, B=1, 4 classes (CPU, {torch.get_num_threads()} threads)",
        "",
        f"Median of {repeats} calls after a warm-up; peak extra memory = rise of the resident-set high-water mark "
        "during one call (see benchmarks/bench_supcon.py). Target for `cpu`: <= 1/2 the reference time and "
        "<= 1/20 its memory.",
        "",
        "| provider | fwd+bwd ms | × reference time | peak extra MiB | × reference memory |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['provider']} | {r['fwd_bwd_ms']:.1f} | {r['fwd_bwd_ms'] / ref['fwd_bwd_ms']:.2f} | "
                     f"{r['peak_extra_mib']:.1f} | {r['peak_extra_mib'] / ref['peak_extra_mib']:.3f} |")
    (RESULTS / "supcon.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
