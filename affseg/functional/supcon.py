"""Soft supervised contrastive loss: SupCon with continuous label affinity (SPEC §4)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from affseg import _backend, _validate, reference
from affseg._reduce import reduce_rows


def _check(features, labels, tau, reduction, ignore_index):
    _validate.floating(features, "features", ndims=(2, 3))
    _validate.tensor(labels, "labels")
    lead = features.dim() - 1
    soft = labels.is_floating_point()
    want = lead + 1 if soft else lead
    if labels.dim() != want or tuple(labels.shape[:lead]) != tuple(features.shape[:lead]):
        kind = "float soft labels (..., N, K)" if soft else "int labels (..., N)"
        raise ValueError(
            f"labels must be {kind} matching features {tuple(features.shape)} in its leading dims, "
            f"got shape {tuple(labels.shape)}"
        )
    if not soft:
        _validate.integer(labels, "labels")
    if soft and ignore_index is not None:
        raise ValueError("ignore_index applies to integer labels only; got ignore_index with float soft labels")
    _validate.supcon_options(tau=tau, reduction=reduction, ignore_index=ignore_index)
    if not soft and labels.numel() and not torch.compiler.is_compiling():
        negative = (labels < 0) if ignore_index is None else (labels < 0) & (labels != ignore_index)
        if bool(negative.any()):
            raise ValueError(f"labels must be >= 0 or ignore_index, got a label {int(labels[negative][0])}")
    _validate.same_device(features=features, labels=labels)


def _dense_ids(labels: torch.Tensor) -> torch.Tensor:
    """Per row of (B, N) ids, the rank of each id among the row's distinct ids: values in [0, N)."""
    ordered, order = labels.sort(dim=1)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    return torch.empty_like(order).scatter_(1, order, starts.long().cumsum(1) - 1)


def _positive_term(f: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor):
    """Σ_{j≠i} w_ij f_i·f_j and Σ_{j≠i} w_ij in O(N·K·C): the positive term is bilinear in φ."""
    self_dot = (f * f).sum(-1)
    if labels.is_floating_point():
        phi = labels.to(f.dtype) * valid[..., None]
        class_feats = phi.transpose(1, 2) @ f  # (B, K, C): Σ_j φ_jk f_j
        class_mass = phi.sum(1, keepdim=True)  # (B, 1, K)
        self_w = (phi * phi).sum(-1)
        pos = (phi @ class_feats * f).sum(-1) - self_w * self_dot
        weight = (phi * class_mass).sum(-1) - self_w
        return pos, weight
    # One-hot labels: per-class sums gathered back per row. Class ids are first renumbered densely
    # per image (sort, then count the value changes), so memory and time depend on N, never on
    # how large an id is (pytorch-metric-learning users pass arbitrary ids).
    B, N, C = f.shape
    cls = _dense_ids(labels.long())  # ignored rows weigh 0 below, whatever group they join
    vf = valid.to(f.dtype)
    class_feats = torch.zeros(B, N, C, dtype=f.dtype, device=f.device).scatter_add_(
        1, cls[..., None].expand(B, N, C), f * vf[..., None]
    )
    class_count = torch.zeros(B, N, dtype=f.dtype, device=f.device).scatter_add_(1, cls, vf)
    pos = (torch.gather(class_feats, 1, cls[..., None].expand(B, N, C)) * f).sum(-1) - self_dot
    weight = torch.gather(class_count, 1, cls) - 1.0
    return pos * vf, weight * vf


def soft_supcon_loss(features, labels, *, tau=0.1, reduction="mean", ignore_index=None, backend="auto"):
    """Supervised contrastive loss with continuous label affinity w_ij = φ_i·φ_j (SPEC §4).

    For rows with Σ_{j≠i} w_ij > 0:
    ``ℓ_i = −Σ_{j≠i} w_ij (s_ij − LSE_{k≠i} s_ik) / Σ_{j≠i} w_ij`` with s = cos/τ. With integer
    labels this is SupCon (Khosla et al. 2020, "out" form), a drop-in for
    ``pytorch_metric_learning.losses.SupConLoss``. The fused path sweeps N² only for the
    log-sum-exp; the positive term costs O(N·K·C).

    Args:
        features: embeddings; a leading batch dim keeps pairs within each item.
        labels: int class labels (one-hot affinity) or float soft label vectors.
        tau: temperature τ > 0.
        reduction: ``"mean"`` over counted rows, ``"sum"``, or ``"none"`` (0 at rows not counted).
        ignore_index: integer label whose rows drop out as rows and columns.
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"cuda"`` or ``"triton"``.

    Returns:
        A scalar loss, or per-row losses of shape ``features.shape[:-1]``.

    Shape:
        features ``(N, C)`` or ``(B, N, C)``; labels ``(N,)``/``(B, N)`` or ``(N, K)``/``(B, N, K)``.

    Raises:
        TypeError/ValueError: bad dtypes or shapes, mismatched devices, tau ≤ 0, ignore_index
            with soft labels, unknown reduction.

    Example:
        >>> emb = torch.randn(128, 64, requires_grad=True)
        >>> affseg.soft_supcon_loss(emb, torch.randint(0, 4, (128,))).backward()
    """
    _check(features, labels, tau, reduction, ignore_index)
    backend = _backend.resolve("soft_supcon_loss", backend, features.device, dtype=features.dtype,
                               channels=features.shape[-1], batch=features.shape[0] if features.dim() == 3 else 1)
    if backend == "reference":
        return reference.soft_supcon_loss(features, labels, tau=tau, reduction=reduction, ignore_index=ignore_index)
    from affseg._ops import supcon as ops

    batched = features.dim() == 3
    f, lab = (features, labels) if batched else (features[None], labels[None])
    cdt = torch.float64 if f.dtype == torch.float64 else torch.float32
    if labels.is_floating_point() or ignore_index is None:
        valid = torch.ones(f.shape[:2], dtype=torch.bool, device=f.device)
    else:
        valid = lab != ignore_index
    # Ignored rows drop out as rows and columns even when they hold NaN: zero them before anything
    # (normalize included, whose backward would turn a NaN row's zero gradient into NaN).
    f = torch.where(valid[..., None], f.to(cdt), torch.zeros((), dtype=cdt, device=f.device))
    fn = F.normalize(f, dim=-1, eps=1e-8).contiguous()
    lse = ops.cos_lse(fn, valid.contiguous(), inv_tau=1.0 / tau, backend=backend,
                      input_precision=_backend.dot_precision(features.dtype))  # SPEC §8, as in pdcr
    pos, weight = _positive_term(fn, lab, valid)
    counted = valid & (weight > 0)
    safe_w = torch.where(counted, weight, torch.ones_like(weight))
    row = torch.where(counted, lse - pos / (tau * safe_w), torch.zeros_like(lse))
    out = reduce_rows(row, counted, reduction, dtype=features.dtype)
    return out if batched or reduction != "none" else out[0]
