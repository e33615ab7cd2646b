"""The one way affseg registers an op with torch.library (ARCHITECTURE "One op, end to end").

- :func:`define` gives an op its fake kernel. A C++ op (schema in csrc/ops.cpp) is named only; a
  Triton launch is passed as ``impl`` and becomes a ``torch.library.custom_op`` (``triton_op``
  fails opcheck on CPU under the interpreter, BUILDING.md).
- :func:`differentiable` registers the autograd of a forward op whose gradient is a second op (a
  fused backward kernel): what is saved, which inputs get gradients (``needs_input_grad``
  honoured), and the double-backward rule of SPEC §8: the fused backward kernels have no backward
  of their own, so a second-order gradient through them raises a RuntimeError naming the public
  op, never a wrong number.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


def define(name: str, *, fake: Callable, impl: Callable | None = None):
    """``torch.ops.affseg.<name>`` with its fake kernel; ``impl`` (annotated) defines a Python op."""
    qualname = f"affseg::{name}"
    if impl is not None:
        torch.library.custom_op(qualname, impl, mutates_args=())
    torch.library.register_fake(qualname)(fake)
    return getattr(torch.ops.affseg, name)


@dataclass(frozen=True)
class Gradient:
    """How a forward op's gradient is computed by its backward op ``bwd``.

    ``bwd`` is called as ``bwd(grad, *tensor_inputs, *saved_outputs, *options)``, where ``grad`` is
    the incoming gradient of output ``grad_output``, ``tensor_inputs`` are the forward's first
    ``tensor_inputs`` arguments and ``options`` the rest; it returns one gradient per entry of
    ``grad_inputs`` (forward argument positions), in that order.

    Attributes:
        public_op: the public function this op serves, named in error messages.
        bwd: the backward op.
        tensor_inputs: number of leading tensor arguments of the forward.
        grad_inputs: forward argument positions that receive gradients.
        grad_output: the forward output whose gradient ``bwd`` takes.
        saved_outputs: forward outputs saved for ``bwd``. Those other than ``grad_output`` are
            statistics (such as PDCR's per-window log-sum-exp) and are marked non-differentiable.
        bwd_options: which of the forward's options ``bwd`` takes, by position among the options
            (None: all of them).
    """

    public_op: str
    bwd: Callable
    tensor_inputs: int
    grad_inputs: tuple[int, ...]
    grad_output: int = 0
    saved_outputs: tuple[int, ...] = ()
    bwd_options: tuple[int, ...] | None = None


def _no_second_order(public_op: str, grads: tuple, inputs: tuple) -> tuple:
    """The grads, wired so that differentiating them raises (what @once_differentiable does)."""
    if not torch.is_grad_enabled() or not any(isinstance(t, torch.Tensor) and t.requires_grad for t in inputs):
        return grads
    message = (
        f"affseg.{public_op}: the fused backward kernels are not differentiable, so a second-order "
        f"gradient (create_graph=True, gradgradcheck, a gradient penalty) cannot flow through them; "
        f"use backend=\"reference\" for second-order gradients"
    )
    present = [g for g in grads if g is not None]
    if not present:
        return grads
    wrapped = torch._C._functions.DelayedError(message, len(present))(
        *[g.detach().requires_grad_(True) for g in present])
    wrapped = iter(wrapped if isinstance(wrapped, tuple) else (wrapped,))  # one output comes back bare
    return tuple(None if g is None else next(wrapped) for g in grads)


def differentiable(fwd: str, gradient: Gradient) -> None:
    """Register ``torch.ops.affseg.<fwd>``'s autograd through ``gradient`` (see :class:`Gradient`)."""
    spec = gradient

    def setup_context(ctx, inputs, output):
        outputs = output if isinstance(output, tuple) else (output,)
        saved = [outputs[i] for i in spec.saved_outputs]
        ctx.save_for_backward(*inputs[: spec.tensor_inputs], *saved)
        options = tuple(inputs[spec.tensor_inputs:])
        ctx.options = options if spec.bwd_options is None else tuple(options[i] for i in spec.bwd_options)
        ctx.num_inputs = len(inputs)
        statistics = [outputs[i] for i in spec.saved_outputs if i != spec.grad_output]
        if statistics:
            ctx.mark_non_differentiable(*statistics)

    def backward(ctx, *grad_outputs):
        grad = grad_outputs[spec.grad_output]
        result = [None] * ctx.num_inputs
        wanted = [ctx.needs_input_grad[i] for i in spec.grad_inputs]
        if grad is None or not any(wanted):
            return tuple(result)
        saved = ctx.saved_tensors
        with torch.no_grad():
            grads = spec.bwd(grad.contiguous(), *saved, *ctx.options)
        grads = grads if isinstance(grads, (tuple, list)) else (grads,)
        grads = tuple(g if want else None for g, want in zip(grads, wanted))
        grads = _no_second_order(spec.public_op, grads, (grad, *saved))
        for position, g in zip(spec.grad_inputs, grads):
            result[position] = g
        return tuple(result)

    torch.library.register_autograd(f"affseg::{fwd}", backward, setup_context=setup_context)
