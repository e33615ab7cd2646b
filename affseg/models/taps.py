"""FeatureTaps: record the outputs of named submodules with forward hooks (SPEC §10)."""
from __future__ import annotations

import difflib
import weakref

import torch

from affseg.models._names import layer_names, resolve


class _TapKeyError(KeyError):
    """A KeyError whose message prints as written (KeyError would print its repr)."""

    def __str__(self):
        return str(self.args[0])


class _TapHook:
    """The forward hook: stores the module's output under its tap name (a class, so that
    :class:`affseg.models.MeanTeacher` can tell tap hooks from others in a deep-copied teacher)."""

    __slots__ = ("store", "name")

    def __init__(self, store: dict, name: str):
        self.store, self.name = store, name

    def __call__(self, module, args, output):
        self.store[self.name] = output


def _remove_handles(handles):
    for handle in handles:
        handle.remove()
    handles.clear()


class FeatureTaps:
    """Record the outputs of named submodules of any network, so PDCR can run on its hidden maps.

    Registers a forward hook on each named submodule (names as in ``model.named_modules()``);
    every forward of the model overwrites the recorded outputs, which keep their autograd graph,
    so a loss on ``taps[name]`` back-propagates into the network. The network's code is not
    changed. A module called several times in one forward keeps its last output. Outputs are
    recorded as returned: a module that returns a tuple, list or dict is recorded as that tuple,
    list or dict (index it yourself).

    Names are also found behind the prefixes that wrappers add (``_orig_mod.`` of
    ``torch.compile``, ``module.`` of ``DistributedDataParallel``), and the keys are the names as
    given. Under ``torch.compile``, the hooks live on the original modules: attach the taps, then
    compile (``torch.compile(model)`` traces the hooks and records the same tensors as eager).

    The taps hold the last outputs (and so their autograd graphs) until the next forward,
    :meth:`clear` or :meth:`remove`. Use it as a context manager to remove the hooks on exit; the
    hooks are also removed when the taps object is garbage-collected.

    Args:
        model: the network (any ``torch.nn.Module``).
        layers: a submodule name or an iterable of names; ``""`` is the model itself.

    Returns:
        The taps: ``taps[name]`` is the last output of that submodule; ``taps.outputs`` a dict of
        the recorded outputs; ``keys()`` the tapped names (in the given order); ``items()`` and
        ``values()`` the recorded ones; ``name in taps`` whether a name is tapped.

    Shape:
        Each tap has the shape of its module's output, e.g. ``(B, C, *s)`` for a decoder stage.

    Raises:
        ValueError: a name that is not a submodule (the message lists close names) or an empty
            list of names.
        TypeError: names that are not strings.
        KeyError: ``taps[name]`` for a name that is not tapped.
        RuntimeError: ``taps[name]`` before the model has run forward (or after :meth:`clear`).

    Example:
        >>> net = affseg.models.UNet(1, 3, channels=(4, 8, 8, 8, 8))
        >>> taps = affseg.models.FeatureTaps(net, net.feature_layers[-1:])
        >>> logits = net(torch.randn(2, 1, 32, 32))
        >>> taps["decoder.up4"].shape
        torch.Size([2, 4, 32, 32])
        >>> loss = affseg.pdcr_loss(taps["decoder.up4"], torch.randint(0, 3, (2, 32, 32)), num_classes=3)
        >>> loss.backward()
        >>> taps.remove()
    """

    def __init__(self, model: torch.nn.Module, layers):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        names = layer_names(layers, "layers")
        modules = dict(model.named_modules())
        found = {name: resolve(model, name, modules) for name in names}  # every name checked before any hook
        self._layers = tuple(names)
        self._modules = {name: module for name, (_, module) in found.items()}
        self._full_names = {name: full for name, (full, _) in found.items()}
        self._store: dict = {}
        self._handles: list = []
        for name in names:
            self._handles.append(self._modules[name].register_forward_hook(_TapHook(self._store, name)))
        self._finalizer = weakref.finalize(self, _remove_handles, self._handles)

    # -- reading ---------------------------------------------------------------------------------
    def __getitem__(self, name: str):
        if name not in self._modules:
            close = difflib.get_close_matches(name, self._layers, n=3, cutoff=0.5) if isinstance(name, str) else []
            hint = f"; close names: {close}" if close else ""
            raise _TapKeyError(f"{name!r} is not a tapped layer (tapped: {list(self._layers)}){hint}")
        try:
            return self._store[name]
        except KeyError:
            state = "its hooks were removed" if not self._handles else "run the model forward first"
            raise RuntimeError(
                f"tap {name!r} has recorded no output yet ({state}; clear() and remove() drop recorded outputs)"
            ) from None

    def get(self, name: str, default=None):
        """The recorded output of ``name``, or ``default`` when none is recorded."""
        if name not in self._modules:
            self[name]  # raises the KeyError that names the tapped layers
        return self._store.get(name, default)

    def __contains__(self, name) -> bool:
        return name in self._modules

    def __iter__(self):
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    def keys(self):
        """The tapped names, in the order given."""
        return self._layers

    def items(self):
        """(name, output) of the tapped layers that have recorded an output, in the order given."""
        return [(n, self._store[n]) for n in self._layers if n in self._store]

    def values(self):
        """The recorded outputs, in the order of :meth:`keys`."""
        return [v for _, v in self.items()]

    @property
    def outputs(self) -> dict:
        """A dict {name: output} of the recorded outputs (a copy; the taps keep recording)."""
        return dict(self.items())

    @property
    def modules(self) -> dict:
        """A dict {name: submodule} of the tapped submodules."""
        return dict(self._modules)

    @property
    def active(self) -> bool:
        """Whether the hooks are still attached (False after :meth:`remove`)."""
        return bool(self._handles)

    # -- lifetime --------------------------------------------------------------------------------
    def clear(self) -> None:
        """Drop the recorded outputs (and the references to their autograd graphs)."""
        self._store.clear()

    def remove(self) -> None:
        """Remove the hooks and drop the recorded outputs; later forwards record nothing."""
        _remove_handles(self._handles)
        self._store.clear()

    def __enter__(self) -> "FeatureTaps":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        recorded = [n for n in self._layers if n in self._store]
        return f"FeatureTaps(layers={list(self._layers)}, recorded={recorded}, active={self.active})"
