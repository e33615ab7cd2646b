"""patch_entropy (SPEC §5) on the fused backends against affseg.reference.

The C++ CPU kernel runs the arithmetic of csrc/include/affseg/entropy_math.h that the CUDA kernel
shares; the Triton kernel runs under the interpreter (conftest), so its sizes stay small.
"""
import pytest
import torch

import affseg
from affseg import reference
from isa_paths import ISAS, assert_passes_under

BACKENDS = ["cpu", "triton"]
# The interpreter evaluates masked-off lanes too (numpy warns on their −inf padding); stores drop them.
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}


def _logits(shape, dtype, scale=3.0):
    return (torch.randn(shape, dtype=torch.float64) * scale).to(dtype)


def _mask(logits, lo=-1, hi=None):
    batch, classes, *spatial = logits.shape
    return torch.randint(lo, classes + 1 if hi is None else hi, (batch, *spatial))


def _check(logits, patch, mode, class_mask, backend):
    got = affseg.patch_entropy(logits, patch, mode=mode, class_mask=class_mask, backend=backend)
    want = reference.patch_entropy(logits, patch, mode=mode, class_mask=class_mask)
    tol = TOL[torch.float64 if logits.dtype == torch.float64 else torch.float32]
    for name, g, w in zip(("entropy", "mean_conf", "count"), got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, (name, g.shape, w.shape, g.dtype, w.dtype)
        assert not g.requires_grad
        if name == "count":
            torch.testing.assert_close(g, w, rtol=0, atol=0)
        else:
            assert torch.isfinite(g).all(), name
            torch.testing.assert_close(g, w, **tol, msg=lambda m: f"{name}: {m}")
    return got


CASES = [
    ((2, 4, 13, 17), (4, 5)),  # partial tiles in both dims, patch per dim
    ((1, 2, 16, 16), 16),  # one full tile
    ((2, 3, 5, 7, 9), (2, 3, 4)),  # 3D, partial tiles
    ((1, 5, 6, 4), (7, 3)),  # patch larger than the image in one dim
    ((1, 3, 3, 300), (2, 24)),  # rows longer than the CPU kernel's chunk; a tile spans two chunks
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,patch", CASES)
@pytest.mark.parametrize("mode", ["binary", "shannon"])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_reference(backend, dtype, shape, patch, mode, masked):
    logits = _logits(shape, dtype)
    _check(logits, patch, mode, _mask(logits) if masked else None, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_classes", [2, 3, 5])
@pytest.mark.parametrize("mode", ["binary", "shannon"])
def test_extreme_logits_are_finite(backend, num_classes, mode):
    # ±1e4 logits: p is exactly 0 or 1 (h = 0), or ties between two maxima (h = log 2 terms).
    logits = torch.full((2, num_classes, 6, 5), -1e4)
    logits[:, 0, :3] = 1e4
    logits[0, 1, 3:] = 1e4
    logits[1, :, 3:] = torch.randn(num_classes, 3, 5) * 1e4
    logits[0, :2, 5, 4] = 1e4  # a tie at the maximum
    stats = _check(logits, (4, 3), mode, None, backend)
    _check(logits.double(), (4, 3), mode, None, backend)
    full = torch.zeros(1, num_classes, 2, 2)
    full[:, 0] = 1e4
    certain = affseg.patch_entropy(full, 2, mode=mode, backend=backend)
    assert (certain.entropy == 0).all() and (certain.mean_conf[:, 0] == 1).all()
    assert all(torch.isfinite(t.double()).all() for t in stats)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["binary", "shannon"])
def test_class_mask_empty_tiles_and_outside_values(backend, mode):
    logits = _logits((2, 3, 9, 10), torch.float32)
    mask = torch.full((2, 9, 10), 7)  # outside [0, K): no class
    mask[0, :4, :4] = 1
    mask[1, 5:, 6:] = -3
    mask[1, 0, 0] = 2
    stats = _check(logits, (4, 4), mode, mask, backend)
    empty = stats.count == 0
    assert empty.any()
    assert (stats.entropy[empty] == 0).all() and (stats.mean_conf[empty] == 0).all()
    assert stats.count.sum() == 17


@pytest.mark.parametrize("backend", BACKENDS)
def test_half_logits(backend):
    logits = _logits((1, 3, 8, 9), torch.float16)
    got = affseg.patch_entropy(logits, 4, backend=backend)
    want = reference.patch_entropy(logits, 4)
    assert got.entropy.dtype == torch.float32
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_propagates(backend):
    logits = _logits((1, 3, 8, 8), torch.float32)
    logits[0, 1, 2, 5] = float("nan")
    stats = affseg.patch_entropy(logits, 4, backend=backend)
    assert stats.entropy[0, :, 0, 1].isnan().all() and stats.mean_conf[0, :, 0, 1].isnan().all()
    assert torch.isfinite(stats.entropy[0, :, 1]).all() and torch.isfinite(stats.entropy[0, :, 0, 0]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_size(backend):
    stats = affseg.patch_entropy(torch.zeros(0, 3, 5, 5), 2, backend=backend)
    assert stats.entropy.shape == (0, 3, 3, 3) and stats.count.shape == (0, 3, 3, 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_logits(backend):
    logits = _logits((2, 11, 13, 3), torch.float32).permute(0, 3, 1, 2)
    mask = _mask(logits).transpose(1, 2).contiguous().transpose(1, 2)
    _check(logits, (4, 5), "binary", mask, backend)


def test_bad_input():
    with pytest.raises(ValueError, match="mode must be one of"):
        affseg.patch_entropy(torch.randn(1, 3, 4, 4), 2, mode="renyi", backend="cpu")
    with pytest.raises(ValueError, match="logits must have K >= 2 classes"):
        affseg.patch_entropy(torch.randn(1, 1, 4, 4), 2, backend="cpu")
    with pytest.raises(ValueError, match="class_mask must have shape \\(1, 4, 4\\)"):
        bad_mask = torch.zeros(1, 4, 5, dtype=torch.long)
        affseg.patch_entropy(torch.randn(1, 3, 4, 4), 2, class_mask=bad_mask, backend="cpu")
    with pytest.raises(TypeError, match="logits must be a floating-point tensor"):
        affseg.patch_entropy(torch.zeros(1, 3, 4, 4, dtype=torch.long), 2, backend="cpu")


def _opcheck_samples():
    logits = _logits((2, 3, 7, 6), torch.float32)
    volume = _logits((1, 2, 3, 5, 4), torch.float32)
    return [
        (logits, [3, 4], False, None),
        (logits, [3, 4], True, _mask(logits)),
        (logits.double(), [2, 2], True, None),
        (volume, [2, 2, 3], False, _mask(volume)),
    ]


@pytest.mark.parametrize("op", ["patch_entropy", "triton_patch_entropy"])
def test_opcheck(op):
    for sample in _opcheck_samples():
        torch.library.opcheck(getattr(torch.ops.affseg, op).default, sample)


def test_torch_compile_fullgraph():
    # The _ops layer under the public API: backend resolution (a dispatcher query) is not traceable.
    from affseg._ops import entropy as ops

    logits = _logits((2, 3, 9, 7), torch.float32)
    mask = _mask(logits)

    @torch.compile(fullgraph=True)
    def stats(x, m):
        entropy, mean_conf, count = ops.patch_entropy(x, (4, 3), False, m, "cpu")
        return entropy * 2, mean_conf, count

    got = stats(logits, mask)
    want = reference.patch_entropy(logits, (4, 3), class_mask=mask)
    torch.testing.assert_close(got[0], want.entropy * 2, **TOL[torch.float32])
    torch.testing.assert_close(got[2], want.count)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["binary", "shannon"])
@pytest.mark.parametrize("masked", [False, True])
def test_cuda_matches_reference(backend, dtype, mode, masked):
    for shape, patch in [((2, 4, 67, 45), (16, 8)), ((2, 3, 19, 21, 17), (8, 8, 4)), ((1, 70, 9, 9), (4, 4))]:
        logits = _logits(shape, dtype).cuda()
        logits[0, :, 0, 0] = -1e4
        logits[0, 1, 0, 0] = 1e4
        _check(logits, patch, mode, _mask(logits).cuda() if masked else None, backend)


_ISA_SCRIPT = """
import torch, affseg
from affseg import reference
torch.manual_seed(0)
for shape, patch in [((2, 4, 13, 300), (4, 24)), ((1, 2, 5, 7, 9), (2, 3, 4)), ((1, 3, 6, 5), (4, 3))]:
    for dtype in (torch.float32, torch.float64):
        x = (torch.randn(shape, dtype=torch.float64) * 3).to(dtype)
        x[0, :, 0, :2] = -1e4
        x[0, 0, 0, :2] = 1e4
        mask = torch.randint(-1, shape[1] + 1, (shape[0], *shape[2:]))
        for mode in ("binary", "shannon"):
            for m in (None, mask):
                got = affseg.patch_entropy(x, patch, mode=mode, class_mask=m, backend="cpu")
                want = reference.patch_entropy(x, patch, mode=mode, class_mask=m)
                tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
                for g, w in zip(got, want):
                    torch.testing.assert_close(g, w, **tol)
print("ok")
"""


@pytest.mark.parametrize("isa", ISAS)
def test_every_cpu_simd_path(isa):
    assert_passes_under(isa, _ISA_SCRIPT)
