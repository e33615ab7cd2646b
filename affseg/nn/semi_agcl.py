"""One call per batch for Semi-AGCL's affinity-graph terms: sample → embed → queue → losses (SPEC §7)."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from affseg import _validate
from affseg.functional.patches import METRICS, patch_embed, sample_patches
from affseg.nn.agcl import AffinityGraphLoss, MixedNegativeInfoNCE, sigmoid_rampup
from affseg.nn.queue import ClassQueue


class SemiAGCL(torch.nn.Module):
    """Semi-AGCL's patch sampling, embeddings, key queue and the two affinity-graph losses.

    Per batch: patches are sampled from the teacher's prediction by class-masked average patch
    entropy (:func:`affseg.sample_patches`) on the (pseudo-)labels; ŷᵗ is the teacher's mean
    softmax over each patch's class pixels and ŷˢ the student's over the same pixels; the query q
    (student) and key k⁺ (teacher) are the class-masked mean hidden features of each patch
    (:func:`affseg.patch_embed`), through an optional projection head (the teacher's head is an EMA
    copy of the student's, as MoCo does), L2-normalised. The graph loss compares ŷᵗ and ŷˢ; the
    mixed InfoNCE contrasts q with k⁺ against the other classes' keys in the :class:`ClassQueue`
    and their affinity-mixed hard negatives, with α = A_ii of each key's node; then this batch's
    keys join the queue. L_sup and L_pseudo are the training loop's.

    Args:
        num_classes: K. feature_dim: channels C of the hidden features.
        patch_size: tile side in input pixels (32 for 256² images in the paper's reading).
        n_per_class, metric, min_fraction: of :func:`affseg.sample_patches`.
        head_dim: output dim of a projection head Linear→ReLU→Linear (None: no head, q is the
            pooled feature; the paper's parameter count suggests none or a tiny one).
        head_ema: EMA decay of the teacher's copy of the head.
        queue_size: keys kept per class.
        lambda_graph, lambda_mix, rampup_steps: weights and ramp-up of the two terms.
        sigma, gamma, distance, diag: of :func:`affseg.affinity_graph_loss`.
        tau, n_hard, n_mix, mode: of :func:`affseg.mixed_negative_infonce`.
        backend: backend of every fused op.

    Returns:
        ``forward(student_logits, teacher_logits, student_features, teacher_features, labels,
        step=0, generator=None)`` returns a dict: ``total`` (w(t)·(λ_g·graph + λ_m·mix)),
        ``graph``, ``mix``, ``weight`` and ``patches`` (how many were sampled).

    Shape:
        logits ``(B, K, *S)``; features ``(B, C, *s)`` with S an integer multiple of s;
        labels ``(B, *S)`` int.

    Raises:
        ValueError/TypeError: bad options at construction; bad tensors at call time.

    Example:
        >>> agcl = affseg.nn.SemiAGCL(num_classes=3, feature_dim=16, patch_size=8, n_hard=16, n_mix=8)
        >>> logits_s = torch.randn(2, 3, 32, 32, requires_grad=True)
        >>> feats_s = torch.randn(2, 16, 32, 32, requires_grad=True)
        >>> terms = agcl(logits_s, logits_s.detach(), feats_s, feats_s.detach(), logits_s.argmax(1))
        >>> terms["total"].backward()
    """

    def __init__(self, num_classes, feature_dim, patch_size=32, n_per_class=64, metric="entropy", min_fraction=0.05,
                 head_dim=None, head_ema=0.99, queue_size=4096, lambda_graph=1.0, lambda_mix=1.0, rampup_steps=0,
                 sigma=0.5, gamma=0.1, distance="sqeuclidean", diag="one_minus", tau=0.1, n_hard=256, n_mix=256,
                 mode="queue_plus_mixed", backend="auto"):
        super().__init__()
        self.num_classes = _validate.int_value(num_classes, "num_classes", minimum=2)
        _validate.int_value(feature_dim, "feature_dim", minimum=1)
        self.patch_size = patch_size
        self.n_per_class = _validate.int_value(n_per_class, "n_per_class", minimum=1)
        self.metric = _validate.choice(metric, "metric", METRICS)
        self.min_fraction = _validate.unit_interval(min_fraction, "min_fraction")
        self.head_ema = _validate.unit_interval(head_ema, "head_ema")
        self.backend = backend
        self.head = None
        self.teacher_head = None
        dim = feature_dim
        if head_dim is not None:
            dim = _validate.int_value(head_dim, "head_dim", minimum=1)
            self.head = torch.nn.Sequential(torch.nn.Linear(feature_dim, dim), torch.nn.ReLU(), torch.nn.Linear(dim, dim))
            self.teacher_head = copy.deepcopy(self.head).requires_grad_(False)
        self.queue = ClassQueue(dim, num_classes, queue_size)
        _validate.semi_agcl_options(lambda_u=0.0, lambda_graph=lambda_graph, lambda_mix=lambda_mix,
                                    rampup_steps=rampup_steps, reduction="mean")
        self.lambda_graph, self.lambda_mix, self.rampup_steps = lambda_graph, lambda_mix, rampup_steps
        self.graph = AffinityGraphLoss(sigma=sigma, gamma=gamma, distance=distance, diag=diag, return_diag=True,
                                       backend=backend)
        self.mix = MixedNegativeInfoNCE(tau=tau, n_hard=n_hard, n_mix=n_mix, mode=mode, backend=backend)

    @torch.no_grad()
    def _update_teacher_head(self):
        for t, s in zip(self.teacher_head.parameters(), self.head.parameters()):
            t.lerp_(s, 1.0 - self.head_ema)

    def forward(self, student_logits, teacher_logits, student_features, teacher_features, labels, step=0,
                generator=None):
        _validate.floating(student_logits, "student_logits", ndims=(4, 5))
        if teacher_logits.shape != student_logits.shape:
            raise ValueError(f"teacher_logits must have the shape of student_logits {tuple(student_logits.shape)}, "
                             f"got {tuple(teacher_logits.shape)}")
        if teacher_features.shape != student_features.shape:
            raise ValueError(f"teacher_features must have the shape of student_features "
                             f"{tuple(student_features.shape)}, got {tuple(teacher_features.shape)}")
        sample = sample_patches(teacher_logits.detach(), labels, self.patch_size, n_per_class=self.n_per_class,
                                metric=self.metric, min_fraction=self.min_fraction,
                                features=teacher_features.detach() if self.metric == "cosine" else None,
                                generator=generator, backend=self.backend)
        y_t = sample.probs
        # The student's ŷ over the same pixels: the class-masked tile mean of its softmax.
        y_s = patch_embed(torch.softmax(student_logits, dim=1), sample, labels, self.patch_size)
        q = patch_embed(student_features, sample, labels, self.patch_size)
        with torch.no_grad():
            k = patch_embed(teacher_features.detach(), sample, labels, self.patch_size)
        if self.head is not None:
            if self.training:
                self._update_teacher_head()
            q = self.head(q)
            with torch.no_grad():
                k = self.teacher_head(k)
        q, k = F.normalize(q, dim=-1, eps=1e-8), F.normalize(k, dim=-1, eps=1e-8)
        graph, diag = self.graph(y_t, y_s.to(y_t.dtype))
        mix = self.mix(q, k, self.queue.keys().to(q.dtype), self.queue.alpha().to(q.dtype),
                              generator=generator, q_classes=sample.cls, neg_classes=self.queue.classes())
        if self.training:
            self.queue.push(k, sample.cls, diag)
        weight = sigmoid_rampup(step, self.rampup_steps)
        total = weight * (self.lambda_graph * graph + self.lambda_mix * mix)
        return {"total": total, "graph": graph, "mix": mix, "weight": weight, "patches": int(sample.cls.numel())}
