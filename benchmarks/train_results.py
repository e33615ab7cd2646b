"""The experiments behind RESULTS.md (run outside CI; about 35 minutes on 2 CPU cores at --steps 120).

    .venv/bin/python benchmarks/train_results.py [--steps 120] [--seeds 0 1 2] [--out runs/results]

1. The PDCR paper's claim (PDCR + UAFS help, also with a quarter of the labels): supervised vs
   +PDCR vs +UAFS vs PDCR+UAFS at 100 % and 25 % of the labelled MNI152 training slices.
2. The Semi-AGCL paper's setting: supervised-only vs mean teacher vs Semi-AGCL at 5 % and 10 %.
3. Step time of dense PDCR and UAFS against the supervised step on the same UNet, side by side in
   one process (median of several steps after a warm-up).

Each configuration's runs go to <out>/<group>/<method>-<fraction>/ (results.json, .md, .png,
checkpoints); a configuration whose results.json exists is not rerun, so the script resumes.
RESULTS.md (repository root) is rewritten after every configuration with what exists so far.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import subprocess
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
GROUPS = {
    "pdcr": (("supervised", "pdcr", "uafs", "pdcr+uafs"), (1.0, 0.25)),
    "semi": (("supervised", "mean-teacher", "semi-agcl"), (0.05, 0.10)),
}


def _dir(out, group, method, frac):
    return Path(out) / group / f"{method}-{int(round(frac * 100))}pct"


def step_times(data, repeats=8) -> dict:
    from affseg.train.config import TrainConfig
    from affseg.train.loop import Run

    out = {}
    for method in ("supervised", "uafs", "pdcr", "pdcr+uafs"):
        run = Run(TrainConfig(method=method, steps=1000), data, 0, 0, 1, torch.device("cpu"))
        run.train_step()
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            run.train_step()
            ts.append(time.perf_counter() - t)
        out[method] = sorted(ts)[len(ts) // 2]
    return out


def _row(summary):
    def f(ms, d=3):
        m, s = ms
        return "n/a" if m is None or math.isnan(m) else f"{m:.{d}f} ± {s:.{d}f}"
    return [summary["method"], f"{summary['label_fraction']:.0%} ({summary['labelled_cases']} slices)",
            f(summary["dice"]["mean"]), *[f(pc) for pc in summary["dice"]["per_class"]], f(summary["jaccard"]["mean"]),
            f(summary["hd95"]["mean"], 2), f(summary["asd"]["mean"], 2), f(summary["train_time_s"], 0)]


def verdicts(out) -> list:
    """Each method's mean test Dice against supervised-only at the same label fraction: better or
    worse when the difference exceeds the seeds' spread (the two stds combined), else no clear
    difference. Computed from the results, so the sentences follow the numbers."""
    claims = {"pdcr": "PDCR and UAFS improve segmentation, also with a quarter of the labels (PDCR paper)",
              "semi": "the unlabelled slices help: mean teacher, and Semi-AGCL more (Semi-AGCL paper)"}
    lines = []
    for group, (methods, fracs) in GROUPS.items():
        found = []
        for frac in fracs:
            def dice(method):
                p = _dir(out, group, method, frac) / "results.json"
                return json.loads(p.read_text())["summary"][0]["dice"]["mean"] if p.exists() else None
            base = dice("supervised")
            for method in methods[1:]:
                d = dice(method)
                if base is None or d is None:
                    continue
                delta, spread = d[0] - base[0], math.hypot(d[1], base[1])
                word = "better" if delta > spread else "worse" if delta < -spread else "no clear difference"
                found.append(f"{method} at {frac:.0%}: Dice {d[0]:.3f} vs {base[0]:.3f} ({delta:+.3f}, seeds' spread "
                             f"{spread:.3f}): {word}")
        if found:
            lines.append(f"- Claim: {claims[group]}.")
            lines += [f"  - {f}" for f in found]
    return lines


def write_results(out, steps, seeds, description, timings):
    head = ["method", "labels", "Dice", "Dice GM", "Dice WM", "Jaccard", "HD95 (px)", "ASD (px)", "train s / run"]
    lines = [
        "# Results",
        "",
        "What the methods bought on the data available here, measured with `benchmarks/train_results.py` "
        f"(commit {_commit()}, {platform.processor() or platform.machine()}, 2 CPU threads). Whatever came out "
        "is reported; nothing was selected on the test split (the final weights of each run are evaluated once).",
        "",
        "## Setup, and how it differs from the papers",
        "",
        f"- Data: {description}",
        "- Metrics: MONAI Dice, Jaccard, HD95 and ASD (pixels) per foreground class on each test slice, averaged "
        "over slices (slices where a class is absent from the label or the prediction have no surface distance "
        "and are left out of HD95/ASD); mean ± std over seeds "
        f"{', '.join(map(str, seeds))}.",
        f"- Training: affseg's SSL4MIS-shaped UNet (16–256 channels), 64×64 slices, batch 8 labelled (+ 8 "
        f"unlabelled for the semi-supervised methods), {steps} Adam steps (lr 1e-3, poly decay), Dice + CE (MONAI). "
        "The papers train for 10k–30k iterations at 256² or more on ACDC/LA/BraTS with DeepLab/nnU-Net/"
        "U-Net backbones; this is a short CPU run on one template brain.",
        "- PDCR: τ = 0.5, windows 5/7/9, dense on the stride-2 decoder map (32×32, 32 channels), weight 0.1. "
        "UAFS after every decoder stage (hidden 16, m = 2).",
        "- Mean teacher: EMA 0.99, MSE consistency weight 0.1 with a sigmoid ramp-up over 40 % of the steps; "
        "weak (flip) / strong (flip + contrast, brightness, noise) views. Semi-AGCL: the same teacher, "
        "pseudo-label Dice + CE weight 0.5, the affinity-graph (σ 0.5, γ 0.1) and mixed-negative InfoNCE "
        "terms (τ 0.1, 64 hard, 32 mixed, queue 1024 per class) with weight 1 and the same ramp-up, "
        "patches 8×8, 16 per class.",
        "",
    ]
    for group, title in (("pdcr", "PDCR and UAFS (the PDCR paper's quarter-data claim)"),
                         ("semi", "Semi-supervised (the Semi-AGCL paper's 5 % / 10 % setting)")):
        rows = []
        for frac in GROUPS[group][1]:
            for method in GROUPS[group][0]:
                p = _dir(out, group, method, frac) / "results.json"
                if p.exists():
                    rows.append(_row(json.loads(p.read_text())["summary"][0]))
        lines += [f"## {title}", ""]
        if rows:
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(r) + " |" for r in rows]
        else:
            lines.append("Not run yet.")
        lines.append("")
    lines += ["## Whether the papers' claims held here", ""] + verdicts(out) + [""]
    lines += [
        "Caveats, true of every run above: one template brain (train, val and test are different slabs of "
        f"the same averaged head, so there is little for unlabelled data to add); runs of {steps} "
        "steps, where terms that ramp up over 40 % of the run act on a barely trained network; the "
        "semi-supervised terms keep the papers' weights (1 for the affinity-graph terms, whose InfoNCE part "
        "is of the order of log(queue size)), untuned for this setting; no learning-rate or weight search. "
        "A claim that did not hold here was not tested at the papers' scale.",
        "",
    ]
    lines += ["## Step time of dense PDCR and UAFS (CPU, 2 threads, batch 8, 64×64)", ""]
    if timings:
        base = timings["supervised"]
        lines += ["| method | median step (s) | × supervised |", "|---|---:|---:|"]
        lines += [f"| {m} | {t:.3f} | {t / base:.2f} |" for m, t in timings.items()]
        lines += ["", "Target: ≤ 1.5× the supervised step. Measured side by side in one process, medians of 8 steps."]
    else:
        lines.append("Not measured yet.")
    (ROOT / "RESULTS.md").write_text("\n".join(lines) + "\n")


def _commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default=str(ROOT / "runs" / "results"))
    p.add_argument("--groups", nargs="+", default=list(GROUPS))
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    from affseg.train import TrainConfig, run
    from affseg.train.loop import load_data

    base = TrainConfig(steps=args.steps, seeds=tuple(args.seeds), quiet=True)
    data = load_data(base)
    timings_path = Path(args.out) / "step_times.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else None
    for group in args.groups:
        methods, fracs = GROUPS[group]
        for frac in fracs:
            for method in methods:
                d = _dir(args.out, group, method, frac)
                if (d / "results.json").exists():
                    continue
                cfg = dataclasses.replace(base, method=method, label_fraction=frac, out=str(d), resume=True)
                t = time.perf_counter()
                run(cfg, data=data)
                print(f"{group} {method} {frac:.0%}: {time.perf_counter() - t:.0f} s", flush=True)
                write_results(args.out, args.steps, args.seeds, data.description, timings)
    if timings is None:
        timings = step_times(data)
        timings_path.parent.mkdir(parents=True, exist_ok=True)
        timings_path.write_text(json.dumps(timings))
    write_results(args.out, args.steps, args.seeds, data.description, timings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
