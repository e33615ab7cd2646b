"""Launcher calls, on meta tensors, that reach every configuration a launcher of kernels/*.py can
choose inside its LIMITS: each dtype, the sizes where its block choices change up to the declared
limit, each input precision, and grid extremes (huge N, huge batch). Used by triton_sm90_probe.py.

Each CASES[family](module, torch) yields (label, thunk); the thunk calls the launchers.
"""
from __future__ import annotations


def _sizes(limit, small):
    """Powers of two from small up to limit, plus limit and one odd size in between."""
    out, v = [], small
    while v < limit:
        out.append(v)
        v *= 2
    return sorted(set(out + [limit, max(small, limit * 3 // 5 + 1)]))


def _few(limit, small):
    """small, a middle power of two, limit and one odd size: for launchers whose choices change only
    at the ends (their block sizes follow the padded size smoothly)."""
    mid = max(small, min(limit, 8 * small))
    return sorted({small, mid, limit, max(small, limit * 3 // 5 + 1)})


def _name(dtype):
    return str(dtype).replace("torch.", "")


def _kernel_dtypes(mod, limits):
    """The dtypes a launcher sees: float16/bfloat16 calls reach it as float32 with the dot precision
    of their dtype ("tf32", "bf16"), which the float32 cases compile through INPUT_PRECISIONS."""
    return [d for d in limits["dtypes"] if d in getattr(mod, "KERNEL_DTYPES", limits["dtypes"])]


def supcon(mod, torch):
    meta = dict(device="meta")
    for dtype in _kernel_dtypes(mod, mod.LIMITS):
        precisions = mod.INPUT_PRECISIONS if dtype == torch.float32 else ("ieee",)
        for C in _sizes(mod.LIMITS["channels"], 16):
            for N in (32, 250, 4096):  # one tile; N no multiple of 16 at C that is; many tiles
                for prec in precisions:
                    def call(dtype=dtype, C=C, N=N, prec=prec):
                        f = torch.empty(2, N, C, dtype=dtype, **meta)
                        valid = torch.empty(2, N, dtype=torch.bool, **meta)
                        lse = mod.cos_lse_fwd(f, valid, 10.0, input_precision=prec)
                        mod.cos_lse_bwd(torch.empty_like(lse), f, valid, lse, 10.0, input_precision=prec)
                    yield f"{_name(dtype)}-C{C}-N{N}-{prec}", call
    # grid extreme: many images of few rows
    yield "float32-C64-B100000", lambda: mod.cos_lse_fwd(
        torch.empty(100000, 8, 64, **meta), torch.empty(100000, 8, dtype=torch.bool, **meta), 10.0)


def pdcr(mod, torch):
    meta = dict(device="meta")
    lim = mod.GPU_LIMITS  # what a compiled launch takes (float64 goes to CUDA C++ on a GPU)

    def call(dtype, C, W, K, prec, swapped=False, fg_l1=False, exclude_self=True, B=2, sizes=((1024, 1024), (250, 250))):
        """Each (N, M) of sizes: a multiple of 16 (with a tile count that is one too, as at the sizes
        of benchmarks/roofline.py) and not (the sampled point counts of real calls), for Triton
        compiles the two apart (its divisibility specialisation)."""
        for N, M in sizes:
            fa = torch.empty(B, N, C, dtype=dtype, **meta)
            fb = torch.empty(B, M, C, dtype=dtype, **meta)
            pa = torch.empty(B, W, N, K, dtype=dtype, **meta)
            pb = torch.empty(B, W, M, K, dtype=dtype, **meta)
            va = torch.empty(B, N, dtype=torch.bool, **meta)
            vb = torch.empty(B, M, dtype=torch.bool, **meta)
            opts = dict(inv_tau=10.0, swapped=swapped, fg_l1=fg_l1, exclude_self=exclude_self, input_precision=prec)
            loss, lse = mod.pdcr_fwd(fa, pa, fb, pb, va, vb, **opts)
            mod.pdcr_bwd(torch.empty_like(loss), fa, pa, fb, pb, va, vb, lse, **opts)
            if N == M:  # the intra-layer backward: the rows kernel with the column terms (INTRA)
                mod.pdcr_intra_bwd(torch.empty_like(loss), fa, pa, va, lse, **opts)

    for dtype in _kernel_dtypes(mod, lim):
        precisions = mod.INPUT_PRECISIONS if dtype == torch.float32 else ("ieee",)
        # 120: whole rows padded (masked channels) and C not a multiple of 16
        for C in sorted(set(_few(lim["channels"], 16)) | {120}):
            for prec in precisions:
                yield f"{_name(dtype)}-C{C}-W3-K4-{prec}", lambda d=dtype, C=C, p=prec: call(d, C, 3, 4, p)
        # W and (on a GPU) K are unrolled: the largest ones at a whole-row and at the largest
        # (chunked) C are the register worst cases
        for C in (120, 128, lim["channels"]):
            for prec in precisions:
                yield (f"{_name(dtype)}-C{C}-W{lim['windows']}-K{lim['classes']}-{prec}",
                       lambda d=dtype, C=C, p=prec: call(d, C, lim["windows"], lim["classes"], p,
                                                         swapped=True, fg_l1=True, exclude_self=False))
        # the tensor-core backward holds 64-row tiles at whole rows up to W·(K + 1) =
        # TC_BWD_WINDOW_TERMS: the largest K of each W there (all classes counted: no fg_l1) and the
        # first K above it; chunked, at every W, K (the largest, all classes counted, here)
        if dtype == torch.float32:
            bound = mod.TC_BWD_WINDOW_TERMS
            shapes = {(C, W, min(bound // W - 1, lim["classes"])) for W in range(1, lim["windows"] + 1)
                      for C in (120, 128)}
            shapes |= {(C, lim["windows"], bound // lim["windows"]) for C in (120, 128)}
            shapes.add((lim["channels"], lim["windows"], lim["classes"]))
            for C, W, K in sorted(shapes):
                for prec in ("tf32", "bf16"):
                    yield (f"float32-C{C}-W{W}-K{K}-all-classes-{prec}",
                           lambda C=C, W=W, K=K, p=prec: call(torch.float32, C, W, K, p))
    yield "float32-C64-B100000", lambda: call(torch.float32, 64, 1, 2, "ieee", B=100000, sizes=((8, 8),))


def entropy(mod, torch):
    meta = dict(device="meta")
    for dtype in mod.LIMITS["dtypes"]:
        for K in _few(mod.LIMITS["classes"], 2):
            for shannon, masked in ((True, False), (False, True)):
                    def call(dtype=dtype, K=K, shannon=shannon, masked=masked):
                        x = torch.empty(2, K, 64, 64, dtype=dtype, **meta)
                        mask = torch.empty(2, 64, 64, dtype=torch.int64, **meta) if masked else None
                        mod.patch_entropy(x, (16, 16), shannon, mask)
                    yield f"{_name(dtype)}-K{K}-{'shannon' if shannon else 'binary'}-{'mask' if masked else 'nomask'}", call
    yield "float32-K2-B100000", lambda: mod.patch_entropy(
        torch.empty(100000, 2, 8, 8, **meta), (4, 4), True, None)
    yield "float32-K2-3d-512cubed-patch1", lambda: mod.patch_entropy(
        torch.empty(1, 2, 512, 512, 512, **meta), (1, 1, 1), False, None)


def uafs(mod, torch):
    meta = dict(device="meta")
    for dtype in mod.LIMITS["dtypes"]:
        for M in _few(mod.LIMITS["att_channels"], 2):
            def call(dtype=dtype, M=M):
                x = torch.empty(2, 96, 32, 32, dtype=dtype, **meta)
                att = torch.empty(2, M, 32, 32, dtype=dtype, **meta)
                y = mod.uafs_fwd(x, att)
                mod.uafs_bwd(torch.empty_like(y), x, att)
            yield f"{_name(dtype)}-M{M}", call
    yield "float32-M4-B100000", lambda: mod.uafs_fwd(
        torch.empty(100000, 8, 4, 4, **meta), torch.empty(100000, 4, 4, 4, **meta))


def labels(mod, torch):
    meta = dict(device="meta")
    windows = list(range(3, 3 + 2 * mod.LIMITS["windows"], 2))
    for K in _few(mod.LIMITS["classes"], 2):
        for spatial, ignore in (((64, 64), None), ((16, 32, 32), 255)):
                def call(K=K, spatial=spatial, ignore=ignore):
                    lab = torch.empty(2, *spatial, dtype=torch.int64, **meta)
                    centers = torch.empty(2, 100, len(spatial), dtype=torch.int64, **meta)
                    mod.patch_label_ratios(lab, centers, windows[:3], K, ignore)
                yield f"K{K}-{len(spatial)}d-{'ignore' if ignore is not None else 'all'}", call
    # dense 3D far beyond 204^3 centres, many windows, and a tall first dim (scan slabs)
    yield "K4-3d-256cubed-dense", lambda: mod.patch_label_ratios(
        torch.empty(1, 256, 256, 256, dtype=torch.int64, **meta),
        torch.empty(1, 256**3, 3, dtype=torch.int64, **meta), windows, 4, None)
    yield "K32-3d-B4-600x64x64", lambda: mod.patch_label_ratios(
        torch.empty(4, 600, 64, 64, dtype=torch.int64, **meta),
        torch.empty(4, 10, 3, dtype=torch.int64, **meta), windows[:2], 32, None)


def agcl(mod, torch):
    meta = dict(device="meta")
    lim = mod.LIMITS
    for dtype in lim["dtypes"]:
        for D in _few(lim["classes"], 2):
            def affinity(dtype=dtype, D=D):
                t = torch.empty(300, D, dtype=dtype, **meta)
                s = torch.empty(257, D, dtype=dtype, **meta)
                a = mod.affinity_matrix(t, s, 2.0, False)
                mod.affinity_matrix_bwd(torch.empty_like(a), t, s, 2.0, True)
            yield f"{_name(dtype)}-affinity-D{D}", affinity
        # The hard-negative tiles follow H (every power of two up to the limit, at the largest C) and
        # the queue backward's follow C (at a middle H); the mixed kernels' only the dtype.
        shapes = [(lim["channels"], h) for h in _sizes(lim["hard"], 2)] + [(c, 64) for c in _few(lim["channels"], 16)]
        for C, n_hard in sorted(set(shapes)):
            def queue(dtype=dtype, C=C, n_hard=n_hard):
                q = torch.empty(8, C, dtype=dtype, **meta)
                neg = torch.empty(4096, C, dtype=dtype, **meta)
                q_cls = torch.empty(8, dtype=torch.int64, **meta)
                neg_cls = torch.empty(4096, dtype=torch.int64, **meta)
                scale = torch.empty(neg.shape[0], dtype=neg.dtype, device=neg.device)  # the unit-row scales
                lse, idx, count = mod.hard_negatives(q, neg, scale, q_cls, neg_cls, 10.0, n_hard, True)
                mod.queue_lse_bwd(torch.empty_like(lse), q, neg, scale, q_cls, neg_cls, lse, 10.0, True)
                pairs = torch.empty(8, 64, 2, dtype=torch.int64, **meta)
                alpha = torch.empty(4096, dtype=dtype, **meta)
                logits = mod.mixed_logits(q, neg, scale, alpha, idx, count, pairs, 10.0)
                mod.mixed_logits_bwd(torch.empty_like(logits), q, neg, scale, alpha, idx, count, pairs, 10.0)
            yield f"{_name(dtype)}-queue-C{C}-H{n_hard}", queue


CASES = {"supcon": supcon, "pdcr": pdcr, "entropy": entropy, "uafs": uafs, "labels": labels, "agcl": agcl}
