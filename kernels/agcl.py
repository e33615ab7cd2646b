"""Triton kernels for the Semi-AGCL losses (SPEC §7): affinity matrix, streaming hard negatives with
queue log-sum-exp, and mixed negatives that are never materialised.

Math (x_acc: float32 accumulation for fp16/bf16/fp32 inputs, float64 for float64).

1. Affinity (Semi-AGCL Eq. 2), teacher rows t = y_t (N, D) × student columns s = y_s (M, D):
       dist_ij = Σ_d (t_id − s_jd)²  (squared L2)   or   Σ_d |t_id − s_jd|  (L1)
       A_ij = exp(−dist_ij · κ),  κ = inv_two_sigma2 = 1/(2σ²)
   Backward (A recomputed, never loaded), with c = 2κ, g(x) = x (L2) or c = κ, g = sign (L1):
       grad_s_jd = Σ_i gA_ij · A_ij · c · g(t_id − s_jd)
   The differences t_id − s_jd are formed exactly (no ‖t‖² + ‖s‖² − 2 t·s cancellation), over a
   runtime loop on d: a tile never holds an N×M×D block. `_affinity_fwd_kernel`: one program per
   (row tile, column tile). `_affinity_bwd_kernel`: one program per column tile sweeping every row
   tile, accumulating a [BLOCK_M, D_PAD] register block (column d of it updated by a select):
   deterministic, no atomics.

2. Hard negatives (Semi-AGCL Eqs. 4/6, MoCHi). Query q_b (B, C), raw queue n (Q, C) and its unit-row
   scales neg_scale (Q,), n̂ = neg_scale·n (so no normalised copy of the queue is ever made), s_bn = q_b·n̂_n;
   valid_bn = True, or neg_cls[n] ≠ q_cls[b] when use_classes.
       queue_lse_b = LSE_{valid n} s_bn·inv_tau    (−inf when no n is valid; NaN if a valid s is NaN)
       hard_idx[b] = the H = min(n_hard, Q) valid n of largest s_bn, by s descending then index
                     ascending, −1 after hard_count_b = min(H, #valid)
   `_hard_neg_kernel`: one program per query streams the queue in BLOCK_Q chunks (dots over
   BLOCK_C channel chunks), keeps a running max/sum for the LSE and a sorted top-H_PAD buffer of
   (key, index) pairs, H_PAD = next_pow2(H). Key = the dot's bits mapped to an order-preserving
   integer (−0 → +0, NaN → +NaN, which ranks above +inf, as torch.sort does); pairs compare by
   (key desc, index asc), so ties keep the lower index, exactly, in float64 too. A chunk whose best
   key does not beat the buffer's worst is skipped (the common case once the buffer is full);
   otherwise its top H_PAD (bitonic top-k on pairs) is merged with the buffer by a bitonic top-k
   of the 2·H_PAD union. The B×Q matrix is never stored.
   Backward (`_queue_lse_bwd_kernel`, one program per query, streaming, dots recomputed):
       grad_q_b = grad_lse_b · inv_tau · Σ_{valid n} exp(s_bn·inv_tau − lse_b) · n̂_n
   (no contribution when lse_b = −inf; invalid rows are never loaded, so NaN there drops out).

3. Mixed negatives (Semi-AGCL Eq. 6). For pair p = (a, c) of query b: i = hard_idx[b, a],
   j = hard_idx[b, c]; valid iff 0 ≤ a, c < hard_count_b and a ≠ c; α = alpha[i];
       m = α n̂_i + (1 − α) n̂_j = (α s_i) n_i + ((1 − α) s_j) n_j,   logit_bp = (q_b·m) / max(‖m‖, 1e-8) · inv_tau   (−inf if invalid)
   m lives only in registers, one [BLOCK_P, BLOCK_C] channel chunk at a time; ‖m‖² is summed from
   those chunks, which equals α²‖n̂_i‖² + (1−α)²‖n̂_j‖² + 2α(1−α) n̂_i·n̂_j from the data without its
   rounding cancellation. Backward: grad_q_b = Σ_{valid p} grad_bp · inv_tau · m_bp / max(‖m_bp‖, 1e-8):
   `_mixed_kernel` with WRITE_NORM writes max(‖m‖, 1e-8) (B, P) (a B·P temporary), then
   `_mixed_bwd_kernel`, one program per (query, channel chunk), sums its chunk of grad_q over
   the pair blocks (deterministic, no atomics).

Memory traffic per call, compulsory (each tensor once; e = element bytes; the re-reads of y_s / y_t
by every tile, of the queue by every query and of gathered rows come from L2 and are not counted):
  affinity fwd:  (N + M)·D·e read, N·M·e written.        FLOPs 3·N·M·D + N·M (exp).
  affinity bwd:  N·M·e + (N + M)·D·e read, M·D·e written. FLOPs ≈ 8·N·M·D (A recomputed, then g·W
                 per d) + 2·N·M·D for the column select.
  hard_negatives: (B + Q)·C·e + Q·e + 8·(B + Q) read, B·e + 8·B·(H + 1) written. FLOPs 2·B·Q·C (dots)
                 + B·Q·4 (LSE) + per merged chunk O(H_PAD·log²(2·H_PAD)) compare-swaps.
  queue_lse_bwd: (B + Q)·C·e + Q·e + 8·(B + Q) + 2·B·e read, B·C·e written. FLOPs 4·B·Q·C.
  mixed_logits:  B·C·e + 16·B·P + 2·B·P·(C + 1)·e (gathered rows) + 8·B·(H + 1) read, B·P·e written.
                 FLOPs 8·B·P·C.
  mixed_logits_bwd: the same plus B·P·e (grad) read and B·C·e written; FLOPs ≈ 14·B·P·C (norm pass
                 + weighted sum).

Limits (LIMITS): dtypes float32/float64 (and float16/bfloat16, upcast to float32 in-kernel; bf16
is wrong in the Triton interpreter, so only GPUs run it). Affinity: D ≤ 64 ("classes"). Queue:
C ≤ 256 ("channels"), n_hard ≤ 1024 ("hard"; the buffer's H_PAD ≤ 1024), Q < 2^31 ("queue",
indices are int32 in-kernel; all memory offsets are int64). The mixed ops take any P and H.
Scalars (inv_two_sigma2, inv_tau) reach kernels as 1-element tensors of the accumulation dtype.
Launches run under the inputs' device (kernels._launch.device_of). GPU configurations are listed by
`compile_configs()` (every dtype × block choice, 100 entries), which a separate sm_90 compile test
compiles. Measured with triton 3.7.1 for GPUTarget("cuda", 90, 32) + bundled `ptxas -v
--gpu-name=sm_90a`: all 100 compile, shared memory ≤ 16 KB (hard_neg fp64 at H_PAD = 1024), no
spills, ≤ 234 registers; the tiles above were shrunk until that held (32×32 affinity-bwd tiles,
wide hard-neg dot tiles and 8-warp fp64 queue-bwd spilled; fp64 mixed BLOCK_P = 16 fails in
TritonGPURemoveLayoutConversions). No GPU run has been made yet. The hard-neg dot tile is narrow in C
at large H (BLOCK_C down to 1-2): correct, but its loads are poorly coalesced (a tl.dot query-tile
variant would be the fast path). Must match brute-force float64 torch (tests/test_agcl_triton.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import check_grid, device_of, on_gpu, scalar

LIMITS = {
    "classes": 64,            # affinity D
    "channels": 256,          # queue / query C
    "hard": 1024,             # n_hard (top-H buffer)
    "queue": 2**31 - 1,       # Q
    "dtypes": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}

_TL = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}


# --------------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------------
@triton.jit
def _up(x, F64: tl.constexpr):
    """x in the accumulation dtype (float64 stays float64, everything else float32)."""
    if F64:
        return x.to(tl.float64)
    else:
        return x.to(tl.float32)


@triton.jit
def _order_key(v, F64: tl.constexpr):
    """An integer that orders like the float v: −0 → +0, every NaN → +NaN (above +inf)."""
    v = tl.where(v == 0, 0.0, v)
    v = tl.where(v != v, float("nan"), v)
    if F64:
        u = v.to(tl.int64, bitcast=True)
        return tl.where(u < 0, u ^ 0x7FFFFFFFFFFFFFFF, u)
    else:
        u = v.to(tl.int32, bitcast=True)
        return tl.where(u < 0, u ^ 0x7FFFFFFF, u)


@triton.jit
def _pair_topk(k, i, LOG_N: tl.constexpr, LOG_K: tl.constexpr):
    """The 2^LOG_K greatest (key, index) pairs of 2^LOG_N, sorted greatest first: the bitonic top-k of
    triton.language.standard.sort_impl, carrying the index. 'Greater' = larger key, then smaller index.
    The partner of an element along a size-2 cube axis is (x + y) − x, exact in wrapping integer
    arithmetic: a plain tl.sum, which the interpreter runs in numpy (xor_sum / tl.reduce with a custom
    combine run element by element there). Written as one function: every nested jit call costs the
    interpreter milliseconds."""
    hk = tl.reshape(k, [2] * LOG_N)
    hi = tl.reshape(i, [2] * LOG_N)
    # Axis/shape expressions are written inline (they must stay constexpr). Position bits come from a
    # full-cube iota: the size-1 reshapes of triton's _indicator fail layout verification here on sm_90.
    pos = tl.reshape(tl.arange(0, 2**LOG_N), [2] * LOG_N)
    # bitonic sort of blocks of 2^LOG_K (alternating order; descending when LOG_K == LOG_N)
    for stage in tl.static_range(1, LOG_K + 1):
        if stage < LOG_N:
            flip = (pos >> stage) & 1
        else:
            flip = pos * 0 + 1
        for r in tl.static_range(stage):  # compare along cube axis LOG_N − stage + r (position bit stage−1−r)
            kp = tl.sum(hk, LOG_N - stage + r, keep_dims=True) - hk
            ip = tl.sum(hi, LOG_N - stage + r, keep_dims=True) - hi
            gt = (hk > kp) | ((hk == kp) & (hi < ip))
            swap = gt != ((flip ^ ((pos >> (stage - 1 - r)) & 1)) != 0)
            hk = tl.where(swap, kp, hk)
            hi = tl.where(swap, ip, hi)
    # bitonic top-k: keep the better of each two blocks (cube axis LOG_N − s), then re-merge
    for s in tl.static_range(LOG_K + 1, LOG_N + 1):
        pos = tl.reshape(tl.arange(0, 2**(LOG_N - s + LOG_K + 1)), [2] * (LOG_N - s + LOG_K + 1))
        kp = tl.sum(hk, LOG_N - s, keep_dims=True) - hk
        ip = tl.sum(hi, LOG_N - s, keep_dims=True) - hi
        take = (hk > kp) | ((hk == kp) & (hi < ip))
        first = ((pos >> LOG_K) & 1) == 0
        hk = tl.sum(tl.where(first, tl.where(take, hk, kp), 0), LOG_N - s)
        hi = tl.sum(tl.where(first, tl.where(take, hi, ip), 0), LOG_N - s)
        # the cube has LOG_N − s + LOG_K dims now
        pos = tl.reshape(tl.arange(0, 2**(LOG_N - s + LOG_K)), [2] * (LOG_N - s + LOG_K))
        if s < LOG_N:
            flip = (pos >> LOG_K) & 1
        else:
            flip = pos * 0 + 1
        for r in tl.static_range(LOG_K):  # compare along cube axis LOG_N − s + r (position bit LOG_K−1−r)
            kp = tl.sum(hk, LOG_N - s + r, keep_dims=True) - hk
            ip = tl.sum(hi, LOG_N - s + r, keep_dims=True) - hi
            gt = (hk > kp) | ((hk == kp) & (hi < ip))
            swap = gt != ((flip ^ ((pos >> (LOG_K - 1 - r)) & 1)) != 0)
            hk = tl.where(swap, kp, hk)
            hi = tl.where(swap, ip, hi)
    return tl.reshape(hk, [2**LOG_K]), tl.reshape(hi, [2**LOG_K])


# --------------------------------------------------------------------------------------------------
# 1. affinity matrix
# --------------------------------------------------------------------------------------------------
@triton.jit
def _affinity_tile(t_ptr, s_ptr, rows, cols, r_mask, c_mask, D, kappa,
                   L1: tl.constexpr, F64: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """A tile [BLOCK_N, BLOCK_M] = exp(−κ·dist) of rows of t against rows of s."""
    if F64:
        dist = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float64)
    else:
        dist = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    r_off = rows.to(tl.int64) * D
    c_off = cols.to(tl.int64) * D
    for d in range(0, D):
        tv = _up(tl.load(t_ptr + r_off + d, mask=r_mask, other=0.0), F64)
        sv = _up(tl.load(s_ptr + c_off + d, mask=c_mask, other=0.0), F64)
        diff = tv[:, None] - sv[None, :]
        if L1:
            dist += tl.abs(diff)
        else:
            dist += diff * diff
    return tl.exp(-dist * kappa)


@triton.jit
def _affinity_fwd_kernel(t_ptr, s_ptr, kappa_ptr, a_ptr, N, M, D, COL_TILES,
                         L1: tl.constexpr, F64: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    pid = tl.program_id(0)
    rows = (pid // COL_TILES) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = (pid % COL_TILES) * BLOCK_M + tl.arange(0, BLOCK_M)
    r_mask = rows < N
    c_mask = cols < M
    kappa = tl.load(kappa_ptr)
    a = _affinity_tile(t_ptr, s_ptr, rows, cols, r_mask, c_mask, D, kappa, L1, F64, BLOCK_N, BLOCK_M)
    tl.store(a_ptr + rows[:, None].to(tl.int64) * M + cols[None, :], a.to(a_ptr.dtype.element_ty),
             mask=r_mask[:, None] & c_mask[None, :])


@triton.jit
def _affinity_bwd_kernel(ga_ptr, t_ptr, s_ptr, kappa_ptr, out_ptr, N, M, D,
                         L1: tl.constexpr, F64: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
                         D_PAD: tl.constexpr):
    pid = tl.program_id(0)
    cols = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    c_mask = cols < M
    c_off = cols.to(tl.int64) * D
    ds = tl.arange(0, D_PAD)
    kappa = tl.load(kappa_ptr)
    if F64:
        acc = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float64)
    else:
        acc = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    for r0 in range(0, N, BLOCK_N):
        rows = r0 + tl.arange(0, BLOCK_N)
        r_mask = rows < N
        r_off = rows.to(tl.int64) * D
        a = _affinity_tile(t_ptr, s_ptr, rows, cols, r_mask, c_mask, D, kappa, L1, F64, BLOCK_N, BLOCK_M)
        ga = _up(tl.load(ga_ptr + rows[:, None].to(tl.int64) * M + cols[None, :],
                         mask=r_mask[:, None] & c_mask[None, :], other=0.0), F64)
        w = tl.where(r_mask[:, None], ga * a, 0.0)
        for d in range(0, D):
            tv = _up(tl.load(t_ptr + r_off + d, mask=r_mask, other=0.0), F64)
            sv = _up(tl.load(s_ptr + c_off + d, mask=c_mask, other=0.0), F64)
            diff = tv[:, None] - sv[None, :]
            if L1:
                diff = tl.where(diff > 0, 1.0, tl.where(diff < 0, -1.0, tl.where(diff == 0, 0.0, diff)))
            col = tl.sum(w * diff, axis=0)
            acc = tl.where(ds[None, :] == d, acc + col[:, None], acc)
    if L1:
        acc = acc * kappa
    else:
        acc = acc * (2.0 * kappa)
    tl.store(out_ptr + c_off[:, None] + ds[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=c_mask[:, None] & (ds[None, :] < D))


# --------------------------------------------------------------------------------------------------
# 2. hard negatives + queue LSE
# --------------------------------------------------------------------------------------------------
@triton.jit
def _hard_neg_kernel(q_ptr, neg_ptr, scale_ptr, qcls_ptr, ncls_ptr, inv_tau_ptr, lse_ptr, idx_ptr, cnt_ptr,
                     Q, C, H, USE_CLASSES,
                     F64: tl.constexpr, LOG_HP: tl.constexpr, LOG_BQ: tl.constexpr, BLOCK_C: tl.constexpr):
    HP: tl.constexpr = 2**LOG_HP
    BLOCK_Q: tl.constexpr = 2**LOG_BQ
    b = tl.program_id(0).to(tl.int64)
    inv_tau = tl.load(inv_tau_ptr)
    qc = tl.load(qcls_ptr + b)
    if F64:
        kmin = -9223372036854775807
        buf_k = tl.full([HP], kmin, tl.int64)
        m = tl.full([1], float("-inf"), tl.float64)
        ssum = tl.zeros([1], tl.float64)
    else:
        kmin = -2147483647
        buf_k = tl.full([HP], kmin, tl.int32)
        m = tl.full([1], float("-inf"), tl.float32)
        ssum = tl.zeros([1], tl.float32)
    buf_i = tl.full([HP], -1, tl.int32)
    nan = tl.zeros([1], tl.int32)
    for q0 in range(0, Q, BLOCK_Q):
        offs = q0 + tl.arange(0, BLOCK_Q)
        inb = offs < Q
        n_off = offs[:, None].to(tl.int64) * C
        if F64:
            dot = tl.zeros([BLOCK_Q], tl.float64)
        else:
            dot = tl.zeros([BLOCK_Q], tl.float32)
        for c0 in range(0, C, BLOCK_C):
            cs = c0 + tl.arange(0, BLOCK_C)
            cm = cs < C
            qv = _up(tl.load(q_ptr + b * C + cs, mask=cm, other=0.0), F64)
            nv = _up(tl.load(neg_ptr + n_off + cs[None, :], mask=inb[:, None] & cm[None, :], other=0.0), F64)
            dot += tl.sum(nv * qv[None, :], axis=1)
        # q·n̂ with the unit row n̂ = s·n: the queue is never copied normalised.
        dot = dot * _up(tl.load(scale_ptr + offs, mask=inb, other=0.0), F64)
        valid = inb
        if USE_CLASSES != 0:
            valid = valid & (tl.load(ncls_ptr + offs, mask=inb, other=0) != qc)
        s = tl.where(valid, dot * inv_tau, float("-inf"))
        nan = tl.maximum(nan, tl.max((s != s).to(tl.int32), axis=0))
        m_new = tl.maximum(m, tl.max(s, axis=0))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        ssum = ssum * tl.exp(m - shift) + tl.sum(tl.exp(s - shift), axis=0)
        m = m_new
        key = tl.where(valid, _order_key(dot, F64), kmin)
        if tl.max(key, axis=0) > tl.min(buf_k, axis=0):
            ck = key
            ci = offs
            if LOG_BQ > LOG_HP:
                ck, ci = _pair_topk(ck, ci, LOG_BQ, LOG_HP)
            cand_k = tl.reshape(tl.join(buf_k, ck), [2 * HP])
            cand_i = tl.reshape(tl.join(buf_i, ci), [2 * HP])
            buf_k, buf_i = _pair_topk(cand_k, cand_i, LOG_HP + 1, LOG_HP)
    lse = tl.where(m == float("-inf"), m, m + tl.log(tl.where(ssum > 0, ssum, 1.0)))
    lse = tl.where(nan > 0, float("nan"), lse)
    zero = tl.zeros([1], tl.int32)
    tl.store(lse_ptr + b + zero, lse.to(lse_ptr.dtype.element_ty))
    pos = tl.arange(0, HP)
    real = (buf_k != kmin) & (pos < H)
    tl.store(idx_ptr + b * H + pos, tl.where(real, buf_i, -1).to(tl.int64), mask=pos < H)
    cnt = tl.sum(real.to(tl.int64), axis=0)
    tl.store(cnt_ptr + b + zero, cnt + zero.to(tl.int64))


@triton.jit
def _queue_lse_bwd_kernel(g_ptr, q_ptr, neg_ptr, scale_ptr, qcls_ptr, ncls_ptr, lse_ptr, inv_tau_ptr, out_ptr,
                          Q, C, USE_CLASSES,
                          F64: tl.constexpr, BLOCK_Q: tl.constexpr, C_PAD: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    cs = tl.arange(0, C_PAD)
    cm = cs < C
    inv_tau = tl.load(inv_tau_ptr)
    qc = tl.load(qcls_ptr + b)
    qv = _up(tl.load(q_ptr + b * C + cs, mask=cm, other=0.0), F64)
    lse = _up(tl.load(lse_ptr + b), F64)
    g = _up(tl.load(g_ptr + b), F64)
    q_end = tl.where(lse == float("-inf"), 0, Q)  # a query without valid negatives reads nothing
    if F64:
        acc = tl.zeros([C_PAD], tl.float64)
    else:
        acc = tl.zeros([C_PAD], tl.float32)
    for q0 in range(0, q_end, BLOCK_Q):
        offs = q0 + tl.arange(0, BLOCK_Q)
        valid = offs < Q
        if USE_CLASSES != 0:
            valid = valid & (tl.load(ncls_ptr + offs, mask=offs < Q, other=0) != qc)
        nv = _up(tl.load(neg_ptr + offs[:, None].to(tl.int64) * C + cs[None, :],
                         mask=valid[:, None] & cm[None, :], other=0.0), F64)
        sc = _up(tl.load(scale_ptr + offs, mask=valid, other=0.0), F64)
        s = tl.sum(nv * qv[None, :], axis=1) * sc * inv_tau
        p = tl.where(valid, tl.exp(s - lse) * sc, 0.0)  # the raw row is accumulated: its weight carries s
        acc += tl.sum(p[:, None] * nv, axis=0)
    out = acc * (g * inv_tau)
    tl.store(out_ptr + b * C + cs, out.to(out_ptr.dtype.element_ty), mask=cm)


# --------------------------------------------------------------------------------------------------
# 3. mixed negatives
# --------------------------------------------------------------------------------------------------
@triton.jit
def _mixed_pairs(pairs_ptr, hidx_ptr, cnt_ptr, alpha_ptr, scale_ptr, b, pos, P, H, Q, F64: tl.constexpr):
    """(valid, i, j, w_i, w_j) of the pairs at positions pos of query b, m = w_i n_i + w_j n_j on the raw
    rows (w_i = α s_i, w_j = (1 − α) s_j, s the unit-row scales); i, j, w are 0 where invalid."""
    pm = pos < P
    p_off = (b * P + pos.to(tl.int64)) * 2
    a = tl.load(pairs_ptr + p_off, mask=pm, other=-1)
    c = tl.load(pairs_ptr + p_off + 1, mask=pm, other=-1)
    cnt = tl.load(cnt_ptr + b)
    valid = pm & (a >= 0) & (c >= 0) & (a < cnt) & (c < cnt) & (a < H) & (c < H) & (a != c)
    i = tl.load(hidx_ptr + b * H + a, mask=valid, other=0)
    j = tl.load(hidx_ptr + b * H + c, mask=valid, other=0)
    valid = valid & (i >= 0) & (i < Q) & (j >= 0) & (j < Q)
    i = tl.where(valid, i, 0)
    j = tl.where(valid, j, 0)
    al = _up(tl.load(alpha_ptr + i, mask=valid, other=0.0), F64)
    s_i = _up(tl.load(scale_ptr + i, mask=valid, other=0.0), F64)
    s_j = _up(tl.load(scale_ptr + j, mask=valid, other=0.0), F64)
    return valid, i, j, al * s_i, (1.0 - al) * s_j


@triton.jit
def _mixed_kernel(q_ptr, neg_ptr, scale_ptr, alpha_ptr, hidx_ptr, cnt_ptr, pairs_ptr, inv_tau_ptr, out_ptr,
                  P, H, Q, C, P_TILES,
                  WRITE_NORM: tl.constexpr, F64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    b = (pid // P_TILES).to(tl.int64)
    pos = (pid % P_TILES) * BLOCK_P + tl.arange(0, BLOCK_P)
    valid, i, j, w_i, w_j = _mixed_pairs(pairs_ptr, hidx_ptr, cnt_ptr, alpha_ptr, scale_ptr, b, pos, P, H, Q, F64)
    i_off = i[:, None].to(tl.int64) * C
    j_off = j[:, None].to(tl.int64) * C
    if F64:
        msq = tl.zeros([BLOCK_P], tl.float64)
        qm = tl.zeros([BLOCK_P], tl.float64)
    else:
        msq = tl.zeros([BLOCK_P], tl.float32)
        qm = tl.zeros([BLOCK_P], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        cm = cs < C
        mask = valid[:, None] & cm[None, :]
        ni = _up(tl.load(neg_ptr + i_off + cs[None, :], mask=mask, other=0.0), F64)
        nj = _up(tl.load(neg_ptr + j_off + cs[None, :], mask=mask, other=0.0), F64)
        mv = w_i[:, None] * ni + w_j[:, None] * nj
        msq += tl.sum(mv * mv, axis=1)
        if not WRITE_NORM:
            qv = _up(tl.load(q_ptr + b * C + cs, mask=cm, other=0.0), F64)
            qm += tl.sum(mv * qv[None, :], axis=1)
    norm = tl.sqrt(msq)
    den = tl.where(norm < 1e-8, 1e-8, norm)
    if WRITE_NORM:
        res = tl.where(valid, den, 1.0)
    else:
        inv_tau = tl.load(inv_tau_ptr)
        res = tl.where(valid, qm / den * inv_tau, float("-inf"))
    tl.store(out_ptr + b * P + pos, res.to(out_ptr.dtype.element_ty), mask=pos < P)


@triton.jit
def _mixed_bwd_kernel(g_ptr, den_ptr, neg_ptr, scale_ptr, alpha_ptr, hidx_ptr, cnt_ptr, pairs_ptr, inv_tau_ptr, out_ptr,
                      P, H, Q, C, C_TILES,
                      F64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    b = (pid // C_TILES).to(tl.int64)
    cs = (pid % C_TILES) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = cs < C
    inv_tau = tl.load(inv_tau_ptr)
    if F64:
        acc = tl.zeros([BLOCK_C], tl.float64)
    else:
        acc = tl.zeros([BLOCK_C], tl.float32)
    for p0 in range(0, P, BLOCK_P):
        pos = p0 + tl.arange(0, BLOCK_P)
        valid, i, j, w_i, w_j = _mixed_pairs(pairs_ptr, hidx_ptr, cnt_ptr, alpha_ptr, scale_ptr, b, pos, P, H, Q,
                                             F64)
        g = _up(tl.load(g_ptr + b * P + pos, mask=valid, other=0.0), F64)
        den = _up(tl.load(den_ptr + b * P + pos, mask=valid, other=1.0), F64)
        w = tl.where(valid, g * inv_tau / den, 0.0)
        mask = valid[:, None] & cm[None, :]
        ni = _up(tl.load(neg_ptr + i[:, None].to(tl.int64) * C + cs[None, :], mask=mask, other=0.0), F64)
        nj = _up(tl.load(neg_ptr + j[:, None].to(tl.int64) * C + cs[None, :], mask=mask, other=0.0), F64)
        mv = w_i[:, None] * ni + w_j[:, None] * nj
        acc += tl.sum(w[:, None] * mv, axis=0)
    tl.store(out_ptr + b * C + cs, acc.to(out_ptr.dtype.element_ty), mask=cm)


# --------------------------------------------------------------------------------------------------
# launch configurations (GPU ones are what compile_configs() lists)
# --------------------------------------------------------------------------------------------------
def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_dtype(op: str, *ts: torch.Tensor) -> torch.dtype:
    dtype = ts[0].dtype
    if dtype not in LIMITS["dtypes"]:
        raise ValueError(f"{op}: the Triton kernel takes {LIMITS['dtypes']}, got {dtype}")
    for t in ts[1:]:
        if t.dtype != dtype:
            raise ValueError(f"{op}: all float inputs must share one dtype, got {dtype} and {t.dtype}")
    return dtype


def _d_pad(D: int) -> int:
    return max(16, triton.next_power_of_2(max(D, 1)))


def _affinity_config(gpu: bool, dtype: torch.dtype, backward: bool) -> dict:
    """GPU tiles chosen by compiling for sm_90 (ptxas -v): no spills at any D ≤ 64 and dtype, D a
    multiple of 16 and not (Triton compiles the two apart)."""
    if not gpu:
        return dict(BLOCK_N=32, BLOCK_M=32, num_warps=4, num_stages=1)
    if backward:  # 32×32 spills at L1 (fp32 D ≤ 16, fp64 D ≤ 64); 32×16 still 8 B at fp64 L1 D = 64,
        # where 16×16 is clean (and spills 8 B at fp16/bf16 D = 64)
        rows = 16 if dtype == torch.float64 else 32
        return dict(BLOCK_N=rows, BLOCK_M=16, num_warps=4, num_stages=1)
    return dict(BLOCK_N=64, BLOCK_M=64, num_warps=8, num_stages=1)


def _hard_config(gpu: bool, H: int, dtype: torch.dtype = torch.float32) -> dict:
    """H_PAD = next_pow2(H) (at least 2) sets the chunk BLOCK_Q ≥ H_PAD; the [BLOCK_Q, BLOCK_C] dot tile
    is kept to ~8 (float64: ~4) elements per thread so that the sort's registers fit."""
    log_hp = max(1, (max(H, 1) - 1).bit_length())
    if not gpu:
        # the interpreter pays per op, and a merge is ~100 ops: few, wide chunks
        return dict(LOG_HP=log_hp, LOG_BQ=max(log_hp, 8), BLOCK_C=16, num_warps=4, num_stages=1)
    log_bq = max(log_hp, 7)
    bq = 2**log_bq
    warps = 4 if bq <= 128 else 8
    # float64, and H_PAD = 256 in every dtype (8 B spilled at 8 per thread, ptxas -v sm_90), take 4.
    per_thread = 4 if dtype == torch.float64 or log_bq == 8 else 8
    block_c = max(1, min(64, per_thread * 32 * warps // bq))
    return dict(LOG_HP=log_hp, LOG_BQ=log_bq, BLOCK_C=block_c, num_warps=warps, num_stages=1)


def _queue_bwd_config(gpu: bool, C: int, dtype: torch.dtype = torch.float32) -> dict:
    c_pad = max(32, triton.next_power_of_2(max(C, 1)))
    if not gpu:
        return dict(BLOCK_Q=32, C_PAD=c_pad, num_warps=4, num_stages=1)
    if dtype == torch.float64:  # 8 warps spill below C_PAD = 256 in float64
        return dict(BLOCK_Q=max(8, 1024 // c_pad), C_PAD=c_pad, num_warps=8 if c_pad >= 256 else 4, num_stages=1)
    # 8 warps spilled 8 B at C_PAD = 256 (Q and C no multiples of 16, sm_90); 4 were clean there
    return dict(BLOCK_Q=max(8, min(128, 4096 // c_pad)), C_PAD=c_pad,
                num_warps=8 if c_pad >= 128 and c_pad != 256 else 4, num_stages=1)


def _mixed_config(gpu: bool, dtype: torch.dtype = torch.float32) -> dict:
    if not gpu:
        return dict(BLOCK_P=32, BLOCK_C=64, num_warps=4, num_stages=1)
    # float64: BLOCK_C 32 spills in the backward; BLOCK_P 16 hits a Triton layout-pass failure
    return dict(BLOCK_P=32, BLOCK_C=16 if dtype == torch.float64 else 64, num_warps=4, num_stages=1)


# --------------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------------
def affinity_matrix(y_t: torch.Tensor, y_s: torch.Tensor, inv_two_sigma2: float, l1: bool) -> torch.Tensor:
    """A (N, M) = exp(−dist(y_t_i, y_s_j)·inv_two_sigma2), dist squared L2 or (l1) L1; y_t (N, D), y_s (M, D)."""
    dtype = _check_dtype("affinity_matrix", y_t, y_s)
    N, D = y_t.shape
    M = y_s.shape[0]
    if D > LIMITS["classes"]:
        raise ValueError(f"affinity_matrix: the Triton kernel takes D <= {LIMITS['classes']}, got D={D}")
    y_t, y_s = y_t.contiguous(), y_s.contiguous()
    A = torch.empty(N, M, dtype=dtype, device=y_t.device)
    if A.numel() == 0:
        return A
    cfg = _affinity_config(on_gpu(y_t), dtype, backward=False)
    col_tiles = triton.cdiv(M, cfg["BLOCK_M"])
    grid = (check_grid("affinity_matrix", triton.cdiv(N, cfg["BLOCK_N"]) * col_tiles),)
    with device_of(y_t):
        _affinity_fwd_kernel[grid](y_t, y_s, scalar(inv_two_sigma2, y_t, _acc(dtype)), A, N, M, D, col_tiles,
                                   L1=bool(l1), F64=dtype == torch.float64, **cfg)
    return A


def affinity_matrix_bwd(grad_A: torch.Tensor, y_t: torch.Tensor, y_s: torch.Tensor, inv_two_sigma2: float,
                        l1: bool) -> torch.Tensor:
    """grad_s (M, D) = Σ_i grad_A_ij · ∂A_ij/∂y_s_j, with A recomputed in-kernel."""
    dtype = _check_dtype("affinity_matrix_bwd", grad_A, y_t, y_s)
    N, D = y_t.shape
    M = y_s.shape[0]
    if D > LIMITS["classes"]:
        raise ValueError(f"affinity_matrix_bwd: the Triton kernel takes D <= {LIMITS['classes']}, got D={D}")
    grad_A, y_t, y_s = grad_A.contiguous(), y_t.contiguous(), y_s.contiguous()
    out = torch.empty(M, D, dtype=dtype, device=y_s.device)
    if out.numel() == 0:
        return out
    if N == 0:
        return out.zero_()
    cfg = _affinity_config(on_gpu(y_s), dtype, backward=True)
    grid = (check_grid("affinity_matrix_bwd", triton.cdiv(M, cfg["BLOCK_M"])),)
    with device_of(y_s):
        _affinity_bwd_kernel[grid](grad_A, y_t, y_s, scalar(inv_two_sigma2, y_s, _acc(dtype)), out, N, M, D,
                                   L1=bool(l1), F64=dtype == torch.float64, D_PAD=_d_pad(D), **cfg)
    return out


def _check_queue(op: str, q: torch.Tensor, neg: torch.Tensor, neg_scale: torch.Tensor):
    dtype = _check_dtype(op, q, neg, neg_scale)
    if neg_scale.shape != neg.shape[:1]:
        raise ValueError(f"{op}: neg_scale must be (Q,) = ({neg.shape[0]},), got {tuple(neg_scale.shape)}")
    C = q.shape[1]
    if C > LIMITS["channels"]:
        raise ValueError(f"{op}: the Triton kernel takes C <= {LIMITS['channels']} channels, got C={C}")
    if neg.shape[0] > LIMITS["queue"]:
        raise ValueError(f"{op}: the Triton kernel takes a queue of at most {LIMITS['queue']}, got {neg.shape[0]}")
    return dtype


def hard_negatives(q: torch.Tensor, neg: torch.Tensor, neg_scale: torch.Tensor, q_cls: torch.Tensor,
                   neg_cls: torch.Tensor, inv_tau: float, n_hard: int, use_classes: bool):
    """(queue_lse (B,), hard_idx (B, H) int64, hard_count (B,) int64), H = min(n_hard, Q), streaming over
    the queue: LSE of inv_tau·q·n̂ over the valid negatives and the indices of the H valid negatives of
    largest q·n̂ (descending, ties by lower index, −1 padding); n̂ = neg_scale·neg, the unit rows."""
    dtype = _check_queue("hard_negatives", q, neg, neg_scale)
    if n_hard > LIMITS["hard"]:
        raise ValueError(f"hard_negatives: the Triton kernel takes n_hard <= {LIMITS['hard']}, got {n_hard}")
    if n_hard < 0:
        raise ValueError(f"hard_negatives: n_hard must be >= 0, got {n_hard}")
    B, C = q.shape
    Q = neg.shape[0]
    H = min(n_hard, Q)
    dev = q.device
    lse = torch.empty(B, dtype=dtype, device=dev)
    idx = torch.empty(B, H, dtype=torch.int64, device=dev)
    cnt = torch.empty(B, dtype=torch.int64, device=dev)
    if B == 0:
        return lse, idx, cnt
    if Q == 0:
        return lse.fill_(float("-inf")), idx, cnt.zero_()
    q, neg = q.contiguous(), neg.contiguous()
    qc = q_cls.to(torch.int64).contiguous()
    nc = neg_cls.to(torch.int64).contiguous()
    cfg = _hard_config(on_gpu(q), H, dtype)
    with device_of(q):
        _hard_neg_kernel[(check_grid("hard_negatives", B),)](
            q, neg, neg_scale.contiguous(), qc, nc, scalar(inv_tau, q, _acc(dtype)), lse, idx, cnt, Q, C, H, int(bool(use_classes)),
            F64=dtype == torch.float64, **cfg)
    return lse, idx, cnt


def queue_lse_bwd(grad_lse: torch.Tensor, q: torch.Tensor, neg: torch.Tensor, neg_scale: torch.Tensor,
                  q_cls: torch.Tensor, neg_cls: torch.Tensor, queue_lse: torch.Tensor, inv_tau: float,
                  use_classes: bool) -> torch.Tensor:
    """grad_q (B, C) = grad_lse_b · inv_tau · Σ_valid softmax_n · n̂_n, dots recomputed while streaming."""
    dtype = _check_queue("queue_lse_bwd", q, neg, neg_scale)
    B, C = q.shape
    Q = neg.shape[0]
    out = torch.empty(B, C, dtype=dtype, device=q.device)
    if out.numel() == 0:
        return out
    if Q == 0:
        return out.zero_()
    cfg = _queue_bwd_config(on_gpu(q), C, dtype)
    with device_of(q):
        _queue_lse_bwd_kernel[(check_grid("queue_lse_bwd", B),)](
            grad_lse.to(dtype).contiguous(), q.contiguous(), neg.contiguous(), neg_scale.contiguous(),
            q_cls.to(torch.int64).contiguous(),
            neg_cls.to(torch.int64).contiguous(), queue_lse.to(dtype).contiguous(), scalar(inv_tau, q, _acc(dtype)),
            out, Q, C, int(bool(use_classes)), F64=dtype == torch.float64, **cfg)
    return out


def _mixed_args(op, q, neg, neg_scale, alpha, hard_idx, hard_count, pairs):
    dtype = _check_queue(op, q, neg, neg_scale)
    _check_dtype(op, q, alpha)
    return dtype, (q.contiguous(), neg.contiguous(), neg_scale.contiguous(), alpha.contiguous(), hard_idx.to(torch.int64).contiguous(),
                   hard_count.to(torch.int64).contiguous(), pairs.to(torch.int64).contiguous())


def mixed_logits(q: torch.Tensor, neg: torch.Tensor, neg_scale: torch.Tensor, alpha: torch.Tensor,
                 hard_idx: torch.Tensor, hard_count: torch.Tensor, pairs: torch.Tensor, inv_tau: float) -> torch.Tensor:
    """logits (B, P) of the mixed negatives m = α n̂_i + (1−α) n̂_j (n̂ = neg_scale·neg; pairs of positions
    into each query's hard list), q·m / max(‖m‖, 1e-8) · inv_tau; −inf for invalid pairs. m is never stored."""
    dtype, (q, neg, scale, alpha, hidx, hcnt, pairs) = _mixed_args("mixed_logits", q, neg, neg_scale, alpha,
                                                                   hard_idx, hard_count, pairs)
    B, C = q.shape
    P = pairs.shape[1]
    out = torch.empty(B, P, dtype=dtype, device=q.device)
    if out.numel() == 0:
        return out
    cfg = _mixed_config(on_gpu(q), dtype)
    tiles = triton.cdiv(P, cfg["BLOCK_P"])
    with device_of(q):
        _mixed_kernel[(check_grid("mixed_logits", B * tiles),)](
            q, neg, scale, alpha, hidx, hcnt, pairs, scalar(inv_tau, q, _acc(dtype)), out, P, hidx.shape[1], neg.shape[0],
            C, tiles, WRITE_NORM=False, F64=dtype == torch.float64, **cfg)
    return out


def mixed_logits_bwd(grad_logits: torch.Tensor, q: torch.Tensor, neg: torch.Tensor, neg_scale: torch.Tensor,
                     alpha: torch.Tensor, hard_idx: torch.Tensor, hard_count: torch.Tensor, pairs: torch.Tensor,
                     inv_tau: float) -> torch.Tensor:
    """grad_q (B, C) = Σ_valid p grad_bp · inv_tau · m_bp / max(‖m_bp‖, 1e-8)."""
    dtype, (q, neg, scale, alpha, hidx, hcnt, pairs) = _mixed_args("mixed_logits_bwd", q, neg, neg_scale, alpha,
                                                                   hard_idx, hard_count, pairs)
    B, C = q.shape
    P = pairs.shape[1]
    out = torch.empty(B, C, dtype=dtype, device=q.device)
    if out.numel() == 0:
        return out
    if P == 0:
        return out.zero_()
    cfg = _mixed_config(on_gpu(q), dtype)
    acc = _acc(dtype)
    inv_tau_t = scalar(inv_tau, q, acc)
    den = torch.empty(B, P, dtype=acc, device=q.device)
    tiles = triton.cdiv(P, cfg["BLOCK_P"])
    c_tiles = triton.cdiv(C, cfg["BLOCK_C"])
    with device_of(q):
        _mixed_kernel[(check_grid("mixed_logits_bwd", B * tiles),)](
            q, neg, scale, alpha, hidx, hcnt, pairs, inv_tau_t, den, P, hidx.shape[1], neg.shape[0], C, tiles,
            WRITE_NORM=True, F64=dtype == torch.float64, **cfg)
        _mixed_bwd_kernel[(check_grid("mixed_logits_bwd", B * c_tiles),)](
            grad_logits.to(dtype).contiguous(), den, neg, scale, alpha, hidx, hcnt, pairs, inv_tau_t, out,
            P, hidx.shape[1], neg.shape[0], C, c_tiles, F64=dtype == torch.float64, **cfg)
    return out


# --------------------------------------------------------------------------------------------------
# every GPU configuration, for the sm_90 compile test
# --------------------------------------------------------------------------------------------------
def _split(cfg: dict):
    options = {k: cfg[k] for k in ("num_warps", "num_stages")}
    return {k: v for k, v in cfg.items() if k not in options}, options


def compile_configs() -> list:
    """[(kernel, signature, constexprs, options)] for every dtype and block configuration the launchers can
    pick on a GPU (within LIMITS), ready for triton.compile(ASTSource(kernel, signature, constexprs), ...)."""
    out = []
    for dtype in LIMITS["dtypes"]:
        e = "*" + _TL[dtype]
        a = "*" + _TL[_acc(dtype)]
        f64 = dtype == torch.float64
        for l1 in (False, True):
            const, opt = _split(_affinity_config(True, dtype, backward=False))
            sig = dict(t_ptr=e, s_ptr=e, kappa_ptr=a, a_ptr=e, N="i32", M="i32", D="i32", COL_TILES="i32",
                       L1="constexpr", F64="constexpr", BLOCK_N="constexpr", BLOCK_M="constexpr")
            out.append((_affinity_fwd_kernel, sig, dict(const, L1=l1, F64=f64), opt))
            const, opt = _split(_affinity_config(True, dtype, backward=True))
            for d_pad in (16, 32, 64):
                sig = dict(ga_ptr=e, t_ptr=e, s_ptr=e, kappa_ptr=a, out_ptr=e, N="i32", M="i32", D="i32",
                           L1="constexpr", F64="constexpr", BLOCK_N="constexpr", BLOCK_M="constexpr",
                           D_PAD="constexpr")
                out.append((_affinity_bwd_kernel, sig, dict(const, L1=l1, F64=f64, D_PAD=d_pad), opt))
        for log_h in range(0, LIMITS["hard"].bit_length()):
            H = 2**log_h
            const, opt = _split(_hard_config(True, H, dtype))
            if log_h == 0:
                continue  # H = 1 uses the H = 2 buffer
            sig = dict(q_ptr=e, neg_ptr=e, scale_ptr=e, qcls_ptr="*i64", ncls_ptr="*i64", inv_tau_ptr=a, lse_ptr=e,
                       idx_ptr="*i64", cnt_ptr="*i64", Q="i32", C="i32", H="i32", USE_CLASSES="i32",
                       F64="constexpr", LOG_HP="constexpr", LOG_BQ="constexpr", BLOCK_C="constexpr")
            out.append((_hard_neg_kernel, sig, dict(const, F64=f64), opt))
        c = 32
        while c <= LIMITS["channels"]:
            const, opt = _split(_queue_bwd_config(True, c, dtype))
            sig = dict(g_ptr=e, q_ptr=e, neg_ptr=e, scale_ptr=e, qcls_ptr="*i64", ncls_ptr="*i64", lse_ptr=e, inv_tau_ptr=a,
                       out_ptr=e, Q="i32", C="i32", USE_CLASSES="i32",
                       F64="constexpr", BLOCK_Q="constexpr", C_PAD="constexpr")
            out.append((_queue_lse_bwd_kernel, sig, dict(const, F64=f64), opt))
            c *= 2
        const, opt = _split(_mixed_config(True, dtype))
        for write_norm in (False, True):
            sig = dict(q_ptr=e, neg_ptr=e, scale_ptr=e, alpha_ptr=e, hidx_ptr="*i64", cnt_ptr="*i64", pairs_ptr="*i64",
                       inv_tau_ptr=a, out_ptr=a if write_norm else e, P="i32", H="i32", Q="i32", C="i32",
                       P_TILES="i32", WRITE_NORM="constexpr", F64="constexpr", BLOCK_P="constexpr",
                       BLOCK_C="constexpr")
            out.append((_mixed_kernel, sig, dict(const, WRITE_NORM=write_norm, F64=f64), opt))
        sig = dict(g_ptr=e, den_ptr=a, neg_ptr=e, scale_ptr=e, alpha_ptr=e, hidx_ptr="*i64", cnt_ptr="*i64", pairs_ptr="*i64",
                   inv_tau_ptr=a, out_ptr=e, P="i32", H="i32", Q="i32", C="i32", C_TILES="i32",
                   F64="constexpr", BLOCK_P="constexpr", BLOCK_C="constexpr")
        out.append((_mixed_bwd_kernel, sig, dict(const, F64=f64), opt))
    return out
