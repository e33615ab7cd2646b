"""Finding submodules by their ``named_modules()`` name, with errors that list close names."""
from __future__ import annotations

import difflib

import torch

# Prefixes that wrappers put in front of every name: torch.compile (OptimizedModule) and
# DistributedDataParallel / DataParallel. A name given without them is found with them.
_WRAPPER_PREFIXES = ("_orig_mod.", "module.", "_orig_mod.module.", "module._orig_mod.")


def layer_names(names, what: str = "layers") -> list[str]:
    """The names as a de-duplicated list (a single string is one name)."""
    if isinstance(names, str):
        names = [names]
    try:
        names = list(names)
    except TypeError:
        raise TypeError(f"{what} must be a module name or an iterable of names, got {type(names).__name__}") from None
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise TypeError(f"{what} must hold module names (str), got {bad[0]!r} ({type(bad[0]).__name__})")
    if not names:
        raise ValueError(f"{what} must name at least one submodule, got an empty list")
    return list(dict.fromkeys(names))


def unknown_message(name: str, modules: dict, what: str = "module") -> str:
    candidates = [n for n in modules if n]
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    hint = f"; close names: {close}" if close else ""
    return (f"{what} {name!r} is not a submodule of the model (names as in model.named_modules()){hint}; "
            f"it has {len(candidates)} named submodules, e.g. {candidates[:8]}")


def resolve(model: torch.nn.Module, name: str, modules: dict | None = None) -> tuple[str, torch.nn.Module]:
    """(the full name, the submodule) for ``name``, also found behind compile/DDP wrapper prefixes.

    Raises:
        ValueError: no submodule has that name (the message lists close names).
    """
    if modules is None:
        modules = dict(model.named_modules())
    for full in (name, *(p + name for p in _WRAPPER_PREFIXES)):
        if full in modules:
            return full, modules[full]
    raise ValueError(unknown_message(name, modules))
