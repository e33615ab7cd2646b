"""The options of ``affseg train`` and their defaults: the papers' settings scaled to a CPU.

Papers vs here (also in RESULTS.md): PDCR τ = 0.5 and windows 5/7/9 as published, dense (every
location) on the stride-2 decoder map of the SSL4MIS U-Net (``pdcr_layer=-2``; the official 2D code
uses stride-4 maps, and the full-resolution map costs 6× a supervised step on 2 cores) with weight
0.1 (the official code's encoder weight); Semi-AGCL's
mean teacher with EMA 0.99, 5 % / 10 % labels, its graph and mixing terms with weights 1 and a
ramp-up, pseudo-label Dice + CE with weight 0.5 (the BCP reading of L_reg); Adam 1e-3 with a poly
decay (the PDCR code's optimiser; SSL4MIS uses SGD 0.01) for a few hundred steps at 64² instead of
tens of thousands at 256².
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field

METHODS = ("supervised", "pdcr", "uafs", "pdcr+uafs", "mean-teacher", "semi-agcl")
SEMI_SUPERVISED = ("mean-teacher", "semi-agcl")


@dataclass
class TrainConfig:
    method: str = "supervised"
    data: str = "mni152"
    dims: int = 2
    size: int = 64
    crop: int = 32
    label_fraction: float = 1.0
    seeds: tuple = (0,)
    steps: int = 300
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-5
    channels: tuple = (16, 32, 64, 128, 256)
    pdcr_weight: float = 0.1
    pdcr_layer: int = -2
    pdcr_tau: float = 0.5
    pdcr_windows: tuple = (5, 7, 9)
    consistency: float = 0.1
    pseudo_weight: float = 0.5
    ema_decay: float = 0.99
    rampup_fraction: float = 0.4
    agcl_patch: int = 8
    agcl_per_class: int = 16
    agcl_queue: int = 1024
    agcl_hard: int = 64
    agcl_mix: int = 32
    checkpoint_every: int = 0
    device: str = "cpu"
    backend: str = "auto"
    out: str = "runs/train"
    resume: bool = False
    quiet: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {self.dims}")
        if not 0.0 < self.label_fraction <= 1.0:
            raise ValueError(f"label_fraction must be in (0, 1], got {self.label_fraction}")
        if self.method in SEMI_SUPERVISED and self.label_fraction == 1.0:
            raise ValueError(f"{self.method} needs unlabelled data: pass --label-fraction < 1")
        for name in ("steps", "batch_size", "size", "crop"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.seeds = tuple(int(s) for s in self.seeds)
        self.channels = tuple(int(c) for c in self.channels)
        self.pdcr_windows = tuple(int(w) for w in self.pdcr_windows)

    @property
    def semi_supervised(self) -> bool:
        return self.method in SEMI_SUPERVISED

    @property
    def uses_pdcr(self) -> bool:
        return self.method in ("pdcr", "pdcr+uafs")

    @property
    def uses_uafs(self) -> bool:
        return self.method in ("uafs", "pdcr+uafs")

    def to_dict(self) -> dict:
        return asdict(self)

    # Options that change the trained weights: a checkpoint only resumes a run that agrees on them.
    def identity(self) -> dict:
        d = self.to_dict()
        for k in ("seeds", "out", "resume", "quiet", "device", "checkpoint_every", "extra"):
            d.pop(k)
        return d


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("--method", default=d.method, choices=METHODS)
    p.add_argument("--data", default=d.data, help="'mni152' (offline template, default) or a folder")
    p.add_argument("--dims", type=int, default=d.dims, choices=(2, 3))
    p.add_argument("--size", type=int, default=d.size,
                   help="2D: slice side (MNI152) or resample side (folder); 3D MNI152: the volume is shrunk by 160 / (2·size)")
    p.add_argument("--crop", type=int, default=d.crop, help="3D training crop side")
    p.add_argument("--label-fraction", type=float, default=d.label_fraction)
    p.add_argument("--seeds", type=int, nargs="+", default=list(d.seeds))
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=d.steps, help="optimiser steps")
    length.add_argument("--epochs", type=int, default=None, help="instead of --steps: passes over the training set")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="labelled (and unlabelled) images per step and process (under torchrun: per rank)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--channels", type=int, nargs="+", default=list(d.channels))
    p.add_argument("--pdcr-weight", type=float, default=d.pdcr_weight)
    p.add_argument("--pdcr-layer", type=int, default=d.pdcr_layer,
                   help="decoder stage PDCR taps, an index into UNet.feature_layers (-1: full resolution)")
    p.add_argument("--pdcr-tau", type=float, default=d.pdcr_tau)
    p.add_argument("--pdcr-windows", type=int, nargs="+", default=list(d.pdcr_windows))
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--ema-decay", type=float, default=d.ema_decay)
    p.add_argument("--consistency", type=float, default=d.consistency, help="mean-teacher MSE weight")
    p.add_argument("--pseudo-weight", type=float, default=d.pseudo_weight, help="Semi-AGCL pseudo-label Dice+CE weight")
    p.add_argument("--rampup-fraction", type=float, default=d.rampup_fraction,
                   help="share of the steps over which the unlabelled terms ramp up")
    for name in ("agcl_patch", "agcl_per_class", "agcl_queue", "agcl_hard", "agcl_mix"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="steps between checkpoints (default: one epoch)")
    p.add_argument("--device", default=d.device)
    p.add_argument("--backend", default=d.backend, help="affseg backend of the fused losses")
    p.add_argument("--out", default=d.out, help="results.json, results.md, results.png and checkpoints go here")
    p.add_argument("--resume", action="store_true", help="continue each seed from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def from_args(args: argparse.Namespace) -> tuple[TrainConfig, int | None]:
    if args.epochs is not None and args.epochs < 1:
        raise SystemExit(f"--epochs must be >= 1, got {args.epochs}")
    cfg = TrainConfig(
        method=args.method, data=args.data, dims=args.dims, size=args.size, crop=args.crop,
        label_fraction=args.label_fraction, seeds=tuple(args.seeds), steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay, channels=tuple(args.channels), pdcr_weight=args.pdcr_weight,
        pdcr_layer=args.pdcr_layer, pdcr_tau=args.pdcr_tau, pdcr_windows=tuple(args.pdcr_windows),
        ema_decay=args.ema_decay, consistency=args.consistency, pseudo_weight=args.pseudo_weight,
        rampup_fraction=args.rampup_fraction, agcl_patch=args.agcl_patch, agcl_per_class=args.agcl_per_class,
        agcl_queue=args.agcl_queue, agcl_hard=args.agcl_hard, agcl_mix=args.agcl_mix,
        checkpoint_every=args.checkpoint_every, device=args.device, backend=args.backend, out=args.out,
        resume=args.resume, quiet=args.quiet,
    )
    return cfg, args.epochs
