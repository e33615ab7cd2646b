"""Semi-AGCL loss modules (SPEC §7).

`_Loss` subclasses, as MONAI's losses are; options are checked at construction by the same
`affseg._validate` functions the functional forms call.
"""
from __future__ import annotations

import math

from torch.nn.modules.loss import _Loss

from affseg import _validate
from affseg.functional import affinity_graph_loss, mixed_negative_infonce


class AffinityGraphLoss(_Loss):
    """Module twin of :func:`affseg.affinity_graph_loss`.

    Args:
        sigma, gamma, distance, diag, reduction, return_diag, backend: as in
            :func:`affseg.affinity_graph_loss`.

    Returns:
        ``forward(y_t, y_s)`` returns the loss (per-node terms ``(N,)`` for ``reduction="none"``),
        and A_ii with ``return_diag=True``.

    Shape:
        y_t, y_s ``(N, D)``.

    Raises:
        ValueError/TypeError: at construction for bad options (sigma ≤ 0, non-finite gamma,
            unknown distance, diag or reduction); at call time for bad tensors.

    Example:
        >>> crit = affseg.nn.AffinityGraphLoss(sigma=0.5, gamma=0.1)
        >>> teacher_probs = torch.randn(32, 4).softmax(-1)
        >>> student_logits = torch.randn(32, 4, requires_grad=True)
        >>> loss = crit(teacher_probs, student_logits.softmax(-1))
        >>> loss.backward()
    """

    def __init__(self, sigma=0.5, gamma=0.1, distance="sqeuclidean", diag="one_minus", reduction="mean",
                 return_diag=False, backend="auto"):
        _validate.affinity_graph_options(sigma=sigma, gamma=gamma, distance=distance, diag=diag, reduction=reduction)
        _validate.flag(return_diag, "return_diag")
        super().__init__(reduction=reduction)
        self.sigma, self.gamma, self.distance, self.diag = sigma, gamma, distance, diag
        self.return_diag, self.backend = return_diag, backend

    def forward(self, y_t, y_s):
        return affinity_graph_loss(
            y_t, y_s, sigma=self.sigma, gamma=self.gamma, distance=self.distance, diag=self.diag,
            reduction=self.reduction, return_diag=self.return_diag, backend=self.backend,
        )


class MixedNegativeInfoNCE(_Loss):
    """Module twin of :func:`affseg.mixed_negative_infonce`.

    Args:
        tau, n_hard, n_mix, mode, reduction, backend: as in :func:`affseg.mixed_negative_infonce`.

    Returns:
        ``forward(q, k_pos, negatives, alpha, generator=None, q_classes=None, neg_classes=None)``
        returns the loss (per-query losses ``(B,)`` for ``reduction="none"``).

    Shape:
        q, k_pos ``(B, C)``; negatives ``(Q, C)``; alpha ``(Q,)``; q_classes ``(B,)``;
        neg_classes ``(Q,)``.

    Raises:
        ValueError/TypeError: at construction for bad options (tau ≤ 0, n_hard < 1, n_mix < 0,
            unknown mode or reduction); at call time for bad tensors.

    Example:
        >>> crit = affseg.nn.MixedNegativeInfoNCE(tau=0.1, n_hard=64, n_mix=32)
        >>> q = torch.randn(8, 32, requires_grad=True)  # student embeddings
        >>> k, queue, alpha = torch.randn(8, 32), torch.randn(256, 32), torch.rand(256)
        >>> loss = crit(q, k, queue, alpha, generator=torch.Generator().manual_seed(0))
        >>> loss.backward()
    """

    def __init__(self, tau=0.1, n_hard=256, n_mix=256, mode="queue_plus_mixed", reduction="mean", backend="auto"):
        _validate.infonce_options(tau=tau, n_hard=n_hard, n_mix=n_mix, mode=mode, reduction=reduction)
        super().__init__(reduction=reduction)
        self.tau, self.n_hard, self.n_mix, self.mode, self.backend = tau, n_hard, n_mix, mode, backend

    def forward(self, q, k_pos, negatives, alpha, generator=None, q_classes=None, neg_classes=None):
        return mixed_negative_infonce(
            q, k_pos, negatives, alpha, tau=self.tau, n_hard=self.n_hard, n_mix=self.n_mix, mode=self.mode,
            generator=generator, reduction=self.reduction, q_classes=q_classes, neg_classes=neg_classes,
            backend=self.backend,
        )


def sigmoid_rampup(step: int, rampup_steps: int) -> float:
    """exp(−5(1 − t)²) with t = step / rampup_steps clipped to [0, 1] (Laine & Aila); 1 when disabled."""
    if rampup_steps <= 0:
        return 1.0
    t = min(max(step, 0), rampup_steps) / rampup_steps
    return math.exp(-5.0 * (1.0 - t) ** 2)


