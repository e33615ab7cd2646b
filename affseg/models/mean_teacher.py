"""MeanTeacher: a student and its EMA teacher (SPEC §10)."""
from __future__ import annotations

import copy

import torch

from affseg.models.taps import _TapHook


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The network inside DistributedDataParallel / DataParallel (``.module``) and torch.compile
    (``._orig_mod``) wrappers."""
    while True:
        if isinstance(module, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), torch.nn.Module):
            module = module._orig_mod
        else:
            return module


def _drop_tap_hooks(module: torch.nn.Module) -> None:
    """A deep copy keeps the forward hooks of the original, and a FeatureTaps hook would record the
    teacher's outputs into the student's taps: drop those from the copy."""
    for m in module.modules():
        for key in [k for k, hook in m._forward_hooks.items() if isinstance(hook, _TapHook)]:
            del m._forward_hooks[key]
            m._forward_hooks_with_kwargs.pop(key, None)
            m._forward_hooks_always_called.pop(key, None)


class MeanTeacher(torch.nn.Module):
    """A student network and its exponential-moving-average teacher (Tarvainen & Valpola; SSL4MIS).

    ``teacher`` is a deep copy of the student with ``requires_grad_(False)``. After each optimiser
    step, :meth:`update` sets every teacher parameter to ``α·θ_t + (1 − α)·θ_s`` with
    ``α = ema_decay``, or with SSL4MIS's warm-up ``α = min(1 − 1/(step + 1), ema_decay)`` when the
    iteration ``step`` is given (step 0 copies the student). Buffers (``buffers=``): ``"ema"``
    (default) averages the floating-point buffers (BatchNorm running mean/var) with the same α
    and copies the others (``num_batches_tracked``); ``"copy"`` copies all of them; ``"none"``
    leaves them to the teacher's own forwards (SSL4MIS: EMA of parameters only, the teacher's BN
    statistics come from its own train-mode forwards).

    Modes: by default (``teacher_mode="eval"``) the teacher stays in eval mode whatever
    ``train()``/``eval()`` do, so its BatchNorm uses the (averaged) running statistics and its
    dropout is off: a deterministic target. ``teacher_mode="train"`` makes the teacher follow
    ``train()`` like SSL4MIS (batch statistics and dropout noise in the teacher; its running
    statistics then also move on every teacher forward).

    ``forward(x)`` runs the student; call ``mt.teacher(x)`` under ``torch.no_grad()`` for targets.
    The state_dict holds ``student.*``, ``teacher.*`` and ``num_updates`` (the number of
    :meth:`update` calls). Hooks of :class:`FeatureTaps` on the student are not copied to the
    teacher (tap the teacher with its own FeatureTaps).

    Distributed training: pass the bare network, wrap ``mt.student`` afterwards
    (``mt.student = DDP(mt.student)``), or pass a DDP/DataParallel/torch.compile-wrapped
    student: the teacher copies, and :meth:`update` reads, the network inside (``.module`` /
    ``._orig_mod``). The teacher is never wrapped; every rank updates its own copy from the
    (synchronised) student parameters.

    Args:
        student: the network being trained.
        ema_decay: α of the EMA, in [0, 1].
        buffers: ``"ema"``, ``"copy"`` or ``"none"`` (see above).
        teacher_mode: ``"eval"`` or ``"train"`` (see above).

    Returns:
        ``forward(*args, **kwargs)`` returns the student's output.

    Shape:
        Those of the student.

    Raises:
        ValueError: ema_decay outside [0, 1], unknown buffers or teacher_mode, a negative step.
        RuntimeError: the student's parameters no longer match the teacher's (names or shapes).

    Example:
        >>> mt = affseg.models.MeanTeacher(torch.nn.Linear(4, 2), ema_decay=0.99)
        >>> opt = torch.optim.SGD(mt.student.parameters(), lr=0.1)
        >>> mt(torch.randn(8, 4)).sum().backward(); opt.step()
        >>> mt.update(step=0)
        0.0
        >>> torch.equal(mt.teacher.weight, mt.student.weight)
        True
        >>> int(mt.num_updates)
        1
    """

    def __init__(self, student: torch.nn.Module, ema_decay: float = 0.99, *, buffers: str = "ema",
                 teacher_mode: str = "eval"):
        super().__init__()
        if not isinstance(student, torch.nn.Module):
            raise TypeError(f"student must be a torch.nn.Module, got {type(student).__name__}")
        if not 0.0 <= float(ema_decay) <= 1.0:
            raise ValueError(f"ema_decay must be in [0, 1], got {ema_decay}")
        if buffers not in ("ema", "copy", "none"):
            raise ValueError(f"buffers must be 'ema', 'copy' or 'none', got {buffers!r}")
        if teacher_mode not in ("eval", "train"):
            raise ValueError(f"teacher_mode must be 'eval' or 'train', got {teacher_mode!r}")
        self.ema_decay, self.buffer_mode, self.teacher_mode = float(ema_decay), buffers, teacher_mode
        self.student = student
        teacher = copy.deepcopy(_unwrap(student))
        _drop_tap_hooks(teacher)
        teacher.requires_grad_(False)
        self.teacher = teacher
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self.train(student.training)

    def forward(self, *args, **kwargs):
        return self.student(*args, **kwargs)

    def train(self, mode: bool = True) -> "MeanTeacher":
        """Set the student's mode; the teacher stays in eval mode unless ``teacher_mode="train"``."""
        super().train(mode)
        if self.teacher_mode == "eval":
            self.teacher.eval()
        return self

    def _pairs(self, kind: str):
        student = _unwrap(self.student)
        s = dict(student.named_parameters() if kind == "parameters" else student.named_buffers())
        t = dict(self.teacher.named_parameters() if kind == "parameters" else self.teacher.named_buffers())
        if s.keys() != t.keys():
            raise RuntimeError(f"MeanTeacher: the student's {kind} no longer match the teacher's "
                               f"(only in student: {sorted(s.keys() - t.keys())[:5]}, only in teacher: "
                               f"{sorted(t.keys() - s.keys())[:5]}); build the MeanTeacher after changing the model")
        for name, tp in t.items():
            if tp.shape != s[name].shape:
                raise RuntimeError(f"MeanTeacher: {kind[:-1]} {name!r} has shape {tuple(s[name].shape)} in the "
                                   f"student and {tuple(tp.shape)} in the teacher")
        return [(t[n], s[n]) for n in t]

    @torch.no_grad()
    def update(self, step: int | None = None) -> float:
        """Move the teacher towards the student; call it after each optimiser step.

        Args:
            step: the iteration (0-based). Given, α = min(1 − 1/(step + 1), ema_decay) (SSL4MIS's
                warm-up); None, α = ema_decay.

        Returns:
            α, the decay used.
        """
        if step is None:
            alpha = self.ema_decay
        else:
            if int(step) < 0:
                raise ValueError(f"step must be >= 0, got {step}")
            alpha = min(1.0 - 1.0 / (int(step) + 1), self.ema_decay)
        for tp, sp in self._pairs("parameters"):
            tp.mul_(alpha).add_(sp.detach().to(tp.dtype), alpha=1.0 - alpha)
        if self.buffer_mode != "none":
            for tb, sb in self._pairs("buffers"):
                if self.buffer_mode == "ema" and tb.is_floating_point():
                    tb.mul_(alpha).add_(sb.to(tb.dtype), alpha=1.0 - alpha)
                else:
                    tb.copy_(sb)
        self.num_updates += 1
        return alpha

    def extra_repr(self) -> str:
        return f"ema_decay={self.ema_decay}, buffers={self.buffer_mode!r}, teacher_mode={self.teacher_mode!r}"
