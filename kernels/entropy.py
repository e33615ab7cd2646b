"""Triton kernel of the fused patch statistics (SPEC §5): per-tile entropy, confidence and counts.

Math, per pixel with logits l_1..l_K: m = max l, e_k = exp(l_k − m), s = Σ e_k,
p_k = e_k / s, log p_k = l_k − m − log s, and 1 − p_k = o_k / s with o_k = Σ_{j≠k} e_j taken
without cancellation (o_k = s − e_k off the maximum, Σ_{e_j<1} e_j + ties − 1 at it), so logits of
±1e4 stay finite and p = 1 exactly gives h = 0. Binary h_k = −[p_k log p_k + (1−p_k) log(1−p_k)],
shannon H = −Σ p_k log p_k / log K, 0·log 0 = 0. The same formulas as
csrc/include/affseg/entropy_math.h (which the C++ CPU and CUDA kernels share).

Memory traffic: one program per (tile, batch) reads the tile's K logits per pixel once (and the
class mask once) and writes K entropies, K confidences and K counts; sums stay in registers.

Limits: K ≤ 2^k padded to K_POW2 in registers (fine to K of a few dozen). float16/32 logits are
computed in float32 and float64 in float64; a 1-ulp-of-float subnormal o_k counts as 0 in both.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

_TINY = 1.17549435e-38  # smallest normal float32: below it (1 − p) log(1 − p) is taken as 0


@triton.jit
def _patch_entropy_kernel(
    x_ptr, mask_ptr, ent_ptr, conf_ptr, cnt_ptr,
    K, S0, S1, S2, P0, P1, P2, p0, p1, p2, inv_log_k,
    HAS_MASK: tl.constexpr, SHANNON: tl.constexpr, K_POW2: tl.constexpr, BLOCK: tl.constexpr,
    ACC: tl.constexpr, TINY: tl.constexpr,
):
    tile = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    tz = tile // (P1 * P2)
    ty = (tile // P2) % P1
    tx = tile % P2
    z0 = tz * p0
    y0 = ty * p1
    x0 = tx * p2
    nz = tl.minimum(p0, S0 - z0)
    ny = tl.minimum(p1, S1 - y0)
    nx = tl.minimum(p2, S2 - x0)
    n = nz * ny * nx
    N = S0.to(tl.int64) * S1 * S2

    ks = tl.arange(0, K_POW2)
    k_ok = ks < K
    row = (b * K + ks[:, None]) * N  # (K_POW2, 1) offsets of each class plane
    acc_h = tl.zeros([K_POW2], dtype=ACC)
    acc_p = tl.zeros([K_POW2], dtype=ACC)
    acc_n = tl.zeros([K_POW2], dtype=tl.int64)
    for start in range(0, n, BLOCK):
        t = start + tl.arange(0, BLOCK)
        ok = t < n
        dz = t // (ny * nx)
        dy = (t // nx) % ny
        dx = t % nx
        pix = ((z0 + dz).to(tl.int64) * S1 + (y0 + dy)) * S2 + (x0 + dx)
        ld = k_ok[:, None] & ok[None, :]
        lg = tl.load(x_ptr + row + pix[None, :], mask=ld, other=float("-inf")).to(ACC)
        m = tl.max(lg, axis=0)
        d = lg - m[None, :]
        e = tl.where(ld, tl.exp(d), 0.0)
        s = tl.sum(e, axis=0)
        s_lt = tl.sum(tl.where(e < 1.0, e, 0.0), axis=0)
        ties = tl.sum(tl.where(e == 1.0, 1.0, 0.0), axis=0).to(ACC)
        inv_s = 1.0 / s
        log_s = tl.log(s)
        p = e * inv_s[None, :]
        plogp = tl.where(p == 0.0, 0.0, -p * (d - log_s[None, :]))
        if SHANNON:
            h = tl.sum(plogp, axis=0) * inv_log_k
        else:
            o = tl.where(e == 1.0, (s_lt + (ties - 1.0))[None, :], s[None, :] - e)
            tiny = o < TINY
            qlogq = -(o * inv_s[None, :]) * (tl.log(tl.where(tiny, 1.0, o)) - log_s[None, :])
            h = plogp + tl.where(tiny, 0.0, qlogq)
        if HAS_MASK:
            c = tl.load(mask_ptr + b * N + pix, mask=ok, other=-1)
            member = (c[None, :] == ks[:, None]) & ok[None, :]
        else:
            member = ok[None, :] & k_ok[:, None]
        acc_p += tl.sum(tl.where(member, p, 0.0), axis=1)
        acc_n += tl.sum(member.to(tl.int64), axis=1)
        if SHANNON:
            acc_h += tl.sum(tl.where(member, h[None, :], 0.0), axis=1)
        else:
            acc_h += tl.sum(tl.where(member, h, 0.0), axis=1)

    inv_n = tl.where(acc_n > 0, 1.0 / tl.maximum(acc_n, 1).to(ACC), 0.0)
    tiles = P0 * P1 * P2
    out = (b * K + ks) * tiles + tile
    tl.store(conf_ptr + out, acc_p * inv_n, mask=k_ok)
    tl.store(cnt_ptr + out, acc_n, mask=k_ok)
    if SHANNON and not HAS_MASK:
        tl.store(ent_ptr + b * tiles + tile + ks, acc_h * inv_n, mask=ks == 0)
    else:
        tl.store(ent_ptr + out, acc_h * inv_n, mask=k_ok)


def patch_entropy(logits: torch.Tensor, patch_size, shannon: bool, class_mask, block: int = 256):
    """(entropy, mean_conf, count) of SPEC §5 for contiguous logits (B, K, *S); mask int64 or None."""
    batch, num_classes, *spatial = logits.shape
    nd = len(spatial)
    sizes = [1] * (3 - nd) + list(spatial)
    patch = [1] * (3 - nd) + [int(p) for p in patch_size]
    tiles = [-(-s // p) for s, p in zip(sizes, patch)]
    out_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    k_out = 1 if (shannon and class_mask is None) else num_classes
    grid_shape = tiles[3 - nd:]
    ent = logits.new_empty((batch, k_out, *grid_shape), dtype=out_dtype)
    conf = logits.new_empty((batch, num_classes, *grid_shape), dtype=out_dtype)
    count = logits.new_empty((batch, num_classes, *grid_shape), dtype=torch.int64)
    if conf.numel() == 0:
        return ent, conf, count
    acc = tl.float64 if out_dtype == torch.float64 else tl.float32
    pixels_per_tile = patch[0] * patch[1] * patch[2]
    block = max(32, min(block, triton.next_power_of_2(pixels_per_tile)))
    grid = (tiles[0] * tiles[1] * tiles[2], batch)
    _patch_entropy_kernel[grid](
        logits, class_mask if class_mask is not None else logits, ent, conf, count,
        num_classes, *sizes, *tiles, *patch, 1.0 / math.log(num_classes),
        HAS_MASK=class_mask is not None, SHANNON=shannon, K_POW2=triton.next_power_of_2(num_classes),
        BLOCK=block, ACC=acc, TINY=_TINY,
    )
    return ent, conf, count
