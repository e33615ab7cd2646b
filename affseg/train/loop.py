"""The reference training loop of ``affseg train``: one run per seed, resumable, optionally DDP.

Per step: a labelled batch (and for the semi-supervised methods an unlabelled one) chosen by
:class:`BatchStream` from (seed, step) alone, flips drawn from a per-step generator, one forward of
the student over labelled + unlabelled images, Dice + CE (MONAI) plus the method's terms, one Adam
step, the poly learning-rate decay, the EMA teacher update. Every epoch (one pass over the training
set, or ``--checkpoint-every`` steps) the whole state goes to ``seed<k>/checkpoint.pt`` atomically;
``--resume`` continues from it and ends with the weights of an uninterrupted run. Under torchrun
the student is wrapped in DistributedDataParallel (gloo on CPU, NCCL on GPU; SyncBatchNorm on GPU,
where it exists), each rank reads its own share of every batch, the Semi-AGCL queue gathers the
keys of all ranks, and rank 0 writes the checkpoints and results.
"""
from __future__ import annotations

import hashlib
import math
import os
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import affseg
from affseg.train import checkpoint
from affseg.train.augment import flip, weak_strong
from affseg.train.batches import BatchStream
from affseg.train.config import TrainConfig
from affseg.train.metrics import case_metrics, summarize


# ---------------------------------------------------------------------------------------------------
# distributed


