"""Triton passes an integer argument equal to 1 as a Python int constexpr (its launcher's
specialisation, as it marks one divisible by 16), so a kernel that calls a tensor method on a scalar
argument (`S0.to(tl.int64)`) compiles at every size but 1: on a GPU, `patch_entropy` of any 2-D
image failed that way (S0 = 1). The interpreter passes tensors and cannot see it, and the sm_90
probe only where a case has the size 1; this reads every kernel's source instead."""
import ast
import importlib
import inspect
import pkgutil
import textwrap

import pytest

triton = pytest.importorskip("triton")

import kernels  # noqa: E402


def _jit_functions():
    """(label, parsed def) of every @triton.jit kernel of kernels/ (the launched ones, `*_kernel`: a
    helper's arguments are tensors as often as not, so its source alone does not tell)."""
    from triton.runtime.jit import KernelInterface

    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"kernels.{info.name}")
        for name, fn in vars(module).items():
            if isinstance(fn, KernelInterface) and fn.fn.__module__ == module.__name__ and name.endswith("_kernel"):
                tree = ast.parse(textwrap.dedent(inspect.getsource(fn.fn)))
                yield f"{info.name}.{name}", tree.body[0]


def _is_constexpr(arg):
    return arg.annotation is not None and ast.unparse(arg.annotation).endswith("constexpr")


def test_there_are_kernels_to_read():
    assert len(list(_jit_functions())) > 10


def test_no_kernel_calls_a_method_on_a_scalar_argument():
    bad = []
    for label, fn in _jit_functions():
        scalars = {a.arg for a in fn.args.args if not _is_constexpr(a) and not a.arg.endswith("_ptr")}
        for node in ast.walk(fn):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in scalars:
                bad.append(f"{label}: {node.value.id}.{node.attr} (line {node.lineno}); use tl.cast({node.value.id}, ...)")
    assert not bad, "\n".join(bad)
