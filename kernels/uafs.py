"""Triton kernels of UAFS re-weighting (SPEC §6): y = x·(2 − U) and its backward.

Math, per pixel with attention logits a_1..a_M: m = max a, d_j = a_j − m, e_j = exp(d_j),
s = Σ e_j, H = −Σ p_j log p_j = log s − Σ e_j d_j / s, U = H / log M.
Backward: grad_x_c = g_c (2 − U), dU = −Σ_c g_c x_c, grad_a_j = −dU p_j (d_j − log s + H) / log M.
The same formulas as csrc/include/affseg/uafs_math.h (shared by the C++ CPU and CUDA kernels).

Schedule: one program per (block of BLOCK pixels, image); pixel blocks on grid axis 0, images on
axis 1 in launches of at most 65,535. Forward reads the block's M attention logits once, then
streams over the C channels of x (BLOCK_C at a time) writing y. Backward reads att, g and x once
and writes grad_x and grad_att; U is recomputed from att, so no softmax or entropy map is stored.

Work (counted by `work`; P pixels per image, e = element bytes): forward FLOPs B·P·(5·M + C + 2),
bytes B·P·(M + 2·C)·e; backward FLOPs B·P·(10·M + 3·C + 2), bytes B·P·(2·M + 4·C)·e (exp and log
count as one FLOP each).

Limits (LIMITS): M ≤ 64 (the attention axis is padded to M_POW2 and held in registers;
_launch_config shrinks the pixel block as M grows so nothing spills at sm_90), any C; float16,
bfloat16 and float32 compute in float32 and store the input dtype, float64 computes in float64.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._launch import batch_chunks, device_of, scalar

LIMITS = {"att_channels": 64, "dtypes": (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


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
    x_ptr, att_ptr, y_ptr, C, M, N, inv_log_m_ptr,
    M_POW2: tl.constexpr, BLOCK: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < N
    inv_log_m = tl.load(inv_log_m_ptr)
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
    g_ptr, x_ptr, att_ptr, gx_ptr, ga_ptr, C, M, N, inv_log_m_ptr,
    M_POW2: tl.constexpr, BLOCK: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < N
    inv_log_m = tl.load(inv_log_m_ptr)
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


def _launch_config(m: int, n: int, block: int = 128, block_c: int = 16) -> dict:
    """BLOCK pixels per program and the channel step: the [M_POW2, BLOCK] attention tiles hold ~6
    live values per element, so BLOCK shrinks as M grows (no spills at sm_90, ptxas -v)."""
    cap = max(32, 2048 // triton.next_power_of_2(m))
    return dict(BLOCK=max(32, min(block, cap, triton.next_power_of_2(max(n, 1)))), BLOCK_C=block_c, num_warps=4)


def _launch(kernel, tensors, x, att, block, block_c):
    """Launch kernel over pixel blocks × images, images in slices of ≤ 65,535 (grid axis 1)."""
    batch, channels, m = x.shape[0], x.shape[1], att.shape[1]
    if m > LIMITS["att_channels"] or x.dtype not in LIMITS["dtypes"]:
        raise ValueError(f"the Triton UAFS kernels take M <= {LIMITS['att_channels']} attention channels "
                         f"of {LIMITS['dtypes']}, got M={m} of {x.dtype}")
    n = int(math.prod(x.shape[2:]))
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    acc = tl.float64 if x.dtype == torch.float64 else tl.float32
    cfg = _launch_config(m, n, block, block_c)
    inv_log_m = scalar(1.0 / math.log(m), x, acc_dtype)
    with device_of(x):
        for b0, b1 in batch_chunks(batch):
            kernel[(triton.cdiv(n, cfg["BLOCK"]), b1 - b0)](
                *(t[b0:b1] for t in tensors), channels, m, n, inv_log_m,
                M_POW2=triton.next_power_of_2(m), ACC=acc, **cfg,
            )


def uafs_fwd(x: torch.Tensor, att: torch.Tensor, block: int = 128, block_c: int = 16) -> torch.Tensor:
    """x·(2 − U) for contiguous x (B, C, *S) and att (B, M, *S) of one dtype."""
    y = torch.empty_like(x)
    if y.numel() == 0:
        return y
    _launch(_uafs_fwd_kernel, (x, att, y), x, att, block, block_c)
    return y


def uafs_bwd(grad: torch.Tensor, x: torch.Tensor, att: torch.Tensor, block: int = 128, block_c: int = 16):
    """(grad_x, grad_att) of uafs_fwd for contiguous grad, x and att."""
    grad_x = torch.empty_like(x)
    if x.shape[1] == 0 or att.numel() == 0:
        return grad_x, torch.zeros_like(att)
    grad_att = torch.empty_like(att)
    _launch(_uafs_bwd_kernel, (grad, x, att, grad_x, grad_att), x, att, block, block_c)
    return grad_x, grad_att


def work(x_shape, m: int, dtype: torch.dtype, backward: bool = False) -> tuple[float, float]:
    """(FLOPs, bytes) of one uafs_fwd (or uafs_bwd) call, counted as in this file's header."""
    batch, c, *spatial = x_shape
    p = batch * math.prod(spatial)
    e = torch.empty((), dtype=dtype).element_size()
    if not backward:
        return float(p * (5 * m + c + 2)), float(p * (m + 2 * c) * e)
    return float(p * (10 * m + 3 * c + 2)), float(p * (2 * m + 4 * c) * e)
