"""Triton kernels for the soft SupCon denominator (SPEC §4): row log-sum-exp of cosine logits.

Math: s_ik = inv_tau · f_i·f_k on unit rows f (B, N, C); lse_i = LSE_{k≠i, valid_k} s_ik (−inf when
row i has no such column), online over column tiles (running max with a −inf-safe shift). Backward,
with a_i = g_i where g_i ≠ 0 and lse_i > −inf (else 0) and p_ik = exp(s_ik − lse_i):
grad f_j = inv_tau · Σ_{k≠j} (a_j p_jk [valid_k] + a_k p_kj [valid_j]) f_k. Since s is symmetric
both terms come out of the same row sweep, so each program writes only its own rows: no atomics,
deterministic. Same formulas as csrc/include/affseg/supcon_math.h.

Memory traffic: forward reads f once per row tile (B·N·C·(N/BLOCK_M) elements from L2) and writes
B·N statistics; backward adds the gradient (B·N·C). FLOPs: 2·B·N²·C forward, 4·B·N²·C backward.
Nothing of size N² is stored.

Limits: C ≤ 1024 (one channel block per tile); float32 or float64 (float64 dots in float64). fp32
``tl.dot`` takes INPUT_PRECISION ("ieee" by default: tf32's 1e-3 error exceeds SPEC's 1e-4).
NaN in a row's logits makes its lse NaN (an explicit flag, since tl.max's NaN handling is unspecified).
Must match ``affseg.reference.soft_supcon_loss`` through ``affseg.soft_supcon_loss``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _cos_lse_fwd_kernel(f_ptr, valid_ptr, lse_ptr, N, C, inv_tau,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                        INPUT_PRECISION: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    cs = tl.arange(0, BLOCK_C)
    r_mask = rows < N
    c_mask = cs < C
    base = f_ptr + b * N * C
    q = tl.load(base + rows[:, None].to(tl.int64) * C + cs[None, :], mask=r_mask[:, None] & c_mask[None, :], other=0.0)
    m = tl.full([BLOCK_M], float("-inf"), dtype=q.dtype)
    s_sum = tl.zeros([BLOCK_M], dtype=q.dtype)
    nan = tl.zeros([BLOCK_M], dtype=tl.int32)
    for k0 in range(0, N, BLOCK_N):
        cols = k0 + tl.arange(0, BLOCK_N)
        k_mask = cols < N
        kt = tl.load(base + cols[:, None].to(tl.int64) * C + cs[None, :], mask=k_mask[:, None] & c_mask[None, :], other=0.0)
        vk = tl.load(valid_ptr + b * N + cols, mask=k_mask, other=0) != 0
        s = tl.dot(q, tl.trans(kt), input_precision=INPUT_PRECISION) * inv_tau
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
def _cos_lse_bwd_kernel(f_ptr, valid_ptr, grad_ptr, lse_ptr, out_ptr, N, C, inv_tau,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                        INPUT_PRECISION: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    cs = tl.arange(0, BLOCK_C)
    r_mask = rows < N
    c_mask = cs < C
    base = f_ptr + b * N * C
    q = tl.load(base + rows[:, None].to(tl.int64) * C + cs[None, :], mask=r_mask[:, None] & c_mask[None, :], other=0.0)
    g_j = tl.load(grad_ptr + b * N + rows, mask=r_mask, other=0.0)
    l_j = tl.load(lse_ptr + b * N + rows, mask=r_mask, other=0.0)
    v_j = tl.load(valid_ptr + b * N + rows, mask=r_mask, other=0) != 0
    live_j = (g_j != 0.0) & (l_j != float("-inf"))
    a_j = tl.where(live_j, g_j, 0.0)
    l_j = tl.where(live_j, l_j, 0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_C], dtype=q.dtype)
    for k0 in range(0, N, BLOCK_N):
        cols = k0 + tl.arange(0, BLOCK_N)
        k_mask = cols < N
        kt = tl.load(base + cols[:, None].to(tl.int64) * C + cs[None, :], mask=k_mask[:, None] & c_mask[None, :], other=0.0)
        v_k = tl.load(valid_ptr + b * N + cols, mask=k_mask, other=0) != 0
        g_k = tl.load(grad_ptr + b * N + cols, mask=k_mask, other=0.0)
        l_k = tl.load(lse_ptr + b * N + cols, mask=k_mask, other=0.0)
        live_k = (g_k != 0.0) & (l_k != float("-inf"))
        a_k = tl.where(live_k, g_k, 0.0)
        l_k = tl.where(live_k, l_k, 0.0)
        s = tl.dot(q, tl.trans(kt), input_precision=INPUT_PRECISION) * inv_tau
        forward = tl.where(v_k[None, :] & live_j[:, None], a_j[:, None] * tl.exp(s - l_j[:, None]), 0.0)
        transposed = tl.where(v_j[:, None] & live_k[None, :], a_k[None, :] * tl.exp(s - l_k[None, :]), 0.0)
        off_diag = (rows[:, None] != cols[None, :]) & k_mask[None, :]
        w = tl.where(off_diag, forward + transposed, 0.0).to(kt.dtype)
        acc += tl.dot(w, kt, input_precision=INPUT_PRECISION)
    tl.store(out_ptr + b * N * C + rows[:, None].to(tl.int64) * C + cs[None, :], acc * inv_tau,
             mask=r_mask[:, None] & c_mask[None, :])


def _blocks(N: int, C: int):
    block_c = max(16, triton.next_power_of_2(C))
    if block_c > 1024:
        raise ValueError(f"the Triton cos_lse kernels take C <= 1024 channels, got {C}")
    block = 32 if N <= 32 else 64
    return block, block, block_c


def cos_lse_fwd(f: torch.Tensor, valid: torch.Tensor, inv_tau: float, input_precision: str = "ieee") -> torch.Tensor:
    """lse (B, N) for unit rows f (B, N, C) float32/float64 and valid (B, N) bool."""
    f = f.contiguous()
    B, N, C = f.shape
    lse = torch.empty(B, N, dtype=f.dtype, device=f.device)
    if lse.numel() == 0:
        return lse
    bm, bn, bc = _blocks(N, C)
    _cos_lse_fwd_kernel[(B, triton.cdiv(N, bm))](
        f, valid.contiguous().view(torch.uint8), lse, N, C, float(inv_tau),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_C=bc, INPUT_PRECISION=input_precision,
    )
    return lse


def cos_lse_bwd(grad_lse: torch.Tensor, f: torch.Tensor, valid: torch.Tensor, lse: torch.Tensor, inv_tau: float,
                input_precision: str = "ieee") -> torch.Tensor:
    """grad f (B, N, C) of Σ_i grad_lse_i · lse_i, recomputing the logits tile by tile."""
    f = f.contiguous()
    B, N, C = f.shape
    out = torch.empty_like(f)
    if out.numel() == 0:
        return out.zero_()
    bm, bn, bc = _blocks(N, C)
    _cos_lse_bwd_kernel[(B, triton.cdiv(N, bm))](
        f, valid.contiguous().view(torch.uint8), grad_lse.contiguous(), lse.contiguous(), out, N, C, float(inv_tau),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_C=bc, INPUT_PRECISION=input_precision,
    )
    return out
