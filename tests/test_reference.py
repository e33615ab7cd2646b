"""Checks of affseg.reference (the oracle) against hand-computed numbers and brute-force loops.

Nothing here compares the reference with itself: every expected value is either written out by
hand or computed by explicit float64 Python loops that follow the SPEC's formulas literally.
"""

import itertools
import math

import numpy as np
import pytest
import torch

from affseg import reference
from affseg._sampling import draw_mix_pairs, sample_locations
from affseg._types import PatchStats

F64 = dict(rtol=1e-10, atol=1e-12)
F32 = dict(rtol=1e-5, atol=1e-6)


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------
# Brute-force helpers (plain Python loops, float64)
# --------------------------------------------------------------------------------------------


def loop_ratios(labels, centers, window_sizes, num_classes, ignore_index=None):
    """Count every pixel of every clipped window explicitly."""
    labels = labels.numpy()
    batch, spatial = labels.shape[0], labels.shape[1:]
    num_centers = centers.shape[1]
    phi = np.zeros((batch, len(window_sizes), num_centers, num_classes))
    valid = np.zeros((batch, len(window_sizes), num_centers), dtype=bool)
    for b, (w, size), n in itertools.product(range(batch), enumerate(window_sizes),
                                             range(num_centers)):
        ranges = []
        for d, c in enumerate(centers[b, n].tolist()):
            start = c - size // 2
            ranges.append(range(max(start, 0), min(start + size, spatial[d])))
        counts = np.zeros(num_classes)
        for pixel in itertools.product(*ranges):
            value = labels[(b, *pixel)]
            if value != ignore_index:
                counts[value] += 1
        if counts.sum() > 0:
            phi[b, w, n] = counts / counts.sum()
            valid[b, w, n] = True
    return torch.from_numpy(phi), torch.from_numpy(valid)


def loop_cos(u, v):
    dot = sum(a * b for a, b in zip(u, v))
    norm_u = max(math.sqrt(sum(a * a for a in u)), 1e-8)
    norm_v = max(math.sqrt(sum(b * b for b in v)), 1e-8)
    return dot / (norm_u * norm_v)


def loop_distance(p, q, divergence):
    if divergence == "tv":
        return 0.5 * sum(abs(a - b) for a, b in zip(p, q))
    return sum(abs(a - b) for a, b in zip(p[1:], q[1:]))


def loop_pdcr(feats, phi, feats_b=None, phi_b=None, valid=None, valid_b=None, tau=0.5,
              orientation="paper", divergence="tv", exclude_self=False, global_shift=False):
    """Official per-pair loss −log(exp(ŝ_ij w⁺_ij) / Σ_k exp(ŝ_ik w⁻_ik)), averaged over j
    and windows. Returns the per-row losses (B, N), the number of counted rows, and the pair
    sum Σ_{b,i,j} mean_w ℓ_ij (the official 2D "sum" reduction)."""
    if feats_b is None:
        feats_b, phi_b, valid_b = feats, phi, valid
    batch, num_rows, num_cols = feats.shape[0], feats.shape[1], feats_b.shape[1]
    num_windows = phi.shape[1]
    valid = torch.ones(batch, num_rows, dtype=torch.bool) if valid is None else valid
    valid_b = torch.ones(batch, num_cols, dtype=torch.bool) if valid_b is None else valid_b
    f, g = feats.tolist(), feats_b.tolist()
    cos = [[[loop_cos(f[b][i], g[b][j]) for j in range(num_cols)] for i in range(num_rows)]
           for b in range(batch)]
    # The official code subtracts the global max of s (batch included) instead of 1/τ.
    shift = max(c for row in itertools.chain(*cos) for c in row) if global_shift else 1.0
    rows = torch.zeros(batch, num_rows, dtype=torch.float64)
    counted, pair_sum = 0, 0.0
    for b, i in itertools.product(range(batch), range(num_rows)):
        cols = [j for j in range(num_cols)
                if valid_b[b, j] and valid[b, i] and not (exclude_self and j == i)]
        if not cols:
            continue
        row = 0.0
        for w in range(num_windows):
            s_hat, w_pos, w_neg = {}, {}, {}
            for j in cols:
                s_hat[j] = (cos[b][i][j] - shift) / tau
                d = loop_distance(phi[b, w, i].tolist(), phi_b[b, w, j].tolist(), divergence)
                w_pos[j], w_neg[j] = (1 - d, d) if orientation == "paper" else (d, 1 - d)
            denom = sum(math.exp(s_hat[k] * w_neg[k]) for k in cols)
            pairs = [-math.log(math.exp(s_hat[j] * w_pos[j]) / denom) for j in cols]
            row += sum(pairs) / len(cols) / num_windows
            pair_sum += sum(pairs) / num_windows
        rows[b, i] = row
        counted += 1
    return rows, counted, pair_sum


def loop_supcon(features, labels, tau, ignore_index=None):
    """Khosla et al. SupCon, "out" form: −1/|P(i)| Σ_{p∈P(i)} log(e^{s_ip} / Σ_{a≠i} e^{s_ia})."""
    n = len(labels)
    f = features.tolist()
    s = [[loop_cos(f[i], f[j]) / tau for j in range(n)] for i in range(n)]
    rows = torch.zeros(n, dtype=torch.float64)
    counted = []
    for i in range(n):
        if labels[i] == ignore_index:
            continue
        others = [a for a in range(n) if a != i and labels[a] != ignore_index]
        positives = [p for p in others if labels[p] == labels[i]]
        if not positives:
            continue
        log_denom = math.log(sum(math.exp(s[i][a]) for a in others))
        rows[i] = -sum(s[i][p] - log_denom for p in positives) / len(positives)
        counted.append(i)
    return rows, counted


def loop_soft_supcon(features, soft, tau):
    n = len(soft)
    f, phi = features.tolist(), soft.tolist()
    s = [[loop_cos(f[i], f[j]) / tau for j in range(n)] for i in range(n)]
    rows, counted = torch.zeros(n, dtype=torch.float64), []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        w = {j: sum(a * b for a, b in zip(phi[i], phi[j])) for j in others}
        if sum(w.values()) <= 0:
            continue
        log_denom = math.log(sum(math.exp(s[i][k]) for k in others))
        rows[i] = -sum(w[j] * (s[i][j] - log_denom) for j in others) / sum(w.values())
        counted.append(i)
    return rows, counted


