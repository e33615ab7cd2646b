"""Every public symbol documents its contract: Args, Returns, Shape, Raises and an Example."""
import inspect

import pytest

import affseg

PUBLIC = [(name, getattr(affseg, name)) for name in affseg.__all__ if name not in ("nn", "reference")]
PUBLIC += [(f"nn.{name}", getattr(affseg.nn, name)) for name in affseg.nn.__all__]
SECTIONS = ("Args:", "Returns:", "Shape:", "Raises:", "Example:")


@pytest.mark.parametrize("name,obj", PUBLIC, ids=[n for n, _ in PUBLIC])
def test_public_symbol_documents_its_contract(name, obj):
    doc = inspect.getdoc(obj) or ""
    if name == "PatchStats":  # a NamedTuple of results: its fields are the contract
        assert all(field in doc for field in obj._fields), doc
        return
    missing = [s for s in SECTIONS if s not in doc]
    assert not missing, f"{name} docstring lacks {missing}"
