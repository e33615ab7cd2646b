"""patch_label_ratios: the reference (torch cumsum tables + gather) vs the fused C++ CPU kernel.

    .venv/bin/python benchmarks/bench_labels.py   # -> benchmarks/results/labels.{csv,md}

Labels (2, 256, 256) with 4 classes, windows (5, 7, 9), dense 128×128 centres per image
(grid_centers of a stride-2 feature map). Median wall time of `repeats` calls after a warm-up; peak
extra memory as in benchmarks/bench_supcon.py (resident-set high-water mark rise, affseg.bench).
"""
from __future__ import annotations

import pathlib
import sys

import torch

import affseg
from affseg import bench, reference

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def main(side: int = 256, repeats: int = 7) -> int:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (2, side, side), generator=g)
    centers = affseg.grid_centers((side // 2, side // 2), (side, side)).expand(2, -1, -1).contiguous()
    windows = (5, 7, 9)
    providers = {
        "reference": lambda: reference.patch_label_ratios(labels, centers, windows, 4),
        "cpu": lambda: affseg.patch_label_ratios(labels, centers, windows, 4, backend="cpu"),
    }
    out = {name: fn() for name, fn in providers.items()}
    assert torch.equal(out["cpu"][0], out["reference"][0]) and torch.equal(out["cpu"][1], out["reference"][1])
    cpu = torch.device("cpu")
    rows = []
    for name, fn in providers.items():
        mib = bench.peak_extra_mib(fn, cpu)
        ms = bench.median_ms(fn, cpu, repeats=repeats)
        rows.append({"provider": name, "labels": f"2x{side}x{side}", "centres": centers.shape[1],
                     "windows": "5/7/9", "ms": round(ms, 2), "peak_extra_mib": round(mib, 1)})
        print(rows[-1], flush=True)
    bench.write_csv(RESULTS / "labels.csv", rows)
    lines = [
        f"## patch_label_ratios, labels (2, {side}, {side}), 4 classes, windows 5/7/9, "
        f"{centers.shape[1]} centres per image (CPU, {torch.get_num_threads()} threads)",
        "",
        f"Median of {repeats} calls after a warm-up; outputs identical to the reference.",
        "",
        "| provider | ms | × reference | peak extra MiB |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['provider']} | {r['ms']:.2f} | {r['ms'] / rows[0]['ms']:.2f} | {r['peak_extra_mib']:.1f} |")
    (RESULTS / "labels.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
