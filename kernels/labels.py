"""Triton kernels for patch label ratios φ (SPEC §1), from per-class summed-area tables.

Math: sat_k[x+1] counts the pixels of class k in [0, x] per dim (a leading zero slice per dim), so a
window's count is the inclusion–exclusion sum over its 2^ndim corners, φ_k = count_k / Σ_k count_k
(0 when the window holds no countable pixel). A window of side L around c spans c - L//2 … c - L//2
+ L - 1, clipped to the image. Same arithmetic as csrc/include/affseg/labels_math.h.

Kernels: (1) one program per (b, row of the leading dims): per-class one-hot of the row and
``tl.cumsum`` along the last dim, chunked with a carry; (2) per remaining dim, one program per
(slab, block of inner cells): ``tl.cumsum`` along that dim in place, chunked with a carry;
(3) one program per (b, window, block of centres): corner loads for all classes at once.

Memory traffic: labels read once (8 B/pixel); the int32 tables (B·K·Π(S_d+1)·4 B) written once and
read+written once per further dim; the gather reads 2^ndim·K table entries per (centre, window).

Work (counted by `work`): no floating-point work beyond one division per (centre, window, class);
bytes: 8·B·P labels read, 4·B·K·Π(S_d+1) tables written, read+written again once per further dim,
then 2^ndim·4·K bytes gathered and 4·K + 1 written per (image, window, centre), 8·ndim per centre read.

Grids: every large count is on grid axis 0 (limit 2^31 − 1; axes 1 and 2 stop at 65,535): the row
kernel takes B × rows, the scan kernel slabs × column blocks, the gather kernel (image, window) ×
centre blocks, each flattened into axis 0.

Limits (LIMITS): K ≤ 64 (the class axis is padded to BLOCK_K in registers; _launch_config shrinks
the pixel and centre blocks as K grows so nothing spills at sm_90), W ≤ 64 windows. Labels int64
contiguous (B, *S) with 2 or 3 spatial dims, fewer than 2^31 pixels per image (int32 counts: not
expressible in LIMITS, so the launcher raises); labels outside [0, K) and ``ignore_index`` count in
no class. Must match
``affseg.reference.patch_label_ratios`` exactly (integer counts, one float32 division).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._launch import check_grid, device_of

LIMITS = {"classes": 64, "windows": 64}


@triton.jit
def _row_prefix_kernel(labels_ptr, sat_ptr, rows, last, size1, table1, table2, cells, K, ignore_index,
                       NDIM: tl.constexpr, HAS_IGNORE: tl.constexpr, BLOCK_K: tl.constexpr,
                       BLOCK_X: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // rows
    r = pid % rows
    if NDIM == 2:
        offset = (r + 1) * table1 + 1
    else:
        offset = ((r // size1 + 1) * table1 + (r % size1 + 1)) * table2 + 1
    ks = tl.arange(0, BLOCK_K)
    k_mask = ks < K
    row_ptr = labels_ptr + pid * last
    out_ptr = sat_ptr + (b * K + ks.to(tl.int64)) * cells + offset
    carry = tl.zeros([BLOCK_K], dtype=tl.int32)
    for x0 in range(0, last, BLOCK_X):
        xs = x0 + tl.arange(0, BLOCK_X)
        x_mask = xs < last
        lab = tl.load(row_ptr + xs, mask=x_mask, other=-1)
        hit = (lab[None, :] == ks[:, None]) & x_mask[None, :]
        if HAS_IGNORE:
            hit = hit & (lab[None, :] != ignore_index)
        hit = hit.to(tl.int32)
        prefix = tl.cumsum(hit, axis=1) + carry[:, None]
        tl.store(out_ptr[:, None] + xs[None, :], prefix, mask=k_mask[:, None] & x_mask[None, :])
        carry += tl.sum(hit, axis=1)


@triton.jit
def _scan_dim_kernel(sat_ptr, n, inner, col_blocks, BLOCK_N: tl.constexpr, BLOCK_I: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    slab = pid // col_blocks
    cols = (pid % col_blocks) * BLOCK_I + tl.arange(0, BLOCK_I)
    c_mask = cols < inner
    base = sat_ptr + slab * n * inner
    carry = tl.zeros([BLOCK_I], dtype=tl.int32)
    for n0 in range(0, n, BLOCK_N):
        idx = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        ptrs = base + idx[:, None] * inner + cols[None, :]
        mask = (idx[:, None] < n) & c_mask[None, :]
        v = tl.load(ptrs, mask=mask, other=0)
        tl.store(ptrs, tl.cumsum(v, axis=0) + carry[None, :], mask=mask)
        carry += tl.sum(v, axis=0)


@triton.jit
def _bounds(center, window, size):
    start = center - window // 2
    end = start + window
    lo = tl.minimum(tl.maximum(start, 0), size)
    hi = tl.minimum(tl.maximum(end, 0), size)
    return lo, tl.maximum(hi, lo)


@triton.jit
def _gather_kernel(sat_ptr, centers_ptr, windows_ptr, phi_ptr, valid_ptr, N, W, K, cells, n_blocks,
                   size0, size1, size2, NDIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    bw = pid // n_blocks
    b = bw // W
    w = bw % W
    ns = (pid % n_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = ns < N
    ks = tl.arange(0, BLOCK_K)
    k_mask = ks < K
    window = tl.load(windows_ptr + w)
    c_ptr = centers_ptr + (b * N + ns) * NDIM
    lo0, hi0 = _bounds(tl.load(c_ptr, mask=n_mask, other=0), window, size0)
    lo1, hi1 = _bounds(tl.load(c_ptr + 1, mask=n_mask, other=0), window, size1)
    table = sat_ptr + (b * K + ks.to(tl.int64)) * cells
    mask = n_mask[:, None] & k_mask[None, :]
    if NDIM == 2:
        t1 = size1 + 1
        count = (tl.load(table[None, :] + (hi0 * t1 + hi1)[:, None], mask=mask, other=0)
                 - tl.load(table[None, :] + (lo0 * t1 + hi1)[:, None], mask=mask, other=0)
                 - tl.load(table[None, :] + (hi0 * t1 + lo1)[:, None], mask=mask, other=0)
                 + tl.load(table[None, :] + (lo0 * t1 + lo1)[:, None], mask=mask, other=0))
    else:
        lo2, hi2 = _bounds(tl.load(c_ptr + 2, mask=n_mask, other=0), window, size2)
        t2 = size2 + 1
        t1 = (size1 + 1) * t2
        count = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.int32)
        # Corner (a, b, c) of the box, sign (-1)^(number of lower bounds).
        for corner in tl.static_range(8):
            i0 = hi0 if (corner // 4) % 2 == 1 else lo0
            i1 = hi1 if (corner // 2) % 2 == 1 else lo1
            i2 = hi2 if corner % 2 == 1 else lo2
            v = tl.load(table[None, :] + (i0 * t1 + i1 * t2 + i2)[:, None], mask=mask, other=0)
            if (corner // 4 + corner // 2 + corner) % 2 == 1:
                count += v
            else:
                count -= v
    total = tl.sum(count, axis=1)
    phi = count.to(tl.float32) / tl.maximum(total, 1).to(tl.float32)[:, None]
    out = (bw * N + ns) * K
    tl.store(phi_ptr + out[:, None] + ks[None, :], phi, mask=mask)
    tl.store(valid_ptr + bw * N + ns, (total > 0).to(tl.uint8), mask=n_mask)


def _launch_config(num_classes: int) -> dict:
    """Block sizes for K classes: the row kernel's [BLOCK_K, BLOCK_X] one-hot/cumsum tile and the
    gather kernel's [BLOCK_N, BLOCK_K] corner tiles shrink as K grows (no spills at sm_90: a 3-D
    32×64 gather tile spilled 276 B, so the gather tile holds at most 1024 entries)."""
    block_k = triton.next_power_of_2(num_classes)
    return dict(BLOCK_K=block_k, BLOCK_X=max(16, min(256, 2048 // block_k)),
                BLOCK_N=max(16, min(128, 1024 // block_k)), BLOCK_I=128, BLOCK_SCAN=64)


def patch_label_ratios(labels: torch.Tensor, centers: torch.Tensor, window_sizes, num_classes: int,
                       ignore_index: int | None):
    """φ (B, W, N, K) float32 and valid (B, W, N) bool for int64 labels (B, *S), centres (B, N, ndim)."""
    labels = labels.contiguous()
    centers = centers.contiguous()
    batch, spatial = labels.shape[0], tuple(labels.shape[1:])
    ndim = len(spatial)
    if math.prod(spatial) >= 2**31:
        raise ValueError(f"patch_label_ratios counts in int32: an image must hold < 2^31 pixels, got {spatial}")
    W, N, K = len(window_sizes), centers.shape[1], num_classes
    if K > LIMITS["classes"] or W > LIMITS["windows"]:
        raise ValueError(f"the Triton patch_label_ratios kernels take K <= {LIMITS['classes']} classes and "
                         f"W <= {LIMITS['windows']} windows, got K={K}, W={W}")
    phi = torch.empty(batch, W, N, K, dtype=torch.float32, device=labels.device)
    valid = torch.empty(batch, W, N, dtype=torch.bool, device=labels.device)
    if phi.numel() == 0 and valid.numel() == 0:
        return phi, valid
    tables = tuple(s + 1 for s in spatial)
    cells = math.prod(tables)
    sat = torch.zeros(batch, K, cells, dtype=torch.int32, device=labels.device)
    cfg = _launch_config(K)
    last = spatial[-1]
    rows = math.prod(spatial[:-1])
    with device_of(labels):
        if batch * rows > 0 and last > 0:
            _row_prefix_kernel[(check_grid("patch_label_ratios", batch * rows),)](
                labels, sat, rows, last, spatial[1] if ndim == 3 else 1, tables[1], tables[2] if ndim == 3 else 1,
                cells, K, 0 if ignore_index is None else ignore_index,
                NDIM=ndim, HAS_IGNORE=ignore_index is not None, BLOCK_K=cfg["BLOCK_K"],
                BLOCK_X=max(16, min(cfg["BLOCK_X"], triton.next_power_of_2(last))),
            )
        for d in range(ndim - 1):
            inner = math.prod(tables[d + 1:])
            slabs = batch * K * math.prod(tables[:d])
            block_i = max(16, min(cfg["BLOCK_I"], triton.next_power_of_2(inner)))
            col_blocks = triton.cdiv(inner, block_i)
            _scan_dim_kernel[(check_grid("patch_label_ratios", slabs * col_blocks),)](
                sat, tables[d], inner, col_blocks,
                BLOCK_N=max(16, min(cfg["BLOCK_SCAN"], triton.next_power_of_2(tables[d]))), BLOCK_I=block_i,
            )
        windows = torch.tensor(window_sizes, dtype=torch.int64).to(labels.device, non_blocking=True)
        block_n = max(16, min(cfg["BLOCK_N"], triton.next_power_of_2(N)))
        if N > 0:
            n_blocks = triton.cdiv(N, block_n)
            _gather_kernel[(check_grid("patch_label_ratios", batch * W * n_blocks),)](
                sat, centers, windows, phi, valid.view(torch.uint8), N, W, K, cells, n_blocks,
                spatial[0], spatial[1], spatial[2] if ndim == 3 else 1,
                NDIM=ndim, BLOCK_N=block_n, BLOCK_K=cfg["BLOCK_K"],
            )
    return phi, valid


def work(labels_shape, num_centers: int, num_windows: int, num_classes: int) -> tuple[float, float]:
    """(FLOPs, bytes) of one patch_label_ratios call, counted as in this file's header."""
    batch, *spatial = labels_shape
    ndim = len(spatial)
    pixels = math.prod(spatial)
    cells = math.prod(s + 1 for s in spatial)
    table = 4 * batch * num_classes * cells
    gathers = batch * num_windows * num_centers
    nbytes = (8 * batch * pixels + table + 2 * table * (ndim - 1)
              + gathers * (2**ndim * 4 * num_classes + 4 * num_classes + 1) + 8 * ndim * batch * num_centers)
    return float(gathers * num_classes), float(nbytes)
