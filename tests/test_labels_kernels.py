"""patch_label_ratios (SPEC §1) on the fused backends against affseg.reference.

φ comes from integer counts and one float32 division, so every backend must match the reference
exactly. The C++ CPU kernel runs the window/corner arithmetic of csrc/include/affseg/labels_math.h
that the CUDA kernels share; the Triton kernels run under the interpreter (conftest), so images stay
small.
"""
import pytest
import torch

import affseg
from affseg import reference
from affseg._ops import labels as label_ops

BACKENDS = ["cpu", "triton"]
WINDOWS = (1, 4, 5, 9, 40)  # 40 is larger than every test image


def _centers(batch, spatial, n, margin=3):
    """Random centres, some outside the image by up to `margin`, plus every corner of the image."""
    coords = [torch.randint(-margin, s + margin, (batch, n)) for s in spatial]
    corners = torch.cartesian_prod(*[torch.tensor([0, s - 1]) for s in spatial]).reshape(-1, len(spatial))
    return torch.cat([torch.stack(coords, -1), corners.expand(batch, -1, -1)], dim=1)


def _assert_same(out, ref):
    torch.testing.assert_close(out[0], ref[0], rtol=0, atol=0)
    assert torch.equal(out[1], ref[1])
    assert out[0].dtype == torch.float32 and out[1].dtype == torch.bool


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "spatial,num_classes,ignore_index",
    [((7, 9), 2, None), ((33, 17), 3, 255), ((5, 6, 7), 4, 1), ((4, 3, 5), 5, None), ((1, 6), 3, 0)],
)
def test_matches_reference(backend, spatial, num_classes, ignore_index):
    batch = 2
    labels = torch.randint(0, num_classes, (batch, *spatial))
    if ignore_index is not None:
        labels[torch.rand(labels.shape) < 0.3] = ignore_index
    centers = _centers(batch, spatial, 40)
    out = affseg.patch_label_ratios(labels, centers, WINDOWS, num_classes, ignore_index, backend=backend)
    _assert_same(out, reference.patch_label_ratios(labels, centers, WINDOWS, num_classes, ignore_index))
    assert out[0].shape == (batch, len(WINDOWS), centers.shape[1], num_classes)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fully_ignored_and_outside_windows_are_invalid(backend):
    labels = torch.randint(0, 3, (1, 12, 10))
    labels[:, :6, :5] = 7  # a fully ignored quadrant
    centers = torch.tensor([[[2, 2], [20, 20], [-9, 4], [8, 8]]])
    phi, valid = affseg.patch_label_ratios(labels, centers, (3, 4), 3, 7, backend=backend)
    assert valid[0, :, 0].tolist() == [False, False] and not valid[0, :, 1:3].any() and valid[0, :, 3].all()
    assert phi[~valid].abs().sum() == 0
    torch.testing.assert_close(phi[valid].sum(-1), torch.ones(int(valid.sum())))
    _assert_same((phi, valid), reference.patch_label_ratios(labels, centers, (3, 4), 3, 7))


@pytest.mark.parametrize("backend", BACKENDS)
def test_grid_centres_non_contiguous_and_int32_inputs(backend):
    labels = torch.randint(0, 4, (2, 20, 18)).transpose(1, 2)  # non-contiguous
    centers = affseg.grid_centers((5, 4), labels.shape[1:])[None].expand(2, -1, -1)
    out = affseg.patch_label_ratios(labels.int(), centers, (3, 5, 7), 4, backend=backend)
    _assert_same(out, reference.patch_label_ratios(labels, centers, (3, 5, 7), 4))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_inputs(backend):
    labels = torch.randint(0, 3, (2, 5, 6))
    phi, valid = affseg.patch_label_ratios(labels, torch.zeros(2, 0, 2, dtype=torch.long), (3,), 3, backend=backend)
    assert phi.shape == (2, 1, 0, 3) and valid.shape == (2, 1, 0)
    phi, valid = affseg.patch_label_ratios(labels[:0], torch.zeros(0, 4, 2, dtype=torch.long), (3,), 3,
                                           backend=backend)
    assert phi.shape == (0, 1, 4, 3) and valid.shape == (0, 1, 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pdcr_loss_uses_the_fused_ratios(backend):
    features = torch.randn(2, 8, 6, 5, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 24, 20))
    labels[:, :4] = 9
    kwargs = dict(num_classes=3, window_sizes=(3, 5), ignore_index=9, tau=0.5)
    out = affseg.pdcr_loss(features, labels, backend=backend, **kwargs)
    torch.testing.assert_close(out, affseg.pdcr_loss(features, labels, backend="reference", **kwargs),
                               rtol=1e-10, atol=1e-12)


def test_bad_input_raises():
    labels = torch.randint(0, 3, (1, 6, 6))
    centers = torch.zeros(1, 2, 2, dtype=torch.long)
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        affseg.patch_label_ratios(labels.float(), centers, (3,), 3, backend="cpu")
    bad = labels.clone()
    bad[0, 2, 3] = 5
    with pytest.raises(ValueError, match="labels must lie in .*got a label 5"):
        affseg.patch_label_ratios(bad, centers, (3,), 3, backend="cpu")
    with pytest.raises(ValueError, match="centers must have shape \\(B, N, 2\\)"):
        affseg.patch_label_ratios(labels, centers[..., :1], (3,), 3, backend="cpu")
    with pytest.raises(ValueError, match="window_sizes must contain values >= 1"):
        affseg.patch_label_ratios(labels, centers, (0,), 3, backend="cpu")


def _sample_args():
    labels = torch.randint(0, 3, (2, 9, 7))
    labels[0, :2] = 4
    centers = _centers(2, (9, 7), 6)
    vol = torch.randint(0, 2, (1, 4, 5, 3))
    return [(labels, centers, [3, 5], 3, 4), (labels, centers, [1, 20], 3, None),
            (vol, _centers(1, (4, 5, 3), 5), [2, 3], 2, None)]


@pytest.mark.parametrize("op", ["patch_label_ratios", "triton_patch_label_ratios"])
def test_opcheck(op):
    for args in _sample_args():
        torch.library.opcheck(getattr(torch.ops.affseg, op), args)


def test_torch_compile_fullgraph():
    labels, centers, windows, k, ignore = _sample_args()[0]
    fn = torch.compile(lambda lab, cen: label_ops.patch_label_ratios(lab, cen, windows, k, ignore, "cpu"),
                       fullgraph=True)
    _assert_same(fn(labels, centers), reference.patch_label_ratios(labels, centers, windows, k, ignore))


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("spatial", [(33, 17), (5, 6, 7), (64, 65)])
def test_cuda_backends_match_reference(backend, spatial):
    labels = torch.randint(0, 4, (2, *spatial))
    labels[torch.rand(labels.shape) < 0.2] = 255
    centers = _centers(2, spatial, 300)
    out = affseg.patch_label_ratios(labels.cuda(), centers.cuda(), WINDOWS, 4, 255, backend=backend)
    _assert_same(tuple(t.cpu() for t in out), reference.patch_label_ratios(labels, centers, WINDOWS, 4, 255))
