"""Triton kernel of the fused patch statistics (SPEC §5): per-tile entropy, confidence and counts.

Math, per pixel with logits l_1..l_K: m = max l, e_k = exp(l_k − m), s = Σ e_k,
p_k = e_k / s, log p_k = l_k − m − log s, and 1 − p_k = o_k / s with o_k = Σ_{j≠k} e_j taken
without cancellation (o_k = s − e_k off the maximum, Σ_{e_j<1} e_j + ties − 1 at it), so logits of
±1e4 stay finite and p = 1 exactly gives h = 0. Binary h_k = −[p_k log p_k + (1−p_k) log(1−p_k)],
shannon H = −Σ p_k log p_k / log K, 0·log 0 = 0. The same formulas as
csrc/include/affseg/entropy_math.h (which the C++ CPU and CUDA kernels share).

Schedule: one program per (tile, image) reads the tile's K logits per pixel once (and the class
mask once) and writes K entropies, K confidences and K counts; sums stay in registers. Tiles go on
grid axis 0 (up to 2^31 − 1 per image), images on axis 1 in launches of at most 65,535.

Work (counted by `work`; P pixels per image, e = logit bytes): FLOPs ≈ B·P·K·(12 binary or 7
shannon) (exp, log, products and sums per class and pixel, exp and log counted as one each); bytes:
B·P·K·e logits + B·P·8 mask (if any) read, B·T·(2·K or K + 1)·a + B·T·K·8 written (T tiles,
a = 4 or 8 output bytes).

Limits (LIMITS): K ≤ 64 (the class axis is padded to K_POW2 and held in registers: _launch_config
shrinks the pixel block as K grows so that nothing spills at sm_90); float16, bfloat16 and float32
logits are computed in float32, float64 in float64; a 1-ulp-of-float subnormal o_k counts as 0 in
both. Fewer than 2^31 tiles per image (one grid axis).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._launch import batch_chunks, check_grid, device_of, scalar

LIMITS = {"classes": 64, "dtypes": (torch.float16, torch.bfloat16, torch.float32, torch.float64)}

_TINY = 1.17549435e-38  # smallest normal float32: below it (1 − p) log(1 − p) is taken as 0


@triton.jit
def _patch_entropy_kernel(
    x_ptr, mask_ptr, ent_ptr, conf_ptr, cnt_ptr,
    K, S0, S1, S2, P0, P1, P2, p0, p1, p2, inv_log_k_ptr,
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
    N = tl.cast(S0, tl.int64) * S1 * S2  # not S0.to(): Triton passes a size equal to 1 as a Python int

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
            h = tl.sum(plogp, axis=0) * tl.load(inv_log_k_ptr)
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


def _launch_config(num_classes: int, pixels_per_tile: int, block: int = 256) -> dict:
    """BLOCK (pixels per step) and num_warps: the [K_POW2, BLOCK] tiles hold ~8 live values per
    element, so BLOCK shrinks as K grows to keep every thread's share in registers (sm_90, ptxas)."""
    k_pow2 = triton.next_power_of_2(num_classes)
    if k_pow2 >= 64:
        # 64 x 32 tiles spilled 12 B (fp16/bf16 in 8 warps, 2-D images: S0 = 1 folded in) or 124 B
        # (fp64 in 4 warps); 64 x 16 in 4 warps was clean in every variant
        pixels = 16
    else:  # 4096-element tiles spill at K = 32 (fp64 worst)
        pixels = max(32, min(block, 2048 // k_pow2, triton.next_power_of_2(pixels_per_tile)))
    return dict(BLOCK=pixels, num_warps=8 if k_pow2 * pixels >= 2048 else 4)


def patch_entropy(logits: torch.Tensor, patch_size, shannon: bool, class_mask, block: int = 256):
    """(entropy, mean_conf, count) of SPEC §5 for contiguous logits (B, K, *S); mask int64 or None."""
    batch, num_classes, *spatial = logits.shape
    if num_classes > LIMITS["classes"] or logits.dtype not in LIMITS["dtypes"]:
        raise ValueError(f"the Triton patch_entropy kernel takes K <= {LIMITS['classes']} classes of "
                         f"{LIMITS['dtypes']}, got K={num_classes} of {logits.dtype}")
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
    cfg = _launch_config(num_classes, patch[0] * patch[1] * patch[2], block)
    inv_log_k = scalar(1.0 / math.log(num_classes) if num_classes > 1 else 0.0, logits, out_dtype)
    n_tiles = check_grid("patch_entropy", tiles[0] * tiles[1] * tiles[2])
    with device_of(logits):
        # batch slices keep grid axis 1 within 65,535; every tensor is batch-major and contiguous
        for b0, b1 in batch_chunks(batch):
            mask = class_mask[b0:b1] if class_mask is not None else logits[b0:b1]
            _patch_entropy_kernel[(n_tiles, b1 - b0)](
                logits[b0:b1], mask, ent[b0:b1], conf[b0:b1], count[b0:b1],
                num_classes, *sizes, *tiles, *patch, inv_log_k,
                HAS_MASK=class_mask is not None, SHANNON=shannon, K_POW2=triton.next_power_of_2(num_classes),
                ACC=acc, TINY=_TINY, **cfg,
            )
    return ent, conf, count


def work(logits_shape, patch_size, shannon: bool, masked: bool, dtype: torch.dtype) -> tuple[float, float]:
    """(FLOPs, bytes) of one patch_entropy call, counted as in this file's header."""
    batch, k, *spatial = logits_shape
    pixels = math.prod(spatial)
    n_tiles = math.prod(-(-s // int(p)) for s, p in zip(spatial, patch_size))
    e = torch.empty((), dtype=dtype).element_size()
    a = 8 if dtype == torch.float64 else 4
    flops = batch * pixels * k * (7 if shannon else 12)
    k_ent = 1 if (shannon and not masked) else k
    read = batch * pixels * (k * e + (8 if masked else 0))
    written = batch * n_tiles * ((k_ent + k) * a + k * 8)
    return float(flops), float(read + written)
