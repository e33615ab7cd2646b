"""Semi-AGCL affinity-graph losses (SPEC §7)."""
from __future__ import annotations

import torch

from affseg import _backend, _sampling, _validate, reference


def affinity_graph_loss(
    y_t, y_s, *, sigma=0.5, gamma=0.1, distance="sqeuclidean", diag="one_minus", reduction="mean", backend="auto"
):
    """Teacher–student affinity-graph loss (Semi-AGCL Eqs. 2–3).

    A_ij = exp(−dist(ŷᵗ_i, ŷˢ_j)/(2σ²)); L = (1/N) Σ_i (1 − A_ii) + (γ/N)‖A‖_*.
    ``diag="literal"`` uses +Σ A_ii as the paper's extracted Eq. 3 reads (likely a lost minus
    sign). γ < 0 maximises the nuclear norm. The gradient flows to ``y_s`` only.

    Args:
        y_t: teacher per-node class-probability vectors (detached inside).
        y_s: student per-node vectors.
        sigma: kernel width σ > 0.
        gamma: nuclear-norm weight γ (any sign).
        distance: ``"sqeuclidean"`` or ``"l1"``.
        diag: ``"one_minus"`` or ``"literal"``.
        reduction: ``"mean"`` (÷N as above) or ``"sum"`` (no ÷N).
        backend: ``"auto"`` or ``"reference"`` (no fused kernel yet).

    Returns:
        Scalar loss.

    Shape:
        y_t, y_s ``(N, D)``.

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
    _validate.positive(sigma, "sigma")
    _validate.finite(gamma, "gamma")
    _validate.choice(distance, "distance", ("sqeuclidean", "l1"))
    _validate.choice(diag, "diag", ("one_minus", "literal"))
    _validate.choice(reduction, "reduction", ("mean", "sum"))
    _backend.resolve("affinity_graph_loss", backend, y_s.device)
    return reference.affinity_graph_loss(
        y_t, y_s, sigma=sigma, gamma=gamma, distance=distance, diag=diag, reduction=reduction
    )


def mixed_negative_infonce(
    q, k_pos, negatives, alpha, *, tau=0.1, n_hard=256, n_mix=256, mode="queue_plus_mixed", generator=None, backend="auto"
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
        backend: ``"auto"`` or ``"reference"`` (no fused kernel yet).

    Returns:
        Scalar loss (mean over queries).

    Shape:
        q, k_pos ``(B, C)``; negatives ``(Q, C)``; alpha ``(Q,)``.

    Raises:
        TypeError/ValueError: bad dtypes or shapes, tau ≤ 0, n_hard < 1, n_mix < 0, unknown mode.

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
    _validate.positive(tau, "tau")
    n_hard = _validate.int_value(n_hard, "n_hard", minimum=1)
    n_mix = _validate.int_value(n_mix, "n_mix", minimum=0)
    _validate.choice(mode, "mode", ("queue_plus_mixed", "mixed_only"))
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    _backend.resolve("mixed_negative_infonce", backend, q.device)
    # Drawn here, once, so every backend computes the same loss for the same generator state.
    pairs = _sampling.draw_mix_pairs(q.shape[0], min(n_hard, negatives.shape[0]), n_mix, generator, q.device)
    return reference.mixed_negative_infonce(
        q, k_pos, negatives, alpha, tau=tau, n_hard=n_hard, n_mix=n_mix, mode=mode, generator=generator, pairs=pairs
    )
