"""Lazy imports of the optional data dependencies (`pip install affseg[data]`).

`import affseg` needs only torch and numpy: nibabel, nilearn, Pillow and tifffile are imported
inside the functions that read a file of their kind, through `require`.
"""
from __future__ import annotations

import importlib
from types import ModuleType

_PIP_NAMES = {"nibabel": "nibabel", "nilearn": "nilearn", "PIL": "pillow", "tifffile": "tifffile"}


def require(module: str, what: str) -> ModuleType:
    """Import `module` (e.g. "nibabel" or "nilearn.datasets"), or raise an ImportError saying how
    to install it; `what` names the job that needs it ("reading NIfTI files")."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        raise ImportError(
            f"{what} needs the '{_PIP_NAMES.get(top, top)}' package, which is not installed: "
            "pip install affseg[data]"
        ) from e
