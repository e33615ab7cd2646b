"""setup.py's choice of building the CUDA kernels, tested without running a build.

The case that used to abort: a CUDA build of torch with no CUDA toolkit (no nvcc / no CUDA_HOME) must
build the CPU extension and say why CUDA was skipped.
"""
import importlib.util
import pathlib

import pytest
import torch
from torch.utils import cpp_extension

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup_module():
    spec = importlib.util.spec_from_file_location("affseg_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not __main__: defines the functions, runs no build
    return module


@pytest.fixture
def toolkit(tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "include").mkdir()
    (tmp_path / "bin" / "nvcc").write_text("")
    (tmp_path / "include" / "cuda_runtime.h").write_text("")
    return str(tmp_path)


def test_cpu_torch_builds_cpu_only(setup_module, toolkit):
    build, reason = setup_module.cuda_decision(None, toolkit, None)
    assert not build and "CPU build" in reason


def test_cuda_torch_with_toolkit_builds_cuda(setup_module, toolkit):
    assert setup_module.cuda_decision("12.8", toolkit, None)[0]


@pytest.mark.parametrize("layout", ["none", "no_nvcc", "no_headers"])
def test_cuda_torch_without_toolkit_builds_cpu_and_says_why(setup_module, tmp_path, layout):
    home = None
    if layout != "none":
        home = tmp_path
        (home / "bin").mkdir()
        (home / "include").mkdir()
        if layout == "no_headers":
            (home / "bin" / "nvcc").write_text("")
        home = str(home)
    build, reason = setup_module.cuda_decision("12.8", home, None)
    assert not build
    assert "CUDA 12.8 build" in reason and "CPU kernels only" in reason
    assert {"none": "CUDA_HOME is not set", "no_nvcc": "bin/nvcc", "no_headers": "cuda_runtime.h"}[layout] in reason


def test_force_flag(setup_module, toolkit):
    assert setup_module.cuda_decision(None, toolkit, "1")[0]
    assert not setup_module.cuda_decision("12.8", toolkit, "0")[0]
    with pytest.raises(SystemExit, match="AFFSEG_FORCE_CUDA=1 but"):
        setup_module.cuda_decision("12.8", None, "1")
    with pytest.raises(SystemExit, match="must be 0 or 1"):
        setup_module.cuda_decision("12.8", toolkit, "yes")


def test_extension_for_cuda_torch_without_cuda_home(setup_module, monkeypatch, capsys):
    # What `pip install -e .` does with a CUDA torch on a machine without the toolkit: a CPU extension.
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", None)
    monkeypatch.delenv("AFFSEG_FORCE_CUDA", raising=False)
    ext = setup_module._extension()
    assert not any(src.endswith(".cu") for src in ext.sources)
    assert ("AFFSEG_WITH_CUDA", None) not in (getattr(ext, "define_macros", None) or [])
    assert "skipping the CUDA kernels" in capsys.readouterr().err
