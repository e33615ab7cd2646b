"""Models and wrappers for training with affseg's losses (SPEC §10).

- :class:`FeatureTaps`: record hidden maps of any network for PDCR, without changing its code.
- :func:`add_uafs`: put UAFS blocks after named submodules of any network.
- :class:`UNet`: the reference SSL4MIS U-Net (2D/3D), optionally with UAFS in its decoder.
- :class:`MeanTeacher`: a student and its EMA teacher.
"""
from affseg.models.mean_teacher import MeanTeacher
from affseg.models.taps import FeatureTaps
from affseg.models.uafs import UAFSAfter, add_uafs
from affseg.models.unet import UNet

__all__ = ["FeatureTaps", "MeanTeacher", "UAFSAfter", "UNet", "add_uafs"]
