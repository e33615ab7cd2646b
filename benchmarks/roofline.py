"""Estimated GPU roofline of the Triton and CUDA C++ PDCR and SupCon kernels: an ESTIMATE, not a measurement.

No GPU has run these kernels yet. This script turns each kernel's own operation counts (the `work`
functions of kernels/pdcr.py and kernels/supcon.py, which count what their headers state) and the
register use ptxas reports for the configuration the launcher picks at sm_90
(tests/triton_sm90_probe.py) into lower bounds on an H200: time ≥ max(tensor-core FLOPs / the
tensor-core peak, epilogue FLOPs / the FP32 peak, exps / the SFU rate, compulsory bytes / HBM
bandwidth), and the occupancy the registers and shared memory allow. The fraction printed is the
dot products' share of that bound at the tensor-core peak, i.e. the best this schedule could reach;
the GPU check (`make gpu-check`) replaces it with measured times when a GPU is lent. The CUDA C++
rows count what csrc/cuda/pdcr_kernels.cu and supcon_kernels.cu state in their headers and take
registers and static shared memory from `nvcc -arch=sm_90 -Xptxas -v` (plus the tensor-core
backward's dynamic accumulator, csrc/cuda/block_tiles.cuh).

    .venv/bin/python benchmarks/roofline.py    # -> benchmarks/results/roofline.md (compiles for sm_90, ~10 min)
    .venv/bin/python benchmarks/roofline.py --probe probe.json   # from a saved probe run instead

Peak figures (NVIDIA H200 SXM datasheet and the Hopper tuning guide; dense, no sparsity): bf16
tensor cores 989 TFLOP/s, tf32 494 TFLOP/s, fp32 FMA 67 TFLOP/s, HBM3e 4.8 TB/s; exp: MUFU.EX2 at
16 per SM per clock × 132 SMs × 1.98 GHz ≈ 4.2 T/s (plus an FMUL each). 65,536 registers and 227 KB
of shared memory per SM, at most 64 resident warps.
"""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

PEAK = {"bf16": 989e12, "tf32": 494e12, "ieee": 67e12}
FP32 = 67e12
EXP_RATE = 16 * 132 * 1.98e9
HBM = 4.8e12
SM_REGS, SM_SMEM, SM_WARPS = 65536, 232448, 64


def _occupancy(regs: int, smem: int, warps: int) -> int:
    """Resident warps per SM the registers (allocated per warp in units of 256) and shared memory allow."""
    per_warp = -(-regs * 32 // 256) * 256
    blocks = min(SM_REGS // (per_warp * warps), SM_SMEM // max(smem, 1), SM_WARPS // warps)
    return blocks * warps


def _probe(families: str) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "triton_sm90_probe.py"), "--families", families,
                          "--jobs", "2"], capture_output=True, text=True, env=env, check=True, cwd=ROOT)
    return json.loads(out.stdout)["compiled"]


def _registers(compiled, kernel, sizes, **constexprs):
    """ptxas figures of the launch with these constexprs, compiled as Triton would specialise it at
    the table's sizes ({argument: value} of N, M, C, TILES, CHUNKS): the size arguments divisible by 16 there
    carry the divisibility attribute, those equal to 1 are constexprs, and the other variants compile
    to other register counts. None when the probe compiled no such launch (or it failed)."""
    divisible = {n for n, v in sizes.items() if v % 16 == 0}
    ones = {n for n, v in sizes.items() if v == 1}
    for c in compiled:
        if ("error" not in c and c["kernel"] == kernel and all(c["constexprs"].get(k) == str(v) for k, v in constexprs.items())
                and set(c.get("divisible_by_16", [])) & set(sizes) == divisible and set(c.get("ones", [])) & set(sizes) == ones):
            return c["registers"], c["shared"], c["options"].get("num_warps", 4)
    return None


CUDA_PREC = {"ieee": 0, "tf32": 1, "bf16": 2}
CUDA_SWEEP = {"bwd": (0, 1), "intra bwd": (2,)}  # pdcr_kernels.cu Sweep: kRows, kCols, kIntra


def _nvcc_kernels(name: str) -> dict:
    """{mangled entry: (registers, static shared bytes)} from ptxas -v for csrc/cuda/<name> at sm_90."""
    import re
    import shutil

    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    out = subprocess.run([nvcc, "-arch=sm_90", "-O3", "-std=c++20", "-Xptxas", "-v", "-I", str(ROOT / "csrc" / "include"),
                          "-c", str(ROOT / "csrc" / "cuda" / name), "-o", os.devnull],
                         capture_output=True, text=True, check=True)
    found, entry = {}, None
    for line in (out.stdout + out.stderr).splitlines():
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            entry = m.group(1)
        m = re.search(r"Used (\d+) registers.*?(\d+) bytes smem", line)
        if m and entry:
            found[entry] = (int(m.group(1)), int(m.group(2)))
    return found


