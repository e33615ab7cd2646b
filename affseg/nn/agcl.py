"""Semi-AGCL loss modules (SPEC §7)."""
from __future__ import annotations

import math

import torch

from affseg.functional import affinity_graph_loss, mixed_negative_infonce


class AffinityGraphLoss(torch.nn.Module):
    """Module twin of :func:`affseg.affinity_graph_loss`.

    Args:
        sigma, gamma, distance, diag, reduction, backend: as in :func:`affseg.affinity_graph_loss`.

    Returns:
        ``forward(y_t, y_s)`` returns the scalar loss.

    Shape:
        y_t, y_s ``(N, D)``.

    Raises:
        ValueError/TypeError: as the functional form, at call time.

    Example:
        >>> crit = affseg.nn.AffinityGraphLoss(sigma=0.5, gamma=0.1)
        >>> loss = crit(teacher_probs, student_probs)
    """

    def __init__(self, sigma=0.5, gamma=0.1, distance="sqeuclidean", diag="one_minus", reduction="mean", backend="auto"):
        super().__init__()
        self.sigma, self.gamma, self.distance, self.diag = sigma, gamma, distance, diag
        self.reduction, self.backend = reduction, backend

    def forward(self, y_t, y_s):
        return affinity_graph_loss(
            y_t, y_s, sigma=self.sigma, gamma=self.gamma, distance=self.distance, diag=self.diag,
            reduction=self.reduction, backend=self.backend,
        )


class MixedNegativeInfoNCE(torch.nn.Module):
    """Module twin of :func:`affseg.mixed_negative_infonce`.

    Args:
        tau, n_hard, n_mix, mode, backend: as in :func:`affseg.mixed_negative_infonce`.

    Returns:
        ``forward(q, k_pos, negatives, alpha, generator=None)`` returns the scalar loss.

    Shape:
        q, k_pos ``(B, C)``; negatives ``(Q, C)``; alpha ``(Q,)``.

    Raises:
        ValueError/TypeError: as the functional form, at call time.

    Example:
        >>> crit = affseg.nn.MixedNegativeInfoNCE(tau=0.1, n_hard=256, n_mix=256)
        >>> loss = crit(q, k, queue, alpha)
    """

    def __init__(self, tau=0.1, n_hard=256, n_mix=256, mode="queue_plus_mixed", backend="auto"):
        super().__init__()
        self.tau, self.n_hard, self.n_mix, self.mode, self.backend = tau, n_hard, n_mix, mode, backend

    def forward(self, q, k_pos, negatives, alpha, generator=None):
        return mixed_negative_infonce(
            q, k_pos, negatives, alpha, tau=self.tau, n_hard=self.n_hard, n_mix=self.n_mix, mode=self.mode,
            generator=generator, backend=self.backend,
        )


def sigmoid_rampup(step: int, rampup_steps: int) -> float:
    """exp(−5(1 − t)²) with t = step / rampup_steps clipped to [0, 1] (Laine & Aila); 1 when disabled."""
    if rampup_steps <= 0:
        return 1.0
    t = min(max(step, 0), rampup_steps) / rampup_steps
    return math.exp(-5.0 * (1.0 - t) ** 2)


class SemiAGCLLoss(torch.nn.Module):
    """Semi-AGCL total loss: L = L_sup + w(t)·(λ_u·L_pseudo + λ_g·L_graph + λ_m·L_mix).

    L_graph is :class:`AffinityGraphLoss` on teacher/student node vectors and L_mix is
    :class:`MixedNegativeInfoNCE`; L_sup and L_pseudo (e.g. Dice + CE against labels and teacher
    pseudo-labels) are computed by the caller. w(t) is an optional sigmoid ramp-up over
    ``rampup_steps`` (0 = off, the paper's Eq. 8 with all weights 1).

    Args:
        lambda_u, lambda_graph, lambda_mix: term weights (default 1).
        rampup_steps: length of the sigmoid ramp-up of the unsupervised terms.
        sigma, gamma, distance, diag: of the affinity-graph loss.
        tau, n_hard, n_mix, mode: of the mixed-negative InfoNCE.
        backend: backend of both terms.

    Returns:
        ``forward(sup_loss, pseudo_loss, y_t, y_s, q=None, k_pos=None, negatives=None, alpha=None,
        step=0, generator=None)`` returns a dict with ``total``, ``sup``, ``pseudo``, ``graph``,
        ``mix`` and ``weight``; the mixed term is 0 when ``q`` is None.

    Shape:
        y_t, y_s ``(N, D)``; q, k_pos ``(B, C)``; negatives ``(Q, C)``; alpha ``(Q,)``.

    Raises:
        ValueError/TypeError: from the terms, at call time.

    Example:
        >>> crit = affseg.nn.SemiAGCLLoss(rampup_steps=1000)
        >>> terms = crit(sup, pseudo, y_t, y_s, q, k, queue, alpha, step=it)
        >>> terms["total"].backward()
    """

    def __init__(
        self, lambda_u=1.0, lambda_graph=1.0, lambda_mix=1.0, rampup_steps=0, sigma=0.5, gamma=0.1,
        distance="sqeuclidean", diag="one_minus", tau=0.1, n_hard=256, n_mix=256, mode="queue_plus_mixed", backend="auto",
    ):
        super().__init__()
        self.lambda_u, self.lambda_graph, self.lambda_mix = lambda_u, lambda_graph, lambda_mix
        self.rampup_steps = rampup_steps
        self.graph = AffinityGraphLoss(sigma=sigma, gamma=gamma, distance=distance, diag=diag, backend=backend)
        self.mix = MixedNegativeInfoNCE(tau=tau, n_hard=n_hard, n_mix=n_mix, mode=mode, backend=backend)

    def forward(self, sup_loss, pseudo_loss, y_t, y_s, q=None, k_pos=None, negatives=None, alpha=None, step=0, generator=None):
        graph = self.graph(y_t, y_s)
        mix = self.mix(q, k_pos, negatives, alpha, generator=generator) if q is not None else graph.new_zeros(())
        weight = sigmoid_rampup(step, self.rampup_steps)
        total = sup_loss + weight * (self.lambda_u * pseudo_loss + self.lambda_graph * graph + self.lambda_mix * mix)
        return {"total": total, "sup": sup_loss, "pseudo": pseudo_loss, "graph": graph, "mix": mix, "weight": weight}
