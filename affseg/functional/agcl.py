"""Semi-AGCL affinity-graph losses (SPEC §7)."""
from __future__ import annotations

import torch

from affseg import _backend, _sampling, _validate, reference


def affinity_graph_loss(
    y_t, y_s, *, sigma=0.5, gamma=0.1, distance="sqeuclidean", diag="one_minus", reduction="mean", return_diag=False,
    backend="auto",
):
    """Teacher–student affinity-graph loss (Semi-AGCL Eqs. 2–3).

    A_ij = exp(−dist(ŷᵗ_i, ŷˢ_j)/(2σ²)); L = (1/N) Σ_i (1 − A_ii) + (γ/N)‖A‖_*.
    ``diag="literal"`` uses +Σ A_ii as the paper's extracted Eq. 3 reads (likely a lost minus
    sign). γ < 0 maximises the nuclear norm. The gradient flows to ``y_s`` only.
    The per-node term is ℓ_i = (1 − A_ii) + (γ/N)‖A‖_* (the nuclear norm shared equally by the N
    nodes), so ``"mean"`` is mean_i ℓ_i and ``"sum"`` is Σ_i ℓ_i. NaN or Inf in either input gives a
    NaN loss (SPEC §9).

    Args:
        y_t: teacher per-node class-probability vectors (detached inside).
        y_s: student per-node vectors.
        sigma: kernel width σ > 0.
        gamma: nuclear-norm weight γ (any sign).
        distance: ``"sqeuclidean"`` or ``"l1"``.
        diag: ``"one_minus"`` or ``"literal"``.
        reduction: ``"mean"`` (÷N as above), ``"sum"`` (no ÷N) or ``"none"`` (ℓ_i per node).
        return_diag: also return A_ii (detached), the α of Semi-AGCL Eq. 6 for the node's key.
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"cuda"`` or ``"triton"``. The fused
            kernels build A tile by tile (the reference builds an N×N×D difference tensor) and
            compute the backward contraction from recomputed tiles; the SVD is torch's.

    Returns:
        Scalar loss, or the per-node terms ``(N,)`` for ``reduction="none"``; 0 with a grad_fn
        when N = 0. With ``return_diag``, ``(loss, A_ii)``.

    Shape:
        y_t, y_s ``(N, D)``; ``reduction="none"`` output ``(N,)``.

    Raises:
        TypeError/ValueError: non-floating or mismatched inputs, sigma ≤ 0, unknown options.

    Example:
        >>> y_t = torch.rand(64, 4).softmax(-1); y_s = torch.rand(64, 4, requires_grad=True)
        >>> affseg.affinity_graph_loss(y_t, y_s.softmax(-1)).backward()
    """
    _validate.floating(y_t, "y_t", ndims=(2,))
    _validate.floating(y_s, "y_s", ndims=(2,))
    if y_t.shape != y_s.shape:
        raise ValueError(f"y_s must have the shape of y_t {tuple(y_t.shape)}, got {tuple(y_s.shape)}")
    _validate.same_device(y_t=y_t, y_s=y_s)
    _validate.affinity_graph_options(sigma=sigma, gamma=gamma, distance=distance, diag=diag, reduction=reduction)
    _validate.flag(return_diag, "return_diag")
    backend = _backend.resolve("affinity_graph_loss", backend, y_s.device, dtype=y_s.dtype, classes=y_s.shape[1])
    if backend == "reference" or y_s.shape[0] == 0:
        return reference.affinity_graph_loss(
            y_t, y_s, sigma=sigma, gamma=gamma, distance=distance, diag=diag, reduction=reduction,
            return_diag=return_diag,
        )
    from affseg._ops import agcl as ops

    dtype = torch.float64 if y_s.dtype == torch.float64 else torch.float32
    finite, (t, s) = reference.finite_stand_ins(y_t.detach().to(dtype), y_s.to(dtype))
    affinity = ops.affinity_matrix(t.contiguous(), s.contiguous(), inv_two_sigma2=1.0 / (2 * sigma**2),
                                   l1=distance == "l1", backend=backend)
    return reference.graph_loss_from_affinity(affinity, finite, gamma=gamma, diag=diag, reduction=reduction,
                                              dtype=y_s.dtype, return_diag=return_diag)


