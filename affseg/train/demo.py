"""``affseg demo``: the README's main job.

On the MNI152 slices, a short run of supervised vs PDCR+UAFS vs Semi-AGCL with 10 % of the training
slices labelled (one seed, ~6 minutes on 2 CPU cores), then the metrics table and the path of the
figure, then ``affseg bench --quick``. The numbers of a run this short are a smoke test of the
pipeline, not a result: RESULTS.md holds the 3-seed experiments.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

DEMO_METHODS = ("supervised", "pdcr+uafs", "semi-agcl")


def main(steps: int = 300, out: str = "runs/demo", seed: int = 0, label_fraction: float = 0.1,
         bench: bool = True, quiet: bool = False) -> int:
    from affseg.train import TrainConfig, run
    from affseg.train import report
    from affseg.train.loop import load_data

    base = TrainConfig(steps=steps, seeds=(seed,), label_fraction=label_fraction, quiet=quiet)
    data = load_data(base)
    print(data.description)
    runs, t0 = {}, time.perf_counter()
    for method in DEMO_METHODS:
        cfg = dataclasses.replace(base, method=method, out=str(Path(out) / method))
        runs[method] = run(cfg, data=data)["runs"]
    written = report.write(Path(out), runs, data.description, data.class_names)
    print(f"\nTest split, {steps} steps, {label_fraction:.0%} labels, seed {seed} "
          f"({time.perf_counter() - t0:.0f} s in all):\n")
    print(written["table"])
    print(f"figure: {written['png']}")
    if bench:
        from affseg.bench import main as bench_main

        print("\naffseg bench --quick")
        return bench_main(device="cpu", quick=True, repeats=3, csv_path=None)
    return 0