def xlogx(x):
    return x * math.log(x) if x > 0 else 0.0


def loop_patch_entropy(logits, patch, mode, class_mask=None):
    logits = logits.double()
    batch, num_classes, *spatial = logits.shape
    probs = torch.softmax(logits, dim=1)
    grid = [math.ceil(s / p) for s, p in zip(spatial, patch)]
    channels = num_classes if mode == "binary" or class_mask is not None else 1
    entropy = torch.zeros(batch, channels, *grid, dtype=torch.float64)
    conf = torch.zeros(batch, num_classes, *grid, dtype=torch.float64)
    count = torch.zeros(batch, num_classes, *grid, dtype=torch.long)
    for b, tile in itertools.product(range(batch), itertools.product(*map(range, grid))):
        pixels = list(itertools.product(*[range(t * p, min((t + 1) * p, s))
                                          for t, p, s in zip(tile, patch, spatial)]))
        for k in range(num_classes):
            mine = [px for px in pixels
                    if class_mask is None or class_mask[(b, *px)].item() == k]
            count[(b, k, *tile)] = len(mine)
            if not mine:
                continue
            p = [[probs[(b, c, *px)].item() for c in range(num_classes)] for px in mine]
            conf[(b, k, *tile)] = sum(q[k] for q in p) / len(mine)
            if mode == "binary":
                h = [-(xlogx(q[k]) + xlogx(1 - q[k])) for q in p]
            else:
                h = [-sum(map(xlogx, q)) / math.log(num_classes) for q in p]
            if k < channels:
                entropy[(b, k, *tile)] = sum(h) / len(mine)
    return entropy, conf, count


# --------------------------------------------------------------------------------------------
# §1 grid_centers, patch_label_ratios
# --------------------------------------------------------------------------------------------


def test_grid_centers_integer_stride_by_hand():
    centers = reference.grid_centers((2, 3), (4, 9))
    assert centers.dtype == torch.long
    assert centers.tolist() == [[1, 1], [1, 4], [1, 7], [3, 1], [3, 4], [3, 7]]


def test_grid_centers_fractional_stride_3d():
    # strides 7/3, 9/4, 5/2: floor(p*s + s/2), raster order with the last dim fastest
    expected = [[z, y, x] for z in (1, 3, 5) for y in (1, 3, 5, 7) for x in (1, 3)]
    assert reference.grid_centers((3, 4, 2), (7, 9, 5)).tolist() == expected


