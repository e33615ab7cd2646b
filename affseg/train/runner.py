"""``affseg train`` end to end: data, one run per seed, the results files and the printed table."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from affseg.train import report
from affseg.train.config import TrainConfig
from affseg.train.loop import distributed_context, load_data, train_seed


def steps_for_epochs(cfg: TrainConfig, data, epochs: int, world: int = 1) -> int:
    """Optimiser steps of ``epochs`` passes over the larger of the labelled and unlabelled sets."""
    lab, unl = data.train.labelled(cfg.label_fraction, seed=cfg.seeds[0])
    n = max(len(lab), len(unl) if cfg.semi_supervised else 0)
    return max(1, epochs * -(-n // (cfg.batch_size * world)))


def run(cfg: TrainConfig, epochs: int | None = None, data=None) -> dict:
    """Train every seed of ``cfg`` and write results.json / results.md / results.png to ``cfg.out``.

    Returns:
        On rank 0: ``{"aggregates", "table", "png", "runs"}``; on other ranks: ``{}``.
    """
    rank, world, device = distributed_context(cfg.device)
    data = data if data is not None else load_data(cfg)
    if epochs is not None:
        cfg = dataclasses.replace(cfg, steps=steps_for_epochs(cfg, data, epochs, world))
    out = Path(cfg.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        report.atomic_write_text(out / "config.json", json.dumps(cfg.to_dict(), indent=1))
    runs = [train_seed(cfg, data, seed, rank, world, device) for seed in cfg.seeds]
    if rank != 0:
        return {}
    written = report.write(out, {cfg.method: runs}, data.description, data.class_names)
    written["runs"] = runs
    return written


def main(argv=None) -> int:
    import argparse

    from affseg.train.config import add_arguments, from_args

    parser = argparse.ArgumentParser(prog="affseg train", description="Train and evaluate a segmentation "
                                     "method (supervised, PDCR, UAFS, mean teacher, Semi-AGCL) on MNI152 or a folder.")
    add_arguments(parser)
    cfg, epochs = from_args(parser.parse_args(argv))
    result = run(cfg, epochs)
    if result:
        print(result["table"])
        print(f"figure: {result['png']}")
        print(f"results: {Path(cfg.out) / 'results.json'}")
    return 0
