"""Module twins of affseg's functional API (same keyword names; options fixed at construction)."""
from affseg.nn.agcl import AffinityGraphLoss, MixedNegativeInfoNCE, SemiAGCLLoss
from affseg.nn.losses import PDCRLoss, SoftSupConLoss
from affseg.nn.queue import ClassQueue
from affseg.nn.semi_agcl import SemiAGCL
from affseg.nn.uafs import UAFS

__all__ = [
    "AffinityGraphLoss", "ClassQueue", "MixedNegativeInfoNCE", "PDCRLoss", "SemiAGCL", "SemiAGCLLoss",
    "SoftSupConLoss", "UAFS",
]
