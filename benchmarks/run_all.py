"""Run every benchmark and write benchmarks/RESULTS.md.

Each script runs in its own process (so that one case's peak memory does not hide another's):
`affseg bench` (the user-facing side-by-side table) and every benchmarks/bench_*.py `main()`, which
write benchmarks/results/<name>.md and .csv. RESULTS.md is the machine description, those tables,
then the hand-written benchmarks/LIMITS.md (what bounds each figure).

    .venv/bin/python benchmarks/run_all.py            # all benchmarks (~15-30 min on 2 cores)
    .venv/bin/python benchmarks/run_all.py --only pdcr
    .venv/bin/python benchmarks/run_all.py --assemble-only   # no measuring
"""
from __future__ import annotations

import argparse
import datetime
import pathlib
import platform
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _machine() -> str:
    import os

    import torch

    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (
        f"- date: {datetime.date.today().isoformat()}, commit {sha or 'unknown'}\n"
        f"- CPU: {_cpu_model()}, {os.cpu_count()} cores; GPU: {gpu}\n"
        f"- python {platform.python_version()}, torch {torch.__version__}, triton {triton_version}\n"
    )


def _stamp() -> str:
    """Where and when a table was measured: written next to it (results/<name>.stamp) by this script."""
    import os

    import torch

    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    return (f"Measured {datetime.date.today().isoformat()} at commit {sha or 'unknown'} on {_cpu_model()}, "
            f"{os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads).")


# Tables measured before run_all.py stamped each one (the header of that run said so).
_UNSTAMPED = "Measured 2026-11-23 at commit f41b685 on AMD EPYC, 2 cores (before tables carried their own stamp)."


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default=None, help="run only benchmarks/bench_<ONLY>.py")
    parser.add_argument("--assemble-only", action="store_true", help="rewrite RESULTS.md from benchmarks/results/")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.assemble_only:
        scripts = []
    elif args.only:
        scripts = [s for s in scripts if s.stem == f"bench_{args.only}"]
    else:
        with open(RESULTS / "affseg_bench.md", "w") as out:
            proc = subprocess.run([sys.executable, "-m", "affseg", "bench", "--csv", str(RESULTS / "affseg_bench.csv")],
                                  capture_output=True, text=True, check=True)
            out.write("## `affseg bench` (reference vs the backend `auto` picks)\n\n```\n" + proc.stdout + "```\n")
            print(proc.stdout)
        (RESULTS / "affseg_bench.stamp").write_text(_stamp() + "\n")
    for script in scripts:
        print(f"== {script.name}", flush=True)
        subprocess.run([sys.executable, str(script)], check=True)
        (RESULTS / f"{script.stem.removeprefix('bench_')}.stamp").write_text(_stamp() + "\n")
    sections = sorted(RESULTS.glob("*.md"), key=lambda p: (p.stem != "affseg_bench", p.stem))

    def section(p: pathlib.Path) -> str:
        stamp = p.with_suffix(".stamp")
        when = stamp.read_text().strip() if stamp.exists() else _UNSTAMPED
        return p.read_text().rstrip() + "\n\n" + when + "\n"

    body = "\n".join(section(p) for p in sections)
    limits = HERE / "LIMITS.md"  # hand-written: what bounds each figure; kept across regenerations
    if limits.exists():
        body += "\n" + limits.read_text()
    (HERE / "RESULTS.md").write_text(
        "# Benchmark results\n\nWritten by `benchmarks/run_all.py`. Within each table every figure was measured in one "
        "run, side by side; each table says when, at which commit and on which machine. Last assembled:\n\n"
        + _machine() + "\nNo GPU figure appears unless it was measured on a GPU (the roofline table is an estimate "
        "from operation counts, `benchmarks/roofline.py`).\n\n" + body
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
