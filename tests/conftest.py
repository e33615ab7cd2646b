"""Test set-up: the Triton interpreter must be switched on before affseg (and triton) import."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.pop("AFFSEG_BACKEND", None)  # tests pick backends explicitly

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none visible to torch on this machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
