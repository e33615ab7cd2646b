"""affseg.sample_patches / affseg.patch_embed against plain Python loops (SPEC §7, Semi-AGCL §2).

The oracles below walk every (image, tile, class) with itertools, in float64, and share no code
with affseg.functional.patches.
"""
import itertools
import math

import pytest
import torch

import affseg

# ----------------------------------------------------------------------------- oracles


def _tiles(spatial, patch):
    """Every tile: (coords, list of pixel index tuples)."""
    grid = [math.ceil(s / p) for s, p in zip(spatial, patch)]
    for coords in itertools.product(*[range(g) for g in grid]):
        ranges = [range(c * p, min((c + 1) * p, s)) for c, p, s in zip(coords, patch, spatial)]
        yield coords, list(itertools.product(*ranges))


def _as_tuple(patch, ndim):
    return (patch,) * ndim if isinstance(patch, int) else tuple(patch)


def _feature_cells(features, class_mask, patch):
    """Per feature location: (image, flat feature index tuple, label, tile coords) as the SPEC maps them."""
    B = class_mask.shape[0]
    spatial = class_mask.shape[1:]
    fspatial = features.shape[2:]
    strides = [s // f for s, f in zip(spatial, fspatial)]
    out = []
    for b in range(B):
        for loc in itertools.product(*[range(f) for f in fspatial]):
            centre = tuple(f * r + r // 2 for f, r in zip(loc, strides))
            tile = tuple(c // p for c, p in zip(centre, patch))
            out.append((b, loc, int(class_mask[(b, *centre)]), tile))
    return out


def oracle_rows(logits, class_mask, patch, min_fraction, metric, features=None):
    """Per class k: list of candidate dicts (batch, tile, score, probs), in no particular order."""
    logits = logits.double()
    B, K, *spatial = logits.shape
    patch = _as_tuple(patch, len(spatial))
    p = torch.softmax(logits, dim=1)
    rows = {k: [] for k in range(K)}
    if metric == "cosine":
        cells = _feature_cells(features, class_mask, patch)
        f64 = features.double()
        class_sum = {k: torch.zeros(features.shape[1], dtype=torch.float64) for k in range(K)}
        class_n = {k: 0 for k in range(K)}
        tile_sum, tile_n = {}, {}
        for b, loc, lab, tile in cells:
            if 0 <= lab < K:
                v = f64[(b, slice(None), *loc)]
                class_sum[lab] += v
                class_n[lab] += 1
                tile_sum[(b, tile, lab)] = tile_sum.get((b, tile, lab), 0) + v
                tile_n[(b, tile, lab)] = tile_n.get((b, tile, lab), 0) + 1
    for b in range(B):
        for coords, pixels in _tiles(spatial, patch):
            need = max(1, math.ceil(min_fraction * len(pixels)))
            for k in range(K):
                mine = [px for px in pixels if int(class_mask[(b, *px)]) == k]
                if len(mine) < need:
                    continue
                pk = [float(p[(b, k, *px)]) for px in mine]
                ent = 0.0
                for v in pk:
                    ent -= (v * math.log(v) if v > 0 else 0.0) + ((1 - v) * math.log(1 - v) if v < 1 else 0.0)
                ent /= len(mine)
                conf = sum(pk) / len(mine)
                probs = torch.stack([p[(b, slice(None), *px)] for px in mine]).mean(0)
                if metric == "entropy":
                    score = ent
                elif metric == "confidence":
                    score = conf
                else:
                    key = (b, coords, k)
                    if key not in tile_n:
                        score = 0.0  # no feature location of class k in the tile: a zero embedding
                    else:
                        tm = tile_sum[key] / tile_n[key]
                        cm = class_sum[k] / max(class_n[k], 1)
                        score = float(tm @ cm / (tm.norm() * cm.norm()))
                rows[k].append(dict(batch=b, tile=coords, score=score, probs=probs))
    return rows


def expected_sample(rows, metric, n_per_class):
    out = []
    for k in sorted(rows):
        best_first = sorted(rows[k], key=lambda r: r["score"], reverse=metric != "entropy")
        out.extend((k, r) for r in best_first[:n_per_class])
    return out


def check_sample(sample, logits, class_mask, patch, n_per_class, metric, min_fraction, features=None, tol=1e-5):
    """The sample is exactly a best-first selection of min(n, #candidates) candidates per class.

    Equal oracle scores (within ``tol``) may come in any order, and at the cap any of them may be
    taken; every candidate strictly better than the worst taken one must be taken.
    """
    rows = oracle_rows(logits, class_mask, patch, min_fraction, metric, features)
    K = logits.shape[1]
    ndim = logits.dim() - 2
    S = sample.cls.numel()
    assert sample.batch.shape == (S,) and sample.score.shape == (S,)
    assert sample.tile.shape == (S, ndim)
    assert sample.probs.shape == (S, K)
    want_counts = [min(n_per_class, len(rows[k])) for k in range(K)]
    # Grouped by class in order 0..K-1.
    assert sample.cls.tolist() == [k for k in range(K) for _ in range(want_counts[k])]
    sign = 1.0 if metric == "entropy" else -1.0  # sign * score: lower is better
    start = 0
    for k in range(K):
        by_key = {(r["batch"], tuple(r["tile"])): r for r in rows[k]}
        n = want_counts[k]
        got_keys = list(zip(sample.batch[start:start + n].tolist(), map(tuple, sample.tile[start:start + n].tolist())))
        assert len(set(got_keys)) == n, "a tile was sampled twice for one class"
        chosen = []
        for key in got_keys:
            assert key in by_key, f"class {k}: {key} is not a candidate"
            chosen.append(by_key[key])
        oracle_scores = [sign * r["score"] for r in chosen]
        assert all(a <= b + tol for a, b in zip(oracle_scores, oracle_scores[1:])), f"class {k} not best first"
        if n:
            worst = oracle_scores[-1]
            must = {key for key, r in by_key.items() if sign * r["score"] < worst - tol}
            assert must <= set(got_keys), f"class {k}: a strictly better candidate was left out"
            torch.testing.assert_close(sample.score[start:start + n].double(),
                                       torch.tensor([r["score"] for r in chosen], dtype=torch.float64),
                                       atol=2e-5, rtol=1e-4)
            torch.testing.assert_close(sample.probs[start:start + n].double(), torch.stack([r["probs"] for r in chosen]),
                                       atol=2e-6, rtol=1e-5)
        start += n
    return rows


def labels_with_ignore(B, spatial, K, seed):
    g = torch.Generator().manual_seed(seed)
    lab = torch.randint(0, K, (B, *spatial), generator=g)
    ignore = torch.rand(lab.shape, generator=g) < 0.1
    lab[ignore] = 255  # outside [0, K): belongs to no class
    lab[0, 0, 0] = -1
    return lab


# ----------------------------------------------------------------------------- sample_patches


@pytest.mark.parametrize("metric", ["entropy", "confidence"])
@pytest.mark.parametrize("n_per_class,min_fraction", [(5, 0.05), (100, 0.25), (3, 0.5), (100, 0.0), (100, 1.0)])
def test_sample_2d_matches_loop(metric, n_per_class, min_fraction):
    logits = torch.randn(2, 3, 13, 11) * 2
    class_mask = labels_with_ignore(2, (13, 11), 3, seed=1)
    # Give class 2 large areas so min_fraction thresholds bite differently per tile.
    class_mask[1, :8, :8] = 2
    sample = affseg.sample_patches(logits, class_mask, 4, n_per_class=n_per_class, metric=metric,
                                   min_fraction=min_fraction, generator=torch.Generator().manual_seed(3))
    rows = check_sample(sample, logits, class_mask, 4, n_per_class, metric, min_fraction)
    if min_fraction == 0.0:
        assert any(rows.values())


def test_sample_2d_rectangular_patch_and_caps():
    logits = torch.randn(3, 4, 9, 10)
    class_mask = torch.randint(0, 4, (3, 9, 10))
    class_mask[:, :, :] = torch.where(class_mask == 3, torch.full_like(class_mask, 1), class_mask)  # class 3 absent
    sample = affseg.sample_patches(logits, class_mask, (4, 3), n_per_class=4, min_fraction=0.1)
    check_sample(sample, logits, class_mask, (4, 3), 4, "entropy", 0.1)
    assert 3 not in sample.cls.tolist()  # a class absent from the batch gets no rows


@pytest.mark.parametrize("metric", ["entropy", "confidence"])
def test_sample_3d_matches_loop(metric):
    logits = torch.randn(2, 3, 5, 6, 7) * 2
    class_mask = labels_with_ignore(2, (5, 6, 7), 3, seed=5)
    sample = affseg.sample_patches(logits, class_mask, (2, 4, 3), n_per_class=6, metric=metric, min_fraction=0.1)
    check_sample(sample, logits, class_mask, (2, 4, 3), 6, metric, 0.1)


@pytest.mark.parametrize("stride", [1, 2])
def test_sample_cosine_2d(stride):
    logits = torch.randn(2, 3, 12, 10)
    class_mask = labels_with_ignore(2, (12, 10), 3, seed=7)
    features = torch.randn(2, 5, 12 // stride, 10 // stride)
    sample = affseg.sample_patches(logits, class_mask, 4, n_per_class=7, metric="cosine", min_fraction=0.05,
                                   features=features)
    check_sample(sample, logits, class_mask, 4, 7, "cosine", 0.05, features)


def test_sample_cosine_3d_half_resolution():
    logits = torch.randn(1, 2, 6, 8, 4)
    class_mask = torch.randint(0, 2, (1, 6, 8, 4))
    features = torch.randn(1, 3, 3, 4, 2)
    sample = affseg.sample_patches(logits, class_mask, (3, 4, 2), n_per_class=5, metric="cosine", features=features)
    check_sample(sample, logits, class_mask, (3, 4, 2), 5, "cosine", 0.05, features)


def test_sample_constant_logits_ties_reproducible():
    logits = torch.zeros(2, 2, 8, 8)
    class_mask = torch.zeros(2, 8, 8, dtype=torch.long)  # 8 tiles of 4×4, all class-0 candidates, tied

    def draw(seed):
        return affseg.sample_patches(logits, class_mask, 4, n_per_class=3, generator=torch.Generator().manual_seed(seed))

    a, b = draw(0), draw(0)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    samples = [draw(s) for s in range(8)]
    keys = {tuple(zip(x.batch.tolist(), map(tuple, x.tile.tolist()))) for x in samples}
    assert len(keys) > 1  # different seeds break the ties differently
    assert a.cls.tolist() == [0, 0, 0]
    assert all(abs(v - math.log(2)) < 1e-5 for v in a.score.tolist())  # binary entropy h(1/2) = log 2
    torch.testing.assert_close(a.probs, torch.full((3, 2), 0.5))


def test_sample_strictly_better_set_independent_of_seed():
    logits = torch.zeros(1, 2, 8, 12)
    class_mask = torch.zeros(1, 8, 12, dtype=torch.long)
    logits[0, 0, 0:4, 4:8] = 5.0  # tile (0, 1): confident class 0 → lower entropy
    logits[0, 0, 4:8, 8:12] = 5.0  # tile (1, 2): the same entropy (tied with (0, 1))
    logits[0, 0, 4:8, 0:4] = 2.0  # tile (1, 0): strictly better than the rest, worse than the two above
    best = {(0, 1), (1, 2)}
    orders = set()
    for seed in range(6):
        gen = torch.Generator().manual_seed(seed)
        s2 = affseg.sample_patches(logits, class_mask, 4, n_per_class=2, generator=gen)
        assert set(map(tuple, s2.tile.tolist())) == best
        orders.add(tuple(map(tuple, s2.tile.tolist())))
        s4 = affseg.sample_patches(logits, class_mask, 4, n_per_class=4, generator=torch.Generator().manual_seed(seed))
        tiles = list(map(tuple, s4.tile.tolist()))
        assert set(tiles[:2]) == best and tiles[2] == (1, 0)
        assert tiles[3] not in best | {(1, 0)}
        conf = affseg.sample_patches(logits, class_mask, 4, n_per_class=3, metric="confidence",
                                     generator=torch.Generator().manual_seed(seed))
        assert set(map(tuple, conf.tile.tolist()[:2])) == best and tuple(conf.tile.tolist()[2]) == (1, 0)
    assert len(orders) == 2  # the tied pair comes out in both orders over the seeds


def test_sample_cpu_and_reference_identical():
    logits = torch.randn(2, 3, 13, 11)
    class_mask = labels_with_ignore(2, (13, 11), 3, seed=11)
    features = torch.randn(2, 4, 13, 11)
    for metric in ("entropy", "confidence", "cosine"):
        a = affseg.sample_patches(logits, class_mask, 4, n_per_class=6, metric=metric, backend="cpu",
                                  features=features, generator=torch.Generator().manual_seed(1))
        b = affseg.sample_patches(logits, class_mask, 4, n_per_class=6, metric=metric, backend="reference",
                                  features=features, generator=torch.Generator().manual_seed(1))
        for name in ("batch", "tile", "cls"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
        torch.testing.assert_close(a.score, b.score, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(a.probs, b.probs, atol=1e-6, rtol=1e-6)
    # The tied case too: the same generator gives the same sample on both backends.
    z = torch.zeros(2, 2, 8, 8)
    m = torch.zeros(2, 8, 8, dtype=torch.long)
    a = affseg.sample_patches(z, m, 4, n_per_class=3, backend="cpu", generator=torch.Generator().manual_seed(4))
    b = affseg.sample_patches(z, m, 4, n_per_class=3, backend="reference", generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.tile, b.tile) and torch.equal(a.batch, b.batch)


def test_sample_all_ignored_gives_empty():
    logits = torch.randn(1, 3, 8, 8)
    s = affseg.sample_patches(logits, torch.full((1, 8, 8), 255, dtype=torch.long), 4)
    assert s.cls.numel() == 0 and s.probs.shape == (0, 3) and s.tile.shape == (0, 2)


def test_sample_bad_inputs():
    logits = torch.randn(2, 3, 8, 8)
    mask = torch.randint(0, 3, (2, 8, 8))
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="min_fraction"):
            affseg.sample_patches(logits, mask, 4, min_fraction=bad)
    with pytest.raises(ValueError, match="features"):
        affseg.sample_patches(logits, mask, 4, metric="cosine")
    with pytest.raises(ValueError, match="class_mask"):
        affseg.sample_patches(logits, mask[:, :7], 4)
    with pytest.raises(ValueError, match="class_mask"):
        affseg.sample_patches(logits, mask[:1], 4)
    with pytest.raises(TypeError, match="class_mask"):
        affseg.sample_patches(logits, mask.float(), 4)
    with pytest.raises(ValueError, match="metric"):
        affseg.sample_patches(logits, mask, 4, metric="nope")
    with pytest.raises(ValueError, match="features"):
        affseg.sample_patches(logits, mask, 4, metric="cosine", features=torch.randn(2, 4, 3, 3))  # stride 8/3


# ----------------------------------------------------------------------------- patch_embed


def oracle_embed(features, sample, class_mask, patch):
    patch = _as_tuple(patch, class_mask.dim() - 1)
    cells = _feature_cells(features, class_mask, patch)
    out = torch.zeros(sample.cls.numel(), features.shape[1], dtype=torch.float64)
    for i, (b, k, tile) in enumerate(zip(sample.batch.tolist(), sample.cls.tolist(), map(tuple, sample.tile.tolist()))):
        vecs = [features[(b, slice(None), *loc)].double() for bb, loc, lab, t in cells
                if bb == b and lab == k and t == tile]
        if vecs:
            out[i] = torch.stack(vecs).mean(0)
    return out


@pytest.mark.parametrize("stride", [1, 2])
def test_patch_embed_2d_matches_loop(stride):
    logits = torch.randn(2, 3, 12, 10)
    mask = labels_with_ignore(2, (12, 10), 3, seed=2)
    sample = affseg.sample_patches(logits, mask, 4, n_per_class=100, min_fraction=0.0)
    feats = torch.randn(2, 6, 12 // stride, 10 // stride)
    got = affseg.patch_embed(feats, sample, mask, 4)
    assert got.shape == (sample.cls.numel(), 6)
    torch.testing.assert_close(got.double(), oracle_embed(feats, sample, mask, 4), atol=1e-6, rtol=1e-5)


def test_patch_embed_3d_half_resolution():
    logits = torch.randn(2, 2, 4, 6, 8)
    mask = torch.randint(0, 2, (2, 4, 6, 8))
    sample = affseg.sample_patches(logits, mask, (2, 3, 4), n_per_class=100, min_fraction=0.0)
    feats = torch.randn(2, 3, 2, 3, 4)
    got = affseg.patch_embed(feats, sample, mask, (2, 3, 4))
    torch.testing.assert_close(got.double(), oracle_embed(feats, sample, mask, (2, 3, 4)), atol=1e-6, rtol=1e-5)


def test_patch_embed_no_matching_feature_location_gives_zero():
    mask = torch.zeros(1, 8, 8, dtype=torch.long)
    mask[0, 0, 0] = 1  # tile (0,0) holds one class-1 pixel, at an even position
    logits = torch.randn(1, 2, 8, 8)
    sample = affseg.sample_patches(logits, mask, 4, n_per_class=10, min_fraction=0.0)
    assert (1, (0, 0)) in list(zip(sample.cls.tolist(), map(tuple, sample.tile.tolist())))
    feats = torch.randn(1, 4, 4, 4) + 3  # stride 2: locations read labels at odd positions → all class 0
    got = affseg.patch_embed(feats, sample, mask, 4)
    row = [i for i, k in enumerate(sample.cls.tolist()) if k == 1][0]
    assert torch.equal(got[row], torch.zeros(4))
    torch.testing.assert_close(got.double(), oracle_embed(feats, sample, mask, 4), atol=1e-6, rtol=1e-5)
    # At full resolution the same tile's class-1 embedding is exactly that one pixel's feature.
    full = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(affseg.patch_embed(full, sample, mask, 4)[row], full[0, :, 0, 0])


def test_patch_embed_gradcheck():
    mask = torch.tensor([[[0, 0, 1, 1], [0, 1, 1, 2], [2, 2, 0, 1], [2, 0, 0, 1]]])
    logits = torch.randn(1, 3, 4, 4)
    sample = affseg.sample_patches(logits, mask, 2, n_per_class=8, min_fraction=0.0)
    feats = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: affseg.patch_embed(f, sample, mask, 2), (feats,))
    half = torch.randn(1, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: affseg.patch_embed(f, sample, mask, 2), (half,))
    out = affseg.patch_embed(feats, sample, mask, 2)
    out.sum().backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0


def test_patch_embed_bad_stride():
    mask = torch.randint(0, 3, (2, 13, 11))
    sample = affseg.sample_patches(torch.randn(2, 3, 13, 11), mask, 4)
    with pytest.raises(ValueError, match="stride"):
        affseg.patch_embed(torch.randn(2, 4, 5, 5), sample, mask, 4)
    with pytest.raises(ValueError, match="stride"):
        affseg.patch_embed(torch.randn(2, 4, 13, 4), sample, mask, 4)


# ----------------------------------------------------------------------------- NaN (SPEC §9)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("metric", ["entropy", "confidence"])
def test_sample_nan_logit_is_sampled_and_never_a_non_candidate(backend, metric):
    logits = torch.randn(1, 2, 8, 8)
    mask = torch.zeros(1, 8, 8, dtype=torch.long)
    mask[0, 4:, 4:] = 1  # tile (1,1) has no class-0 pixel: never a class-0 candidate
    logits[0, 0, 0, 0] = float("nan")  # a class-0 pixel of tile (0,0)
    s = affseg.sample_patches(logits, mask, 4, n_per_class=10, metric=metric, backend=backend)
    class0 = [tuple(t) for t, k in zip(s.tile.tolist(), s.cls.tolist()) if k == 0]
    assert sorted(class0) == [(0, 0), (0, 1), (1, 0)]
    nan_row = [i for i, (t, k) in enumerate(zip(s.tile.tolist(), s.cls.tolist())) if k == 0 and tuple(t) == (0, 0)][0]
    assert torch.isnan(s.probs[nan_row]).all()  # the NaN reaches ŷ, so the losses turn NaN
    # Even with a cap, the NaN tile is kept rather than silently dropped.
    capped = affseg.sample_patches(logits, mask, 4, n_per_class=1, metric=metric, backend=backend)
    assert torch.isnan(capped.probs[capped.cls == 0]).all()


def test_sample_nan_at_ignored_pixel_drops_out():
    logits = torch.randn(1, 2, 8, 8)
    mask = torch.randint(0, 2, (1, 8, 8))
    clean = affseg.sample_patches(logits, mask, 4, n_per_class=10, generator=torch.Generator().manual_seed(0))
    mask[0, 1, 1] = 255
    dirty_logits = logits.clone()
    dirty_logits[0, :, 1, 1] = float("nan")
    a = affseg.sample_patches(dirty_logits, mask, 4, n_per_class=10, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(a.probs).all() and torch.isfinite(a.score).all()
    check_sample(a, logits, mask, 4, 10, "entropy", 0.05)
    assert clean.cls.numel() == a.cls.numel()


def test_min_fraction_threshold_is_inclusive_ceil():
    # 8×6 image, patch 4: tiles (0,0) and (1,0) hold 16 pixels, (0,1) and (1,1) hold 4×2 = 8.
    mask = torch.zeros(1, 8, 6, dtype=torch.long)
    mask[0, 0, 0:4] = 1  # tile (0,0): 4 of 16 class-1 pixels = exactly 25%
    mask[0, 4, 0:3] = 1  # tile (1,0): 3 of 16 (< 25%)
    mask[0, 0, 4:6] = 1  # tile (0,1): 2 of 8 = exactly 25%
    mask[0, 4, 4] = 1  # tile (1,1): 1 of 8 (< 25%; ceil(0.25·8) = 2)
    logits = torch.randn(1, 2, 8, 6)
    s = affseg.sample_patches(logits, mask, 4, n_per_class=10, min_fraction=0.25)
    class1 = sorted(tuple(t) for t, k in zip(s.tile.tolist(), s.cls.tolist()) if k == 1)
    assert class1 == [(0, 0), (0, 1)]
    s = affseg.sample_patches(logits, mask, 4, n_per_class=10, min_fraction=0.2)  # ceil(3.2) = 4, ceil(1.6) = 2
    assert sorted(tuple(t) for t, k in zip(s.tile.tolist(), s.cls.tolist()) if k == 1) == [(0, 0), (0, 1)]
    s = affseg.sample_patches(logits, mask, 4, n_per_class=10, min_fraction=0.0)  # at least one pixel
    assert len([k for k in s.cls.tolist() if k == 1]) == 4
    check_sample(s, logits, mask, 4, 10, "entropy", 0.0)
