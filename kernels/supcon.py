"""Triton kernels for the soft SupCon denominator (SPEC §4): row log-sum-exp of cosine logits.

Math: s_ik = inv_tau · f_i·f_k on unit rows f (B, N, C); lse_i = LSE_{k≠i, valid_k} s_ik (−inf when
row i has no such column), online over column tiles (running max with a −inf-safe shift). Backward,
with a_i = g_i where g_i ≠ 0 and lse_i > −inf (else 0) and p_ik = exp(s_ik − lse_i):
grad f_j = inv_tau · Σ_{k≠j} (a_j p_jk [valid_k] + a_k p_kj [valid_j]) f_k. Since s is symmetric
both terms come out of the same row sweep, so each program writes only its own rows: no atomics,
deterministic. Same formulas as csrc/include/affseg/supcon_math.h.

Schedule: C is never held whole. Each s tile is the sum of tl.dots over BLOCK_C-wide channel
chunks, so shared memory and registers are bounded by the tile sizes, not by C. The backward's
output row tile holds only BLOCK_D channels: its grid has one program per (image, row tile,
BLOCK_D chunk) and each program recomputes s over all of C, so D = ⌈C/BLOCK_D⌉ > 1 (C above
BLOCK_D, see _launch_config) repeats the s work D times.

FLOPs (counted by `work`): forward 2·B·N²·C; backward (2·D + 2)·B·N²·C (D recomputations of s,
one w·f product over all D chunks). Memory traffic, compulsory (each tensor once; the re-reads of
f by every row tile come from L2 and are not counted), e = element bytes: forward reads f and
valid and writes lse: B·N·(C·e + 1 + e); backward reads f, valid, grad and lse and writes grad f:
B·N·(2·C·e + 1 + 2·e). Nothing of size N² is stored.

Limits (LIMITS): C ≤ 1024; the kernels take float32 or float64 (float64 dots in float64); the public
op also takes float16 and bfloat16 (bfloat16 on a GPU only), upcast to float32 first (KERNEL_DTYPES).
Offsets are int64, so N·C is unbounded.

Precision (SPEC §8). Both dots (the s chunks, and w·f in the backward) run INPUT_PRECISION
(kernels/_launch.py `dot`): "ieee" (fp32 FMA, no tensor cores), "tf32", or "bf16" (both operand
tiles rounded to bfloat16); tf32 and bf16 run on tensor cores with fp32 accumulation, and the online
LSE and w stay fp32. The public op picks it (affseg._backend.dot_precision): float32 by
torch.get_float32_matmul_precision() ("highest" "ieee", "high" "tf32", "medium" "bf16"), float16
"tf32", bfloat16 "bf16", float64 "ieee". Against the float64 reference, ‖out − ref‖/‖ref‖
(tests/test_triton_precision.py): "ieee" rtol 1e-4 elementwise; "tf32" 1e-3 on the loss, 5e-3 on the
gradients; "bf16" 1e-3 and 2e-2 (measured at most 3e-4 and 4.3e-3 at τ ≥ 0.07, in the interpreter
with operands rounded as tensor cores round them). The interpreter ignores "tf32" and refuses "bf16".
NaN in a row's logits makes its lse NaN (an explicit flag, since tl.max's NaN handling is unspecified).
GPU tile sizes come from compiling every configuration for sm_90 (tests/test_triton_sm90.py):
≤ 227 KB shared memory and no spills at every C ≤ 1024 and dtype, with N and C multiples of 16 and
not, and one tile (TILES = 1) or many (Triton compiles each apart); the backward sweeps column tiles half as wide as its 64-row
tiles (_launch_config). No GPU run has been made yet.
Must match ``affseg.reference.soft_supcon_loss`` through ``affseg.soft_supcon_loss``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import INPUT_PRECISIONS  # noqa: F401  (the modes the launchers take; tests read it here)
from ._launch import check_grid, device_of, dot, input_precision_for, on_gpu, scalar, tile_dots

# What the public op takes; float16/bfloat16 reach the kernels upcast to float32 (KERNEL_DTYPES),
# with the dot precision of their own dtype. bfloat16 stays off the interpreter (affseg._backend).
KERNEL_DTYPES = (torch.float32, torch.float64)
LIMITS = {"channels": 1024, "dtypes": (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


@triton.jit
def _logits(base, rows, cols, r_mask, k_mask, C, inv_tau,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
            INPUT_PRECISION: tl.constexpr):
    """s = inv_tau · f[rows] · f[cols]ᵀ, a [BLOCK_M, BLOCK_N] tile summed over BLOCK_C chunks of C."""
    return tile_dots(base, rows, r_mask, base, cols, k_mask, C, BLOCK_C, INPUT_PRECISION) * inv_tau


@triton.jit
def _cos_lse_fwd_kernel(f_ptr, valid_ptr, lse_ptr, N, C, inv_tau_ptr, TILES,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                        INPUT_PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    b = (pid // TILES).to(tl.int64)
    rows = (pid % TILES) * BLOCK_M + tl.arange(0, BLOCK_M)
    r_mask = rows < N
    base = f_ptr + b * N * C
    inv_tau = tl.load(inv_tau_ptr)
    dtype = f_ptr.dtype.element_ty
    m = tl.full([BLOCK_M], float("-inf"), dtype=dtype)
    s_sum = tl.zeros([BLOCK_M], dtype=dtype)
    nan = tl.zeros([BLOCK_M], dtype=tl.int32)
    for k0 in range(0, N, BLOCK_N):
        cols = k0 + tl.arange(0, BLOCK_N)
        k_mask = cols < N
        vk = tl.load(valid_ptr + b * N + cols, mask=k_mask, other=0) != 0
        s = _logits(base, rows, cols, r_mask, k_mask, C, inv_tau, BLOCK_M, BLOCK_N, BLOCK_C, INPUT_PRECISION)
        keep = vk[None, :] & (rows[:, None] != cols[None, :])
        s = tl.where(keep, s, float("-inf"))
        nan = tl.maximum(nan, tl.max((s != s).to(tl.int32), axis=1))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        s_sum = s_sum * tl.exp(m - shift) + tl.sum(tl.exp(s - shift[:, None]), axis=1)
        m = m_new
    lse = tl.where(m == float("-inf"), m, m + tl.log(s_sum))
    lse = tl.where(nan > 0, float("nan"), lse)
    tl.store(lse_ptr + b * N + rows, lse, mask=r_mask)


@triton.jit
def _live_grad(grad_ptr, lse_ptr, offs, mask):
    """(live, g, lse): rows with g ≠ 0 and lse > −inf take part. The caller masks the 2-D terms with
    live instead of zeroing g and lse here: 1-D selects next to fp64 dots hit a Triton layout bug
    (sm_90: "'arith.select' op expected condition type to have the same shape")."""
    g = tl.load(grad_ptr + offs, mask=mask, other=0.0)
    lse = tl.load(lse_ptr + offs, mask=mask, other=0.0)
    return (g != 0.0) & (lse != float("-inf")), g, lse


@triton.jit
def _cos_lse_bwd_kernel(f_ptr, valid_ptr, grad_ptr, lse_ptr, out_ptr, N, C, inv_tau_ptr, TILES, CHUNKS,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                        BLOCK_D: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    ds = (pid % CHUNKS) * BLOCK_D + tl.arange(0, BLOCK_D)
    rest = pid // CHUNKS
    b = (rest // TILES).to(tl.int64)
    rows = (rest % TILES) * BLOCK_M + tl.arange(0, BLOCK_M)
    r_mask = rows < N
    d_mask = ds < C
    base = f_ptr + b * N * C
    inv_tau = tl.load(inv_tau_ptr)
    v_j = tl.load(valid_ptr + b * N + rows, mask=r_mask, other=0) != 0
    live_j, a_j, l_j = _live_grad(grad_ptr, lse_ptr, b * N + rows, r_mask)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=f_ptr.dtype.element_ty)
    for k0 in range(0, N, BLOCK_N):
        cols = k0 + tl.arange(0, BLOCK_N)
        k_mask = cols < N
        v_k = tl.load(valid_ptr + b * N + cols, mask=k_mask, other=0) != 0
        live_k, a_k, l_k = _live_grad(grad_ptr, lse_ptr, b * N + cols, k_mask)
        s = _logits(base, rows, cols, r_mask, k_mask, C, inv_tau, BLOCK_M, BLOCK_N, BLOCK_C, INPUT_PRECISION)
        forward = tl.where(v_k[None, :] & live_j[:, None], a_j[:, None] * tl.exp(s - l_j[:, None]), 0.0)
        transposed = tl.where(v_j[:, None] & live_k[None, :], a_k[None, :] * tl.exp(s - l_k[None, :]), 0.0)
        off_diag = (rows[:, None] != cols[None, :]) & k_mask[None, :]
        w = tl.where(off_diag, forward + transposed, 0.0)
        kd = tl.load(base + cols[:, None].to(tl.int64) * C + ds[None, :],
                     mask=k_mask[:, None] & d_mask[None, :], other=0.0)
        acc = dot(w, kd, acc, INPUT_PRECISION)
    tl.store(out_ptr + b * N * C + rows[:, None].to(tl.int64) * C + ds[None, :], acc * inv_tau,
             mask=r_mask[:, None] & d_mask[None, :])


def _launch_config(N: int, C: int, dtype: torch.dtype, input_precision: str = "ieee", gpu: bool = True,
                   backward: bool = False) -> dict:
    """Tile sizes and launch options for one call (of the backward kernel with backward=True).

    GPU: chosen by compiling for sm_90 (tests/test_triton_sm90.py checks every C ≤ 1024 and dtype,
    with N and C multiples of 16 and not): the channel chunk BLOCK_C bounds the operand buffers
    (shared memory), BLOCK_D the backward's accumulator (registers). Interpreter: large tiles (its
    cost is per tile step), still chunked below C = 1024 so that the chunk loops run in the CPU tests."""
    pow2 = max(16, triton.next_power_of_2(C))
    block = 32 if N <= 32 else 64
    warps = 4 if block == 32 else 8  # 8 warps on a 32-row tile replicate it and cap registers at 64
    if not gpu:
        return dict(BLOCK_M=block, BLOCK_N=block, BLOCK_C=min(pow2, 512), BLOCK_D=min(pow2, 256),
                    num_warps=4, num_stages=1)
    if dtype == torch.float64:  # the backward's 32 x 32 spilled 8 B at C ≤ 64 with N no multiple of 16
        return dict(BLOCK_M=32, BLOCK_N=16 if backward else 32, BLOCK_C=min(pow2, 32), BLOCK_D=min(pow2, 64),
                    num_warps=4, num_stages=2)
    # The backward holds a BLOCK_M x BLOCK_D accumulator next to the s tile: with square tiles it
    # spilled 4-96 B once N or C was no multiple of 16 (ptxas -v, sm_90: ieee 64 x 64, tf32/bf16
    # 64 x 64 at BLOCK_D 64 and 128); sweeping half as many columns was clean at every C in every
    # variant. At N ≤ 32 (one tile, which Triton compiles with TILES = 1 folded in) the 32-row tiles
    # spilled 4-44 B in both kernels at the channel chunks of the 64-row ones (ieee 32, tf32/bf16 64)
    # and the backward's BLOCK_D 64; half those chunks and BLOCK_D = 32 were clean.
    small = block == 32
    if input_precision == "ieee":  # FMA dots: both operands pass through registers; tf32 and bf16 below
        cfg = dict(BLOCK_M=block, BLOCK_N=block, BLOCK_C=min(pow2, 16 if small else 32), BLOCK_D=min(pow2, 64),
                   num_warps=warps, num_stages=2)
        if backward:
            cfg.update(BLOCK_N=block // 2, BLOCK_D=min(pow2, 32 if small else 64))
        return cfg
    cfg = dict(BLOCK_M=block, BLOCK_N=block, BLOCK_C=min(pow2, 32 if small else 64), BLOCK_D=min(pow2, 128),
               num_warps=warps, num_stages=2 if small else 3)  # 3 stages at 32 rows: ptxas spills
    if backward and small:
        cfg["BLOCK_D"] = min(pow2, 32)
    elif backward:
        cfg.update(BLOCK_N=32, num_stages=2)
    return cfg


def _mask(valid, f):
    """valid as f's dtype: Triton sizes an mma operand's register layout by the narrowest type loaded
    on its way (computeOrigBitWidth), and a uint8 mask gives fp64 dots a kWidth they cannot lower
    (sm_90: "fp64 don't support largeK MMA"). B·N elements, next to B·N·C features."""
    return valid.contiguous().to(f.dtype)


def _setup(f, inv_tau, input_precision, backward=False):
    B, N, C = f.shape
    if C > LIMITS["channels"] or f.dtype not in KERNEL_DTYPES:
        raise ValueError(f"the Triton cos_lse kernels take C <= {LIMITS['channels']} channels of "
                         f"{KERNEL_DTYPES}, got C={C} of {f.dtype}")
    input_precision = input_precision_for("the Triton cos_lse kernels", input_precision, f)
    cfg = _launch_config(N, C, f.dtype, input_precision, on_gpu(f), backward)
    cfg["INPUT_PRECISION"] = input_precision
    return B, N, C, cfg, scalar(inv_tau, f)


def cos_lse_fwd(f: torch.Tensor, valid: torch.Tensor, inv_tau: float, input_precision: str = "ieee") -> torch.Tensor:
    """lse (B, N) for unit rows f (B, N, C) float32/float64 and valid (B, N) bool."""
    f = f.contiguous()
    B, N, C, cfg, inv_tau_t = _setup(f, inv_tau, input_precision)
    lse = torch.empty(B, N, dtype=f.dtype, device=f.device)
    if lse.numel() == 0:
        return lse
    cfg.pop("BLOCK_D")
    tiles = triton.cdiv(N, cfg["BLOCK_M"])
    with device_of(f):
        _cos_lse_fwd_kernel[(check_grid("cos_lse_fwd", B * tiles),)](
            f, _mask(valid, f), lse, N, C, inv_tau_t, tiles, **cfg)
    return lse


def cos_lse_bwd(grad_lse: torch.Tensor, f: torch.Tensor, valid: torch.Tensor, lse: torch.Tensor, inv_tau: float,
                input_precision: str = "ieee") -> torch.Tensor:
    """grad f (B, N, C) of Σ_i grad_lse_i · lse_i, recomputing the logits tile by tile."""
    f = f.contiguous()
    B, N, C, cfg, inv_tau_t = _setup(f, inv_tau, input_precision, backward=True)
    out = torch.empty_like(f)
    if out.numel() == 0:
        return out.zero_()
    tiles = triton.cdiv(N, cfg["BLOCK_M"])
    chunks = triton.cdiv(C, cfg["BLOCK_D"])
    with device_of(f):
        _cos_lse_bwd_kernel[(check_grid("cos_lse_bwd", B * tiles * chunks),)](
            f, _mask(valid, f), grad_lse.to(f.dtype).contiguous(), lse.contiguous(), out,
            N, C, inv_tau_t, tiles, chunks, **cfg)
    return out


def work(B: int, N: int, C: int, dtype: torch.dtype, backward: bool = False,
         input_precision: str = "ieee") -> tuple[float, float]:
    """(FLOPs, bytes) of one cos_lse_fwd (or cos_lse_bwd) call, counted as in this file's header."""
    e = torch.empty((), dtype=dtype).element_size()
    if not backward:
        return 2.0 * B * N * N * C, float(B * N * (C * e + 1 + e))
    D = triton.cdiv(C, _launch_config(N, C, dtype, input_precision, gpu=True, backward=True)["BLOCK_D"])
    return (2.0 * D + 2.0) * B * N * N * C, float(B * N * (2 * C * e + 1 + 2 * e))
