"""Triton kernels of UAFS re-weighting (SPEC §6): y = x·(2 − U) and its backward.

Math, per pixel with attention logits a_1..a_M: m = max a, d_j = a_j − m, e_j = exp(d_j),
s = Σ e_j, H = −Σ p_j log p_j = log s − Σ e_j d_j / s, U = H / log M.
Backward: grad_x_c = g_c (2 − U), dU = −Σ_c g_c x_c, grad_a_j = −dU p_j (d_j − log s + H) / log M.
The same formulas as csrc/include/affseg/uafs_math.h (shared by the C++ CPU and CUDA kernels).

Memory traffic: one program per (block of BLOCK pixels, batch). Forward reads the block's M
attention logits once, then streams over the C channels of x (BLOCK_C at a time) writing y.
Backward reads att, g and x once and writes grad_x and grad_att; U is recomputed from att, so no
softmax or entropy map is stored between the passes.

Limits: M padded to M_POW2 in registers (any M ≥ 2 up to a few dozen). float16/32 compute in
float32 and store the input dtype; float64 computes in float64.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit
def _att_stats(att_ptr, b, M, N, offs, ok, M_POW2: tl.constexpr, ACC: tl.constexpr):
    js = tl.arange(0, M_POW2)[:, None]
    ld = (js < M) & ok[None, :]
    a = tl.load(att_ptr + (b * M + js) * N + offs[None, :], mask=ld, other=float("-inf")).to(ACC)
    mx = tl.max(a, axis=0)
    d = a - mx[None, :]
    e = tl.where(ld, tl.exp(d), 0.0)
    s = tl.sum(e, axis=0)
    log_s = tl.log(s)
    h = log_s - tl.sum(tl.where(ld, e * d, 0.0), axis=0) / s
    return js, ld, d, e, s, log_s, h


@triton.jit
def _uafs_fwd_kernel(
    x_ptr, att_ptr, y_ptr, C, M, N, inv_log_m,
    M_POW2: tl.constexpr, BLOCK: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < N
    _, _, _, _, _, _, h = _att_stats(att_ptr, b, M, N, offs, ok, M_POW2, ACC)
    w = 2.0 - h * inv_log_m
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)[:, None]
        ptr = (b * C + cs) * N + offs[None, :]
        st = (cs < C) & ok[None, :]
        xv = tl.load(x_ptr + ptr, mask=st, other=0.0).to(ACC)
        tl.store(y_ptr + ptr, (xv * w[None, :]).to(y_ptr.dtype.element_ty), mask=st)


@triton.jit
def _uafs_bwd_kernel(
    g_ptr, x_ptr, att_ptr, gx_ptr, ga_ptr, C, M, N, inv_log_m,
    M_POW2: tl.constexpr, BLOCK: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < N
    js, ld, d, e, s, log_s, h = _att_stats(att_ptr, b, M, N, offs, ok, M_POW2, ACC)
    w = 2.0 - h * inv_log_m
    du = tl.zeros([BLOCK], dtype=ACC)
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)[:, None]
        ptr = (b * C + cs) * N + offs[None, :]
        st = (cs < C) & ok[None, :]
        gv = tl.load(g_ptr + ptr, mask=st, other=0.0).to(ACC)
        xv = tl.load(x_ptr + ptr, mask=st, other=0.0).to(ACC)
        tl.store(gx_ptr + ptr, (gv * w[None, :]).to(gx_ptr.dtype.element_ty), mask=st)
        du -= tl.sum(gv * xv, axis=0)
    p = e / s[None, :]
    dU_da = -p * ((d - log_s[None, :]) + h[None, :]) * inv_log_m
    ga = du[None, :] * tl.where(ld, dU_da, 0.0)
    tl.store(ga_ptr + (b * M + js) * N + offs[None, :], ga.to(ga_ptr.dtype.element_ty), mask=ld)


def _launch_params(x: torch.Tensor, att: torch.Tensor, block: int):
    batch, channels = x.shape[:2]
    m = att.shape[1]
    n = int(math.prod(x.shape[2:]))
    acc = tl.float64 if x.dtype == torch.float64 else tl.float32
    block = max(32, min(block, triton.next_power_of_2(max(n, 1))))
    grid = (triton.cdiv(n, block), batch)
    return batch, channels, m, n, acc, block, grid


def uafs_fwd(x: torch.Tensor, att: torch.Tensor, block: int = 128, block_c: int = 16) -> torch.Tensor:
    """x·(2 − U) for contiguous x (B, C, *S) and att (B, M, *S) of one dtype."""
    y = torch.empty_like(x)
    batch, channels, m, n, acc, block, grid = _launch_params(x, att, block)
    if y.numel() == 0:
        return y
    _uafs_fwd_kernel[grid](
        x, att, y, channels, m, n, 1.0 / math.log(m),
        M_POW2=triton.next_power_of_2(m), BLOCK=block, BLOCK_C=block_c, ACC=acc,
    )
    return y


def uafs_bwd(grad: torch.Tensor, x: torch.Tensor, att: torch.Tensor, block: int = 128, block_c: int = 16):
    """(grad_x, grad_att) of uafs_fwd for contiguous grad, x and att."""
    grad_x = torch.empty_like(x)
    batch, channels, m, n, acc, block, grid = _launch_params(x, att, block)
    if channels == 0 or att.numel() == 0:
        return grad_x, torch.zeros_like(att)
    grad_att = torch.empty_like(att)
    _uafs_bwd_kernel[grid](
        grad, x, att, grad_x, grad_att, channels, m, n, 1.0 / math.log(m),
        M_POW2=triton.next_power_of_2(m), BLOCK=block, BLOCK_C=block_c, ACC=acc,
    )
    return grad_x, grad_att
