"""Dot precision of the Triton PDCR and cos_lse kernels (SPEC §8): which mode a call runs and
what each mode's error against the float64 reference is, by ‖out − ref‖ / ‖ref‖ ≤ tol.

The CUDA C++ kernels take the same modes (csrc/cuda/block_tiles.cuh: WMMA tf32/bf16 tiles on sm_80+),
checked in the tests marked cuda; the CPU kernels check the option and compute IEEE.

Modes (kernels/_launch.py): "ieee" (fp32 FMA: elementwise rtol 1e-4), "tf32" (2e-3) and "bf16"
(1e-2), picked by affseg._backend.dot_precision from the inputs' dtype and
torch.get_float32_matmul_precision(). The interpreter ignores tf32 and computes bfloat16 wrongly
(a truncating cast, tl.dot on raw bits: BUILDING.md), so here "tf32" runs at IEEE accuracy, "bf16"
is refused, and the tolerances themselves are checked with a dot that rounds its operands as the
tensor cores do (tf32: truncated to 10 mantissa bits; bf16: round to nearest even). The real modes
run in the tests marked cuda.
"""
import pytest
import torch
import triton
import triton.language as tl

import affseg
from affseg import _backend, reference

kp = pytest.importorskip("affseg.kernels.pdcr")
ks = pytest.importorskip("affseg.kernels.supcon")

pytestmark = [
    pytest.mark.skipif(not hasattr(torch.ops.affseg, "triton_pdcr_fwd"), reason="Triton could not be imported"),
    pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning"),
]

SETTING = {"ieee": "highest", "tf32": "high", "bf16": "medium"}
# (values, gradients); "elementwise": rtol 1e-4, atol 1e-5. The gradients carry the rounding of G,
# whose rows nearly cancel in G·f: the worst measured case (C = 5, τ = 0.1, 257 columns) reaches
# 2.9e-3 (tf32) and 1.3e-2 (bf16), C ≥ 33 stays under 1.5e-3 and 5e-3; values stay under 5e-4.
TOL = {"ieee": ("elementwise", "elementwise"), "tf32": (1e-3, 5e-3), "bf16": (1e-3, 2e-2)}
# float16/bfloat16 inputs: their mode's dot error plus the rounding of the outputs to the input dtype.
INPUT_DTYPE_TOL = {torch.float16: (2e-3, 5e-3), torch.bfloat16: (5e-3, 2e-2)}


@pytest.fixture
def matmul_precision():
    """torch.set_float32_matmul_precision, restored afterwards (it is process-global)."""
    old = torch.get_float32_matmul_precision()
    yield torch.set_float32_matmul_precision
    torch.set_float32_matmul_precision(old)


def _rel(got, want):
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def _assert_near(got, want, tol):
    assert got.shape == want.shape
    if tol == "elementwise":
        torch.testing.assert_close(got.double(), want.double(), rtol=1e-4, atol=1e-5)
    else:
        assert _rel(got, want) <= tol, f"relative error {_rel(got, want):.2e} > {tol}"


def _ratios(B, W, N, K, gen):
    phi = torch.rand(B, W, N, K, generator=gen) ** 2
    return phi / phi.sum(-1, keepdim=True)


# (B, N, M or None for intra-layer, C, W, K, orientation, divergence, exclude_self, tau): odd sizes
PDCR_CASES = [(2, 77, None, 33, 3, 4, "paper", "tv", True, 0.3), (1, 100, 257, 5, 2, 2, "swapped", "fg_l1", False, 0.1)]
# (B, N, C, soft labels, tau): C = 600 runs the channel chunk loops
SUPCON_CASES = [(2, 77, 19, False, 0.1), (1, 50, 600, True, 0.07)]


def _pdcr_inputs(case, dtype=torch.float32, device="cpu"):
    B, N, M, C, W, K, orientation, divergence, exclude_self, tau = case
    gen = torch.Generator().manual_seed(0)
    inputs = dict(feats=torch.randn(B, N, C, generator=gen), phi=_ratios(B, W, N, K, gen),
                  valid=torch.rand(B, N, generator=gen) >= 0.2)
    if M is not None:
        inputs.update(feats_b=torch.randn(B, M, C, generator=gen), phi_b=_ratios(B, W, M, K, gen),
                      valid_b=torch.rand(B, M, generator=gen) >= 0.2)
    inputs = {k: (v.to(dtype) if v.is_floating_point() else v).to(device) for k, v in inputs.items()}
    return inputs, dict(tau=tau, orientation=orientation, divergence=divergence, exclude_self=exclude_self)


