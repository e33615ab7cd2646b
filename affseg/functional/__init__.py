"""affseg's functional API: validate, pick a backend (SPEC §8), call the kernel or the reference."""
from affseg.functional.agcl import affinity_graph_loss, mixed_negative_infonce
from affseg.functional.entropy import patch_entropy
from affseg.functional.labels import grid_centers, patch_affinity, patch_label_ratios
from affseg.functional.patches import patch_embed, sample_patches
from affseg.functional.pdcr import pdcr_loss, pdcr_loss_from_ratios
from affseg.functional.supcon import soft_supcon_loss
from affseg.functional.uafs import uafs_reweight

__all__ = [
    "affinity_graph_loss",
    "grid_centers",
    "mixed_negative_infonce",
    "patch_affinity",
    "patch_embed",
    "patch_entropy",
    "patch_label_ratios",
    "pdcr_loss",
    "pdcr_loss_from_ratios",
    "sample_patches",
    "soft_supcon_loss",
    "uafs_reweight",
]
