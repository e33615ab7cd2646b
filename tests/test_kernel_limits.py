"""kernels/<family>.LIMITS is what the dispatcher routes by: its keys are the ones affseg._backend
knows, each file's header states the same numbers, and the launchers refuse calls just outside.
"""
import importlib

import pytest
import torch

pytest.importorskip("triton")

FAMILIES = ["supcon", "pdcr", "entropy", "uafs", "labels"]
SYMBOL = {"channels": "C", "windows": "W", "classes": "K", "att_channels": "M"}


@pytest.mark.parametrize("family", FAMILIES)
def test_header_states_limits(family):
    mod = importlib.import_module(f"affseg.kernels.{family}")
    limits = mod.LIMITS
    assert limits and set(limits) <= set(SYMBOL) | {"dtypes"}
    doc = mod.__doc__
    for key, value in limits.items():
        if key == "dtypes":
            assert all(isinstance(d, torch.dtype) for d in value)
            for d in value:
                assert str(d).replace("torch.", "") in doc, f"{family}: header does not name {d}"
        else:
            assert f"{SYMBOL[key]} ≤ {value}" in doc, f"{family}: header does not state {SYMBOL[key]} ≤ {value}"


def test_scalar_helper_keeps_float64():
    from affseg.kernels._launch import scalar

    x = torch.zeros(3, dtype=torch.float64)
    t = scalar(1 / 3, x)
    assert t.dtype == torch.float64 and t.shape == (1,) and t.item() == 1 / 3
    assert scalar(1 / 3, x, torch.float32).item() != 1 / 3  # the helper does not silently upcast


def test_batch_chunks_cover_batch_within_axis_limit():
    from affseg.kernels._launch import GRID_AXIS12_MAX, batch_chunks

    chunks = list(batch_chunks(2 * GRID_AXIS12_MAX + 5))
    assert chunks[0] == (0, GRID_AXIS12_MAX) and chunks[-1][1] == 2 * GRID_AXIS12_MAX + 5
    assert all(b - a <= GRID_AXIS12_MAX for a, b in chunks)
    assert all(chunks[i][1] == chunks[i + 1][0] for i in range(len(chunks) - 1))


def test_launchers_refuse_just_outside_limits():
    meta = dict(device="meta")
    supcon = importlib.import_module("affseg.kernels.supcon")
    pdcr = importlib.import_module("affseg.kernels.pdcr")
    entropy = importlib.import_module("affseg.kernels.entropy")
    uafs = importlib.import_module("affseg.kernels.uafs")
    labels = importlib.import_module("affseg.kernels.labels")
    C = supcon.LIMITS["channels"] + 1
    with pytest.raises(ValueError):
        supcon.cos_lse_fwd(torch.empty(1, 4, C, **meta), torch.empty(1, 4, dtype=torch.bool, **meta), 1.0)
    C = pdcr.LIMITS["channels"] + 1
    f = torch.empty(1, 4, C, **meta)
    p = torch.empty(1, 1, 4, 2, **meta)
    v = torch.empty(1, 4, dtype=torch.bool, **meta)
    with pytest.raises(ValueError):
        pdcr.pdcr_fwd(f, p, f, p, v, v, inv_tau=1.0, swapped=False, fg_l1=False, exclude_self=True)
    K = entropy.LIMITS["classes"] + 1
    with pytest.raises(ValueError):
        entropy.patch_entropy(torch.empty(1, K, 8, 8, **meta), (4, 4), True, None)
    M = uafs.LIMITS["att_channels"] + 1
    with pytest.raises(ValueError):
        uafs.uafs_fwd(torch.empty(1, 3, 8, 8, **meta), torch.empty(1, M, 8, 8, **meta))
    with pytest.raises(ValueError):
        labels.patch_label_ratios(torch.empty(1, 8, 8, dtype=torch.int64, **meta),
                                  torch.empty(1, 2, 2, dtype=torch.int64, **meta), [3],
                                  labels.LIMITS["classes"] + 1, None)
