"""`affseg bench`: what the fused kernels buy, measured side by side with the reference in one run.

Each case runs the same call with ``backend="reference"`` and with the fused backend that
``"auto"`` picks on the device, then reports median wall time over repeats and the peak extra
memory. On CPU, peak memory is the rise of the process's resident-set high-water mark (VmHWM,
reset through /proc/self/clear_refs before each measured call; Linux only). On CUDA it is
``torch.cuda.max_memory_allocated`` above the memory allocated before the call.
"""
from __future__ import annotations

import csv
import ctypes
import ctypes.util
import math
import os
import re
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

import affseg
from affseg import _backend


def _rss_kib() -> dict[str, int]:
    with open("/proc/self/status") as f:
        text = f.read()
    return {k: int(re.search(rf"{k}:\s+(\d+)", text).group(1)) for k in ("VmHWM", "VmRSS")}


def _release_free_heap() -> None:
    # glibc keeps freed blocks resident and reuses them without growing RSS; give them back first so
    # the high-water mark measures what the call itself needs.
    libc = ctypes.util.find_library("c")
    if libc:
        try:
            ctypes.CDLL(libc).malloc_trim(0)
        except AttributeError:  # not glibc
            pass


def peak_extra_mib(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory the call needs beyond what was resident before it (MiB); NaN if not measurable."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    _release_free_heap()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        return math.nan
    base = _rss_kib()["VmRSS"]
    fn()
    return (_rss_kib()["VmHWM"] - base) / 1024


def median_ms(fn: Callable[[], object], device: torch.device, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of `fn` in milliseconds (synchronising CUDA around each call)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


@dataclass
class Case:
    name: str
    op: str  # public op name, for backend resolution
    size: str
    make: Callable[[torch.device], Callable[[str], object]]  # device -> (backend -> result)


def _pdcr(n_side: int) -> Callable:
    def make(device):
        g = torch.Generator().manual_seed(0)
        feats = torch.randn(2, 64, n_side, n_side, generator=g).to(device).requires_grad_()
        labels = torch.randint(0, 3, (2, 4 * n_side, 4 * n_side), generator=g).to(device)

        def run(backend):
            loss = affseg.pdcr_loss(feats, labels, num_classes=3, backend=backend)
            loss.backward()
            feats.grad = None
            return loss
        return run
    return make


def _supcon(n: int) -> Callable:
    def make(device):
        g = torch.Generator().manual_seed(0)
        emb = torch.randn(n, 64, generator=g).to(device).requires_grad_()
        labels = torch.randint(0, 4, (n,), generator=g).to(device)

        def run(backend):
            loss = affseg.soft_supcon_loss(emb, labels, backend=backend)
            loss.backward()
            emb.grad = None
            return loss
        return run
    return make


def _label_ratios(side: int) -> Callable:
    def make(device):
        g = torch.Generator().manual_seed(0)
        labels = torch.randint(0, 4, (2, side, side), generator=g).to(device)
        centers = affseg.grid_centers((side // 2, side // 2), (side, side)).to(device).expand(2, -1, -1)
        return lambda backend: affseg.patch_label_ratios(labels, centers, (5, 7, 9), 4, backend=backend)
    return make


def _entropy(shape) -> Callable:
    def make(device):
        logits = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(device)
        return lambda backend: affseg.patch_entropy(logits, 16, backend=backend)
    return make


def _uafs(shape) -> Callable:
    def make(device):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(*shape, generator=g).to(device).requires_grad_()
        att = torch.randn(shape[0], 2, *shape[2:], generator=g).to(device).requires_grad_()

        def run(backend):
            y = affseg.uafs_reweight(x, att, backend=backend)
            y.backward(torch.ones_like(y))
            x.grad = att.grad = None
            return y
        return run
    return make


def cases(quick: bool) -> list[Case]:
    pdcr_sides = (32,) if quick else (32, 64)
    out = [Case("pdcr_loss fwd+bwd (dense, C=64, 3 windows)", "pdcr_loss_from_ratios", f"B=2 N={s * s}", _pdcr(s))
           for s in pdcr_sides]
    out += [
        Case("soft_supcon_loss fwd+bwd (C=64)", "soft_supcon_loss", f"N={n}", _supcon(n))
        for n in ((2048,) if quick else (2048, 8192))
    ]
    out += [
        Case("patch_label_ratios (3 windows, K=4)", "patch_label_ratios", "2x256x256, N=16384", _label_ratios(256)),
        Case("patch_entropy (patch 16)", "patch_entropy", "2x4x256x256", _entropy((2, 4, 256, 256))),
        Case("uafs_reweight fwd+bwd (M=2)", "uafs_reweight", "4x64x128x128", _uafs((4, 64, 128, 128))),
    ]
    return out


def run(device: str = "cpu", quick: bool = False, repeats: int = 5, csv_path: str | None = None) -> list[dict]:
    dev = torch.device(device)
    rows = []
    for case in cases(quick):
        fused = _backend.resolve(case.op, "auto", dev)
        call = case.make(dev)
        row = {"op": case.name, "size": case.size, "device": str(dev), "fused_backend": fused}
        for label, backend in (("reference", "reference"), ("fused", fused)):
            if label == "fused" and backend == "reference":
                row.update(fused_ms=math.nan, fused_mib=math.nan)
                continue
            row[f"{label}_ms"] = median_ms(lambda: call(backend), dev, repeats=repeats)
            row[f"{label}_mib"] = peak_extra_mib(lambda: call(backend), dev)
        row["speedup"] = row["reference_ms"] / row["fused_ms"]
        row["memory_ratio"] = row["reference_mib"] / row["fused_mib"] if row["fused_mib"] > 0 else math.inf
        rows.append(row)
        print(format_row(row), flush=True)
    if csv_path:
        write_csv(csv_path, rows)
    return rows


def write_csv(path, rows: list[dict]) -> None:
    """Write benchmark rows (dicts sharing the first row's keys) to `path`, creating its folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


HEADER = (
    f"{'op':<44} {'size':<20} {'backend':<8} {'ref ms':>9} {'fused ms':>9} {'speedup':>8} "
    f"{'ref MiB':>9} {'fused MiB':>9}"
)


def format_row(row: dict) -> str:
    return (
        f"{row['op']:<44} {row['size']:<20} {row['fused_backend']:<8} {row['reference_ms']:9.1f} "
        f"{row['fused_ms']:9.1f} {row['speedup']:7.2f}x {row['reference_mib']:9.1f} {row['fused_mib']:9.1f}"
    )


def main(device: str = "cpu", quick: bool = False, repeats: int = 5, csv_path: str | None = None) -> int:
    print(f"affseg bench on {device} (torch {torch.__version__}, {torch.get_num_threads()} threads); "
          f"median of {repeats} runs, peak extra memory of one run")
    print(HEADER)
    run(device, quick, repeats, csv_path)
    return 0