def _cuda(found: dict, pattern: str, C: int, prec: str, backward: bool):
    """(registers, shared bytes, warps) of the one float32 entry matching `pattern`, or None."""
    import re

    hits = [v for k, v in found.items() if re.search(pattern, k)]
    if len(hits) != 1:
        return None
    regs, smem = hits[0]
    if backward and prec != "ieee":  # the fp32 gradient accumulator in dynamic shared memory
        smem += 4 * 32 * (-(-C // 32) * 32 + 4)
    return regs, smem, 4


def _cuda_rows(N: int, C: int, W: int, K: int) -> list:
    """Roofline rows of the CUDA C++ kernels, counted as their headers state (P = N² pairs)."""
    pdcr_found, supcon_found = _nvcc_kernels("pdcr_kernels.cu"), _nvcc_kernels("supcon_kernels.cu")
    P, e = float(N) * N, 4
    pair_epilogue = W * (3 * K + 20)
    rows = []
    for prec in ("ieee", "tf32", "bf16"):
        p = CUDA_PREC[prec]
        for mode in ("fwd", "bwd", "intra bwd"):
            if mode == "fwd":
                dots, epi, exps = 2 * P * C, P * pair_epilogue, P * W
                nbytes = 2 * N * (C + W * K) * e + N * (1 + W) * e
                found = _cuda(pdcr_found, rf"pdcr_forward_kernelIfLi{p}EE", C, prec, False)
            else:  # two sweeps of dots + G·f each, or the one intra sweep with both roles' epilogues
                sweeps = 2 if mode == "bwd" else 1
                dots, epi, exps = 4 * P * C * sweeps, 2 * P * pair_epilogue, 2 * P * W
                nbytes = 2 * N * (C + W * K) * e + 2 * N * (1 + W) * e + (2 if mode == "bwd" else 1) * N * C * e
                sweep = CUDA_SWEEP[mode][0]
                found = _cuda(pdcr_found, rf"pdcr_backward_kernelIfLi{sweep}ELi{p}EE", C, prec, True)
            rows.append(("pdcr (CUDA C++)", mode, prec, f"N={N}, C={C}, W={W}, K={K}", dots, epi, exps, nbytes, found))
        for backward in (False, True):
            dots, exps = (4 if backward else 2) * P * C, (2 if backward else 1) * P
            nbytes = N * (C * e + 1 + e) + (N * (C * e + e) if backward else 0)
            kernel = "cos_lse_bwd_kernel" if backward else "cos_lse_fwd_kernel"
            found = _cuda(supcon_found, rf"{kernel}IfLi{p}EE", C, prec, backward)
            rows.append(("soft SupCon cos_lse (CUDA C++)", "bwd" if backward else "fwd", prec, f"N={N}, C={C}",
                         dots, 3.0 * exps, exps, nbytes, found))
    return rows


def main(argv=None) -> int:
    import argparse

    import torch

    from kernels import pdcr, supcon

    parser = argparse.ArgumentParser(description="Estimated GPU roofline (not a measurement)")
    parser.add_argument("--probe", type=pathlib.Path, default=None,
                        help="read the sm_90 compiles from this saved output of tests/triton_sm90_probe.py "
                             "(with the pdcr and supcon families) instead of compiling them again")
    args = parser.parse_args(argv)
    compiled = json.loads(args.probe.read_text())["compiled"] if args.probe else _probe("pdcr,supcon")
    rows = []
    N, C, W, K = 16384, 128, 3, 4
    for prec in ("ieee", "tf32", "bf16"):
        for mode in ("fwd", "bwd", "intra bwd"):
            backward, intra = mode != "fwd", mode == "intra bwd"
            flops, nbytes = pdcr.work(1, N, N, C, W, K, torch.float32, backward=backward, input_precision=prec,
                                      intra=intra)
            tiles, block_c, block_d = pdcr._launch_config(C, torch.float32, prec, True, W, K)
            held, swept, _ = tiles["intra" if intra else ("rows" if backward else "fwd")]
            D = -(-C // block_d)
            dot_flops = ((1 if intra else 2) * (2.0 * D + 2) if backward else 2.0) * N * N * C
            exps = (2 * D if backward else 1) * N * N * W
            kernel = "_pdcr_bwd_rows_kernel" if backward else "_pdcr_fwd_kernel"
            extra = {"INTRA": intra, "BLOCK_D": block_d} if backward else {}
            sizes = dict(N=N, M=N, C=C, TILES=-(-N // held), **({"CHUNKS": D} if backward else {}))
            found = _registers(compiled, kernel, sizes, BLOCK_N=held, BLOCK_M=swept, BLOCK_C=block_c,
                               INPUT_PRECISION=prec, W=W, K_UNROLL=K, **extra)
            rows.append(("pdcr", mode, prec, f"N={N}, C={C}, W={W}, K={K}",
                         dot_flops, flops - dot_flops, exps, nbytes, found))
    N = 16384
    for prec in ("ieee", "tf32", "bf16"):
        for backward in (False, True):
            flops, nbytes = supcon.work(1, N, C, torch.float32, backward=backward, input_precision=prec)
            cfg = supcon._launch_config(N, C, torch.float32, prec, backward=backward)
            exps = (2 if backward else 1) * N * N * (1 if not backward else -(-C // cfg["BLOCK_D"]))
            kernel = "_cos_lse_bwd_kernel" if backward else "_cos_lse_fwd_kernel"
            extra = {"BLOCK_D": cfg["BLOCK_D"]} if backward else {}
            sizes = dict(N=N, C=C, TILES=-(-N // cfg["BLOCK_M"]), **({"CHUNKS": -(-C // cfg["BLOCK_D"])} if backward else {}))
            found = _registers(compiled, kernel, sizes, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
                               BLOCK_C=cfg["BLOCK_C"], INPUT_PRECISION=prec, **extra)
            # the SupCon epilogue: about 3 FP32 operations per exp (shift, select, sum)
            rows.append(("soft SupCon cos_lse", "bwd" if backward else "fwd", prec, f"N={N}, C={C}",
                         flops, 3.0 * exps, exps, nbytes, found))
    missing = [f"{op} {mode} {prec}" for op, mode, prec, *_, found in rows if found is None]
    if missing:  # a row without its ptxas figures would be an estimate of nothing
        raise SystemExit("the probe compiled no launch matching these rows' configuration: " + ", ".join(missing))
    rows += _cuda_rows(16384, C, W, K)
    lines = [
        "## Estimated GPU roofline (H200, not measured)",
        "",
        "An **estimate** from operation counts and sm_90 ptxas register use (benchmarks/roofline.py); no GPU has "
        "run these kernels. Bound = the largest of dot FLOPs / tensor-core (or FP32 for ieee) peak, epilogue FLOPs "
        "/ FP32 peak, exps / SFU rate, bytes / HBM bandwidth. `dot share` = dot time at peak / bound: the most of "
        "the matrix-product peak this schedule could reach. The backward recomputes the similarity "
        "(FlashAttention-2 style), once per output-channel chunk D (Triton). The Triton tf32/bf16 PDCR "
        "kernels hold 64-row tiles in 8 warps (wgmma; one block per SM at these registers) but at whole rows "
        "(C ≤ 128) for the backward at W·(K + 1) > 15 and the intra-layer backward also at W > 2, which take "
        "16-row tiles (mma.sync; 64 rows spilled there); IEEE ones 16-32-row tiles in 4 warps (8 at C > 128). "
        "The SupCon backward sweeps 32 columns per 64-row tile. The model counts operations, not tile shape: what a larger tile buys in operand reuse and "
        "what one block per SM costs in latency hiding only a GPU run shows. The CUDA C++ rows (32×32 tiles "
        "of 128 threads, WMMA for tf32/bf16) count their G·f product as dot FLOPs, as it runs on the tensor "
        "cores too.",
        "",
        "| op | pass | dots | size | dot GFLOP | epilogue GFLOP | exps (G) | MB | regs | warps/SM | bound by | bound ms | dot share |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for op, mode, prec, size, dot_flops, epi_flops, exps, nbytes, found in rows:
        t = {"dots": dot_flops / PEAK[prec], "epilogue": epi_flops / FP32, "exp": exps / EXP_RATE,
             "memory": nbytes / HBM}
        if prec == "ieee":  # FMA dots share the FP32 pipe with the epilogue
            t = {"FP32 (dots + epilogue)": (dot_flops + epi_flops) / FP32, "exp": t["exp"], "memory": t["memory"]}
        bound_by = max(t, key=t.get)
        regs, occ = ("—", "—") if found is None else (found[0], _occupancy(*found))
        lines.append(f"| {op} | {mode} | {prec} | {size} | {dot_flops / 1e9:.0f} | {epi_flops / 1e9:.0f} | "
                     f"{exps / 1e9:.2f} | {nbytes / 1e6:.1f} | {regs} | {occ} | {bound_by} | "
                     f"{t[bound_by] * 1e3:.2f} | {dot_flops / PEAK[prec] / t[bound_by]:.0%} |")
    lines += ["", "Reading: with bf16/tf32 dots the PDCR pair epilogue (W divergences of K classes, W exps per "
              "pair) runs on the FP32 and SFU pipes and bounds the kernel well below the tensor-core peak; "
              "reaching the issue's 30 % of the measured bf16 matrix-product rate therefore depends on how "
              "far the epilogue overlaps the dots, which only a GPU run can show. The target is against the "
              "measured bmm, not the peak: a bmm of the same dots writes the N×N result (512 MB in bf16 at "
              "N = 16,384, ≥ 0.11 ms at HBM bandwidth against 0.07 ms of dots at peak), so it runs below the "
              "peak and the target's dot share is correspondingly lower than 30 %.", ""]
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "roofline.md").write_text("\n".join(lines))
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    (HERE / "results" / "roofline.stamp").write_text(
        f"Estimated {datetime.date.today().isoformat()} at commit {sha or 'unknown'} from the kernels' operation counts "
        "and ptxas register use compiling for sm_90 (no GPU ran).\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
