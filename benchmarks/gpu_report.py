"""The GPU check's cases, their counted work and its report (benchmarks/gpu_check.py runs them).

Work per call comes from each kernel file's `work` function (kernels/<family>.py), which follows
that file's header, so a reported TFLOP/s or GB/s is measured time against the stated count. Rows
hold only what was measured: a failed or skipped case says so and carries no number.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass, field


@dataclass
class Case:
    op: str            # public affseg op
    size: str          # human-readable sizes
    dims: dict         # the sizes, as the work counter and the input builder take them
    dtype: str = "float32"
    backends: tuple = ("reference", "triton", "cuda")
    bmm: bool = False  # also time torch.bmm of the same B·N² dot products (the tensor-core target)


@dataclass
class Row:
    case: Case
    backend: str
    mode: str                     # "fwd" or "fwd+bwd"
    median_ms: float | None = None
    flops: float | None = None
    nbytes: float | None = None
    note: str = ""
    vs_reference: float | None = None  # reference median / this median (>1: faster)


@dataclass
class Report:
    gpu: str = "unknown"
    versions: dict = field(default_factory=dict)
    stages: list = field(default_factory=list)  # (name, status, seconds, detail)
    rows: list = field(default_factory=list)
    notes: list = field(default_factory=list)


# Sized to finish the timing stage in about two minutes on one H200 (each case a few hundred ms
# of do_bench per backend and mode), leaving the build and the tests the rest of 8 minutes.
CASES = [
    # Issue 10's GPU targets: the bf16 forward at >= 30 % of the bf16 bmm rate of the same dots, and
    # fwd+bwd <= 3x the forward (the eager reference would need ~40 GB of N x N planes: not timed).
    Case("pdcr_loss_from_ratios", "B=1 N=16384 C=128 W=3 K=4", dict(B=1, N=16384, C=128, W=3, K=4), "bfloat16",
         backends=("triton", "cuda"), bmm=True),
    Case("pdcr_loss_from_ratios", "B=4 N=1024 C=64 W=3 K=4", dict(B=4, N=1024, C=64, W=3, K=4)),
    Case("pdcr_loss_from_ratios", "B=2 N=4096 C=128 W=3 K=4", dict(B=2, N=4096, C=128, W=3, K=4)),
    Case("soft_supcon_loss", "B=4 N=2048 C=128", dict(B=4, N=2048, C=128)),
    Case("soft_supcon_loss", "B=1 N=8192 C=512", dict(B=1, N=8192, C=512)),
    Case("patch_label_ratios", "B=2 96^3 K=4 W=3 N=4096", dict(B=2, S=(96, 96, 96), K=4, windows=(5, 9, 17), N=4096)),
    Case("patch_entropy", "B=4 K=4 160^3 patch 8^3", dict(B=4, K=4, S=(160, 160, 160), patch=(8, 8, 8))),
    Case("uafs_reweight", "B=4 C=32 M=8 96^3", dict(B=4, C=32, M=8, S=(96, 96, 96))),
]
DIFFERENTIABLE = {"pdcr_loss_from_ratios", "soft_supcon_loss", "uafs_reweight"}
# Triton PDCR tiles timed against the launcher's own on the bmm target case: a (held, swept,
# num_warps) for every kernel role, or a {role: tile} for some. The launcher's tiles were chosen from
# sm_90 compiles alone: its 64-row tensor-core tiles are measured against the spill-free 16-row tiles
# they replaced, and its 16-row intra-layer backward at W = 3 against the 64-row one it gave up
# (4-32 B of ptxas spills there, which may cost less than losing wgmma).
TILE_ALTERNATIVES = {"16x16 tiles, 4 warps": (16, 16, 4), "64x16 intra bwd, 8 warps": {"intra": (64, 16, 8)}}


def case_work(case: Case, mode: str, dtype=None):
    """(FLOPs, bytes) of the fused kernels for one call of case in mode, from the kernel files."""
    import torch

    from affseg.kernels import entropy, labels, pdcr, supcon, uafs

    dtype = dtype or getattr(torch, case.dtype)
    d = case.dims
    bwd = mode == "fwd+bwd"

    def both(fn, *args):
        f = fn(*args, backward=False)
        if not bwd:
            return f
        b = fn(*args, backward=True)
        return f[0] + b[0], f[1] + b[1]

    if case.op == "pdcr_loss_from_ratios":  # intra-layer: both GPU backends run the one-sweep intra backward
        return both(lambda *a, backward: pdcr.work(*a, backward=backward, intra=True),
                    d["B"], d["N"], d["N"], d["C"], d["W"], d["K"], dtype)
    if case.op == "soft_supcon_loss":
        return both(supcon.work, d["B"], d["N"], d["C"], dtype)
    if case.op == "uafs_reweight":
        return both(uafs.work, (d["B"], d["C"], *d["S"]), d["M"], dtype)
    if case.op == "patch_entropy":
        return entropy.work((d["B"], d["K"], *d["S"]), d["patch"], False, False, dtype)
    if case.op == "patch_label_ratios":
        return labels.work((d["B"], *d["S"]), d["N"], len(d["windows"]), d["K"])
    raise ValueError(f"no work counter for {case.op}")


def _num(v, fmt):
    return "—" if v is None else format(v, fmt)


def render(report: Report) -> str:
    """The markdown of RESULTS-gpu.md."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# affseg on a GPU: `make gpu-check`",
        "",
        f"- GPU: {report.gpu}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in report.versions.items()),
        f"- date: {now}",
        "- timing: `triton.testing.do_bench` medians; TFLOP/s and GB/s are the fused kernels' counted",
        "  work (each kernel file's header and `work` function) over the measured median, also for the",
        "  reference rows (same work, so the rates compare); bytes are compulsory traffic.",
        "",
        "## Stages",
        "",
        "| stage | status | seconds | detail |",
        "|---|---|---|---|",
    ]
    for name, status, seconds, detail in report.stages:
        lines.append(f"| {name} | {status} | {seconds:.1f} | {detail.replace('|', '/').replace(chr(10), ' ')[:300]} |")
    lines += [
        "",
        "## Timings",
        "",
        "| op | size | backend | mode | median ms | vs reference | TFLOP/s | GB/s | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report.rows:
        tflops = gbs = None
        if r.median_ms is not None and r.flops is not None:
            tflops = r.flops / (r.median_ms * 1e-3) / 1e12
            gbs = r.nbytes / (r.median_ms * 1e-3) / 1e9
        vs = None if r.vs_reference is None else f"{r.vs_reference:.2f}x"
        lines.append(
            f"| {r.case.op} | {r.case.size} {r.case.dtype} | {r.backend} | {r.mode} | {_num(r.median_ms, '.3f')} "
            f"| {vs or '—'} | {_num(tflops, '.2f')} | {_num(gbs, '.1f')} | {r.note.replace('|', '/')[:200]} |"
        )
    if report.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    return "\n".join(lines) + "\n"


def fill_speedups(rows):
    """vs_reference = reference median / row median for rows of the same case and mode."""
    ref = {(id(r.case), r.mode): r.median_ms for r in rows if r.backend == "reference" and r.median_ms}
    for r in rows:
        base = ref.get((id(r.case), r.mode))
        if r.median_ms and base and r.backend != "reference":
            r.vs_reference = base / r.median_ms
