"""Registrations for the fused Semi-AGCL ops (SPEC §7): fake kernels and autograd for the C++ ops
(CPU and CUDA) and the Triton ops with the same contract.

- ``affinity_matrix(y_t, y_s, inv_two_sigma2, l1) -> A``: the teacher × student Gaussian-kernel
  graph built tile by tile; differentiable in y_s through ``affinity_matrix_bwd``, which recomputes A.
- ``hard_negatives(q, neg, neg_scale, q_cls, neg_cls, inv_tau, n_hard, use_classes) -> (queue_lse,
  hard_idx, hard_count)``: one streaming pass over the queue per query: the log-sum-exp of its queue
  logits and its top-n_hard negatives; differentiable in q through ``queue_lse_bwd``. The queue
  comes raw with its unit-row scales ``neg_scale`` (Q,) = 1 / max(‖n‖, eps): the kernels work on
  neg_scale·neg, so no normalised (Q, C) copy of the queue is made.
- ``mixed_logits(q, neg, neg_scale, alpha, hard_idx, hard_count, pairs, inv_tau) -> logits``: the logits of
  the mixed hard negatives from qᵀn_i, qᵀn_j and n_iᵀn_j, no mixed vector built; differentiable in
  q through ``mixed_logits_bwd``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from affseg import _backend, _extension
from affseg._ops._register import Gradient, define, differentiable


def _affinity_fake(y_t, y_s, inv_two_sigma2, l1):
    torch._check(y_t.dim() == 2 and y_s.dim() == 2 and y_t.shape[1] == y_s.shape[1],
                 lambda: "affinity_matrix: y_t and y_s must be (N, D) and (M, D)")
    return y_t.new_empty((y_t.shape[0], y_s.shape[0]))


def _affinity_bwd_fake(grad_a, y_t, y_s, inv_two_sigma2, l1):
    return torch.empty_like(y_s)


def _hard_fake(q, neg, neg_scale, q_cls, neg_cls, inv_tau, n_hard, use_classes):
    torch._check(q.dim() == 2 and neg.dim() == 2 and q.shape[1] == neg.shape[1],
                 lambda: "hard_negatives: q and neg must be (B, C) and (Q, C)")
    hard = min(n_hard, neg.shape[0])
    return (q.new_empty(q.shape[:1]), q.new_empty((q.shape[0], hard), dtype=torch.long),
            q.new_empty(q.shape[:1], dtype=torch.long))


def _queue_bwd_fake(grad_lse, q, neg, neg_scale, q_cls, neg_cls, queue_lse, inv_tau, use_classes):
    return torch.empty_like(q)


def _mixed_fake(q, neg, neg_scale, alpha, hard_idx, hard_count, pairs, inv_tau):
    torch._check(pairs.dim() == 3 and pairs.shape[0] == q.shape[0] and pairs.shape[2] == 2,
                 lambda: "mixed_logits: pairs must be (B, P, 2)")
    return q.new_empty(pairs.shape[:2])


def _mixed_bwd_fake(grad, q, neg, neg_scale, alpha, hard_idx, hard_count, pairs, inv_tau):
    return torch.empty_like(q)


def _register(prefix: str, impls: dict | None = None) -> None:
    """Define the three differentiable ops under ``affseg::<prefix><name>`` (impls: Triton launches)."""
    impl = (lambda name: None) if impls is None else impls.get
    affinity_bwd = define(f"{prefix}affinity_matrix_bwd", impl=impl("affinity_matrix_bwd"), fake=_affinity_bwd_fake)
    define(f"{prefix}affinity_matrix", impl=impl("affinity_matrix"), fake=_affinity_fake)
    differentiable(f"{prefix}affinity_matrix",
                   Gradient("affinity_graph_loss", affinity_bwd, tensor_inputs=2, grad_inputs=(1,)))
    queue_bwd = define(f"{prefix}queue_lse_bwd", impl=impl("queue_lse_bwd"), fake=_queue_bwd_fake)
    define(f"{prefix}hard_negatives", impl=impl("hard_negatives"), fake=_hard_fake)
    # bwd(grad_lse, q, neg, neg_scale, q_cls, neg_cls, queue_lse, inv_tau, use_classes): no n_hard.
    differentiable(f"{prefix}hard_negatives",
                   Gradient("mixed_negative_infonce", queue_bwd, tensor_inputs=5, grad_inputs=(0,),
                            saved_outputs=(0,), bwd_options=(0, 2)))
    mixed_bwd = define(f"{prefix}mixed_logits_bwd", impl=impl("mixed_logits_bwd"), fake=_mixed_bwd_fake)
    define(f"{prefix}mixed_logits", impl=impl("mixed_logits"), fake=_mixed_fake)
    differentiable(f"{prefix}mixed_logits",
                   Gradient("mixed_negative_infonce", mixed_bwd, tensor_inputs=7, grad_inputs=(0,)))


if _extension.has_op("affinity_matrix"):
    _register("")


_kernels = _backend.load_triton_kernels("agcl")

if _kernels is not None:

    def _affinity(y_t: Tensor, y_s: Tensor, inv_two_sigma2: float, l1: bool) -> Tensor:
        return _kernels.affinity_matrix(y_t, y_s, inv_two_sigma2, l1)

    def _affinity_bwd(grad_a: Tensor, y_t: Tensor, y_s: Tensor, inv_two_sigma2: float, l1: bool) -> Tensor:
        return _kernels.affinity_matrix_bwd(grad_a, y_t, y_s, inv_two_sigma2, l1)

    def _hard(q: Tensor, neg: Tensor, neg_scale: Tensor, q_cls: Tensor, neg_cls: Tensor, inv_tau: float,
              n_hard: int, use_classes: bool) -> tuple[Tensor, Tensor, Tensor]:
        return _kernels.hard_negatives(q, neg, neg_scale, q_cls, neg_cls, inv_tau, n_hard, use_classes)

    def _queue_bwd(grad_lse: Tensor, q: Tensor, neg: Tensor, neg_scale: Tensor, q_cls: Tensor, neg_cls: Tensor,
                   queue_lse: Tensor, inv_tau: float, use_classes: bool) -> Tensor:
        return _kernels.queue_lse_bwd(grad_lse, q, neg, neg_scale, q_cls, neg_cls, queue_lse, inv_tau, use_classes)

    def _mixed(q: Tensor, neg: Tensor, neg_scale: Tensor, alpha: Tensor, hard_idx: Tensor, hard_count: Tensor,
               pairs: Tensor, inv_tau: float) -> Tensor:
        return _kernels.mixed_logits(q, neg, neg_scale, alpha, hard_idx, hard_count, pairs, inv_tau)

    def _mixed_bwd(grad: Tensor, q: Tensor, neg: Tensor, neg_scale: Tensor, alpha: Tensor, hard_idx: Tensor,
                   hard_count: Tensor, pairs: Tensor, inv_tau: float) -> Tensor:
        return _kernels.mixed_logits_bwd(grad, q, neg, neg_scale, alpha, hard_idx, hard_count, pairs, inv_tau)

    _register("triton_", dict(
        affinity_matrix=_affinity, affinity_matrix_bwd=_affinity_bwd, hard_negatives=_hard,
        queue_lse_bwd=_queue_bwd, mixed_logits=_mixed, mixed_logits_bwd=_mixed_bwd,
    ))
    _backend.register_triton("affinity_graph_loss", _kernels)
    _backend.register_triton("mixed_negative_infonce", _kernels)


def _op(name: str, backend: str):
    return getattr(torch.ops.affseg, ("triton_" if backend == "triton" else "") + name)


def affinity_matrix(y_t, y_s, *, inv_two_sigma2, l1, backend):
    """A (N, M) of SPEC §7 on a concrete backend; differentiable in y_s."""
    return _op("affinity_matrix", backend)(y_t, y_s, float(inv_two_sigma2), bool(l1))


def hard_negatives(q, neg, neg_scale, q_cls, neg_cls, *, inv_tau, n_hard, use_classes, backend):
    """(queue_lse (B,), hard_idx (B, H), hard_count (B,)) on a concrete backend; lse differentiable in q."""
    return _op("hard_negatives", backend)(q, neg, neg_scale, q_cls, neg_cls, float(inv_tau), int(n_hard),
                                          bool(use_classes))


def mixed_logits(q, neg, neg_scale, alpha, hard_idx, hard_count, pairs, *, inv_tau, backend):
    """Logits (B, P) of the mixed hard negatives on a concrete backend; differentiable in q."""
    return _op("mixed_logits", backend)(q, neg, neg_scale, alpha, hard_idx, hard_count, pairs, float(inv_tau))
