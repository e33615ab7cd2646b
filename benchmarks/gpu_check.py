"""One command for a GPU machine (`make gpu-check`): build, test, time, report; < 8 minutes on one H200.

Stages, each recorded (status, seconds, detail) in the log and in the report; a failed stage does
not stop later ones: (1) build the CUDA extension in place (no network, no pip resolution),
(2) `pytest -m cuda`, (3) the sm_90 compile test and the Triton tests with TRITON_INTERPRET=0,
(4) time every fused op against affseg.reference with `triton.testing.do_bench` medians, fwd and
fwd+bwd, on each backend that takes the call; on the bmm target case, the Triton PDCR tiles the
launcher picks against gpu_report.TILE_ALTERNATIVES. A budget guard skips the cases left when the time is
spent and says so. Writes benchmarks/RESULTS-gpu.md and a log; never a number it did not measure.

Runs with the system python3 (torch + triton preinstalled), not the .venv.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_report import CASES, DIFFERENTIABLE, TILE_ALTERNATIVES, Report, Row, case_work, fill_speedups, render  # noqa: E402


class Log:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(path, "w", buffering=1)

    def __call__(self, msg: str):
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        self.fh.write(line + "\n")


def run_stage(report, log, name, fn):
    start = time.perf_counter()
    log(f"stage {name}: start")
    try:
        status, detail = fn()
    except Exception as exc:  # a stage's failure is a finding; the next stages still run
        status, detail = "failed", f"{type(exc).__name__}: {exc}"
        log(traceback.format_exc())
    seconds = time.perf_counter() - start
    report.stages.append((name, status, seconds, detail))
    log(f"stage {name}: {status} in {seconds:.1f} s: {detail}")
    return status


def run_cmd(log, cmd, timeout, env=None):
    """(status, detail) of a subprocess; its output goes to the log."""
    log("$ " + " ".join(cmd))
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        log(str(out)[-4000:])
        return "failed", f"timed out after {timeout} s"
    log(proc.stdout[-20000:])
    log(proc.stderr[-20000:])
    tail = (proc.stdout.strip().splitlines() or [""])[-1]
    return ("ok" if proc.returncode == 0 else "failed"), f"rc {proc.returncode}: {tail}"


def _inputs(case, device):
    """(fn(backend) -> output to time, tensors to take gradients of) for one case."""
    import torch

    import affseg

    d = case.dims
    dtype = getattr(torch, case.dtype)
    g = torch.Generator(device=device).manual_seed(0)
    if case.op == "pdcr_loss_from_ratios":
        feats = torch.randn(d["B"], d["N"], d["C"], device=device, dtype=dtype, generator=g)
        phi = torch.rand(d["B"], d["W"], d["N"], d["K"], device=device, dtype=dtype, generator=g)
        phi = phi / phi.sum(-1, keepdim=True)
        feats.requires_grad_()
        return (lambda b: affseg.pdcr_loss_from_ratios(feats, phi, backend=b)), [feats]
    if case.op == "soft_supcon_loss":
        feats = torch.randn(d["B"], d["N"], d["C"], device=device, dtype=dtype, generator=g).requires_grad_()
        labels = torch.randint(0, 8, (d["B"], d["N"]), device=device, generator=g)
        return (lambda b: affseg.soft_supcon_loss(feats, labels, backend=b)), [feats]
    if case.op == "uafs_reweight":
        x = torch.randn(d["B"], d["C"], *d["S"], device=device, dtype=dtype, generator=g).requires_grad_()
        att = torch.randn(d["B"], d["M"], *d["S"], device=device, dtype=dtype, generator=g).requires_grad_()
        return (lambda b: affseg.uafs_reweight(x, att, backend=b)), [x, att]
    if case.op == "patch_entropy":
        logits = torch.randn(d["B"], d["K"], *d["S"], device=device, dtype=dtype, generator=g)
        return (lambda b: affseg.patch_entropy(logits, d["patch"], backend=b)), []
    if case.op == "patch_label_ratios":
        labels = torch.randint(0, d["K"], (d["B"], *d["S"]), device=device, generator=g)
        centers = torch.stack([torch.randint(0, s, (d["B"], d["N"]), device=device, generator=g) for s in d["S"]], -1)
        return (lambda b: affseg.patch_label_ratios(labels, centers, list(d["windows"]), d["K"], backend=b)), []
    raise ValueError(case.op)


def _timed(fn, grads, mode):
    import torch

    if mode == "fwd":
        def step():
            with torch.no_grad():
                fn()
    else:
        def step():
            out = fn()
            out = out.sum() if out.dim() else out
            torch.autograd.grad(out, grads)
    return step


def _bmm_targets(case, rows, log, device):
    """The tensor-core targets of `case`: forward time against a torch.bmm of the same dot products in
    the same dtype (the fraction of the bmm's rate the fused forward reaches), and fwd+bwd / fwd."""
    import torch

    d = case.dims
    f = torch.randn(d["B"], d["N"], d["C"], device=device, dtype=getattr(torch, case.dtype))
    ft = f.transpose(1, 2).contiguous()
    bmm_ms = _do_bench(lambda: torch.bmm(f, ft))
    del f, ft
    parts = [f"{case.op} {case.size} {case.dtype}: torch.bmm of the same dots {bmm_ms:.3f} ms"]
    for backend in case.backends:
        ms = {r.mode: r.median_ms for r in rows if r.case is case and r.backend == backend}
        fwd, both = ms.get("fwd"), ms.get("fwd+bwd")
        if fwd:
            parts.append(f"{backend}: forward at {bmm_ms / fwd:.0%} of the bmm rate (target >= 30 %)"
                         + (f", fwd+bwd {both / fwd:.2f}x the forward (target <= 3x)" if both else ""))
        else:
            parts.append(f"{backend}: not measured")
    log("; ".join(parts))
    return "; ".join(parts)


def _do_bench(step):
    import triton.testing

    return float(triton.testing.do_bench(step, warmup=10, rep=40, return_mode="median"))


def _tile_sweep(case, log, device, bench=_do_bench):
    """The Triton PDCR tile choice, measured: `case`'s fwd and fwd+bwd on the Triton backend under the
    launcher's tiles and under each of TILE_ALTERNATIVES (the launcher's config with its tiles
    replaced for the duration), side by side. Returns the note."""
    import torch

    from affseg.kernels import pdcr

    real = pdcr._launch_config
    d = case.dims
    chosen = real(d["C"], torch.float32, "bf16" if case.dtype == "bfloat16" else "ieee", True, d["W"], d["K"])[0]
    parts = [f"{case.op} {case.size} {case.dtype}, Triton tiles (held x swept, warps) fwd {chosen['fwd']}, "
             f"intra bwd {chosen['intra']}"]
    for label, tile in [("launcher", None), *TILE_ALTERNATIVES.items()]:
        def config(*args, tile=tile, **kwargs):
            tiles, block_c, block_d = real(*args, **kwargs)
            if tile is not None:
                tiles = {**tiles, **tile} if isinstance(tile, dict) else dict.fromkeys(tiles, tile)
            return tiles, block_c, block_d

        pdcr._launch_config = config
        try:
            fn, grads = _inputs(case, device)
            times = []
            for mode in ("fwd", "fwd+bwd"):
                step = _timed(lambda: fn("triton"), grads, mode)
                step()  # compile outside the timing
                if device == "cuda":
                    torch.cuda.synchronize()
                times.append(f"{mode} {bench(step):.3f} ms")
            parts.append(f"{label}: " + ", ".join(times))
        except Exception as exc:  # say why, no number
            parts.append(f"{label}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
        finally:
            pdcr._launch_config = real
    log("; ".join(parts))
    return "; ".join(parts)


def time_cases(report, log, budget_s, device="cuda"):
    import torch

    start = time.perf_counter()
    skipped = []
    for case in CASES:
        modes = ["fwd", "fwd+bwd"] if case.op in DIFFERENTIABLE else ["fwd"]
        for mode in modes:
            for backend in case.backends:
                row = Row(case, backend, mode)
                if time.perf_counter() - start > budget_s:
                    skipped.append(f"{case.op} {case.size} {backend} {mode}")
                    continue
                try:
                    fn, grads = _inputs(case, device)
                    step = _timed(lambda: fn(backend), grads, mode)
                    step()  # compile / first call outside the timing
                    torch.cuda.synchronize()
                    row.median_ms = _do_bench(step)
                    row.flops, row.nbytes = case_work(case, mode)
                except Exception as exc:  # a backend that cannot take the call: say why, no number
                    row.note = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
                log(f"time {case.op} {case.size} {backend} {mode}: "
                    f"{row.median_ms if row.median_ms is not None else row.note}")
                report.rows.append(row)
    fill_speedups(report.rows)
    for case in CASES:
        if case.bmm and time.perf_counter() - start <= budget_s:
            report.notes.append(_bmm_targets(case, report.rows, log, device))
        if case.bmm and "triton" in case.backends and time.perf_counter() - start <= budget_s - 30:
            report.notes.append(_tile_sweep(case, log, device))
    if skipped:
        report.notes.append(f"time budget of {budget_s:.0f} s spent: not measured: " + "; ".join(skipped))
        return "partial", f"{len(skipped)} measurements skipped (budget)"
    return "ok", f"{sum(r.median_ms is not None for r in report.rows)} measurements"


def main(argv=None):
    parser = argparse.ArgumentParser(description="Build, test and time affseg on a GPU; write RESULTS-gpu.md.")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS-gpu.md")
    parser.add_argument("--log", type=Path, default=ROOT / "benchmarks" / "results" / "gpu-check.log")
    parser.add_argument("--total-budget", type=float, default=450.0, help="seconds for all stages (default 450)")
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    log = Log(args.log)
    report = Report()
    left = lambda: args.total_budget - (time.perf_counter() - t0)  # noqa: E731

    def env_stage():
        import torch
        import triton

        report.versions = {"python": sys.version.split()[0], "torch": torch.__version__, "triton": triton.__version__,
                           "cuda": str(torch.version.cuda)}
        if not torch.cuda.is_available():
            return "failed", "torch sees no CUDA device"
        report.gpu = torch.cuda.get_device_name(0)
        return "ok", report.gpu

    run_stage(report, log, "environment", env_stage)
    if not args.skip_build:
        run_stage(report, log, "build CUDA extension", lambda: run_cmd(
            log, [sys.executable, "setup.py", "build_ext", "--inplace"], timeout=min(240, max(30, left() - 200)),
            env={"CUDA_HOME": "/usr/local/cuda", "TORCH_CUDA_ARCH_LIST": "9.0", "MAX_JOBS": "16"}))
    gpu_env = {"TRITON_INTERPRET": "0", "PYTHONPATH": str(ROOT)}
    if not args.skip_tests:
        run_stage(report, log, "pytest -m cuda", lambda: run_cmd(
            log, [sys.executable, "-m", "pytest", "-q", "-x", "-m", "cuda", "tests", "-p", "no:cacheprovider"],
            timeout=min(150, max(30, left() - 170)), env=gpu_env))
        run_stage(report, log, "triton tests (TRITON_INTERPRET=0)", lambda: run_cmd(
            log, [sys.executable, "-m", "pytest", "-q", "-k", "triton", "tests", "-p", "no:cacheprovider"],
            timeout=min(150, max(30, left() - 140)), env=gpu_env))
    sys.path.insert(0, str(ROOT))
    os.environ["TRITON_INTERPRET"] = "0"
    run_stage(report, log, "timing", lambda: time_cases(report, log, budget_s=max(0.0, left() - 15)))
    args.out.write_text(render(report))
    log(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s")
    return 0 if all(s[1] == "ok" for s in report.stages) else 1


if __name__ == "__main__":
    sys.exit(main())
