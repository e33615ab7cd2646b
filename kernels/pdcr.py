"""Fused PDCR contrastive term (SPEC §3): forward and backward Triton kernels.

Math. Rows i come from unit vectors fa (B, N, C) with label ratios phia (B, W, N, K) and mask
valid_a (B, N); columns j from fb (B, M, C), phib (B, W, M, K), valid_b (B, M). Over the valid
columns of a valid row (j != i when EXCLUDE_SELF), n_i of them:

    ŝ_ij = (fa_i · fb_j − 1) · inv_tau
    d^w_ij = ½ Σ_k |phia[w,i,k] − phib[w,j,k]|   (tv)   or   Σ_{k≥1} |…|   (fg_l1),  a = 1 − d
    (w⁺, w⁻) = (a, d)  ("paper")   or   (d, a)  (SWAPPED)
    lse_iw = LSE_j ŝ_ij w⁻_ij,   pos_iw = Σ_j ŝ_ij w⁺_ij
    row_i  = (1/W) Σ_w (lse_iw − pos_iw / n_i)          (0 at invalid rows and where n_i = 0)

Backward, with g_i the incoming row gradient:

    G_ij = g_i · inv_tau / W · Σ_w (exp(ŝ_ij w⁻_ij − lse_iw) · w⁻_ij − w⁺_ij / n_i)
    grad_fa_i = Σ_j G_ij fb_j,   grad_fb_j = Σ_i G_ij fa_i

Schedule (flash-attention style). Forward: one program per (row tile, batch) sweeps the column
tiles; one similarity tile serves every window: per window the divergence tile is built from the
K classes (unrolled up to K_UNROLL_MAX: one column-vector load of φ per class and column tile; the
row tile's φ is loop-invariant and hoisted out of the sweep by the compiler, held in registers:
tests/test_triton_sm90.py checks that no held-length vector is loaded inside a loop), and a running
max / running sum / positive sum per (row, window) lives in registers as [BLOCK_N, W_PAD] tensors. Up to C = 128 the
row tile's features stay in registers and ŝ is one tl.dot (ONE_CHUNK); above, ŝ is summed over
BLOCK_C-wide channel chunks (kernels/_launch.py `tile_dots`), so shared memory and registers are
bounded by the tiles, not by C. Backward recomputes the tiles from the saved row_lse, as
FlashAttention-2 does, with no atomics (deterministic): `_pdcr_bwd_rows_kernel` (row tiles, sweeps
columns) writes grad_fa with tl.dot(G, fb); `_pdcr_bwd_cols_kernel` (column tiles, sweeps rows)
builds Gᵀ and writes grad_fb with tl.dot(Gᵀ, fa). Intra-layer (`pdcr_intra_bwd`, one feature set as
rows and columns) runs only the rows kernel with INTRA: ŝ and d are symmetric, so each tile also
gives every column's own row term, and G plus those terms times f is the gradient in both roles,
from half the similarity work. Each backward program owns BLOCK_D output
channels (grid: batch × tiles × D, D = ⌈C/BLOCK_D⌉), so for C above BLOCK_D the similarity and G are
recomputed D times: registers stay bounded at C = 1024 at that price. Nothing of size N×M is stored.

Work (counted by `work`; e = element bytes). FLOPs: forward 2·B·N·M·C (dot) + B·N·M·W·(3K + 8);
backward 2·(2D + 2)·B·N·M·C (each of its two kernels recomputes ŝ D times and does one G·f product)
+ 2·D·B·N·M·W·(3K + 10); intra-layer backward (2D + 2)·B·N²·C + 2·D·B·N²·W·(3K + 10). Exps: B·N·M·W forward, 2·D·B·N·M·W backward. Bytes, compulsory (each
tensor once; re-reads of column tiles by every row tile come from L2 and are not counted): forward
reads fa, fb, φa, φb, n and the masks, B·((N + M)·(C + W·K) + N)·e + B·(N + M), and writes
B·N·(1 + W)·e; backward reads the same plus g and row_lse, B·N·(1 + W)·e, and writes B·(N + M)·C·e.

Limits (LIMITS): fa/fb/phia/phib contiguous and of one dtype: float32 (accumulates in float32) or
float64 (accumulates in float64); the public op also takes float16 and bfloat16 (bfloat16 on a GPU
only), upcast to float32 before the launch (KERNEL_DTYPES). C ≤ 1024 (chunked above 128; larger C
only costs more backward recomputation, the bound is what the sm_90 compile test covers). W ≤ 4 is
unrolled at compile time (one compilation per W and options). K ≤ 8 is unrolled too; larger K
runs a run-time class loop (unbounded, one compilation for all K), in the interpreter only for now:
GPU_LIMITS keeps K ≤ 8, since the loop form spilled 8-24 B in the sm_90 backward.
Offsets within one image are int32 except in the channel chunks: N·C, M·C < 2^31.

Precision (SPEC §8). Every dot (ŝ, and G·f in the backward) runs INPUT_PRECISION (kernels/_launch.py
`dot`): "ieee" (fp32 FMA, no tensor cores), "tf32", or "bf16" (both operand tiles rounded to
bfloat16); tf32 and bf16 run on tensor cores with fp32 accumulation, and all math after a dot
(divergences, online LSE, G) stays fp32. The public op picks it (affseg._backend.dot_precision):
float32 by torch.get_float32_matmul_precision() ("highest" "ieee", "high" "tf32", "medium" "bf16"),
float16 "tf32" (exact for fp16 operands; fp32's exponent keeps G's small entries), bfloat16 "bf16",
float64 "ieee" (DMMA). Against the float64 reference, ‖out − ref‖/‖ref‖
(tests/test_triton_precision.py): "ieee" rtol 1e-4 elementwise; "tf32" 1e-3 on the loss, 5e-3 on
the gradients; "bf16" 1e-3 and 2e-2 (G's rows nearly cancel in G·f, so the gradients carry its
rounding: 1.3e-2 at C = 5, τ = 0.1, under 5e-3 from C = 33), measured in the interpreter with
operands rounded as tensor cores round them.
The interpreter ignores "tf32" and refuses "bf16" (it computes bfloat16 wrongly). The masks travel
as the feature dtype so that Triton can lower the fp64 dots (see _mask).
GPU tile sizes (_launch_config) come from compiling every configuration for sm_90 with `ptxas -v`
(tests/test_triton_sm90.py: ≤ 227 KB shared memory, no spills): tf32/bf16 hold 64-row tiles
(one warpgroup's wgmma M) in 8 warps, sweeping 32 columns forward and 16 backward; the backward
drops to 16-row tiles at whole rows when W·(K + 1) > 15, and the intra-layer backward when W > 2
(they spill there); IEEE fp32 (FMA) keeps 16-32-row tiles. Triton specialises integer arguments
equal to 1 (constexprs) and divisible by 16, and ptxas allots registers to the variants
differently: the probe compiles every launch as Triton would and again without the divisibility
mark (N, M, C multiples of 16 and not), with C = 120 for padded whole rows.
No GPU run has been made yet. Reference: affseg.reference.pdcr_loss_from_ratios.
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
LIMITS = {"channels": 1024, "windows": 4,
          "dtypes": (torch.float16, torch.bfloat16, torch.float32, torch.float64)}
# Class counts up to this are unrolled in the kernels; above, a run-time loop (_divergence).
K_UNROLL_MAX = 8
# On a GPU float64 goes to the CUDA C++ kernel: every sm_90 fp64 tile here spills (68-208 B at
# 16x16 tiles, 4 or 8 warps); float64 stays available in the interpreter for the parity tests.
# K above K_UNROLL_MAX (the run-time class loop) stays off the GPU too: at sm_90 its backward spills
# 8-24 B in some tile configurations (tests/triton_sm90_probe.py), so such calls go to CUDA C++.
GPU_LIMITS = {**LIMITS, "classes": 8, "dtypes": (torch.float16, torch.bfloat16, torch.float32)}


@triton.jit
def _abs_diff(pa_ptr, pb_ptr, offs_a, offs_b, mask_a, mask_b, k, K):
    xa = tl.load(pa_ptr + offs_a * K + k, mask=mask_a, other=0.0)
    xb = tl.load(pb_ptr + offs_b * K + k, mask=mask_b, other=0.0)
    return tl.abs(xa[:, None] - xb[None, :])


@triton.jit
def _divergence(pa_ptr, pb_ptr, offs_a, offs_b, mask_a, mask_b, K, K_UNROLL: tl.constexpr,
                FG_L1: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    """d[a, b] between rows offs_a of pa and rows offs_b of pb (both (·, K), row stride K).
    K_UNROLL = K (≤ 8): the class sum is unrolled at compile time; K_UNROLL = 0: a run-time loop,
    for any K (one compilation for all of them; the unrolled form keeps the small-K kernels'
    register allocation, which the loop spills in the tf32/bf16 backward at sm_90)."""
    d = tl.zeros([BLOCK_A, BLOCK_B], dtype=pa_ptr.dtype.element_ty)
    if K_UNROLL > 0:
        for k in tl.static_range(K_UNROLL):
            if (not FG_L1) or k > 0:  # fg_l1 skips the background class 0
                d += _abs_diff(pa_ptr, pb_ptr, offs_a, offs_b, mask_a, mask_b, k, K_UNROLL)
    else:
        # four classes per trip (masked past K): a fourth of the loop's trips and its carried state
        for k0 in range(1 if FG_L1 else 0, K, 4):
            for kk in tl.static_range(4):
                k = k0 + kk
                d += _abs_diff(pa_ptr, pb_ptr, offs_a, offs_b, mask_a & (k < K), mask_b & (k < K), k, K)
    if not FG_L1:
        d = d * 0.5
    return d


@triton.jit
def _load_features(ptr, offs, mask, C, BLOCK_C: tl.constexpr):
    """A [len(offs), BLOCK_C] tile of a (·, C) feature matrix, zero past C and at masked rows."""
    offs_c = tl.arange(0, BLOCK_C)
    return tl.load(ptr + offs[:, None] * C + offs_c[None, :], mask=mask[:, None] & (offs_c[None, :] < C), other=0.0)


@triton.jit
def _scaled_similarity(x, y, x_ptr, y_ptr, x_rows, y_rows, x_in, y_in, C, inv_tau,
                       BLOCK_C: tl.constexpr, ONE_CHUNK: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """ŝ = (x · yᵀ − 1) · inv_tau for unit rows x_rows of x_ptr and y_rows of y_ptr (both (·, C)).
    ONE_CHUNK: the caller holds the whole rows as tiles x [A, BLOCK_C], y [B, BLOCK_C]; otherwise
    the dot is summed over BLOCK_C-wide channel chunks loaded here (x and y are unused)."""
    if ONE_CHUNK:
        zero = tl.zeros([x.shape[0], y.shape[0]], dtype=x.dtype)
        s = dot(x, tl.trans(y), zero, INPUT_PRECISION)
    else:
        s = tile_dots(x_ptr, x_rows, x_in, y_ptr, y_rows, y_in, C, BLOCK_C, INPUT_PRECISION)
    return (s - 1.0) * inv_tau


@triton.jit
def _pdcr_fwd_kernel(
    fa_ptr, pa_ptr, fb_ptr, pb_ptr, va_ptr, vb_ptr, n_ptr, loss_ptr, lse_ptr,
    N, M, C, K, inv_tau_ptr, TILES,
    W: tl.constexpr, W_PAD: tl.constexpr, K_UNROLL: tl.constexpr,
    SWAPPED: tl.constexpr, FG_L1: tl.constexpr, EXCLUDE_SELF: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, ONE_CHUNK: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0) % TILES
    b = (tl.program_id(0) // TILES).to(tl.int64)
    inv_tau = tl.load(inv_tau_ptr)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_in = rows < N
    dtype = fa_ptr.dtype.element_ty
    fa_b = fa_ptr + b * N * C
    fb_b = fb_ptr + b * M * C
    row_ok = row_in & (tl.load(va_ptr + b * N + rows, mask=row_in, other=0) != 0)

    fa = _load_features(fa_b, rows, row_in, C, BLOCK_C) if ONE_CHUNK else 0.0
    wid = tl.arange(0, W_PAD)[None, :]
    run_max = tl.full([BLOCK_N, W_PAD], float("-inf"), dtype)
    run_sum = tl.zeros([BLOCK_N, W_PAD], dtype)
    pos = tl.zeros([BLOCK_N, W_PAD], dtype)
    for start in range(0, M, BLOCK_M):
        cols = start + tl.arange(0, BLOCK_M)
        col_in = cols < M
        col_ok = col_in & (tl.load(vb_ptr + b * M + cols, mask=col_in, other=0) != 0)
        fb = _load_features(fb_b, cols, col_in, C, BLOCK_C) if ONE_CHUNK else 0.0
        s = _scaled_similarity(fa, fb, fa_b, fb_b, rows, cols, row_in, col_in, C, inv_tau,
                               BLOCK_C, ONE_CHUNK, INPUT_PRECISION)
        pair = row_ok[:, None] & col_ok[None, :]
        if EXCLUDE_SELF:
            pair = pair & (rows[:, None] != cols[None, :])
        for w in tl.static_range(W):
            d = _divergence(pa_ptr + (b * W + w) * N * K, pb_ptr + (b * W + w) * M * K,
                            rows, cols, row_in, col_in, K, K_UNROLL, FG_L1, BLOCK_N, BLOCK_M)
            if SWAPPED:
                w_pos = d
                w_neg = 1.0 - d
            else:
                w_pos = 1.0 - d
                w_neg = d
            x = tl.where(pair, s * w_neg, float("-inf"))
            sel = wid == w
            m_old = tl.sum(tl.where(sel, run_max, 0.0), axis=1)
            l_old = tl.sum(tl.where(sel, run_sum, 0.0), axis=1)
            p_old = tl.sum(tl.where(sel, pos, 0.0), axis=1)
            m_new = tl.maximum(m_old, tl.max(x, axis=1))
            # a row whose columns are all masked so far keeps max -inf: shift by 0 instead (no inf - inf)
            shift = tl.where(m_new == float("-inf"), 0.0, m_new)
            l_new = l_old * tl.exp(m_old - shift) + tl.sum(tl.exp(x - shift[:, None]), axis=1)
            p_new = p_old + tl.sum(tl.where(pair, s * w_pos, 0.0), axis=1)
            run_max = tl.where(sel, m_new[:, None], run_max)
            run_sum = tl.where(sel, l_new[:, None], run_sum)
            pos = tl.where(sel, p_new[:, None], pos)

    n = tl.load(n_ptr + b * N + rows, mask=row_in, other=0.0)
    # -inf for rows without a valid column (log of a masked 1, not of 0: no warning, NaN kept)
    empty = run_sum == 0.0
    lse = tl.where(empty, float("-inf"), run_max + tl.log(tl.where(empty, 1.0, run_sum)))
    per_window = tl.where(wid < W, lse - pos / tl.maximum(n, 1.0)[:, None], 0.0)
    loss = tl.sum(per_window, axis=1) / W
    loss = tl.where(row_ok & (n > 0), loss, 0.0)
    tl.store(loss_ptr + b * N + rows, loss, mask=row_in)
    tl.store(lse_ptr + (b * N + rows[:, None]) * W + wid, lse, mask=row_in[:, None] & (wid < W))


@triton.jit
def _pair_grad(s, d, lse, scale_row, n_row, pair, SWAPPED: tl.constexpr):
    """One window's term of G: (exp(ŝ w⁻ − lse) w⁻ − w⁺/n) · scale on valid pairs, else 0."""
    if SWAPPED:
        w_pos = d
        w_neg = 1.0 - d
    else:
        w_pos = 1.0 - d
        w_neg = d
    # masked before exp: an excluded self pair would give exp(0 − lse) = inf for a sharp row
    p = tl.exp(tl.where(pair, s * w_neg - lse, float("-inf")))
    return tl.where(pair, (p * w_neg - w_pos / n_row) * scale_row, 0.0)