def _pdcr_run(inputs, opts, backend, reduction="none"):
    """(rows, feature grads) of pdcr_loss_from_ratios on `backend`."""
    leaves = [k for k in ("feats", "feats_b") if k in inputs]
    x = {k: (v.detach().clone().requires_grad_() if k in leaves else v) for k, v in inputs.items()}
    fn = reference.pdcr_loss_from_ratios if backend == "reference" else affseg.pdcr_loss_from_ratios
    out = fn(**x, **opts, reduction=reduction, **({} if backend == "reference" else dict(backend=backend)))
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    return out, torch.autograd.grad((out * weights).sum(), [x[k] for k in leaves])


def _supcon_inputs(case, dtype=torch.float32, device="cpu"):
    B, N, C, soft, tau = case
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(B, N, C, generator=gen).to(dtype)
    if soft:
        labels = torch.softmax(2 * torch.randn(B, N, 4, generator=gen), -1)
    else:
        labels = torch.randint(0, 4, (B, N), generator=gen)
    return (features.to(device), labels.to(device)), dict(tau=tau)


def _supcon_run(inputs, opts, backend, reduction="none"):
    features, labels = inputs
    x = features.detach().clone().requires_grad_()
    if backend == "reference":
        out = reference.soft_supcon_loss(x, labels, **opts, reduction=reduction)
    else:
        out = affseg.soft_supcon_loss(x, labels, **opts, reduction=reduction, backend=backend)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    return out, torch.autograd.grad((out * weights).sum(), [x])


FAMILIES = {"pdcr": (_pdcr_inputs, _pdcr_run, PDCR_CASES), "supcon": (_supcon_inputs, _supcon_run, SUPCON_CASES)}


def _reference64(family, inputs, opts, reduction="none"):
    """(out, grads) of the float64 reference on the same inputs (16-bit ones upcast exactly)."""
    _, run, _ = FAMILIES[family]
    up = ({k: (v.double() if v.is_floating_point() else v) for k, v in inputs.items()} if family == "pdcr"
          else tuple(v.double() if v.is_floating_point() else v for v in inputs))
    return run(up, opts, "reference", reduction)


def _check_against_float64(family, case, tol, dtype=torch.float32, device="cpu", reduction="none", backend="triton"):
    make, run, _ = FAMILIES[family]
    inputs, opts = make(case, dtype, device)
    out, grads = run(inputs, opts, backend, reduction)
    ref, ref_grads = _reference64(family, inputs, opts, reduction)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    _assert_near(out, ref, tol[0])
    for g, want in zip(grads, ref_grads):
        _assert_near(g, want, tol[1])


# ------------------------------------------------------------------ the policy and its plumbing

@pytest.mark.parametrize("setting", ["highest", "high", "medium"])
def test_dot_precision_follows_dtype_and_matmul_precision(matmul_precision, setting):
    matmul_precision(setting)
    assert _backend.dot_precision(torch.float32) == {"highest": "ieee", "high": "tf32", "medium": "bf16"}[setting]
    assert _backend.dot_precision(torch.float64) == "ieee"
    assert _backend.dot_precision(torch.float16) == "tf32"  # fp16 values exactly, with fp32's exponent range
    assert _backend.dot_precision(torch.bfloat16) == "bf16"


def _record(monkeypatch, module, names):
    """Wrap the launchers `names` of `module`; returns the list of (launcher, input_precision) calls."""
    calls = []
    for name in names:
        original = getattr(module, name)

        def launcher(*args, _original=original, _name=name, **kwargs):
            prec = kwargs.get("input_precision", args[-1] if isinstance(args[-1], str) else None)
            calls.append((_name, prec))
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, launcher)
    return calls


# The pdcr cases below are intra-layer: pdcr_intra_fwd launches through pdcr_fwd, the backward is pdcr_intra_bwd.
LAUNCHERS = {"pdcr": (kp, ("pdcr_fwd", "pdcr_intra_bwd")), "supcon": (ks, ("cos_lse_fwd", "cos_lse_bwd"))}


