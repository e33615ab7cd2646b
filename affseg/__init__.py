"""affseg: fused kernels for the losses of label-efficient medical image segmentation.

PDCR (patch-dragsaw contrastive regularisation) and UAFS from Li et al. (IEEE TMI 2022) and the
Semi-AGCL affinity-graph losses (BIBM 2024), with C++ (CPU, CUDA) and Triton kernels behind one
functional API. See SPEC.md-derived docs in the README.
"""
from affseg import _extension, _ops  # noqa: F401  (load _C and register fake/autograd kernels)
from affseg import models, nn, reference
from affseg._types import PatchSample, PatchStats
from affseg.functional import (
    affinity_graph_loss,
    grid_centers,
    mixed_negative_infonce,
    patch_affinity,
    patch_embed,
    patch_entropy,
    patch_label_ratios,
    pdcr_loss,
    pdcr_loss_from_ratios,
    sample_patches,
    soft_supcon_loss,
    uafs_reweight,
)

__version__ = "0.1.0"

__all__ = [
    "PatchSample",
    "PatchStats",
    "affinity_graph_loss",
    "grid_centers",
    "mixed_negative_infonce",
    "models",
    "nn",
    "patch_affinity",
    "patch_embed",
    "patch_entropy",
    "patch_label_ratios",
    "pdcr_loss",
    "pdcr_loss_from_ratios",
    "reference",
    "sample_patches",
    "soft_supcon_loss",
    "uafs_reweight",
]
