"""benchmarks/gpu_check.py without a GPU: its CLI, work counters, budget guard and report writer."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

pytest.importorskip("triton")
import gpu_report  # noqa: E402
from gpu_report import CASES, Case, Report, Row, case_work, fill_speedups, render  # noqa: E402


def test_help_runs():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--total-budget" in proc.stdout


def test_work_counters_follow_the_headers():
    from affseg.kernels import entropy, pdcr, supcon, uafs

    # supcon forward: 2·B·N²·C flops; B·N·(C·e + 1 + e) bytes
    assert supcon.work(1, 4, 8, torch.float32) == (2.0 * 16 * 8, float(4 * (8 * 4 + 1 + 4)))
    # pdcr forward at W = K = 1: 2·N·M·C + N·M·(3 + 8)
    flops, nbytes = pdcr.work(1, 2, 3, 4, 1, 1, torch.float64)
    assert flops == 2 * 2 * 3 * 4 + 2 * 3 * 11
    assert nbytes == (2 + 3) * (4 + 1) * 8 + 2 * 8 + (2 + 3) + 2 * 2 * 8
    assert uafs.work((1, 3, 2, 2), 4, torch.float16) == (4.0 * (20 + 3 + 2), 4.0 * (4 + 6) * 2)
    f, b = entropy.work((1, 2, 4, 4), (2, 2), False, False, torch.float32)
    assert f == 16 * 2 * 12 and b == 16 * 2 * 4 + 4 * ((2 + 2) * 4 + 2 * 8)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.op}-{c.size}")
def test_every_case_has_positive_work(case):
    modes = ["fwd", "fwd+bwd"] if case.op in gpu_report.DIFFERENTIABLE else ["fwd"]
    for mode in modes:
        flops, nbytes = case_work(case, mode)
        assert flops > 0 and nbytes > 0
    if len(modes) == 2:
        assert case_work(case, "fwd+bwd")[0] > case_work(case, "fwd")[0]


def test_report_shows_measured_numbers_only():
    case = Case("soft_supcon_loss", "B=1 N=8 C=4", dict(B=1, N=8, C=4))
    ref = Row(case, "reference", "fwd", median_ms=2.0, flops=4e9, nbytes=2e9)
    fused = Row(case, "triton", "fwd", median_ms=0.5, flops=4e9, nbytes=2e9)
    failed = Row(case, "cuda", "fwd", note="RuntimeError: affseg was built without CUDA")
    fill_speedups([ref, fused, failed])
    assert fused.vs_reference == 4.0 and failed.vs_reference is None
    report = Report(gpu="TestGPU", versions={"torch": "x", "triton": "y"},
                    stages=[("build", "failed", 1.0, "rc 1: error")], rows=[ref, fused, failed])
    text = render(report)
    assert "TestGPU" in text and "torch x" in text and "| build | failed |" in text
    line = next(ln for ln in text.splitlines() if "| triton |" in ln)
    assert "| 0.500 |" in line and "| 4.00x |" in line and "| 8.00 |" in line and "| 4000.0 |" in line
    line = next(ln for ln in text.splitlines() if "| cuda |" in ln)
    assert "built without CUDA" in line and line.count("—") == 4


def test_budget_guard_skips_and_says_so(tmp_path):
    import gpu_check

    report = Report()
    status, detail = gpu_check.time_cases(report, gpu_check.Log(tmp_path / "log"), budget_s=-1.0, device="cpu")
    assert status == "partial" and "skipped" in detail
    assert not report.rows and "not measured" in report.notes[0]
    assert (tmp_path / "log").exists()


def test_tile_sweep_runs_each_tile_choice_and_restores_the_launcher(tmp_path, monkeypatch):
    # In the interpreter at a small float32 case, with a stand-in timer: every alternative must reach
    # the kernels (the sweep measures what it says), and the launcher's config must be back afterwards.
    import gpu_check

    from affseg.kernels import pdcr

    real = pdcr._launch_config
    seen = []
    original_setup = pdcr._launch_setup

    def recording_setup(*args, **kwargs):
        out = original_setup(*args, **kwargs)
        seen.append({role: (m["BLOCK_N"], m["BLOCK_M"], m["num_warps"]) for role, m in out[3].items()})
        return out

    monkeypatch.setattr(pdcr, "_launch_setup", recording_setup)
    monkeypatch.setattr(gpu_check, "TILE_ALTERNATIVES", {"32x16": (32, 16, 4), "intra 16x32": {"intra": (16, 32, 4)}})
    case = Case("pdcr_loss_from_ratios", "B=1 N=40 C=8 W=2 K=3", dict(B=1, N=40, C=8, W=2, K=3),
                backends=("triton",), bmm=True)
    note = gpu_check._tile_sweep(case, gpu_check.Log(tmp_path / "log"), "cpu", bench=lambda step: (step(), 1.0)[1])
    assert pdcr._launch_config is real
    assert "launcher: fwd 1.000 ms, fwd+bwd 1.000 ms" in note and "32x16: fwd 1.000 ms, fwd+bwd 1.000 ms" in note
    # the interpreter's own tiles are square 64s; the alternative's fwd and intra bwd ran at 32 x 16
    assert any(s["fwd"] == (64, 64, 4) for s in seen)
    assert any(s["fwd"] == (32, 16, 4) for s in seen) and any(s["intra"] == (32, 16, 4) for s in seen)
    # a {role: tile} alternative replaces that role only
    assert "intra 16x32: fwd 1.000 ms, fwd+bwd 1.000 ms" in note
    assert any(s["intra"] == (16, 32, 4) and s["fwd"] == (64, 64, 4) for s in seen)