def test_patch_label_ratios_by_hand():
    labels = torch.tensor([[[0, 1, 1, 2],
                            [0, 9, 1, 2],
                            [0, 0, 2, 2]]])
    centers = torch.tensor([[[0, 0], [1, 2], [2, 3]]])
    phi, valid = reference.patch_label_ratios(labels, centers, (1, 3), 3, ignore_index=9)
    assert phi.dtype == torch.float32 and valid.dtype == torch.bool
    expected = torch.tensor([
        # L = 1: the centre pixel itself
        [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
        # L = 3: corner window {0,1,0} + ignored pixel; interior window rows 0..2 x cols 1..3
        # holds 1,1,2 / 9,1,2 / 0,2,2 -> one 0, three 1s, four 2s; corner (2,3): 1,2 / 2,2
        [[2 / 3, 1 / 3, 0], [1 / 8, 3 / 8, 4 / 8], [0, 1 / 4, 3 / 4]],
    ], dtype=torch.float32)
    torch.testing.assert_close(phi[0], expected)
    assert valid.all()


@pytest.mark.parametrize("window_sizes", [(1, 3, 4), (2, 5, 9)])
def test_patch_label_ratios_2d_matches_window_counting(window_sizes):
    gen = seeded(1)
    labels = torch.randint(0, 3, (2, 7, 9), generator=gen)
    labels[torch.rand(labels.shape, generator=gen) < 0.2] = 255
    centers = torch.stack([torch.randint(0, 7, (2, 11), generator=gen),
                           torch.randint(0, 9, (2, 11), generator=gen)], dim=-1)
    centers[0, 0] = torch.tensor([0, 0])  # corners exercise the clipping
    centers[1, 0] = torch.tensor([6, 8])
    phi, valid = reference.patch_label_ratios(labels, centers, window_sizes, 3, ignore_index=255)
    expected_phi, expected_valid = loop_ratios(labels, centers, window_sizes, 3, 255)
    torch.testing.assert_close(phi.double(), expected_phi, **F32)
    assert torch.equal(valid, expected_valid)


def test_patch_label_ratios_3d_matches_window_counting():
    gen = seeded(2)
    labels = torch.randint(0, 4, (2, 5, 6, 7), generator=gen)
    centers = torch.stack([torch.randint(0, s, (2, 9), generator=gen) for s in (5, 6, 7)], -1)
    centers[0, 0] = torch.tensor([4, 5, 6])
    phi, valid = reference.patch_label_ratios(labels, centers, (2, 3, 5), 4)
    expected_phi, expected_valid = loop_ratios(labels, centers, (2, 3, 5), 4)
    torch.testing.assert_close(phi.double(), expected_phi, **F32)
    assert torch.equal(valid, expected_valid)


def test_patch_label_ratios_all_ignored_window_is_invalid():
    labels = torch.full((1, 6, 6), 0)
    labels[0, :3, :3] = -1
    centers = torch.tensor([[[1, 1], [2, 2], [4, 4]]])
    phi, valid = reference.patch_label_ratios(labels, centers, (3, 5), 2, ignore_index=-1)
    assert valid.tolist() == [[[False, True, True], [True, True, True]]]
    assert phi[0, 0, 0].tolist() == [0.0, 0.0]
    # the 3x3 window at (2, 2) holds 4 ignored and 5 class-0 pixels
    assert phi[0, 0, 1].tolist() == [1.0, 0.0]


def test_patch_label_ratios_ignore_index_inside_class_range():
    labels = torch.tensor([[[0, 1], [1, 1]]])
    phi, valid = reference.patch_label_ratios(labels, torch.tensor([[[0, 0]]]), (3,), 2,
                                              ignore_index=0)
    assert phi.tolist() == [[[[0.0, 1.0]]]] and valid.all()


@pytest.mark.parametrize("spatial", [(6, 5), (4, 6, 5)], ids=["2d", "3d"])
def test_patch_label_ratios_empty_batch(spatial):
    # B = 0 used to fail in the corner gather (reshape(0, 1, -1) cannot infer -1); the fused
    # backends return empty φ, so the reference must too.
    labels = torch.zeros(0, *spatial, dtype=torch.long)
    centers = torch.zeros(0, 7, len(spatial), dtype=torch.long)
    phi, valid = reference.patch_label_ratios(labels, centers, (3, 5), 4)
    assert phi.shape == (0, 2, 7, 4) and phi.dtype == torch.float32
    assert valid.shape == (0, 2, 7) and valid.dtype == torch.bool


def test_pdcr_loss_empty_batch_is_zero_with_grad_fn():
    features = torch.randn(0, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.zeros(0, 12, 12, dtype=torch.long)
    for reduction in ("mean", "sum"):
        loss = reference.pdcr_loss(features, labels, num_classes=3, reduction=reduction)
        assert loss.item() == 0.0 and loss.grad_fn is not None
        loss.backward()
    assert reference.pdcr_loss(features, labels, num_classes=3, reduction="none").shape == (0, 9)


# --------------------------------------------------------------------------------------------
# §2 patch_affinity
# --------------------------------------------------------------------------------------------


def test_patch_affinity_binary_tv_is_one_minus_fg_difference():
    fg = torch.rand(2, 6, dtype=torch.float64, generator=seeded(3))
    phi = torch.stack([1 - fg, fg], dim=-1)
    expected = 1 - (fg.unsqueeze(2) - fg.unsqueeze(1)).abs()
    torch.testing.assert_close(reference.patch_affinity(phi), expected, **F64)


def test_patch_affinity_divergences_by_hand():
    phi_a = torch.tensor([[[0.5, 0.5, 0.0]]])
    phi_b = torch.tensor([[[0.0, 0.25, 0.75], [0.5, 0.5, 0.0]]])
    # tv: ½(0.5 + 0.25 + 0.75) = 0.75; fg_l1: 0.25 + 0.75 = 1.0 (class 0 left out)
    torch.testing.assert_close(reference.patch_affinity(phi_a, phi_b),
                               torch.tensor([[[0.25, 1.0]]]))
    torch.testing.assert_close(reference.patch_affinity(phi_a, phi_b, "fg_l1"),
                               torch.tensor([[[0.0, 1.0]]]))


def test_patch_affinity_keeps_window_dim():
    phi = torch.rand(2, 3, 5, 4)
    assert reference.patch_affinity(phi).shape == (2, 3, 5, 5)


# --------------------------------------------------------------------------------------------
# §3 PDCR
# --------------------------------------------------------------------------------------------


def random_ratios(shape, generator):
    phi = torch.rand(*shape, dtype=torch.float64, generator=generator)
    return phi / phi.sum(-1, keepdim=True)


@pytest.mark.parametrize("orientation, expected", [
    ("paper", math.log(1 + math.exp(-1))),   # LSE(0, -1) - mean(0, 0)
    ("swapped", math.log(2) + 0.5),          # LSE(0, 0) - mean(0, -1)
])
def test_pdcr_two_orthogonal_points_by_hand(orientation, expected):
    feats = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    phi = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]], dtype=torch.float64)
    loss = reference.pdcr_loss_from_ratios(feats, phi, tau=1.0, orientation=orientation)
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64), **F64)


@pytest.mark.parametrize("orientation", ["paper", "swapped"])
@pytest.mark.parametrize("divergence", ["tv", "fg_l1"])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_pdcr_matches_per_pair_loop(orientation, divergence, exclude_self):
    gen = seeded(4)
    feats = torch.randn(2, 6, 5, dtype=torch.float64, generator=gen)
    phi = random_ratios((2, 2, 6, 3), gen)
    valid = torch.tensor([[True] * 6, [True, False, True, True, False, True]])
    kwargs = dict(tau=0.7, orientation=orientation, divergence=divergence,
                  exclude_self=exclude_self)
    rows, counted, pair_sum = loop_pdcr(feats, phi, valid=valid, **kwargs)
    none = reference.pdcr_loss_from_ratios(feats, phi, valid=valid, reduction="none", **kwargs)
    torch.testing.assert_close(none, rows, **F64)
    mean = reference.pdcr_loss_from_ratios(feats, phi, valid=valid, **kwargs)
    torch.testing.assert_close(mean.item(), rows.sum().item() / counted, **F64)
    total = reference.pdcr_loss_from_ratios(feats, phi, valid=valid, reduction="sum", **kwargs)
    torch.testing.assert_close(total.item(), pair_sum, **F64)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_pdcr_cross_layer_matches_loop(reduction):
    gen = seeded(5)
    feats = torch.randn(2, 5, 4, dtype=torch.float64, generator=gen)
    feats_b = torch.randn(2, 7, 4, dtype=torch.float64, generator=gen)
    phi, phi_b = random_ratios((2, 3, 5, 3), gen), random_ratios((2, 3, 7, 3), gen)
    valid = torch.tensor([[True, True, False, True, True], [True] * 5])
    valid_b = torch.tensor([[True] * 7, [False, True, True, False, True, True, True]])
    rows, counted, pair_sum = loop_pdcr(feats, phi, feats_b, phi_b, valid, valid_b, tau=0.5)
    loss = reference.pdcr_loss_from_ratios(feats, phi, feats_b=feats_b, phi_b=phi_b,
                                           valid=valid, valid_b=valid_b, reduction=reduction)
    expected = {"mean": rows.sum() / counted, "sum": torch.tensor(pair_sum, dtype=torch.float64),
                "none": rows}
    torch.testing.assert_close(loss, expected[reduction].double(), **F64)


