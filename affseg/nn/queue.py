"""Per-class FIFO queue of teacher keys (MoCo, PLGCL's per-class queues; SPEC §7)."""
from __future__ import annotations

import torch
import torch.distributed as dist

from affseg import _validate


def _gather_from_ranks(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Concatenate each tensor over the ranks of the default group (ranks may push different counts)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensors
    world = dist.get_world_size()
    count = torch.tensor([tensors[0].shape[0]], device=tensors[0].device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    most = max(counts)
    out = []
    for t in tensors:
        padded = t.new_zeros((most, *t.shape[1:]))
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        out.append(torch.cat([p[:c] for p, c in zip(parts, counts)]))
    return tuple(out)


class ClassQueue(torch.nn.Module):
    """Per-class FIFO of teacher keys and their mixing weights α (Semi-AGCL's negatives).

    Each class holds up to ``size_per_class`` keys; pushing more than that drops the oldest. Under
    ``torch.distributed`` every rank pushes its own keys and the queue stores those of all ranks
    (gathered, rank order), so all ranks hold the same queue. The contents are buffers, so they are
    in ``state_dict`` and move with ``.to()``.

    Args:
        dim: key dimension C.
        num_classes: number of classes K.
        size_per_class: capacity of each class's FIFO.

    Returns:
        ``keys()`` ``(Q, C)``, ``classes()`` ``(Q,)`` and ``alpha()`` ``(Q,)``: the stored entries,
        class by class, oldest first within a class.

    Shape:
        ``push(keys (n, C), cls (n,), alpha (n,))``.

    Raises:
        ValueError/TypeError: non-positive sizes; keys, classes or α of the wrong shape, dtype or
            device; a class outside ``[0, K)``.

    Example:
        >>> queue = affseg.nn.ClassQueue(dim=8, num_classes=3, size_per_class=4)
        >>> queue.push(torch.randn(5, 8), torch.tensor([0, 1, 1, 2, 0]), torch.rand(5))
        >>> queue.keys().shape, queue.classes().tolist()
        (torch.Size([5, 8]), [0, 0, 1, 1, 2])
    """

    def __init__(self, dim: int, num_classes: int, size_per_class: int = 4096):
        super().__init__()
        self.dim = _validate.int_value(dim, "dim", minimum=1)
        self.num_classes = _validate.int_value(num_classes, "num_classes", minimum=1)
        self.size_per_class = _validate.int_value(size_per_class, "size_per_class", minimum=1)
        self.register_buffer("queue_keys", torch.zeros(num_classes, size_per_class, dim))
        self.register_buffer("queue_alpha", torch.zeros(num_classes, size_per_class))
        self.register_buffer("head", torch.zeros(num_classes, dtype=torch.long))  # next slot to write
        self.register_buffer("filled", torch.zeros(num_classes, dtype=torch.long))

    @torch.no_grad()
    def push(self, keys: torch.Tensor, cls: torch.Tensor, alpha: torch.Tensor) -> None:
        """Append keys (detached) of the given classes with their α, dropping the oldest past capacity."""
        _validate.floating(keys, "keys", ndims=(2,))
        if keys.shape[1] != self.dim:
            raise ValueError(f"keys must be (n, {self.dim}), got shape {tuple(keys.shape)}")
        _validate.integer(cls, "cls", ndims=(1,))
        _validate.floating(alpha, "alpha", ndims=(1,))
        _validate.dim_match("keys", keys, 0, "cls", cls, 0, "number of keys")
        _validate.dim_match("keys", keys, 0, "alpha", alpha, 0, "number of keys")
        _validate.same_device(queue=self.queue_keys, keys=keys, cls=cls, alpha=alpha)
        if cls.numel() and not torch.compiler.is_compiling():
            bad = (cls < 0) | (cls >= self.num_classes)
            if bool(bad.any()):
                raise ValueError(f"cls must lie in [0, {self.num_classes}), got {int(cls[bad][0])}")
        keys, cls, alpha = _gather_from_ranks(keys.detach().to(self.queue_keys.dtype), cls.long(),
                                              alpha.detach().to(self.queue_alpha.dtype))
        if cls.numel() == 0:
            return
        order = torch.sort(cls, stable=True).indices  # arrival order kept within each class
        keys, cls, alpha = keys[order], cls[order], alpha[order]
        counts = torch.bincount(cls, minlength=self.num_classes)
        first = torch.cumsum(counts, 0) - counts
        rank = torch.arange(cls.numel(), device=cls.device) - first[cls]
        # Only the newest size_per_class of each class survive, so no two writes share a slot.
        keep = rank >= counts[cls] - self.size_per_class
        slot = (self.head[cls] + rank) % self.size_per_class
        self.queue_keys[cls[keep], slot[keep]] = keys[keep]
        self.queue_alpha[cls[keep], slot[keep]] = alpha[keep]
        self.head.copy_((self.head + counts) % self.size_per_class)
        self.filled.copy_(torch.clamp(self.filled + counts, max=self.size_per_class))

    def _slots(self):
        """(class, slot) of every stored entry, class by class, oldest first."""
        age = torch.arange(self.size_per_class, device=self.head.device)
        stored = age[None, :] < self.filled[:, None]  # (K, size)
        cls, age = stored.nonzero(as_tuple=True)
        slot = (self.head[cls] - self.filled[cls] + age) % self.size_per_class
        return cls, slot

    def keys(self) -> torch.Tensor:
        cls, slot = self._slots()
        return self.queue_keys[cls, slot]

    def classes(self) -> torch.Tensor:
        return self._slots()[0]

    def alpha(self) -> torch.Tensor:
        cls, slot = self._slots()
        return self.queue_alpha[cls, slot]

    def __len__(self) -> int:
        return int(self.filled.sum())

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_classes={self.num_classes}, size_per_class={self.size_per_class}"