@triton.jit
def _operand_tiles(ptr, items, in_mask, ds, d_in, C, BLOCK_C: tl.constexpr, ONE_CHUNK: tl.constexpr):
    """(similarity operand, product operand) of the swept items of a backward kernel. ONE_CHUNK
    (BLOCK_D = BLOCK_C ≥ C): one whole-row tile serves both; otherwise the similarity loads its own
    channel chunks (0.0 here) and the product takes the items' BLOCK_D channels ds."""
    if ONE_CHUNK:
        x = _load_features(ptr, items, in_mask, C, BLOCK_C)
        x_d = x
    else:
        x = 0.0
        x_d = tl.load(ptr + items[:, None].to(tl.int64) * C + ds[None, :], mask=in_mask[:, None] & d_in[None, :],
                      other=0.0)
    return x, x_d


@triton.jit
def _chunk_program(TILES, CHUNKS, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    """(batch, the program's BLOCK items, its BLOCK_D output channels) of a (batch, tile, chunk) grid."""
    pid = tl.program_id(0)
    ds = (pid % CHUNKS) * BLOCK_D + tl.arange(0, BLOCK_D)
    rest = pid // CHUNKS
    return (rest // TILES).to(tl.int64), (rest % TILES) * BLOCK + tl.arange(0, BLOCK), ds


@triton.jit
def _pdcr_bwd_rows_kernel(
    g_ptr, fa_ptr, pa_ptr, fb_ptr, pb_ptr, va_ptr, vb_ptr, n_ptr, lse_ptr, grad_ptr,
    N, M, C, K, inv_tau_ptr, TILES, CHUNKS,
    W: tl.constexpr, K_UNROLL: tl.constexpr,
    SWAPPED: tl.constexpr, FG_L1: tl.constexpr, EXCLUDE_SELF: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
    ONE_CHUNK: tl.constexpr, INPUT_PRECISION: tl.constexpr, INTRA: tl.constexpr,
):
    """grad_fa[rows, ds] for one (row tile, channel chunk): Σ over column tiles of tl.dot(G, fb[:, ds]).
    INTRA (fb = fa, φb = φa, valid_b = valid_a): ŝ and d are symmetric, so the tile also gives each
    column's own row term G_ji, and G + Gᵀ-terms times fb is the gradient of f in both roles: one
    kernel, no column sweep."""
    b, rows, ds = _chunk_program(TILES, CHUNKS, BLOCK_N, BLOCK_D)
    inv_tau = tl.load(inv_tau_ptr)
    row_in = rows < N
    d_in = ds < C
    fa_b = fa_ptr + b * N * C
    fb_b = fb_ptr + b * M * C
    n = tl.load(n_ptr + b * N + rows, mask=row_in, other=0.0)
    row_valid = row_in & (tl.load(va_ptr + b * N + rows, mask=row_in, other=0) != 0)
    row_ok = row_valid & (n > 0)
    g = tl.load(g_ptr + b * N + rows, mask=row_in, other=0.0)
    scale = (g * (inv_tau / W))[:, None]
    n = tl.maximum(n, 1.0)[:, None]
    fa = _load_features(fa_b, rows, row_in, C, BLOCK_C) if ONE_CHUNK else 0.0
    acc = tl.zeros([BLOCK_N, BLOCK_D], fa_ptr.dtype.element_ty)
    for start in range(0, M, BLOCK_M):
        cols = start + tl.arange(0, BLOCK_M)
        col_in = cols < M
        col_ok = col_in & (tl.load(vb_ptr + b * M + cols, mask=col_in, other=0) != 0)
        fb, fb_d = _operand_tiles(fb_b, cols, col_in, ds, d_in, C, BLOCK_C, ONE_CHUNK)
        s = _scaled_similarity(fa, fb, fa_b, fb_b, rows, cols, row_in, col_in, C, inv_tau,
                               BLOCK_C, ONE_CHUNK, INPUT_PRECISION)
        pair = row_ok[:, None] & col_ok[None, :]
        if EXCLUDE_SELF:
            pair = pair & (rows[:, None] != cols[None, :])
        if INTRA:  # each column j as a row of its own: its statistics, and the rows as its columns
            n_t = tl.load(n_ptr + b * N + cols, mask=col_in, other=0.0)
            col_row_ok = col_ok & (n_t > 0)
            scale_t = (tl.load(g_ptr + b * N + cols, mask=col_in, other=0.0) * (inv_tau / W))[None, :]
            n_t = tl.maximum(n_t, 1.0)[None, :]
            pair_t = row_valid[:, None] & col_row_ok[None, :]
            if EXCLUDE_SELF:
                pair_t = pair_t & (rows[:, None] != cols[None, :])
        G = tl.zeros([BLOCK_N, BLOCK_M], fa_ptr.dtype.element_ty)
        for w in tl.static_range(W):
            d = _divergence(pa_ptr + (b * W + w) * N * K, pb_ptr + (b * W + w) * M * K,
                            rows, cols, row_in, col_in, K, K_UNROLL, FG_L1, BLOCK_N, BLOCK_M)
            lse = tl.load(lse_ptr + (b * N + rows) * W + w, mask=row_ok, other=0.0)
            G += _pair_grad(s, d, lse[:, None], scale, n, pair, SWAPPED)
            if INTRA:
                lse_t = tl.load(lse_ptr + (b * N + cols) * W + w, mask=col_row_ok, other=0.0)
                G += _pair_grad(s, d, lse_t[None, :], scale_t, n_t, pair_t, SWAPPED)
        acc = dot(G, fb_d, acc, INPUT_PRECISION)
    tl.store(grad_ptr + (b * N + rows[:, None]) * C + ds[None, :], acc, mask=row_in[:, None] & d_in[None, :])


@triton.jit
def _pdcr_bwd_cols_kernel(
    g_ptr, fa_ptr, pa_ptr, fb_ptr, pb_ptr, va_ptr, vb_ptr, n_ptr, lse_ptr, grad_ptr,
    N, M, C, K, inv_tau_ptr, TILES, CHUNKS,
    W: tl.constexpr, K_UNROLL: tl.constexpr,
    SWAPPED: tl.constexpr, FG_L1: tl.constexpr, EXCLUDE_SELF: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
    ONE_CHUNK: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    """grad_fb[cols, ds] for one (column tile, channel chunk): Σ over row tiles of tl.dot(Gᵀ, fa[:, ds]);
    tiles are [column, row]."""
    b, cols, ds = _chunk_program(TILES, CHUNKS, BLOCK_M, BLOCK_D)
    inv_tau = tl.load(inv_tau_ptr)
    col_in = cols < M
    d_in = ds < C
    col_ok = col_in & (tl.load(vb_ptr + b * M + cols, mask=col_in, other=0) != 0)
    fa_b = fa_ptr + b * N * C
    fb_b = fb_ptr + b * M * C
    fb = _load_features(fb_b, cols, col_in, C, BLOCK_C) if ONE_CHUNK else 0.0
    acc = tl.zeros([BLOCK_M, BLOCK_D], fa_ptr.dtype.element_ty)
    for start in range(0, N, BLOCK_N):
        rows = start + tl.arange(0, BLOCK_N)
        row_in = rows < N
        n = tl.load(n_ptr + b * N + rows, mask=row_in, other=0.0)
        row_ok = row_in & (tl.load(va_ptr + b * N + rows, mask=row_in, other=0) != 0) & (n > 0)
        g = tl.load(g_ptr + b * N + rows, mask=row_in, other=0.0)
        scale = (g * (inv_tau / W))[None, :]
        n = tl.maximum(n, 1.0)[None, :]
        fa, fa_d = _operand_tiles(fa_b, rows, row_in, ds, d_in, C, BLOCK_C, ONE_CHUNK)
        s = _scaled_similarity(fb, fa, fb_b, fa_b, cols, rows, col_in, row_in, C, inv_tau,
                               BLOCK_C, ONE_CHUNK, INPUT_PRECISION)
        pair = col_ok[:, None] & row_ok[None, :]
        if EXCLUDE_SELF:
            pair = pair & (cols[:, None] != rows[None, :])
        G = tl.zeros([BLOCK_M, BLOCK_N], fa_ptr.dtype.element_ty)
        for w in tl.static_range(W):
            # |Δφ| is symmetric, so the [column, row] tile comes from swapping the operands
            d = _divergence(pb_ptr + (b * W + w) * M * K, pa_ptr + (b * W + w) * N * K,
                            cols, rows, col_in, row_in, K, K_UNROLL, FG_L1, BLOCK_M, BLOCK_N)
            lse = tl.load(lse_ptr + (b * N + rows) * W + w, mask=row_ok, other=0.0)
            G += _pair_grad(s, d, lse[None, :], scale, n, pair, SWAPPED)
        acc = dot(G, fa_d, acc, INPUT_PRECISION)
    tl.store(grad_ptr + (b * M + cols[:, None]) * C + ds[None, :], acc, mask=col_in[:, None] & d_in[None, :])


# The kernels by the tile role they give their BLOCK_N, BLOCK_M: "fwd", "rows" and "intra" hold row
# tiles (BLOCK_N) and sweep column tiles (BLOCK_M); "cols" holds column tiles and sweeps rows.
KERNEL_ROLES = ("fwd", "rows", "cols", "intra")
# The tensor-core backward keeps 64-row tiles at whole rows (C ≤ 128) while W · (K + 1), each
# window's class terms (K − 1 with fg_l1) plus its own statistics, is at most this; above, they spill
# and take 16 rows (ptxas -v, sm_90: W = 4, K = 8 spilled 8-800 B in every 64-row shape tried; the
# intra kernel 8-20 B at W = 4, K = 3). Chunked C holds 64 rows at any W, K.
TC_BWD_WINDOW_TERMS = 15
# ...and the intra-layer backward (row and column terms in one kernel) to this many windows: 64 x 16
# was clean at W = 1, K = 8 and W = 2, K = 6, spilled at W = 3, K = 4 and W = 4, K = 2 (N no multiple
# of 16), where 16 x 16 in 4 warps is clean.
TC_INTRA_MAX_WINDOWS = 2


def _launch_config(C, dtype, input_precision="ieee", gpu=True, W=1, K=1, fg_l1=False, block=None, block_c=None,
                   block_d=None):
    """(tiles, BLOCK_C, BLOCK_D) with tiles[role] = (held, swept, num_warps) for each of KERNEL_ROLES.
    Up to C = 128 every kernel holds whole feature rows (BLOCK_C = BLOCK_D = next_pow2(C),
    ONE_CHUNK); above, the similarity is summed over BLOCK_C chunks and the backward writes BLOCK_D
    output channels per program. On a GPU: the largest tiles with no register spills for every
    kernel (ptxas -v at sm_90 over C ≤ 1024, W ≤ 4, K ≤ 8: tests/test_triton_sm90.py); the tf32/bf16
    ones hold 64 rows, a warpgroup's wgmma tile. The interpreter takes 64-row square tiles (its cost
    is per tile step, not per element). ``block`` (an int, or a (held, swept) pair), ``block_c`` and
    ``block_d`` override (tests run the chunk loops and uneven tiles at small C)."""
    pow2 = max(16, triton.next_power_of_2(C))
    whole = pow2 <= 128
    if not gpu:
        tiles = dict.fromkeys(KERNEL_ROLES, (64, 64, 4))
        chunk = (pow2, pow2) if whole else (128, 128)
    elif dtype == torch.float64:  # 32-row fp64 tiles, and 8 warps on 16 rows, spill (ptxas -v, sm_90)
        tiles = dict.fromkeys(KERNEL_ROLES, (16, 16, 4))
        chunk = (pow2, pow2) if whole else (32, 64)
    elif input_precision == "ieee":
        # FMA dots: 32-row tiles spill from C = 64 on, and 64-row ones (any sweep, 8 warps) at C = 128;
        # the intra-layer backward's column terms spill 32-row tiles at C ≤ 32 too. Chunked: every
        # 4-warp (and 2-warp) choice of BLOCK_C, BLOCK_D in {16, 32} spilled 4-16 B in some kernel;
        # 8 warps on 16 x 16 tiles with BLOCK_C = BLOCK_D = 32 spilled 8-16 B once N is no multiple of
        # 16; BLOCK_C = 16 with a 16 x 16 forward and 32 x 16 backward tiles (BLOCK_D = 32) none
        # (ptxas -v, sm_90, both divisibility variants)
        if whole:
            held = 32 if pow2 <= 32 else 16
            tiles = {**dict.fromkeys(KERNEL_ROLES, (held, held, 4)), "intra": (16, 16, 4)}
            chunk = (pow2, pow2)
        else:
            tiles = {"fwd": (16, 16, 8), "rows": (32, 16, 8), "cols": (32, 16, 8), "intra": (32, 16, 8)}
            chunk = (16, 32)
    else:
        # tf32/bf16 (wgmma at sm_90): the forward holds 64 rows and sweeps 32 at every C, W, K; the
        # backward sweeps 16 (64 x 32 spilled 4-48 B in the column and intra kernels), in 8 warps (4
        # spilled at chunked C); chunked, BLOCK_C/BLOCK_D 64/128 spilled 24-48 B, 32/64 none. The
        # intra kernel at whole rows keeps 64 rows only to TC_INTRA_MAX_WINDOWS (at W = 3, K = 4 and
        # W = 4, K = 2 it spilled 4-32 B with N no multiple of 16; no one tile was clean everywhere)
        terms = W * ((K - 1 if fg_l1 else K) + 1)
        rows64 = not whole or terms <= TC_BWD_WINDOW_TERMS
        # the 16-row fallback: 4 warps spilled 4 B in the column kernel at W = 4, K = 8 (N no multiple
        # of 16), 8 warps were clean; the intra kernel's stays at 4 warps, clean there
        bwd = (64, 16, 8) if rows64 else (16, 16, 8)
        intra = (64, 16, 8) if rows64 and (not whole or W <= TC_INTRA_MAX_WINDOWS) else (16, 16, 4)
        tiles = {"fwd": (64, 32, 8), "rows": bwd, "cols": bwd, "intra": intra}
        chunk = (pow2, pow2) if whole else (32, 64)
    if block is not None:
        held, swept = (block, block) if isinstance(block, int) else block
        tiles = {role: (held, swept, warps) for role, (_, _, warps) in tiles.items()}
    block_c = block_c or chunk[0]
    block_d = block_d or (block_c if block_c >= pow2 else chunk[1])
    return tiles, block_c, block_d


def _mask(valid, like):
    """A bool mask as like's dtype: Triton sizes an mma operand's register layout by the narrowest
    type loaded on its way (computeOrigBitWidth); a bool mask in G's chain gives fp64 dots a kWidth
    they cannot lower (sm_90: "fp64 don't support largeK MMA"). With it, G·f is a tl.dot in fp64 too."""
    return valid.contiguous().to(like.dtype)


def _launch_setup(fa, pa, fb, pb, va, vb, inv_tau, swapped, fg_l1, exclude_self, input_precision, block,
                  block_c=None, block_d=None):
    """Sizes, per-row column counts n_i, 1/τ as a tensor, the kernels' compile-time options per
    role of KERNEL_ROLES (BLOCK_N, BLOCK_M and num_warps set from its tiles) and BLOCK_D."""
    B, N, C = fa.shape
    M = fb.shape[1]
    W, K = pa.shape[1], pa.shape[3]
    lim = GPU_LIMITS if on_gpu(fa) else LIMITS
    dtypes = tuple(d for d in KERNEL_DTYPES if d in lim["dtypes"])
    if C > lim["channels"] or W > lim["windows"] or fa.dtype not in dtypes:
        raise ValueError(
            f"the Triton PDCR kernel supports C <= {lim['channels']}, W <= {lim['windows']} "
            f"of {dtypes}; got C={C}, W={W} of {fa.dtype}"
        )
    input_precision = input_precision_for("the Triton PDCR kernel", input_precision, fa)
    tiles, block_c, block_d = _launch_config(C, fa.dtype, input_precision, on_gpu(fa), W, K, fg_l1, block,
                                             block_c, block_d)
    # n_i: valid columns of each row (the row itself excluded when asked); rows without any drop out.
    n_cols = vb.sum(dim=1, keepdim=True).to(fa.dtype).expand(B, N)
    if exclude_self:
        n_cols = n_cols - va.to(fa.dtype)
    common = dict(
        W=W, K_UNROLL=K if K <= K_UNROLL_MAX else 0, SWAPPED=bool(swapped), FG_L1=bool(fg_l1), EXCLUDE_SELF=bool(exclude_self),
        BLOCK_C=block_c, ONE_CHUNK=block_c >= C and block_d == block_c, INPUT_PRECISION=input_precision,
    )
    metas = {}
    for role, (held, swept, warps) in tiles.items():
        rows, cols = (swept, held) if role == "cols" else (held, swept)
        metas[role] = dict(common, BLOCK_N=rows, BLOCK_M=cols, num_warps=warps)
    return (B, N, M, C, W, K), n_cols.contiguous(), scalar(inv_tau, fa), metas, block_d


def pdcr_fwd(fa, pa, fb, pb, va, vb, *, inv_tau, swapped, fg_l1, exclude_self,
             input_precision="ieee", block=None, block_c=None):
    """Per-row loss (B, N) and per-(row, window) denominator log-sum-exp (B, N, W).

    fa (B, N, C), fb (B, M, C) unit rows; pa (B, W, N, K), pb (B, W, M, K); va (B, N), vb (B, M)
    bool. Floating inputs contiguous, one dtype (float32 or float64). ``block`` overrides the
    tile sizes (an int for square tiles or a (held, swept) pair; powers of two, at least 16),
    ``block_c`` the channel chunk. row_lse is
    -inf where a row has no valid column.
    """
    (B, N, M, C, W, K), n_cols, inv_tau_t, metas, _ = _launch_setup(
        fa, pa, fb, pb, va, vb, inv_tau, swapped, fg_l1, exclude_self, input_precision, block, block_c)
    meta = metas["fwd"]
    row_loss = torch.empty((B, N), dtype=fa.dtype, device=fa.device)
    row_lse = torch.empty((B, N, W), dtype=fa.dtype, device=fa.device)
    if B == 0 or N == 0:
        return row_loss, row_lse
    tiles = triton.cdiv(N, meta["BLOCK_N"])
    with device_of(fa):
        _pdcr_fwd_kernel[(check_grid("pdcr_fwd", B * tiles),)](
            fa, pa, fb, pb, _mask(va, fa), _mask(vb, fa), n_cols, row_loss, row_lse, N, M, C, K, inv_tau_t, tiles,
            W_PAD=triton.next_power_of_2(W), **meta,
        )
    return row_loss, row_lse


def pdcr_bwd(grad_row, fa, pa, fb, pb, va, vb, row_lse, *, inv_tau, swapped, fg_l1, exclude_self,
             input_precision="ieee", block=None, block_c=None, block_d=None):
    """(grad_fa, grad_fb) of Σ grad_row · row_loss; the other arguments are those of :func:`pdcr_fwd`,
    ``block_d`` overrides the output channels per program."""
    (B, N, M, C, W, K), n_cols, inv_tau_t, metas, block_d = _launch_setup(
        fa, pa, fb, pb, va, vb, inv_tau, swapped, fg_l1, exclude_self, input_precision, block, block_c, block_d)
    rows_meta, cols_meta = metas["rows"], metas["cols"]
    if B == 0 or N == 0 or M == 0:
        return torch.zeros_like(fa), torch.zeros_like(fb)
    grad_fa = torch.empty_like(fa)
    grad_fb = torch.empty_like(fb)
    args = (grad_row.contiguous(), fa, pa, fb, pb, _mask(va, fa), _mask(vb, fa), n_cols, row_lse)
    row_tiles, col_tiles = triton.cdiv(N, rows_meta["BLOCK_N"]), triton.cdiv(M, cols_meta["BLOCK_M"])
    chunks = triton.cdiv(C, block_d)
    with device_of(fa):
        _pdcr_bwd_rows_kernel[(check_grid("pdcr_bwd", B * row_tiles * chunks),)](
            *args, grad_fa, N, M, C, K, inv_tau_t, row_tiles, chunks, BLOCK_D=block_d, INTRA=False, **rows_meta)
        _pdcr_bwd_cols_kernel[(check_grid("pdcr_bwd", B * col_tiles * chunks),)](
            *args, grad_fb, N, M, C, K, inv_tau_t, col_tiles, chunks, BLOCK_D=block_d, **cols_meta)
    return grad_fa, grad_fb


def pdcr_intra_fwd(f, phi, valid, *, inv_tau, swapped, fg_l1, exclude_self, input_precision="ieee", block=None,
                   block_c=None):
    """:func:`pdcr_fwd` with one feature set f (B, N, C), phi, valid as rows and columns."""
    return pdcr_fwd(f, phi, f, phi, valid, valid, inv_tau=inv_tau, swapped=swapped, fg_l1=fg_l1,
                    exclude_self=exclude_self, input_precision=input_precision, block=block, block_c=block_c)


def pdcr_intra_bwd(grad_row, f, phi, valid, row_lse, *, inv_tau, swapped, fg_l1, exclude_self,
                   input_precision="ieee", block=None, block_c=None, block_d=None):
    """grad f (B, N, C) of Σ grad_row · row_loss with f in both roles: the rows kernel alone (INTRA)."""
    (B, N, M, C, W, K), n_cols, inv_tau_t, metas, block_d = _launch_setup(
        f, phi, f, phi, valid, valid, inv_tau, swapped, fg_l1, exclude_self, input_precision, block, block_c, block_d)
    meta = metas["intra"]
    if B == 0 or N == 0:
        return torch.zeros_like(f)
    grad = torch.empty_like(f)
    mask = _mask(valid, f)
    tiles, chunks = triton.cdiv(N, meta["BLOCK_N"]), triton.cdiv(C, block_d)
    with device_of(f):
        _pdcr_bwd_rows_kernel[(check_grid("pdcr_intra_bwd", B * tiles * chunks),)](
            grad_row.contiguous(), f, phi, f, phi, mask, mask, n_cols, row_lse, grad, N, N, C, K, inv_tau_t, tiles,
            chunks, BLOCK_D=block_d, INTRA=True, **meta)
    return grad


def work(B, N, M, C, W, K, dtype, backward=False, input_precision="ieee", intra=False):
    """(FLOPs, bytes) of one pdcr_fwd (or pdcr_bwd, or with ``intra`` pdcr_intra_bwd, M = N) call on
    a GPU, counted as in this file's header."""
    e = torch.empty((), dtype=dtype).element_size()
    reads = B * ((N + M) * (C + W * K) + N) * e + B * (N + M)
    if not backward:
        return 2.0 * B * N * M * C + B * N * M * W * (3 * K + 8), float(reads + B * N * (1 + W) * e)
    D = triton.cdiv(C, _launch_config(C, dtype, input_precision, gpu=True)[2])  # BLOCK_D: C and dtype only
    kernels = 1 if intra else 2  # the intra rows kernel does both pair terms from one ŝ tile
    flops = kernels * (2.0 * D + 2) * B * N * M * C + 2.0 * D * B * N * M * W * (3 * K + 10)
    return flops, float(reads + B * N * (1 + W) * e + B * (N + M) * C * e)