def test_pdcr_analytic_shift_equals_official_global_max_shift():
    gen = seeded(6)
    feats = torch.randn(2, 5, 3, dtype=torch.float64, generator=gen)
    phi = random_ratios((2, 2, 5, 2), gen)
    rows, counted, _ = loop_pdcr(feats, phi, tau=0.5, global_shift=True)
    loss = reference.pdcr_loss_from_ratios(feats, phi, tau=0.5)
    torch.testing.assert_close(loss.item(), rows.sum().item() / counted, **F64)


def test_pdcr_rows_without_columns_and_empty_batch():
    feats = torch.randn(1, 3, 4, dtype=torch.float64, requires_grad=True)
    phi = random_ratios((1, 1, 3, 2), seeded(7))
    # a single valid location with exclude_self has no column left: not a row
    valid = torch.tensor([[False, True, False]])
    none = reference.pdcr_loss_from_ratios(feats, phi, valid=valid, exclude_self=True,
                                           reduction="none")
    assert none.tolist() == [[0.0, 0.0, 0.0]]
    for valid in (valid, torch.zeros(1, 3, dtype=torch.bool)):
        loss = reference.pdcr_loss_from_ratios(feats, phi, valid=valid, exclude_self=True)
        assert loss.item() == 0.0 and loss.grad_fn is not None
        loss.backward()
        assert torch.isfinite(feats.grad).all()
    empty = reference.pdcr_loss_from_ratios(feats[:, :0], phi[:, :, :0])
    assert empty.item() == 0.0 and empty.grad_fn is not None


def test_pdcr_dtypes_and_nan_propagation():
    gen = seeded(8)
    feats = torch.randn(1, 4, 3, generator=gen)
    phi = random_ratios((1, 1, 4, 2), gen).float()
    assert reference.pdcr_loss_from_ratios(feats.half(), phi).dtype == torch.float16
    assert reference.pdcr_loss_from_ratios(feats.double(), phi).dtype == torch.float64
    feats[0, 1, 0] = float("nan")
    assert reference.pdcr_loss_from_ratios(feats, phi).isnan()


@pytest.mark.parametrize("cross", [False, True], ids=["intra", "cross"])
def test_pdcr_nan_at_invalid_location_drops_out(cross):
    # SPEC §9: the loss ignored it already, but its NaN reached every gradient through the
    # similarity matmul's backward.
    gen = seeded(10)
    feats = torch.randn(1, 5, 3, dtype=torch.float64, generator=gen)
    phi = random_ratios((1, 2, 5, 3), gen)
    valid = torch.tensor([[True, True, False, True, True]])
    kwargs = dict(valid=valid)
    if cross:
        feats_b = torch.randn(1, 4, 3, dtype=torch.float64, generator=gen)
        feats_b[0, 1] = float("nan")
        kwargs.update(feats_b=feats_b.requires_grad_(True), phi_b=random_ratios((1, 2, 4, 3), gen),
                      valid_b=torch.tensor([[True, False, True, True]]))
    clean = reference.pdcr_loss_from_ratios(feats, phi, **kwargs)
    feats[0, 2] = float("nan")
    feats.requires_grad_(True)
    loss = reference.pdcr_loss_from_ratios(feats, phi, **kwargs)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, clean, **F64)
    loss.backward()
    assert torch.isfinite(feats.grad).all() and feats.grad[0, 2].abs().sum() == 0
    if cross:
        assert torch.isfinite(kwargs["feats_b"].grad).all()