class SemiAGCLLoss(_Loss):
    """Semi-AGCL total loss: L = L_sup + λ_u·L_pseudo + w(t)·(λ_g·L_graph + λ_m·L_mix).

    L_graph is :class:`AffinityGraphLoss` on teacher/student node vectors and L_mix is
    :class:`MixedNegativeInfoNCE`; L_sup and L_pseudo (e.g. Dice + CE against labels and teacher
    pseudo-labels) are computed by the caller. w(t) is an optional sigmoid ramp-up over
    ``rampup_steps`` (0 = off, the paper's Eq. 8 with all weights 1) of the two affinity-graph
    terms only (SPEC §7; the paper mentions no ramp-up, and L_pseudo is the base framework's).

    Args:
        lambda_u, lambda_graph, lambda_mix: term weights (default 1).
        rampup_steps: length of the sigmoid ramp-up of the unsupervised terms.
        sigma, gamma, distance, diag: of the affinity-graph loss.
        tau, n_hard, n_mix, mode: of the mixed-negative InfoNCE.
        reduction: ``"mean"`` or ``"sum"`` of both affinity terms (``"none"`` is refused: the
            per-node graph terms and the per-query InfoNCE terms do not add up; use the term
            modules for those).
        backend: backend of both terms.

    Returns:
        ``forward(sup_loss, pseudo_loss, y_t, y_s, q=None, k_pos=None, negatives=None, alpha=None,
        step=0, generator=None, q_classes=None, neg_classes=None)`` returns a dict with ``total``, ``sup``, ``pseudo``, ``graph``,
        ``mix`` and ``weight``; the mixed term is 0 when ``q`` is None.

    Shape:
        y_t, y_s ``(N, D)``; q, k_pos ``(B, C)``; negatives ``(Q, C)``; alpha ``(Q,)``.

    Raises:
        ValueError/TypeError: at construction for bad options (non-finite weights, negative
            rampup_steps, ``reduction="none"``, bad term options); at call time for bad tensors.

    Example:
        >>> crit = affseg.nn.SemiAGCLLoss(rampup_steps=1000, n_hard=64, n_mix=32)
        >>> sup, pseudo = torch.tensor(0.7, requires_grad=True), torch.tensor(0.4)  # Dice + CE terms
        >>> y_t = torch.randn(32, 4).softmax(-1)
        >>> y_s = torch.randn(32, 4, requires_grad=True).softmax(-1)
        >>> q, k = torch.randn(8, 16, requires_grad=True), torch.randn(8, 16)
        >>> queue, alpha = torch.randn(128, 16), torch.rand(128)
        >>> terms = crit(sup, pseudo, y_t, y_s, q, k, queue, alpha, step=250)
        >>> terms["total"].backward()
        >>> round(terms["weight"], 4)  # exp(-5 (1 - 250/1000)^2)
        0.0601
    """

    def __init__(
        self, lambda_u=1.0, lambda_graph=1.0, lambda_mix=1.0, rampup_steps=0, sigma=0.5, gamma=0.1,
        distance="sqeuclidean", diag="one_minus", tau=0.1, n_hard=256, n_mix=256, mode="queue_plus_mixed",
        reduction="mean", backend="auto",
    ):
        _validate.semi_agcl_options(lambda_u=lambda_u, lambda_graph=lambda_graph, lambda_mix=lambda_mix,
                                    rampup_steps=rampup_steps, reduction=reduction)
        super().__init__(reduction=reduction)
        self.lambda_u, self.lambda_graph, self.lambda_mix = lambda_u, lambda_graph, lambda_mix
        self.rampup_steps = rampup_steps
        self.graph = AffinityGraphLoss(sigma=sigma, gamma=gamma, distance=distance, diag=diag, reduction=reduction,
                                       backend=backend)
        self.mix = MixedNegativeInfoNCE(tau=tau, n_hard=n_hard, n_mix=n_mix, mode=mode, reduction=reduction,
                                        backend=backend)

    def forward(self, sup_loss, pseudo_loss, y_t, y_s, q=None, k_pos=None, negatives=None, alpha=None, step=0,
                generator=None, q_classes=None, neg_classes=None):
        graph = self.graph(y_t, y_s)
        mix = (self.mix(q, k_pos, negatives, alpha, generator=generator, q_classes=q_classes, neg_classes=neg_classes)
               if q is not None else graph.new_zeros(()))
        weight = sigmoid_rampup(step, self.rampup_steps)
        total = sup_loss + self.lambda_u * pseudo_loss + weight * (self.lambda_graph * graph + self.lambda_mix * mix)
        return {"total": total, "sup": sup_loss, "pseudo": pseudo_loss, "graph": graph, "mix": mix, "weight": weight}
