"""Every Triton kernel of kernels/*.py, compiled for sm_90 on this CPU-only machine at every
configuration its launcher can choose inside the module's LIMITS (tests/triton_sm90_cases.py).

The launchers run on meta tensors with their kernels swapped for recorders
(tests/triton_sm90_probe.py), so what compiles here is what they would launch. Asserted per family:
the launcher takes every in-limit call without raising; every launch compiles; shared memory
<= 227 KB; ptxas -v reports 0 bytes of spill stores and loads; grids fit the CUDA limits (axis 0
< 2^31, axes 1-2 <= 65,535) even for dense 3-D label volumes and 100,000-image batches; no
launcher hands a kernel a Python float (the GPU launcher would type it fp32); the PDCR and cos_lse
kernels' tf32 and bf16 dots compile to mma/wgmma (tensor cores), wgmma wherever a tile has 64 rows.

One subprocess compiles everything once (TRITON_INTERPRET must be unset there, while conftest.py
sets it for this process); Triton's on-disk cache makes reruns faster.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

HERE = Path(__file__).resolve().parent
FAMILIES = ["supcon", "pdcr", "entropy", "uafs", "labels", "agcl"]
SMEM_LIMIT = 232448


@pytest.fixture(scope="module")
def probe():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, str(HERE / "triton_sm90_probe.py"), "--families", ",".join(FAMILIES),
         "--jobs", str(min(4, os.cpu_count() or 1))],
        capture_output=True, text=True, env=env, timeout=1500, cwd=HERE.parent,
    )
    assert proc.returncode == 0, f"probe failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout)


def _fmt(c):
    consts = ", ".join(f"{k}={v}" for k, v in c["constexprs"].items() if not k.startswith(("SWAPPED", "FG_L1", "EXCLUDE")))
    ptrs = next((v for k, v in c["signature"].items() if v.startswith("*f") or v.startswith("*bf")), "?")
    ints = ",".join(c.get("divisible_by_16", [])) or "none"
    return f"{c['kernel']}[{ptrs}; {consts}; {c['options']}; ints divisible by 16: {ints}]"


@pytest.mark.parametrize("family", FAMILIES)
def test_launcher_takes_every_in_limit_call(probe, family):
    errors = [f"{e['case']}: {e['error']}" for e in probe["launches"] if e["family"] == family and e["error"]]
    assert not errors, "launcher raised for calls inside LIMITS:\n" + "\n".join(errors)
    assert any(e["kernels"] for e in probe["launches"] if e["family"] == family), "no launch recorded"


@pytest.mark.parametrize("family", FAMILIES)
def test_compiles_for_sm90_within_shared_memory_and_without_spills(probe, family):
    compiled = [c for c in probe["compiled"] if c["family"] == family]
    assert compiled
    bad = []
    for c in compiled:
        if "error" in c:
            bad.append(f"{_fmt(c)}: {c['error'][:300]}")
        elif c["shared"] > SMEM_LIMIT or c["spill_stores"] or c["spill_loads"] or c["registers"] is None:
            bad.append(f"{_fmt(c)}: shared {c['shared']} B, {c['registers']} registers, "
                       f"spills {c['spill_stores']}/{c['spill_loads']} B")
    assert not bad, f"{len(bad)} of {len(compiled)} configurations fail:\n" + "\n".join(bad)


@pytest.mark.parametrize("family", FAMILIES)
def test_grids_fit_and_scalars_are_tensors(probe, family):
    limits = probe["grid_limits"]
    bad = []
    for e in probe["launches"]:
        if e["family"] != family:
            continue
        for k in e["kernels"]:
            if any(g > lim for g, lim in zip(k["grid"], limits)) or any(g < 1 for g in k["grid"]):
                bad.append(f"{e['case']}: {k['kernel']} grid {k['grid']}")
            if k["python_floats"]:
                bad.append(f"{e['case']}: {k['kernel']} gets Python floats {k['python_floats']}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("family", ["pdcr", "supcon"])
def test_tensor_core_modes_compile_to_mma(probe, family, record_property):
    """SPEC §8: tf32 and bf16 dots (float16/bfloat16 inputs launch these too) run on tensor cores, so
    their PTX holds mma or wgmma. IEEE fp32 dots are FMA: recorded, not asserted (the compiler may
    change that)."""
    compiled = [c for c in probe["compiled"] if c["family"] == family and "error" not in c]
    modes = {c["constexprs"].get("INPUT_PRECISION") for c in compiled}
    assert {"ieee", "tf32", "bf16"} <= modes, f"modes compiled: {modes}"
    missing = [_fmt(c) for c in compiled if c["constexprs"].get("INPUT_PRECISION") in ("tf32", "bf16") and not c["mma"]]
    assert not missing, "tensor-core modes without mma/wgmma:\n" + "\n".join(missing)
    # a tile of 64 rows is a warpgroup's: Hopper's wgmma, not the sm_80 mma.sync emulation of it
    wide = [c for c in compiled if c["constexprs"].get("INPUT_PRECISION") in ("tf32", "bf16")
            and max(int(c["constexprs"].get("BLOCK_N", 0)), int(c["constexprs"].get("BLOCK_M", 0))) >= 64]
    assert wide, "no 64-row tensor-core tile compiled"
    no_wgmma = [_fmt(c) for c in wide if not c["wgmma"]]
    assert not no_wgmma, "64-row tensor-core tiles without wgmma:\n" + "\n".join(no_wgmma)
    fp32_ieee = [c for c in compiled
                 if c["constexprs"].get("INPUT_PRECISION") == "ieee" and "*fp32" in c["signature"].values()]
    with_mma = [_fmt(c) for c in fp32_ieee if c["mma"]]
    record_property("ieee_fp32_fma_only", f"{len(fp32_ieee) - len(with_mma)} of {len(fp32_ieee)}")
    record_property("ieee_fp32_with_mma", with_mma)


def test_pdcr_held_tile_statistics_stay_in_registers(probe):
    """Issue 10: φ (and the other per-item vectors) of the tile a PDCR program holds are loaded once,
    outside its sweep over the other tiles: no vector load of the held length inside a loop. Checked
    where the held and swept lengths differ (the 64-row tensor-core tiles, the 32 x 16 IEEE chunked
    backward), as lengths tell them apart."""
    checked, bad = 0, []
    for c in probe["compiled"]:
        if c["family"] != "pdcr" or "error" in c:
            continue
        k = c["constexprs"]
        held, swept = (k["BLOCK_M"], k["BLOCK_N"]) if c["kernel"] == "_pdcr_bwd_cols_kernel" else (k["BLOCK_N"], k["BLOCK_M"])
        if held == swept:
            continue
        checked += 1
        if int(held) in c["loop_vector_loads"]:
            bad.append(f"{_fmt(c)}: loads {held}-vectors in its loop ({c['loop_vector_loads']})")
    assert checked, "no uneven PDCR tile compiled"
    assert not bad, "\n".join(bad)


def test_every_jit_kernel_is_covered(probe):
    """A kernel no case reaches would go unchecked: each *_kernel of each module must compile here."""
    import re

    seen = {(c["family"], c["kernel"]) for c in probe["compiled"]}
    want = set()
    for family in FAMILIES:
        src = (HERE.parent / "kernels" / f"{family}.py").read_text()
        want |= {(family, name) for name in re.findall(r"@triton\.jit\s+def (\w+_kernel)\(", src)}
    assert want and want <= seen, f"never compiled: {sorted(want - seen)}"