@pytest.mark.parametrize("family", ["pdcr", "supcon"])
def test_the_setting_reaches_the_launch_and_backward_keeps_the_forwards(monkeypatch, matmul_precision, family):
    make, run, _ = FAMILIES[family]
    module, names = LAUNCHERS[family]
    calls = _record(monkeypatch, module, names)
    small = (1, 20, None, 8, 1, 2, "paper", "tv", False, 0.5) if family == "pdcr" else (1, 20, 8, False, 0.5)
    inputs, opts = make(small)
    for setting, want in (("highest", "ieee"), ("high", "tf32")):
        matmul_precision(setting)
        calls.clear()
        run(inputs, opts, "triton")
        assert calls == [(names[0], want), (names[1], want)]

    # the backward runs in the mode its forward ran in, whatever the setting is by then
    matmul_precision("high")
    calls.clear()
    x = (inputs["feats"] if family == "pdcr" else inputs[0]).detach().clone().requires_grad_()
    rest = {k: v for k, v in inputs.items() if k != "feats"} if family == "pdcr" else None
    out = (affseg.pdcr_loss_from_ratios(x, **rest, **opts, backend="triton") if family == "pdcr"
           else affseg.soft_supcon_loss(x, inputs[1], **opts, backend="triton"))
    matmul_precision("highest")
    out.backward()
    assert calls == [(names[0], "tf32"), (names[1], "tf32")]

    # float64 dots are IEEE and float16 inputs run tf32, whatever the setting
    for dtype, want in ((torch.float64, "ieee"), (torch.float16, "tf32")):
        calls.clear()
        run(make(small, dtype)[0], opts, "triton")
        assert calls == [(names[0], want), (names[1], want)]


def test_setting_is_read_at_trace_time_under_torch_compile(monkeypatch, matmul_precision):
    """fullgraph: the setting becomes a constant string option of the op (about 5 s on 2 cores)."""
    calls = _record(monkeypatch, ks, ("cos_lse_fwd",))
    matmul_precision("high")
    x = torch.randn(2, 40, 8, requires_grad=True)
    labels = torch.randint(0, 3, (2, 40))
    got = torch.compile(lambda f: affseg.soft_supcon_loss(f, labels, backend="triton"), fullgraph=True)(x)
    assert calls == [("cos_lse_fwd", "tf32")]
    torch.testing.assert_close(got, affseg.soft_supcon_loss(x, labels, backend="triton"), rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not _backend.triton_interpreting(), reason="the interpreter's refusal")
@pytest.mark.parametrize("family", ["pdcr", "supcon"])
def test_bf16_dots_are_refused_by_the_interpreter(matmul_precision, family):
    make, run, cases = FAMILIES[family]
    inputs, opts = make(cases[0])
    matmul_precision("medium")
    with pytest.raises(ValueError, match="backend 'triton' cannot take this call: the Triton interpreter computes "
                                         "bfloat16 wrongly, and torch.get_float32_matmul_precision.. 'medium'"):
        run(inputs, opts, "triton")
    f = torch.nn.functional.normalize(torch.randn(1, 8, 4), dim=-1)
    with pytest.raises(ValueError, match="'bf16' runs only on a GPU"):  # the launchers refuse it as well
        ks.cos_lse_fwd(f, torch.ones(1, 8, dtype=torch.bool), 2.0, input_precision="bf16")


@pytest.mark.parametrize("family", ["pdcr", "supcon"])
def test_cpu_backend_ignores_the_setting(matmul_precision, family):
    op = "pdcr_loss_from_ratios" if family == "pdcr" else "soft_supcon_loss"
    ok, why = _backend.available(op, "cpu", torch.device("cpu"))
    if not ok:
        pytest.skip(why)
    make, run, cases = FAMILIES[family]
    inputs, opts = make(cases[0])
    results = []
    for setting in ("highest", "high", "medium"):
        matmul_precision(setting)
        results.append(run(inputs, opts, "cpu"))
    for out, grads in results[1:]:
        assert torch.equal(out, results[0][0]) and all(torch.equal(a, b) for a, b in zip(grads, results[0][1]))


# ------------------------------------------------------------------ values and gradients, interpreter

@pytest.mark.parametrize("mode", ["ieee", "tf32"])
@pytest.mark.parametrize("family", ["pdcr", "supcon"])
def test_modes_match_float64_reference(matmul_precision, family, mode):
    matmul_precision(SETTING[mode])
    for case in FAMILIES[family][2]:
        _check_against_float64(family, case, TOL[mode])


@pytest.mark.parametrize("family", ["pdcr", "supcon"])
def test_float16_inputs_return_float16_within_tolerance(family):
    # bfloat16 inputs are refused by the interpreter; both run in the tests marked cuda
    _check_against_float64(family, FAMILIES[family][2][0], INPUT_DTYPE_TOL[torch.float16], dtype=torch.float16,
                           reduction="mean")


@triton.jit
def _round_mantissa(x, DROP: tl.constexpr, NEAREST: tl.constexpr):
    """fp32 x with its DROP low mantissa bits cleared, rounded to nearest even or truncated."""
    u = x.to(tl.uint32, bitcast=True)
    if NEAREST:
        u = u + ((1 << (DROP - 1)) - 1) + ((u >> DROP) & 1)
    return (u & (0xFFFFFFFF ^ ((1 << DROP) - 1))).to(tl.float32, bitcast=True)


