"""Every public symbol documents its contract: Args, Returns, Shape, Raises and an Example, and the
Example runs (as a doctest, with only `affseg` and `torch` imported), so a stale one fails CI."""
import doctest
import inspect

import pytest
import torch

import affseg
from affseg import reference

PUBLIC = [(name, getattr(affseg, name)) for name in affseg.__all__ if name not in ("models", "nn", "reference")]
PUBLIC += [(f"nn.{name}", getattr(affseg.nn, name)) for name in affseg.nn.__all__]
PUBLIC += [(f"models.{name}", getattr(affseg.models, name)) for name in affseg.models.__all__]
SECTIONS = ("Args:", "Returns:", "Shape:", "Raises:", "Example:")


@pytest.mark.parametrize("name,obj", PUBLIC, ids=[n for n, _ in PUBLIC])
def test_public_symbol_documents_its_contract(name, obj):
    doc = inspect.getdoc(obj) or ""
    if name in ("PatchStats", "PatchSample"):  # NamedTuples of results: their fields are the contract
        assert all(field in doc for field in obj._fields), doc
        return
    missing = [s for s in SECTIONS if s not in doc]
    assert not missing, f"{name} docstring lacks {missing}"


def _run_doctests(obj, name, globs):
    """(examples attempted, failure report) of every docstring example found under `obj`."""
    report = []
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder().find(obj, name, globs=globs):
        runner.run(test, out=report.append)
    return runner.summarize(verbose=False).attempted, "".join(report)


@pytest.mark.parametrize("name,obj", PUBLIC, ids=[n for n, _ in PUBLIC])
def test_public_docstring_example_runs(name, obj):
    attempted, report = _run_doctests(obj, f"affseg.{name}", {"affseg": affseg, "torch": torch})
    if name not in ("PatchStats", "PatchSample"):  # documented by their fields, they have no example
        assert attempted > 0, f"{name}: no runnable example found"
    assert not report, report


def test_reference_docstring_examples_run():
    """affseg.reference (public too: the oracle) writes its examples with the module's own names."""
    attempted, report = _run_doctests(reference, "affseg.reference", {**vars(reference), "torch": torch})
    assert attempted > 0
    assert not report, report


def test_readme_monai_example_runs():
    """The README's three-line MONAI example, verbatim, on a small BasicUNet."""
    import re
    from pathlib import Path

    monai = pytest.importorskip("monai")
    import torch

    import affseg

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"## Example: PDCR on a MONAI network.*?```python\n(.*?)```", readme, re.S).group(1)
    block = block.replace("BasicUNet(spatial_dims=2, in_channels=1, out_channels=3)",
                          "BasicUNet(spatial_dims=2, in_channels=1, out_channels=3, features=(4, 4, 8, 8, 16, 4))")
    images, labels = torch.randn(2, 1, 32, 32), torch.randint(0, 3, (2, 32, 32))
    dice_ce = monai.losses.DiceCELoss(to_onehot_y=True, softmax=True)
    scope = dict(monai=monai, affseg=affseg, images=images, labels=labels, dice_ce=dice_ce)
    exec(block, scope)
    scope["loss"].backward()
    assert all(p.grad is not None for p in scope["net"].upcat_1.parameters())
