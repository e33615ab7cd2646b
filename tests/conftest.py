"""Test set-up.

Where no CUDA device is visible, the Triton kernels run in the Triton interpreter on CPU tensors:
TRITON_INTERPRET=1 must be set before affseg (and so triton.jit) is imported, which this file does.
Where a CUDA device is visible, the interpreter stays off so the tests marked `cuda` run the Triton
kernels on the GPU; the interpreter tests on CPU tensors are then skipped (run them there with
`TRITON_INTERPRET=1 pytest -m "not cuda"`).
"""
import os

import torch

if "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "0" if torch.cuda.is_available() else "1"
os.environ.pop("AFFSEG_BACKEND", None)  # tests pick backends explicitly

import pytest  # noqa: E402

INTERPRETING = os.environ["TRITON_INTERPRET"] == "1"


def pytest_collection_modifyitems(config, items):
    no_cuda = pytest.mark.skip(reason="needs a CUDA device (none visible to torch on this machine)")
    no_interpreter = pytest.mark.skip(
        reason="Triton on CPU tensors needs TRITON_INTERPRET=1 (left off here so the cuda tests run on the GPU)"
    )
    for item in items:
        if "cuda" in item.keywords:
            if not torch.cuda.is_available():
                item.add_marker(no_cuda)
        elif not INTERPRETING and "triton" in item.nodeid:
            item.add_marker(no_interpreter)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
