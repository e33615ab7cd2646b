"""The autograd rules every fused op shares (affseg/_ops/_register.py, SPEC §8).

- A second-order gradient through a fused backward raises a RuntimeError naming the public op and
  pointing to backend="reference" (before, it printed a UserWarning and returned a wrong number:
  0.0564 against the reference's 0.1028 for PDCR).
- The reference is twice differentiable, so the way out the error points to works (gradgradcheck).
- Only the inputs that need a gradient get one (needs_input_grad).
"""
import pytest
import torch

import affseg
from conftest import INTERPRETING

FUSED = ["cpu"] + (["triton"] if INTERPRETING else [])


def _pdcr(backend, dtype=torch.float64):
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 24, 6, dtype=dtype, generator=gen, requires_grad=True)
    phi = torch.rand(2, 2, 24, 3, dtype=dtype, generator=gen).softmax(-1)
    return (feats,), lambda f: affseg.pdcr_loss_from_ratios(f, phi, tau=0.7, backend=backend)


def _supcon(backend, dtype=torch.float64):
    gen = torch.Generator().manual_seed(2)
    feats = torch.randn(30, 5, dtype=dtype, generator=gen, requires_grad=True)
    labels = torch.randint(0, 3, (30,), generator=gen)
    return (feats,), lambda f: affseg.soft_supcon_loss(f, labels, tau=0.5, backend=backend)


def _uafs(backend, dtype=torch.float64):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 5, 4, dtype=dtype, generator=gen, requires_grad=True)
    att = torch.randn(2, 2, 5, 4, dtype=dtype, generator=gen, requires_grad=True)
    return (x, att), lambda a, b: (affseg.uafs_reweight(a, b, backend=backend) ** 2).sum()


FAMILIES = {"pdcr_loss_from_ratios": _pdcr, "soft_supcon_loss": _supcon, "uafs_reweight": _uafs}


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("op", list(FAMILIES))
def test_second_order_gradient_through_a_fused_backend_raises(op, backend):
    inputs, loss_fn = FAMILIES[op](backend)
    grads = torch.autograd.grad(loss_fn(*inputs), inputs, create_graph=True)
    with pytest.raises(RuntimeError, match=rf"affseg\.{op}: .*not differentiable.*backend=\"reference\""):
        sum((g ** 2).sum() for g in grads).backward()


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("op", list(FAMILIES))
def test_first_order_gradient_with_create_graph_still_matches_the_reference(op, backend):
    # create_graph=True alone (e.g. to build a penalty that is never differentiated) stays correct.
    inputs, fused = FAMILIES[op](backend)
    _, ref = FAMILIES[op]("reference")
    got = torch.autograd.grad(fused(*inputs), inputs, create_graph=True)
    want = torch.autograd.grad(ref(*inputs), inputs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.detach(), w, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("op", list(FAMILIES))
def test_the_reference_is_twice_differentiable(op):
    inputs, loss_fn = FAMILIES[op]("reference")
    assert torch.autograd.gradgradcheck(loss_fn, inputs, atol=1e-5)


@pytest.mark.parametrize("backend", FUSED)
def test_only_inputs_that_need_a_gradient_get_one(backend):
    _, loss_fn = _uafs(backend)
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    att = torch.randn(1, 2, 3, 3, dtype=torch.float64)  # needs no gradient
    (grad_x,) = torch.autograd.grad(loss_fn(x, att), (x,))
    _, ref = _uafs("reference")
    torch.testing.assert_close(grad_x, torch.autograd.grad(ref(x, att), (x,))[0])
    assert att.grad is None
