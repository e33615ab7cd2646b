"""add_uafs: put a UAFS block after named submodules of any network (SPEC §10)."""
from __future__ import annotations

import warnings

import torch

from affseg.models._names import layer_names, resolve
from affseg.nn.uafs import UAFS

_CONVS = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d,
          torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)


def _declared_shape(module: torch.nn.Module):
    """(channels, dims) that the module declares for its output, or None when it does not say.

    A ``ConvNd``/``ConvTransposeNd`` says both; any other module says them with an int
    ``out_channels`` attribute and an int ``spatial_dims``/``dims``/``dimensions`` attribute
    (MONAI's blocks). Containers that say nothing are left to the first forward.
    """
    if isinstance(module, _CONVS):
        return module.out_channels, len(module.kernel_size)
    channels = getattr(module, "out_channels", None)
    for attr in ("spatial_dims", "dims", "dimensions"):
        dims = getattr(module, attr, None)
        if isinstance(channels, int) and isinstance(dims, int) and not isinstance(dims, bool):
            return channels, dims
    return None


class UAFSAfter(torch.nn.Module):
    """A submodule followed by a UAFS block: ``uafs(module(x))`` (what :func:`add_uafs` inserts).

    The original submodule is ``.module`` and the block ``.uafs``, so the state_dict keys of a
    submodule ``name`` become ``name.module.*`` and the block's are ``name.uafs.*``. A state_dict of
    the network before :func:`add_uafs` still loads (its ``name.*`` keys are mapped onto
    ``name.module.*``; use ``strict=False``, since it has no ``name.uafs.*`` keys).

    When channels and dims are not known at construction, the block is built on the first forward
    from the output's shape (or when a state_dict holding its weights is loaded); until then
    ``.uafs`` is None and the block has no parameters, so run one forward (or pass
    ``example_input`` to :func:`add_uafs`) before building the optimiser.

    Args:
        module: the original submodule.
        channels: C of its output (None: from the first output).
        dims: spatial dims of its output (None: from the first output).
        hidden: hidden channels of the UAFS block.
        m: attention channels M ≥ 2.
        name: the submodule's name, for messages.
        backend: backend of the fused re-weighting.

    Returns:
        ``forward(*args, **kwargs)`` returns the re-weighted output of ``module``.

    Shape:
        Output of ``module`` ``(B, C, *S)`` -> ``(B, C, *S)``.

    Raises:
        TypeError: ``module`` returns something other than a tensor.
        ValueError: the output's channels or dims differ from those the block was built for.

    Example:
        >>> block = affseg.models.UAFSAfter(torch.nn.Conv2d(1, 8, 3, padding=1), channels=8, dims=2)
        >>> block(torch.randn(2, 1, 16, 16)).shape
        torch.Size([2, 8, 16, 16])
    """

    def __init__(self, module: torch.nn.Module, channels: int | None = None, dims: int | None = None,
                 hidden: int = 16, m: int = 2, name: str = "", backend: str = "auto"):
        super().__init__()
        self.module = module
        self.hidden, self.m, self.name, self.backend = hidden, m, name, backend
        self.uafs = UAFS(channels, dims, hidden=hidden, m=m, backend=backend) if channels and dims else None
        if self.uafs is None:
            UAFS(1, 2, hidden=hidden, m=m)  # check hidden and m now, not at the first forward
        self._expected_inner = None
        self._register_load_state_dict_pre_hook(self._load_pre_hook)

    @property
    def materialized(self) -> bool:
        """Whether the UAFS block exists (False until the first forward for a lazy one)."""
        return self.uafs is not None

    def _build(self, channels: int, dims: int, like: torch.Tensor | None = None) -> None:
        block = UAFS(channels, dims, hidden=self.hidden, m=self.m, backend=self.backend)
        # Device and dtype of the wrapped module's weights, else of the output (autocast: float32).
        ref = next((t for t in (*self.module.parameters(), *self.module.buffers()) if t.is_floating_point()), None)
        if ref is not None:
            block = block.to(device=ref.device, dtype=ref.dtype)
        elif like is not None:
            autocast = torch.is_autocast_enabled(like.device.type)
            dtype = like.dtype if like.is_floating_point() and not autocast else None
            block = block.to(device=like.device, dtype=dtype)
        block.train(self.training)
        self.uafs = block

    def forward(self, *args, **kwargs):
        out = self.module(*args, **kwargs)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"add_uafs: {self.name or 'the module'!r} returns {type(out).__name__}; "
                            "UAFS re-weights a tensor (B, C, *S)")
        if out.dim() < 3:
            raise ValueError(f"add_uafs: {self.name or 'the module'!r} returns shape {tuple(out.shape)}; "
                             "UAFS needs (B, C, *S) with 1 to 3 spatial dims")
        if self.uafs is None:
            if torch.is_grad_enabled() and self.training:
                warnings.warn(
                    f"add_uafs: the UAFS block after {self.name!r} was built on this first forward; its "
                    "parameters are missing from optimisers built before it. Pass example_input= to add_uafs "
                    "(or run one forward) before building the optimiser.", stacklevel=2)
            self._build(out.shape[1], out.dim() - 2, like=out)
        if out.shape[1] != self.uafs.channels or out.dim() - 2 != self.uafs.dims:
            raise ValueError(
                f"add_uafs: {self.name or 'the module'!r} returns shape {tuple(out.shape)} but its UAFS block "
                f"was built for {self.uafs.channels} channels and {self.uafs.dims} spatial dims; pass "
                f"channels=/dims= to add_uafs")
        return self.uafs(out)

    def _load_pre_hook(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # A lazy block is built from the checkpoint's weights (its conv weight is (hidden, C, 3, ...)).
        weight = state_dict.get(prefix + "uafs.attention.0.weight")
        if self.uafs is None and isinstance(weight, torch.Tensor):
            self._build(weight.shape[1], weight.dim() - 2)
        # Keys of the unwrapped network (prefix + "weight") load into .module.
        inner = {prefix + "module." + k for k in self.module.state_dict().keys()}
        for key in [k for k in state_dict if k.startswith(prefix)]:
            rest = key[len(prefix):]
            if prefix + "module." + rest in inner and prefix + "module." + rest not in state_dict:
                state_dict[prefix + "module." + rest] = state_dict.pop(key)

    def extra_repr(self) -> str:
        return "" if self.uafs is not None else f"uafs=<lazy: built on first forward>, hidden={self.hidden}, m={self.m}"


def add_uafs(model: torch.nn.Module, after, hidden: int = 16, m: int = 2, *, channels=None, dims=None,
             example_input=None, backend: str = "auto") -> torch.nn.Module:
    """Put a UAFS block (SPEC §6) after each named submodule of a network, in place.

    Each submodule ``name`` is replaced in its parent by :class:`UAFSAfter` ``(original, UAFS)``:
    its output becomes ``uafs(original(...))``. State_dict keys: the original's ``name.*`` become
    ``name.module.*``, the block's are ``name.uafs.*`` (old checkpoints still load, with
    ``strict=False``). A :class:`FeatureTaps` on ``name`` records the re-weighted output, one on
    ``name.module`` the output before UAFS (taps attached before :func:`add_uafs` stay on the
    original module, so they record the map before UAFS: attach taps afterwards).

    The block's channels C and dims come from the submodule when it says (a ``ConvNd`` /
    ``ConvTransposeNd``, or a module with int ``out_channels`` and ``spatial_dims`` attributes,
    like MONAI's ``Convolution``), else from its first output: such blocks are built on the first
    forward (lazily, like ``torch.nn.LazyModuleMixin``). Build them before creating the optimiser:
    pass ``example_input`` (one no-grad forward in eval mode, so BatchNorm statistics are not
    touched) or run a forward yourself; a block built on a training forward warns.

    Args:
        model: the network (changed in place and returned).
        after: a submodule name or an iterable of names (as in ``model.named_modules()``).
        hidden: hidden channels of each UAFS block.
        m: attention channels M ≥ 2.
        channels: C for every block (int) or per name (dict); overrides inference.
        dims: spatial dims for every block (int) or per name (dict); overrides inference.
        example_input: a tensor (or a tuple of positional args) to run through the model once so
            every block is built and every inferred shape is checked.
        backend: backend of the fused re-weighting.

    Returns:
        The same ``model``, with the blocks inserted.

    Shape:
        The model's outputs keep their shapes; each block maps ``(B, C, *S)`` -> ``(B, C, *S)``.

    Raises:
        ValueError: a name that is not a submodule (close names listed), the model itself
            (``""``), a submodule already followed by UAFS, m < 2 or bad hidden.
        TypeError: names that are not strings.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1))
        >>> net = affseg.models.add_uafs(net, ["1"], example_input=torch.randn(1, 1, 16, 16))
        >>> net[1].uafs.channels, net[1].uafs.dims
        (8, 2)
        >>> net(torch.randn(2, 1, 16, 16)).shape
        torch.Size([2, 2, 16, 16])
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    names = layer_names(after, "after")
    modules = dict(model.named_modules())
    targets = []
    for name in names:
        full, module = resolve(model, name, modules)
        if full == "":
            raise ValueError("add_uafs: after='' names the model itself; name its last submodule instead, or "
                             "use torch.nn.Sequential(model, affseg.nn.UAFS(channels, dims))")
        if isinstance(module, UAFSAfter):
            raise ValueError(f"add_uafs: {name!r} is already followed by a UAFS block")
        targets.append((name, full, module))

    def pick(option, name, what):
        if isinstance(option, dict):
            unknown = [k for k in option if k not in names]
            if unknown:
                raise ValueError(f"add_uafs: {what} names {unknown}, which are not in after={names}")
            return option.get(name)
        return option

    # The deepest names first, so that "a.b" is replaced before "a" wraps it.
    for name, full, module in sorted(targets, key=lambda t: -t[1].count(".")):
        declared = _declared_shape(module) or (None, None)
        c = pick(channels, name, "channels") or declared[0]
        d = pick(dims, name, "dims") or declared[1]
        if (c is None) != (d is None):  # one known, the other from the output: build both lazily
            c = d = None
        wrapper = UAFSAfter(module, c, d, hidden=hidden, m=m, name=name, backend=backend)
        parent_name, _, child = full.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, wrapper)

    if example_input is not None:
        args = example_input if isinstance(example_input, tuple) else (example_input,)
        modes = {mod: mod.training for mod in model.modules()}
        try:
            model.eval()
            with torch.no_grad():
                model(*args)
        finally:
            for mod, mode in modes.items():
                mod.training = mode
            for wrapper in model.modules():  # blocks built by the dry run follow their wrapper's mode
                if isinstance(wrapper, UAFSAfter) and wrapper.uafs is not None and wrapper.uafs not in modes:
                    wrapper.uafs.train(wrapper.training)
    return model
