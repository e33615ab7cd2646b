"""The reference training script: ``affseg train`` / ``python -m affseg.train`` / ``torchrun -m affseg.train``.

Methods ``supervised``, ``pdcr``, ``uafs``, ``pdcr+uafs``, ``mean-teacher``, ``semi-agcl`` on the
offline MNI152 template (default) or a folder (:mod:`affseg.data`), with affseg's UNet, MONAI's
Dice + CE and MONAI's metrics; resumable (``--resume``) and DistributedDataParallel under torchrun.
Needs the ``train`` extra (MONAI, nilearn, nibabel, tqdm, matplotlib).
"""
from affseg.train.config import METHODS, TrainConfig
from affseg.train.runner import main, run

__all__ = ["METHODS", "TrainConfig", "main", "run"]