def distributed_context(device: str):
    """(rank, world_size, device) from torchrun's environment; initialises the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, torch.device(device)
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
        backend = "nccl"
    else:
        dev = torch.device(device)
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return rank, world, dev


def _barrier(world):
    if world > 1:
        torch.distributed.barrier()


def _seed(*parts) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence: defined for any ints, unlike hash())."""
    return int(np.random.SeedSequence([p % 2**32 for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def _all_ranks_agree(flag: bool, world: int) -> bool:
    """True iff ``flag`` holds on every rank (so a failure on one rank stops all, not a hang)."""
    if world <= 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
    return bool(t.item())


def _sync_buffers(modules, world):
    """Rank 0's buffers to every rank. DDP broadcasts the BatchNorm statistics at the start of each
    forward, so after the last step each rank holds its own (without SyncBatchNorm, on CPU); this is
    the broadcast the next forward would have made, so every rank ends with rank 0's model."""
    if world > 1:
        for m in modules:
            for buf in m.buffers():
                torch.distributed.broadcast(buf, 0)


# ---------------------------------------------------------------------------------------------------
# data and model


def load_data(cfg: TrainConfig):
    from affseg.data import load_folder, load_mni152

    if cfg.data == "mni152":
        return load_mni152(dims=cfg.dims, size=cfg.size if cfg.dims == 2 else None,
                           downsample=None if cfg.dims == 2 else max(1.0, 160 / (2 * cfg.size)))
    return load_folder(cfg.data, dims=cfg.dims, size=cfg.size)


class Run:
    """Everything one seed's training holds: networks, taps, losses, optimiser, schedule."""

    def __init__(self, cfg: TrainConfig, data, seed: int, rank: int, world: int, device: torch.device):
        from monai.losses import DiceCELoss

        self.cfg, self.data, self.seed, self.rank, self.world, self.device = cfg, data, seed, rank, world, device
        torch.manual_seed(seed)  # the same initial weights on every rank (DDP broadcasts rank 0's anyway)
        if device.type == "cuda":  # bit-exact resume needs deterministic kernels (CPU kernels are)
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        k = data.num_classes
        net = affseg.models.UNet(data.in_channels, k, dims=data.dims, channels=cfg.channels, uafs=cfg.uses_uafs)
        net = net.to(device)
        # PDCR's tap (SPEC §10: decoder maps are taps); Semi-AGCL embeds the last decoder map.
        self.layer = net.feature_layers[cfg.pdcr_layer if cfg.uses_pdcr else -1]
        self.feature_channels = net.feature_channels[-1]
        self.teacher = None
        if cfg.semi_supervised:
            self.teacher = affseg.models.MeanTeacher(net, ema_decay=cfg.ema_decay).to(device)
        model = net
        if world > 1:
            if device.type == "cuda":
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        self.net, self.model = net, model
        self.taps = affseg.models.FeatureTaps(net, [self.layer])
        self.teacher_taps = affseg.models.FeatureTaps(self.teacher.teacher, [self.layer]) if self.teacher else None
        self.sup = DiceCELoss(to_onehot_y=True, softmax=True)
        self.agcl = None
        if cfg.method == "semi-agcl":
            self.agcl = affseg.nn.SemiAGCL(
                num_classes=k, feature_dim=self.feature_channels, patch_size=cfg.agcl_patch,
                n_per_class=cfg.agcl_per_class, queue_size=cfg.agcl_queue, n_hard=cfg.agcl_hard, n_mix=cfg.agcl_mix,
                rampup_steps=max(1, int(cfg.rampup_fraction * cfg.steps)), backend=cfg.backend,
            ).to(device)
        params = list(net.parameters()) + (list(self.agcl.parameters()) if self.agcl else [])
        self.opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: (1 - min(s, cfg.steps) / cfg.steps) ** 0.9)
        labelled, unlabelled = data.train.labelled(cfg.label_fraction, seed=seed)
        self.labelled, self.unlabelled = labelled, unlabelled
        self.lab_stream = BatchStream(len(labelled), cfg.batch_size, seed, rank, world)
        self.unl_stream = (BatchStream(len(unlabelled), cfg.batch_size, seed + 7919, rank, world)
                           if cfg.semi_supervised else None)
        if cfg.semi_supervised and not unlabelled:
            raise ValueError(f"label fraction {cfg.label_fraction} leaves no unlabelled training case")
        # An epoch: as many steps as one pass over the whole training set takes (labelled or not).
        epoch = max(1, -(-len(data.train) // (cfg.batch_size * world)))
        self.checkpoint_every = cfg.checkpoint_every or epoch
        self.step, self.history = 0, []
        self.validate_every = max(self.checkpoint_every, cfg.steps // 5)
        torch.manual_seed(_seed(seed, rank, 1))  # each rank its own dropout masks

    # ---- state

    def state(self) -> dict:
        return {
            "config": self.cfg.identity(), "seed": self.seed, "world_size": self.world, "step": self.step,
            "history": self.history,
            "model": self.net.state_dict(), "teacher": self.teacher.state_dict() if self.teacher else None,
            "agcl": self.agcl.state_dict() if self.agcl else None,
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
        }

    def restore(self, state: dict) -> None:
        if state["config"] != self.cfg.identity() or state["seed"] != self.seed:
            diff = {k: (state["config"].get(k), v) for k, v in self.cfg.identity().items()
                    if state["config"].get(k) != v}
            raise ValueError(f"--resume: the checkpoint was written by a different configuration {diff}")
        if state.get("world_size", 1) != self.world:
            raise ValueError(f"--resume: the checkpoint was written by {state.get('world_size', 1)} processes, this run "
                             f"has {self.world}; the per-rank batches would differ from the interrupted run's")
        self.net.load_state_dict(state["model"])
        if self.teacher:
            self.teacher.load_state_dict(state["teacher"])
        if self.agcl:
            self.agcl.load_state_dict(state["agcl"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.step, self.history = state["step"], state["history"]

    # ---- one step

    def _batch(self, split, indices, gen, with_labels=True):
        images = [split.images[i] for i in indices]
        labels = [split.labels[i] for i in indices]
        if self.data.dims == 3:
            from affseg.data import random_crop

            crop = (self.cfg.crop,) * 3
            pairs = [random_crop(im, lab, crop, generator=gen) for im, lab in zip(images, labels)]
            images, labels = [p[0] for p in pairs], [p[1] for p in pairs]
        x = torch.stack(images)
        y = torch.stack(labels) if with_labels else None
        return x, y

    def train_step(self) -> dict:
        cfg, step = self.cfg, self.step
        gen = torch.Generator().manual_seed(_seed(self.seed, step, self.rank))
        x_l, y_l = self._batch(self.data.train, [self.labelled[i] for i in self.lab_stream.indices(step)], gen)
        x_l, y_l = flip(x_l, y_l, gen)
        x_l, y_l = x_l.to(self.device), y_l.to(self.device)
        self.model.train()
        terms = {}
        if not cfg.semi_supervised:
            logits = self.model(x_l)
            loss = terms["sup"] = self.sup(logits, y_l.unsqueeze(1))
            if cfg.uses_pdcr:
                pdcr = affseg.pdcr_loss(self.taps[self.layer], y_l, num_classes=self.data.num_classes,
                                        window_sizes=cfg.pdcr_windows, tau=cfg.pdcr_tau, backend=cfg.backend)
                terms["pdcr"] = pdcr
                loss = loss + cfg.pdcr_weight * pdcr
        else:
            u_idx = [self.unlabelled[i] for i in self.unl_stream.indices(step)]
            x_u, _ = self._batch(self.data.train, u_idx, gen)
            weak, strong = weak_strong(x_u, gen)
            weak, strong = weak.to(self.device), strong.to(self.device)
            n_l = x_l.shape[0]
            logits = self.model(torch.cat([x_l, strong]))
            with torch.no_grad():  # Semi-AGCL's sampler reads the teacher on the labelled images too
                t_in = torch.cat([x_l, weak]) if cfg.method == "semi-agcl" else weak
                t_logits = self.teacher.teacher(t_in)
                if cfg.method != "semi-agcl":
                    t_logits = torch.cat([t_logits.new_zeros((n_l,) + t_logits.shape[1:]), t_logits])
            terms["sup"] = self.sup(logits[:n_l], y_l.unsqueeze(1))
            ramp = affseg.nn.agcl.sigmoid_rampup(step, max(1, int(cfg.rampup_fraction * cfg.steps)))
            if cfg.method == "mean-teacher":
                cons = F.mse_loss(logits[n_l:].softmax(1), t_logits[n_l:].softmax(1))
                terms["consistency"] = cons
                loss = terms["sup"] + cfg.consistency * ramp * cons
            else:
                pseudo = t_logits[n_l:].argmax(1)
                terms["pseudo"] = self.sup(logits[n_l:], pseudo.unsqueeze(1))
                labels = torch.cat([y_l, pseudo])
                out = self.agcl(logits, t_logits, self.taps[self.layer], self.teacher_taps[self.layer], labels,
                                step=step, generator=gen)
                terms["graph"], terms["mix"] = out["graph"], out["mix"]
                # The pseudo-labels come from a teacher that starts as a copy of an untrained student:
                # ramped like the consistency and affinity-graph terms.
                loss = terms["sup"] + cfg.pseudo_weight * ramp * terms["pseudo"] + out["total"]
        if not _all_ranks_agree(bool(torch.isfinite(loss)), self.world):
            raise FloatingPointError(f"seed {self.seed}, step {step}: the loss is {loss.item()} ({ {k: float(v) for k, v in terms.items()} })")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        if self.teacher is not None:
            # Without SyncBatchNorm each rank's BN statistics are its own until DDP broadcasts rank
            # 0's at the next forward; the teacher averages that broadcast value on every rank.
            _sync_buffers([self.net], self.world if self.device.type != "cuda" else 1)
            self.teacher.update(step=step)
        self.taps.clear()
        if self.teacher_taps is not None:
            self.teacher_taps.clear()
        self.step += 1
        record = {"step": self.step, "loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()},
                  "lr": self.opt.param_groups[0]["lr"]}
        self.history.append(record)
        return record


# ---------------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def predict(net, split, dims, device, crop=None):
    net.eval()
    preds = []
    for image in split.images:
        x = image.unsqueeze(0).to(device)
        if dims == 3 and crop is not None:
            from monai.inferers import sliding_window_inference

            logits = sliding_window_inference(x, (crop,) * 3, 4, net, overlap=0.25)
        else:
            logits = net(x)
        preds.append(logits.argmax(1)[0].cpu())
    return preds


def evaluate(net, split, num_classes, dims, device, crop=None) -> dict:
    """Per-sample metrics on a split (each test slice or volume is a case), then their summary."""
    preds = predict(net, split, dims, device, crop)
    per = [case_metrics(p.unsqueeze(0), y.unsqueeze(0), num_classes) for p, y in zip(preds, split.labels)]
    merged = {k: torch.cat([m[k] for m in per]) for k in per[0]}
    return summarize(merged), preds


def weights_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------
# one seed


def train_seed(cfg: TrainConfig, data, seed: int, rank: int = 0, world: int = 1, device=None) -> dict:
    """Train (or resume) one seed; rank 0 returns its results dict (others return {})."""
    from tqdm.auto import tqdm

    device = device or torch.device(cfg.device)
    out = Path(cfg.out) / f"seed{seed}"
    run = Run(cfg, data, seed, rank, world, device)
    ckpt = out / checkpoint.CHECKPOINT
    # Resuming assumes a file system shared by the ranks (every rank reads the one checkpoint).
    if cfg.resume and ckpt.exists():
        run.restore(checkpoint.load(ckpt))
        if rank == 0:
            print(f"resumed {cfg.method} seed {seed} at step {run.step}", flush=True)
    # Training time only: validation and checkpoint writes are outside the clock.
    train_time = run.history[-1].get("elapsed", 0.0) if run.history else 0.0
    kill_after = int(os.environ.get("AFFSEG_KILL_AFTER_CHECKPOINT", "0"))  # a testing aid: see tests/test_train.py
    bar = tqdm(total=cfg.steps, initial=run.step, desc=f"{cfg.method} seed {seed}", disable=cfg.quiet or rank != 0,
               dynamic_ncols=True)
    while run.step < cfg.steps:
        t = time.perf_counter()
        rec = run.train_step()
        train_time += time.perf_counter() - t
        rec["elapsed"] = train_time
        bar.update(1)
        bar.set_postfix(loss=f"{rec['loss']:.3f}")
        last = run.step == cfg.steps
        if run.step % run.checkpoint_every == 0 or last:
            if rank == 0:
                if run.step % run.validate_every == 0 or last:
                    val, _ = evaluate(run.net, data.val, data.num_classes, data.dims, device, cfg.crop)
                    rec["val_dice"] = val["dice"]["mean"]
                checkpoint.save(ckpt, **run.state())
                if kill_after and run.step >= kill_after and not last:
                    os.kill(os.getpid(), signal.SIGKILL)
            _barrier(world)
    bar.close()
    _sync_buffers([run.net] + ([run.teacher] if run.teacher else []), world)
    digest = weights_digest(run.net)
    if world > 1:  # what the DDP test compares: student, teacher and queue of every rank
        parts = [digest] + ([weights_digest(run.teacher)] if run.teacher else []) + (
            [weights_digest(run.agcl)] if run.agcl else [])
        (out / f"weights_rank{rank}.sha256").parent.mkdir(parents=True, exist_ok=True)
        (out / f"weights_rank{rank}.sha256").write_text("\n".join(parts) + "\n")
    if rank != 0:
        return {}
    checkpoint.atomic_save(run.net.state_dict(), out / "model.pt")
    test, preds = evaluate(run.net, data.test, data.num_classes, data.dims, device, cfg.crop)
    step_times = [b["elapsed"] - a["elapsed"] for a, b in zip(run.history, run.history[1:])]
    examples = _example_ids(data.test)
    return {
        "seed": seed, "method": cfg.method, "label_fraction": cfg.label_fraction, "steps": cfg.steps,
        "labelled_cases": len(run.labelled), "unlabelled_cases": len(run.unlabelled),
        "train_time_s": train_time, "step_time_s": float(torch.tensor(step_times).median()) if step_times else math.nan,
        "test": test, "history": run.history, "weights_sha256": digest,
        "examples": {"images": [data.test.images[i] for i in examples],
                     "labels": [data.test.labels[i] for i in examples],
                     "preds": [preds[i] for i in examples]},
    }


def _example_ids(split, n=3):
    return sorted({round(i * (len(split) - 1) / max(1, n - 1)) for i in range(n)}) if len(split) else []
