"""The CPU ISA dispatch (csrc/include/affseg/cpu_isa.h): what is selected, and AFFSEG_CPU_ISA's checks."""
import os
import subprocess
import sys

import pytest
import torch

import affseg  # noqa: F401  (loads affseg._C)
from isa_paths import cpu_flags, expected_isa

_PROBE = """
import torch, affseg
print(torch.ops.affseg._cpu_isa())
"""


def _run(script, isa):
    env = dict(os.environ)
    env.pop("AFFSEG_CPU_ISA", None)
    if isa is not None:
        env["AFFSEG_CPU_ISA"] = isa
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("isa", [None, "", "auto", "AVX2", "baseline", "avx2", "avx512"])
def test_selected_isa_follows_the_cap(isa):
    proc = _run(_PROBE, isa)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected_isa(isa)


def test_default_is_the_widest_the_cpu_supports():
    flags = cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo to compare with")
    assert torch.ops.affseg._cpu_isa() in ("baseline", "avx2", "avx512")
    if os.environ.get("AFFSEG_CPU_ISA") is None:
        assert torch.ops.affseg._cpu_isa() == expected_isa(None)


@pytest.mark.parametrize("bad", ["sse4", "avx-512", "1"])
def test_unknown_cap_is_an_error_naming_the_accepted_values(bad):
    probe = _run(_PROBE, bad)
    assert probe.returncode != 0
    assert "ValueError" in probe.stderr and f"AFFSEG_CPU_ISA='{bad}'" in probe.stderr, probe.stderr
    assert "auto, avx512, avx2, baseline" in probe.stderr, probe.stderr
    # Kernels refuse to run too, rather than silently choosing a build.
    kernel = _run(
        "import torch, affseg\n"
        "torch.ops.affseg.uafs_fwd(torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4))\n",
        bad,
    )
    assert kernel.returncode != 0 and "AFFSEG_CPU_ISA" in kernel.stderr, kernel.stderr