def mixed_negative_infonce(
    q, k_pos, negatives, alpha, *, tau=0.1, n_hard=256, n_mix=256, mode="queue_plus_mixed", generator=None,
    reduction="mean", q_classes=None, neg_classes=None, backend="auto",
):
    """InfoNCE with affinity-mixed hard negatives (Semi-AGCL Eqs. 4, 6, 7; MoCHi mixing).

    For each query the ``n_hard`` negatives with the highest qᵀn are ranked; ``n_mix`` pairs of
    positions (i ≠ j) in that list are drawn from ``generator`` before dispatch, and the synthetic
    negatives h = normalise(α_i n_i + (1 − α_i) n_j) join the denominator.
    ``mode="mixed_only"`` drops the queue term (the paper's literal Eq. 7). Gradient to q only.

    Args:
        q: queries (student). k_pos: positive keys (teacher). negatives: the negative queue.
        alpha: mixing weights, one per negative (Semi-AGCL: A_ii of the negative's node).
        tau: temperature τ > 0.
        n_hard: hardest negatives considered per query (capped at Q).
        n_mix: synthetic negatives per query.
        mode: ``"queue_plus_mixed"`` or ``"mixed_only"``.
        generator: ``torch.Generator`` for the pair draws.
        reduction: ``"mean"`` over queries, ``"sum"``, or ``"none"`` (the per-query losses).
        q_classes, neg_classes: int classes of the queries and of the queue entries (e.g. from
            :class:`affseg.nn.ClassQueue`); then a query's negatives are only the entries of other
            classes (the paper's K⁻), and drawn pairs beyond a query's count of them are dropped.
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"cuda"`` or ``"triton"``. The fused
            kernels find each query's hard negatives in one streaming pass over the queue (no
            B×Q matrix) and compute the mixed logits from qᵀn_i, qᵀn_j and n_iᵀn_j (no mixed
            vector is built).

    Returns:
        Scalar loss, or the per-query losses ``(B,)`` for ``reduction="none"``.

    Shape:
        q, k_pos ``(B, C)``; negatives ``(Q, C)``; alpha ``(Q,)``; q_classes ``(B,)``;
        neg_classes ``(Q,)``; ``reduction="none"`` output ``(B,)``.

    Raises:
        TypeError/ValueError: bad dtypes or shapes, tau ≤ 0, n_hard < 1, n_mix < 0, unknown mode or
            reduction.

    Example:
        >>> q = torch.randn(8, 32, requires_grad=True)
        >>> loss = affseg.mixed_negative_infonce(q, torch.randn(8, 32), torch.randn(512, 32), torch.rand(512))
    """
    _validate.floating(q, "q", ndims=(2,))
    _validate.floating(k_pos, "k_pos", ndims=(2,))
    _validate.floating(negatives, "negatives", ndims=(2,))
    _validate.floating(alpha, "alpha", ndims=(1,))
    if k_pos.shape != q.shape:
        raise ValueError(f"k_pos must have the shape of q {tuple(q.shape)}, got {tuple(k_pos.shape)}")
    _validate.dim_match("q", q, 1, "negatives", negatives, 1, "number of channels")
    _validate.dim_match("negatives", negatives, 0, "alpha", alpha, 0, "number of negatives")
    _validate.same_device(q=q, k_pos=k_pos, negatives=negatives, alpha=alpha)
    _validate.infonce_options(tau=tau, n_hard=n_hard, n_mix=n_mix, mode=mode, reduction=reduction)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if (q_classes is None) != (neg_classes is None):
        raise ValueError("q_classes and neg_classes must be given together, got only one of them")
    if q_classes is not None:
        _validate.integer(q_classes, "q_classes", ndims=(1,))
        _validate.integer(neg_classes, "neg_classes", ndims=(1,))
        _validate.dim_match("q", q, 0, "q_classes", q_classes, 0, "number of queries")
        _validate.dim_match("negatives", negatives, 0, "neg_classes", neg_classes, 0, "number of negatives")
        _validate.same_device(q=q, q_classes=q_classes, neg_classes=neg_classes)
    backend = _backend.resolve("mixed_negative_infonce", backend, q.device, dtype=q.dtype, channels=q.shape[1],
                               hard=min(n_hard, negatives.shape[0]), queue=negatives.shape[0])
    # Drawn here, once, so every backend computes the same loss for the same generator state.
    pairs = _sampling.draw_mix_pairs(q.shape[0], min(n_hard, negatives.shape[0]), n_mix, generator, q.device)
    if backend == "reference":
        return reference.mixed_negative_infonce(
            q, k_pos, negatives, alpha, tau=tau, n_hard=n_hard, n_mix=n_mix, mode=mode, pairs=pairs,
            reduction=reduction, q_classes=q_classes, neg_classes=neg_classes,
        )
    from affseg._ops import agcl as ops

    def hard(q_hat, neg, neg_scale, q_cls, neg_cls, inv_tau, n_hard, use_classes):
        return ops.hard_negatives(q_hat, neg, neg_scale, q_cls, neg_cls, inv_tau=inv_tau, n_hard=n_hard,
                                  use_classes=use_classes, backend=backend)

    def mixed(q_hat, neg, neg_scale, alpha, hard_idx, hard_count, pairs, inv_tau):
        return ops.mixed_logits(q_hat, neg, neg_scale, alpha, hard_idx, hard_count, pairs, inv_tau=inv_tau,
                                backend=backend)

    return reference.infonce_with(hard, mixed, q, k_pos, negatives, alpha, q_classes, neg_classes, pairs, tau=tau,
                                  n_hard=n_hard, mode=mode, reduction=reduction)