def test_pdcr_gradcheck():
    gen = seeded(9)
    feats = torch.randn(1, 4, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    feats_b = torch.randn(1, 3, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    phi, phi_b = random_ratios((1, 2, 4, 3), gen), random_ratios((1, 2, 3, 3), gen)
    valid = torch.tensor([[True, False, True, True]])
    assert torch.autograd.gradcheck(
        lambda f: reference.pdcr_loss_from_ratios(f, phi, valid=valid, exclude_self=True), feats)
    assert torch.autograd.gradcheck(
        lambda f, g: reference.pdcr_loss_from_ratios(f, phi, feats_b=g, phi_b=phi_b,
                                                     reduction="sum"), (feats, feats_b))


def loop_centers(feature_shape, input_shape):
    strides = [i / f for f, i in zip(feature_shape, input_shape)]
    return torch.tensor([[math.floor(p * s + s / 2) for p, s in zip(point, strides)]
                         for point in itertools.product(*map(range, feature_shape))])


def test_pdcr_loss_dense_end_to_end_matches_loops():
    gen = seeded(10)
    features = torch.randn(2, 4, 3, 4, dtype=torch.float64, generator=gen)
    labels = torch.randint(0, 3, (2, 7, 9), generator=gen)
    labels[0, :3, :3] = 255  # location (0, 0) of image 0 sees only ignored pixels at L = 1
    windows = (1, 3)
    centers = loop_centers((3, 4), (7, 9)).expand(2, -1, -1)
    phi, valid_w = loop_ratios(labels, centers, windows, 3, 255)
    feats = features.flatten(2).transpose(1, 2)
    rows, counted, _ = loop_pdcr(feats, phi, valid=valid_w.all(1), tau=0.5)
    loss = reference.pdcr_loss(features, labels, num_classes=3, window_sizes=windows,
                               ignore_index=255, reduction="none")
    assert loss[0, 0] == 0
    torch.testing.assert_close(loss, rows, **F32)


def test_pdcr_loss_sampled_cross_layer_matches_loops():
    gen = seeded(11)
    features = torch.randn(1, 3, 5, 6, 7, dtype=torch.float64, generator=gen)
    features_b = torch.randn(1, 3, 3, 3, 4, dtype=torch.float64, generator=gen)
    labels = torch.randint(0, 3, (1, 10, 12, 14), generator=gen)
    windows = (3, 5)

    def columns(feature_map, num_samples):
        locations = sample_locations(feature_map.shape[2:], num_samples, "grid", 1)[0]
        centers = loop_centers(feature_map.shape[2:], (10, 12, 14))[locations].unsqueeze(0)
        phi, valid_w = loop_ratios(labels, centers, windows, 3)
        return feature_map.flatten(2)[:, :, locations].transpose(1, 2), phi, valid_w.all(1)

    feats, phi, valid = columns(features, 9)
    feats_b, phi_b, valid_b = columns(features_b, 9)
    rows, counted, _ = loop_pdcr(feats, phi, feats_b, phi_b, valid, valid_b, tau=0.3,
                                 divergence="fg_l1")
    loss = reference.pdcr_loss(features, labels, num_classes=3, window_sizes=windows,
                               num_samples=9, tau=0.3, features_b=features_b,
                               divergence="fg_l1")
    torch.testing.assert_close(loss.item(), rows.sum().item() / counted, **F32)


def test_pdcr_loss_random_sampling_is_reproducible():
    features = torch.randn(2, 4, 6, 6)
    labels = torch.randint(0, 2, (2, 12, 12))
    run = lambda seed: reference.pdcr_loss(features, labels, num_classes=2, num_samples=8,
                                           sampling="random", generator=seeded(seed))
    assert run(0) == run(0)
    assert run(0) != run(1)


# --------------------------------------------------------------------------------------------
# §4 soft SupCon
# --------------------------------------------------------------------------------------------


def test_soft_supcon_by_hand():
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    # rows 0, 1: −(1 − log(e + 1)); row 2 has no positive and is not counted
    loss = reference.soft_supcon_loss(features, torch.tensor([0, 0, 1]), tau=1.0)
    torch.testing.assert_close(loss.item(), math.log(1 + math.e) - 1, **F64)


def test_soft_supcon_integer_labels_match_khosla_loop():
    gen = seeded(12)
    features = torch.randn(2, 9, 5, dtype=torch.float64, generator=gen)
    labels = torch.tensor([[0, 1, 0, 2, 1, -1, 0, 3, 2], [1, 1, -1, -1, 0, 0, 2, 2, 2]])
    none = reference.soft_supcon_loss(features, labels, tau=0.2, ignore_index=-1,
                                      reduction="none")
    total, count = 0.0, 0
    for b in range(2):
        rows, counted = loop_supcon(features[b], labels[b].tolist(), 0.2, ignore_index=-1)
        torch.testing.assert_close(none[b], rows, **F64)
        total, count = total + rows.sum().item(), count + len(counted)
    mean = reference.soft_supcon_loss(features, labels, tau=0.2, ignore_index=-1)
    torch.testing.assert_close(mean.item(), total / count, **F64)
    summed = reference.soft_supcon_loss(features, labels, tau=0.2, ignore_index=-1,
                                        reduction="sum")
    torch.testing.assert_close(summed.item(), total, **F64)


def test_soft_supcon_soft_labels_match_loop():
    gen = seeded(13)
    features = torch.randn(7, 4, dtype=torch.float64, generator=gen)
    soft = random_ratios((7, 3), gen)
    soft[2] = torch.tensor([1.0, 0.0, 0.0])  # only overlaps rows with class-0 mass
    rows, counted = loop_soft_supcon(features, soft, 0.5)
    none = reference.soft_supcon_loss(features, soft, tau=0.5, reduction="none")
    assert none.shape == (7,)
    torch.testing.assert_close(none, rows, **F64)
    torch.testing.assert_close(reference.soft_supcon_loss(features, soft, tau=0.5).item(),
                               rows.sum().item() / len(counted), **F64)


def test_soft_supcon_no_counted_rows_and_gradcheck():
    features = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    loss = reference.soft_supcon_loss(features, torch.tensor([0, 1, 2, 3]))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    labels = torch.tensor([0, 1, 0, 1])
    assert torch.autograd.gradcheck(
        lambda f: reference.soft_supcon_loss(f, labels, tau=0.5), features)
    soft = random_ratios((4, 2), seeded(14))
    assert torch.autograd.gradcheck(
        lambda f: reference.soft_supcon_loss(f, soft, tau=0.5), features)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_soft_supcon_nonfinite_ignored_row_drops_out(bad):
    # SPEC §4/§9: an ignored row drops out as row and column even when its features are NaN/Inf;
    # 0 weight × NaN similarity used to turn every row that shares its class id NaN.
    gen = seeded(15)
    features = torch.randn(2, 7, 4, dtype=torch.float64, generator=gen)
    labels = torch.tensor([[0, 1, 0, -1, 1, 2, 2], [1, 1, 0, 0, -1, -1, 0]])
    features[0, 3] = bad
    features[1, 4, 1] = bad
    features.requires_grad_(True)
    none = reference.soft_supcon_loss(features, labels, tau=0.3, ignore_index=-1,
                                      reduction="none")
    for b in range(2):
        rows, _ = loop_supcon(features[b].detach(), labels[b].tolist(), 0.3, ignore_index=-1)
        torch.testing.assert_close(none[b], rows, **F64)
    loss = reference.soft_supcon_loss(features, labels, tau=0.3, ignore_index=-1)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(features.grad).all()
    assert features.grad[0, 3].abs().sum() == 0 and features.grad[1, 4].abs().sum() == 0


# --------------------------------------------------------------------------------------------
# §5 patch entropy
# --------------------------------------------------------------------------------------------


def test_patch_entropy_by_hand():
    logits = torch.tensor([math.log(3.0), 0.0]).view(1, 2, 1, 1).expand(1, 2, 3, 3)
    # p = (0.75, 0.25): binary entropy 0.5623351446 for both classes, shannon 0.8112781245
    stats = reference.patch_entropy(logits, 2)
    assert isinstance(stats, PatchStats)
    assert stats.entropy.shape == (1, 2, 2, 2)
    torch.testing.assert_close(stats.entropy, torch.full((1, 2, 2, 2), 0.5623351446))
    torch.testing.assert_close(stats.mean_conf[0, :, 0, 0], torch.tensor([0.75, 0.25]))
    assert stats.count[0, 0].tolist() == [[4, 2], [2, 1]] and stats.count.dtype == torch.long
    shannon = reference.patch_entropy(logits, (2, 3), mode="shannon")
    assert shannon.entropy.shape == (1, 1, 2, 1)
    torch.testing.assert_close(shannon.entropy, torch.full((1, 1, 2, 1), 0.8112781245))


@pytest.mark.parametrize("mode", ["binary", "shannon"])
@pytest.mark.parametrize("masked", [False, True])
def test_patch_entropy_2d_matches_loop(mode, masked):
    gen = seeded(15)
    logits = 3 * torch.randn(2, 3, 7, 9, generator=gen)
    class_mask = torch.randint(-1, 4, (2, 7, 9), generator=gen) if masked else None
    stats = reference.patch_entropy(logits, 4, mode=mode, class_mask=class_mask)
    entropy, conf, count = loop_patch_entropy(logits, (4, 4), mode, class_mask)
    assert stats.entropy.dtype == torch.float32
    torch.testing.assert_close(stats.entropy.double(), entropy, **F32)
    torch.testing.assert_close(stats.mean_conf.double(), conf, **F32)
    assert torch.equal(stats.count, count)


def test_patch_entropy_3d_class_mask_with_empty_tiles():
    gen = seeded(16)
    logits = torch.randn(1, 2, 5, 6, 7, dtype=torch.float64, generator=gen)
    class_mask = torch.zeros(1, 5, 6, 7, dtype=torch.long)
    class_mask[0, :2, :3] = 1  # class 1 lives in one corner only
    stats = reference.patch_entropy(logits, (2, 3, 4), mode="shannon", class_mask=class_mask)
    entropy, conf, count = loop_patch_entropy(logits, (2, 3, 4), "shannon", class_mask)
    assert stats.entropy.shape == (1, 2, 3, 2, 2) and stats.entropy.dtype == torch.float64
    assert (count[0, 1] == 0).any()
    torch.testing.assert_close(stats.entropy, entropy, **F64)
    torch.testing.assert_close(stats.mean_conf, conf, **F64)
    assert torch.equal(stats.count, count)


def test_patch_entropy_extreme_logits_and_no_grad():
    logits = torch.tensor([1e4, -1e4, 0.0]).view(1, 3, 1, 1).repeat(1, 1, 3, 2)
    logits[0, :, 0, 0] = torch.tensor([1e4, 1e4, -1e4])  # two classes at p = ½
    logits.requires_grad_(True)
    for mode in ("binary", "shannon"):
        stats = reference.patch_entropy(logits, 1, mode=mode)
        assert all(torch.isfinite(t).all() for t in stats)
        assert not stats.entropy.requires_grad
    binary = reference.patch_entropy(logits, 1).entropy
    assert binary[0, :, 1, 1].tolist() == [0.0, 0.0, 0.0]
    torch.testing.assert_close(binary[0, :, 0, 0], torch.tensor([math.log(2), math.log(2), 0]))


# --------------------------------------------------------------------------------------------
# §6 UAFS
# --------------------------------------------------------------------------------------------


def test_uafs_two_channels_by_hand():
    # p = (0.75, 0.25): U = binary entropy in bits = 0.8112781245, weight 2 − U
    att = torch.tensor([math.log(3.0), 0.0], dtype=torch.float64).view(1, 2, 1, 1)
    x = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64).view(1, 3, 1, 1)
    out = reference.uafs_reweight(x, att)
    torch.testing.assert_close(out, x * 1.188721875540867, **F64)


def test_uafs_three_channels_by_hand_3d():
    # p = (1, 2, 3)/6: H = 1.0114042647, U = H / ln 3 = 0.9206198357
    att = torch.log(torch.tensor([1.0, 2.0, 3.0])).view(1, 3, 1, 1, 1).expand(2, 3, 2, 3, 1)
    x = torch.randn(2, 4, 2, 3, 1)
    torch.testing.assert_close(reference.uafs_reweight(x, att), x * 1.079380164285695)


def test_uafs_gradcheck():
    gen = seeded(17)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    att = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(reference.uafs_reweight, (x, att))


# --------------------------------------------------------------------------------------------
# §7 affinity graph loss
# --------------------------------------------------------------------------------------------


def loop_graph_rows(y_t, y_s, sigma, gamma, distance, diag):
    """Per-node terms ℓ_i = (1 − A_ii) (or A_ii) + (γ/N)‖A‖_*, from a loop-built A."""
    n = len(y_t)
    a = np.zeros((n, n))
    for i, j in itertools.product(range(n), repeat=2):
        diffs = [t - s for t, s in zip(y_t[i].tolist(), y_s[j].tolist())]
        dist = sum(d * d for d in diffs) if distance == "sqeuclidean" else sum(map(abs, diffs))
        a[i, j] = math.exp(-dist / (2 * sigma**2))
    nuclear = np.linalg.svd(a, compute_uv=False).sum()
    return [(1 - a[i, i] if diag == "one_minus" else a[i, i]) + gamma * nuclear / n
            for i in range(n)]


def loop_graph_loss(y_t, y_s, sigma, gamma, distance, diag, reduction):
    n = len(y_t)
    a = np.zeros((n, n))
    for i, j in itertools.product(range(n), repeat=2):
        diffs = [t - s for t, s in zip(y_t[i].tolist(), y_s[j].tolist())]
        dist = sum(d * d for d in diffs) if distance == "sqeuclidean" else sum(map(abs, diffs))
        a[i, j] = math.exp(-dist / (2 * sigma**2))
    diag_sum = sum(a[i, i] for i in range(n))
    total = (n - diag_sum if diag == "one_minus" else diag_sum)
    total += gamma * np.linalg.svd(a, compute_uv=False).sum()
    return total / n if reduction == "mean" else total


@pytest.mark.parametrize("distance", ["sqeuclidean", "l1"])
@pytest.mark.parametrize("diag", ["one_minus", "literal"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_affinity_graph_loss_matches_loop(distance, diag, reduction):
    gen = seeded(18)
    y_t = torch.softmax(torch.randn(6, 3, dtype=torch.float64, generator=gen), dim=1)
    y_s = torch.softmax(torch.randn(6, 3, dtype=torch.float64, generator=gen), dim=1)
    kwargs = dict(sigma=0.4, gamma=-0.3, distance=distance, diag=diag, reduction=reduction)
    loss = reference.affinity_graph_loss(y_t, y_s, **kwargs)
    torch.testing.assert_close(loss.item(), loop_graph_loss(y_t, y_s, **kwargs), **F64)


def test_affinity_graph_loss_identical_inputs_and_gradient_flow():
    gen = seeded(19)
    y_t = torch.softmax(torch.randn(5, 4, dtype=torch.float64, generator=gen), dim=1)
    y_s = y_t.clone()
    assert reference.affinity_graph_loss(y_t, y_s, gamma=0.0).item() == 0.0
    y_t.requires_grad_(True)
    y_s = (y_t.detach() + 0.1 * torch.rand(5, 4, dtype=torch.float64, generator=gen))
    y_s.requires_grad_(True)
    reference.affinity_graph_loss(y_t, y_s).backward()
    assert y_t.grad is None and y_s.grad is not None
    assert torch.autograd.gradcheck(
        lambda s: reference.affinity_graph_loss(y_t, s, gamma=0.5), y_s)


def test_affinity_graph_loss_empty():
    y_s = torch.zeros(0, 3, requires_grad=True)
    loss = reference.affinity_graph_loss(torch.zeros(0, 3), y_s)
    assert loss.item() == 0.0 and loss.grad_fn is not None
    assert reference.affinity_graph_loss(torch.zeros(0, 3), y_s, reduction="none").shape == (0,)


@pytest.mark.parametrize("diag", ["one_minus", "literal"])
def test_affinity_graph_loss_none_is_per_node_and_reduces_to_mean_and_sum(diag):
    gen = seeded(23)
    y_t = torch.softmax(torch.randn(7, 3, dtype=torch.float64, generator=gen), dim=1)
    y_s = torch.softmax(torch.randn(7, 3, dtype=torch.float64, generator=gen), dim=1)
    kwargs = dict(sigma=0.6, gamma=0.4, diag=diag)
    rows = reference.affinity_graph_loss(y_t, y_s, reduction="none", **kwargs)
    expected = loop_graph_rows(y_t, y_s, distance="sqeuclidean", **kwargs)
    assert rows.shape == (7,)
    torch.testing.assert_close(rows, torch.tensor(expected, dtype=torch.float64), **F64)
    torch.testing.assert_close(reference.affinity_graph_loss(y_t, y_s, **kwargs).item(),
                               sum(expected) / 7, **F64)
    torch.testing.assert_close(reference.affinity_graph_loss(y_t, y_s, reduction="sum",
                                                             **kwargs).item(), sum(expected), **F64)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", ["y_s", "y_t"])
@pytest.mark.parametrize("gamma", [0.0, 0.1])
def test_affinity_graph_loss_nonfinite_input_gives_nan(bad, where, gamma):
    # SPEC §9: NaN used to raise LinAlgError in the SVD (even with γ = 0, the norm was still
    # taken) and Inf only zeroed entries of A, giving a finite loss.
    gen = seeded(24)
    y_t = torch.softmax(torch.randn(5, 3, dtype=torch.float64, generator=gen), dim=1)
    y_s = torch.softmax(torch.randn(5, 3, dtype=torch.float64, generator=gen), dim=1)
    (y_s if where == "y_s" else y_t)[2, 1] = bad
    y_s.requires_grad_(True)
    for reduction in ("mean", "sum"):
        loss = reference.affinity_graph_loss(y_t, y_s, gamma=gamma, reduction=reduction)
        assert loss.isnan(), loss
        loss.backward()  # must not raise
    assert reference.affinity_graph_loss(y_t, y_s, gamma=gamma, reduction="none").isnan().all()


# --------------------------------------------------------------------------------------------
# §7 mixed-negative InfoNCE
# --------------------------------------------------------------------------------------------


def loop_infonce(q, k_pos, negatives, alpha, tau, n_hard, pairs, mode):
    losses = loop_infonce_rows(q, k_pos, negatives, alpha, tau, n_hard, pairs, mode)
    return sum(losses) / len(losses)


def loop_infonce_rows(q, k_pos, negatives, alpha, tau, n_hard, pairs, mode):
    def unit(v):
        norm = max(math.sqrt(sum(x * x for x in v)), 1e-8)
        return [x / norm for x in v]

    def dot(u, v):
        return sum(a * b for a, b in zip(u, v))

    negs = [unit(n) for n in negatives.tolist()]
    losses = []
    for b, (qb, kb) in enumerate(zip(q.tolist(), k_pos.tolist())):
        qb = unit(qb)
        sims = [dot(qb, n) for n in negs]
        hard = sorted(range(len(negs)), key=lambda i: -sims[i])[:n_hard]
        logits = [dot(qb, unit(kb)) / tau]
        if mode == "queue_plus_mixed":
            logits += [s / tau for s in sims]
        for pi, pj in pairs[b].tolist():
            i, j = hard[pi], hard[pj]
            a = alpha[i].item()
            h = unit([a * x + (1 - a) * y for x, y in zip(negs[i], negs[j])])
            logits.append(dot(qb, h) / tau)
        losses.append(-logits[0] + math.log(sum(math.exp(z) for z in logits)))
    return losses


def infonce_inputs(seed, num_negatives=12):
    gen = seeded(seed)
    q = torch.randn(3, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    k_pos = torch.randn(3, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    negatives = torch.randn(num_negatives, 5, dtype=torch.float64, generator=gen,
                            requires_grad=True)
    alpha = torch.rand(num_negatives, dtype=torch.float64, generator=gen, requires_grad=True)
    return q, k_pos, negatives, alpha


@pytest.mark.parametrize("mode", ["queue_plus_mixed", "mixed_only"])
def test_mixed_negative_infonce_matches_loop(mode):
    q, k_pos, negatives, alpha = infonce_inputs(20)
    pairs = torch.tensor([[[0, 1], [3, 2], [4, 0], [1, 4]],
                          [[2, 3], [0, 4], [1, 0], [4, 3]],
                          [[1, 2], [2, 1], [3, 0], [0, 3]]])
    loss = reference.mixed_negative_infonce(q, k_pos, negatives, alpha, tau=0.2, n_hard=5,
                                            n_mix=4, mode=mode, pairs=pairs)
    expected = loop_infonce(q, k_pos, negatives, alpha, 0.2, 5, pairs, mode)
    torch.testing.assert_close(loss.item(), expected, **F64)
    loss.backward()
    assert q.grad is not None
    assert k_pos.grad is None and negatives.grad is None and alpha.grad is None


@pytest.mark.parametrize("mode", ["queue_plus_mixed", "mixed_only"])
@pytest.mark.parametrize("where", ["q", "k_pos", "negatives", "alpha"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_mixed_negative_infonce_nonfinite_input_gives_nan(mode, where, bad):
    # SPEC §9; an α (or, in "mixed_only", a negative) outside the drawn pairs used to leave the
    # loss finite.
    inputs = dict(zip(("q", "k_pos", "negatives", "alpha"), infonce_inputs(26)))
    with torch.no_grad():
        inputs[where].view(-1)[-1] = bad
    pairs = torch.tensor([[[0, 1]], [[1, 0]], [[0, 1]]])
    loss = reference.mixed_negative_infonce(*inputs.values(), n_hard=2, n_mix=1, mode=mode, pairs=pairs)
    assert loss.isnan(), loss
    loss.backward()  # must not raise
    rows = reference.mixed_negative_infonce(*inputs.values(), n_hard=2, n_mix=1, mode=mode, pairs=pairs,
                                            reduction="none")
    assert rows.isnan().all()


def test_mixed_negative_infonce_none_is_per_query_and_reduces_to_mean_and_sum():
    q, k_pos, negatives, alpha = infonce_inputs(25)
    pairs = torch.tensor([[[0, 1], [2, 0]], [[1, 2], [3, 1]], [[3, 0], [0, 2]]])
    kwargs = dict(tau=0.3, n_hard=4, n_mix=2, pairs=pairs)
    rows = reference.mixed_negative_infonce(q, k_pos, negatives, alpha, reduction="none", **kwargs)
    expected = loop_infonce_rows(q, k_pos, negatives, alpha, 0.3, 4, pairs, "queue_plus_mixed")
    assert rows.shape == (3,)
    torch.testing.assert_close(rows, torch.tensor(expected, dtype=torch.float64), **F64)
    torch.testing.assert_close(
        reference.mixed_negative_infonce(q, k_pos, negatives, alpha, reduction="sum", **kwargs).item(),
        sum(expected), **F64)
    torch.testing.assert_close(
        reference.mixed_negative_infonce(q, k_pos, negatives, alpha, **kwargs).item(),
        sum(expected) / 3, **F64)


def test_mixed_negative_infonce_generator_reproducibility():
    q, k_pos, negatives, alpha = infonce_inputs(21)
    run = lambda seed: reference.mixed_negative_infonce(
        q, k_pos, negatives, alpha, n_hard=6, n_mix=5, generator=seeded(seed))
    assert run(3).item() == run(3).item()
    assert run(3).item() != run(4).item()
    pairs = draw_mix_pairs(3, 6, 5, seeded(3))
    expected = loop_infonce(q, k_pos, negatives, alpha, 0.1, 6, pairs, "queue_plus_mixed")
    torch.testing.assert_close(run(3).item(), expected, **F64)


def test_mixed_negative_infonce_too_few_hard_negatives_is_plain_infonce():
    q, k_pos, negatives, alpha = infonce_inputs(22, num_negatives=1)
    loss = reference.mixed_negative_infonce(q, k_pos, negatives, alpha, n_hard=4, n_mix=3,
                                            generator=seeded(0))
    no_pairs = torch.empty(3, 0, 2, dtype=torch.long)
    expected = loop_infonce(q, k_pos, negatives, alpha, 0.1, 4, no_pairs, "queue_plus_mixed")
    torch.testing.assert_close(loss.item(), expected, **F64)


# --------------------------------------------------------------------------------------------
# Sampling helpers
# --------------------------------------------------------------------------------------------


def test_sample_locations_dense_and_grid_by_hand():
    assert torch.equal(sample_locations((3, 4), None, "grid", 2),
                       torch.arange(12).expand(2, 12))
    # 4x4 map, 4 samples: lattice coordinates {1, 3} per dim
    assert sample_locations((4, 4), 4, "grid", 1).tolist() == [[5, 7, 13, 15]]


def test_sample_locations_stride_by_hand():
    # P = 63, N = 10: step 6, indices 1, 7, ..., 55
    assert sample_locations((7, 9), 10, "stride", 2).tolist() == [list(range(1, 56, 6))] * 2
    # N = P: step 1, the last index is clamped to P - 1 (the official sampler repeats it)
    assert sample_locations((2, 3), 6, "stride", 1).tolist() == [[1, 2, 3, 4, 5, 5]]


@pytest.mark.parametrize("shape", [(7, 9), (5, 6, 7), (1, 8)])
def test_sample_locations_grid_every_count(shape):
    total = math.prod(shape)
    for n in range(1, total + 1):
        flat = sample_locations(shape, n, "grid", 2)
        assert flat.shape == (2, n) and flat.dtype == torch.long
        assert torch.equal(flat[0], flat[1])
        assert flat.unique().numel() == n
        assert 0 <= flat.min() and flat.max() < total


def test_sample_locations_random():
    flat = sample_locations((5, 6, 7), 40, "random", 3, generator=seeded(23))
    assert flat.shape == (3, 40)
    assert all(row.unique().numel() == 40 for row in flat)
    assert 0 <= flat.min() and flat.max() < 210
    assert not torch.equal(flat[0], flat[1])
    assert torch.equal(flat, sample_locations((5, 6, 7), 40, "random", 3, generator=seeded(23)))


def test_draw_mix_pairs():
    pairs = draw_mix_pairs(4, 3, 50, seeded(24))
    assert pairs.shape == (4, 50, 2) and pairs.dtype == torch.long
    assert (pairs[..., 0] != pairs[..., 1]).all()
    assert pairs.min() >= 0 and pairs.max() < 3
    # all 6 ordered pairs of distinct positions occur
    assert len({tuple(p) for p in pairs.reshape(-1, 2).tolist()}) == 6
    assert torch.equal(pairs, draw_mix_pairs(4, 3, 50, seeded(24)))
    assert draw_mix_pairs(4, 1, 50, seeded(24)).shape == (4, 0, 2)
