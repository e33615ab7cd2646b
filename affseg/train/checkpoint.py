"""Atomic, resumable training checkpoints: everything a run needs to continue bit for bit.

A checkpoint holds the model (and teacher), optimiser, scheduler, Semi-AGCL queue, the step, the
loss history and every RNG state (Python, NumPy, torch CPU and CUDA), so that a run killed after
checkpoint k and resumed with ``--resume`` ends with the weights of a run that was never stopped.
It is written to a temporary file in the same folder, flushed to disk and renamed over the old one
(``os.replace`` is atomic on POSIX and Windows): a kill mid-write leaves the previous checkpoint.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

CHECKPOINT = "checkpoint.pt"


def rng_state() -> dict:
    """The global RNG states a training step draws from (CUDA: the current device's, only once a
    CUDA context exists, so a CPU run never creates one)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


def atomic_write(path: str | os.PathLike, write, mode: str = "wb") -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, flush it to disk and rename it over
    ``path``, so that readers see the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically (:func:`atomic_write`)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically (:func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(text), mode="w")


def save(path, **state) -> None:
    """Write ``state`` (state dicts, step, history) plus the RNG states atomically."""
    atomic_save(dict(state, rng=rng_state()), path)


def load(path, map_location="cpu") -> dict:
    """A checkpoint written by :func:`save`; restores the RNG states. Load on the CPU:
    ``load_state_dict`` copies each tensor to its parameter's device, and the RNG states must be
    CPU byte tensors."""
    state = torch.load(path, map_location=map_location, weights_only=False)
    set_rng_state(state.pop("rng"))
    return state