@triton.jit
def _tensor_core_dot(a, b, acc, INPUT_PRECISION: tl.constexpr):
    """kernels/_launch.dot with the operands rounded as the GPU rounds them, in fp32 (interpreter-safe)."""
    if INPUT_PRECISION == "bf16":
        a = _round_mantissa(a, 16, True)
        b = _round_mantissa(b, 16, True)
    elif INPUT_PRECISION == "tf32":  # the tensor cores read the top 19 bits of an fp32 operand
        a = _round_mantissa(a, 13, False)
        b = _round_mantissa(b, 13, False)
    return tl.dot(a, b, acc, input_precision="ieee", out_dtype=acc.dtype)


@pytest.mark.skipif(not _backend.triton_interpreting(), reason="swaps an interpreted helper")
@pytest.mark.parametrize("mode", ["tf32", "bf16"])
@pytest.mark.parametrize("family", ["pdcr", "supcon"])
def test_rounded_operands_meet_the_stated_tolerance(monkeypatch, matmul_precision, family, mode):
    """The kernels' fp32 epilogue on tensor-core-rounded operands stays within the mode's tolerance."""
    module = LAUNCHERS[family][0]
    from affseg.kernels import _launch

    monkeypatch.setattr(module, "dot", _tensor_core_dot)
    monkeypatch.setattr(_launch, "dot", _tensor_core_dot)  # the chunked similarity (tile_dots) calls it there
    monkeypatch.setattr(module, "input_precision_for", lambda name, prec, t: prec)
    monkeypatch.setattr(_backend, "DOT_PRECISION_OPS", ())
    matmul_precision(SETTING[mode])
    for case in FAMILIES[family][2]:
        _check_against_float64(family, case, TOL[mode])


# ------------------------------------------------------------------ on a GPU

@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["ieee", "tf32", "bf16"])
@pytest.mark.parametrize("family", ["pdcr", "supcon"])
def test_cuda_modes_match_float64_reference(matmul_precision, family, mode):
    matmul_precision(SETTING[mode])
    for case in FAMILIES[family][2]:
        for reduction in ("none", "mean"):
            _check_against_float64(family, case, TOL[mode], device="cuda", reduction=reduction)


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["ieee", "tf32", "bf16"])
@pytest.mark.parametrize("family", ["pdcr", "supcon"])
def test_cuda_cpp_modes_match_float64_reference(matmul_precision, family, mode):
    """The CUDA C++ kernels: "tf32"/"bf16" run the tensor-core tiles (csrc/cuda/block_tiles.cuh) on
    sm_80+ (IEEE below, which meets every tolerance); same tolerances as Triton's."""
    matmul_precision(SETTING[mode])
    for case in FAMILIES[family][2]:
        for reduction in ("none", "mean"):
            _check_against_float64(family, case, TOL[mode], device="cuda", reduction=reduction, backend="cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["tf32", "bf16"])
@pytest.mark.parametrize("family", ["pdcr", "supcon"])
def test_cuda_cpp_tensor_core_modes_change_the_arithmetic(matmul_precision, family, mode):
    """On sm_80+ the tensor-core paths really run: their results differ from IEEE's in the low bits
    (and match the Triton kernels of the same mode within the mode's tolerance)."""
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("tensor-core tiles need sm_80+")
    make, run, cases = FAMILIES[family]
    inputs, opts = make(cases[0], torch.float32, "cuda")
    matmul_precision("highest")
    ieee, ieee_grads = run(inputs, opts, "cuda")
    matmul_precision(SETTING[mode])
    out, grads = run(inputs, opts, "cuda")
    assert not torch.equal(out, ieee)
    triton_out, triton_grads = run(inputs, opts, "triton")
    _assert_near(out, triton_out, TOL[mode][0])
    for g, t in zip(grads, triton_grads):
        _assert_near(g, t, TOL[mode][1])


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("family", ["pdcr", "supcon"])
def test_cuda_16bit_inputs_run_triton_within_tolerance(family, dtype):
    op = "pdcr_loss_from_ratios" if family == "pdcr" else "soft_supcon_loss"
    assert _backend.resolve(op, "auto", torch.device("cuda"), dtype=dtype, channels=8, windows=1, classes=2) == "triton"
    for case in FAMILIES[family][2]:
        _check_against_float64(family, case, INPUT_DTYPE_TOL[dtype], dtype=dtype, device="cuda", reduction="mean")
