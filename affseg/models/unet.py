"""The reference backbone: the SSL4MIS U-Net, 2D or 3D, with optional UAFS after every decoder stage."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from affseg.nn.uafs import UAFS

_CONV = {2: torch.nn.Conv2d, 3: torch.nn.Conv3d}
_NORM = {2: torch.nn.BatchNorm2d, 3: torch.nn.BatchNorm3d}
_POOL = {2: torch.nn.MaxPool2d, 3: torch.nn.MaxPool3d}
_UPCONV = {2: torch.nn.ConvTranspose2d, 3: torch.nn.ConvTranspose3d}
_MODE = {2: "bilinear", 3: "trilinear"}


class ConvBlock(torch.nn.Sequential):
    """[conv3 → BN → LeakyReLU → Dropout → conv3 → BN → LeakyReLU] (SSL4MIS ``ConvBlock``)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float, dims: int):
        conv, norm = _CONV[dims], _NORM[dims]
        super().__init__(
            conv(in_channels, out_channels, 3, padding=1), norm(out_channels), torch.nn.LeakyReLU(),
            torch.nn.Dropout(dropout),
            conv(out_channels, out_channels, 3, padding=1), norm(out_channels), torch.nn.LeakyReLU(),
        )
        self.out_channels, self.spatial_dims = out_channels, dims


class DownBlock(torch.nn.Module):
    """Max-pool by 2, then a :class:`ConvBlock` (SSL4MIS ``DownBlock``)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float, dims: int):
        super().__init__()
        self.pool = _POOL[dims](2)
        self.conv = ConvBlock(in_channels, out_channels, dropout, dims)
        self.out_channels, self.spatial_dims = out_channels, dims

    def forward(self, x):
        return self.conv(self.pool(x))


class UpBlock(torch.nn.Module):
    """Upsample the coarse map to the skip's size, concatenate [skip, up], ConvBlock, optional UAFS.

    ``upsample="interpolate"`` (SSL4MIS's default path): 1×1 conv to the skip's channels, then
    bilinear/trilinear interpolation with ``align_corners=True`` to the skip's spatial size (= ×2
    for even sizes, so odd input sizes work too). ``"transpose"``: a stride-2 transposed conv,
    zero-padded to the skip's size where the size was odd.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, dropout: float, dims: int,
                 upsample: str = "interpolate", uafs: bool = False, uafs_hidden: int = 16, uafs_m: int = 2):
        super().__init__()
        self.dims, self.upsample = dims, upsample
        if upsample == "interpolate":
            self.up = _CONV[dims](in_channels, skip_channels, 1)
        else:
            self.up = _UPCONV[dims](in_channels, skip_channels, 2, stride=2)
        self.conv = ConvBlock(2 * skip_channels, out_channels, dropout, dims)
        self.uafs = UAFS(out_channels, dims, hidden=uafs_hidden, m=uafs_m) if uafs else None
        self.out_channels, self.spatial_dims = out_channels, dims

    def forward(self, x, skip):
        size = skip.shape[2:]
        if self.upsample == "interpolate":
            x = F.interpolate(self.up(x), size=size, mode=_MODE[self.dims], align_corners=True)
        else:
            x = self.up(x)
            pad = []
            for have, want in zip(reversed(x.shape[2:]), reversed(size)):
                pad += [(want - have) // 2, want - have - (want - have) // 2]
            x = F.pad(x, pad)
        x = self.conv(torch.cat([skip, x], dim=1))
        return x if self.uafs is None else self.uafs(x)


class Encoder(torch.nn.Module):
    """``in_conv`` then ``down1 … down{L-1}``; returns the L maps, fine → coarse."""

    def __init__(self, in_channels, channels, dropout, dims):
        super().__init__()
        self.in_conv = ConvBlock(in_channels, channels[0], dropout[0], dims)
        for i in range(1, len(channels)):
            self.add_module(f"down{i}", DownBlock(channels[i - 1], channels[i], dropout[i], dims))
        self.levels = len(channels)

    def forward(self, x):
        feats = [self.in_conv(x)]
        for i in range(1, self.levels):
            feats.append(getattr(self, f"down{i}")(feats[-1]))
        return feats


class Decoder(torch.nn.Module):
    """``up1 … up{L-1}`` (coarse → fine, each optionally followed by UAFS), then ``out_conv``."""

    def __init__(self, channels, num_classes, dims, upsample, uafs, uafs_hidden, uafs_m):
        super().__init__()
        levels = len(channels)
        for i in range(1, levels):
            deep, skip = channels[levels - i], channels[levels - i - 1]
            self.add_module(f"up{i}", UpBlock(deep, skip, skip, 0.0, dims, upsample, uafs, uafs_hidden, uafs_m))
        self.out_conv = _CONV[dims](channels[0], num_classes, 3, padding=1)
        self.levels = levels

    def forward(self, feats):
        x = feats[-1]
        for i in range(1, self.levels):
            x = getattr(self, f"up{i}")(x, feats[self.levels - i - 1])
        return self.out_conv(x)


class UNet(torch.nn.Module):
    """The reference segmentation backbone: the SSL4MIS U-Net, 2D or 3D (SPEC §10).

    Encoder ``encoder.in_conv`` (ConvBlock = conv3 → BN → LeakyReLU → Dropout → conv3 → BN →
    LeakyReLU) and ``encoder.down1 … down4`` (max-pool + ConvBlock), dropouts
    (0.05, 0.1, 0.2, 0.3, 0.5); decoder ``decoder.up1 … up4`` (1×1 conv, bilinear/trilinear
    upsampling to the skip's size, concat with the skip, ConvBlock without dropout), then
    ``decoder.out_conv`` (3×3 conv to the classes). ``uafs=True`` ends every decoder stage with a
    UAFS block (``decoder.upI.uafs``), as the official 3D code does, so the decoder taps are the
    re-weighted maps. Input sizes need not be multiples of 16: each stage upsamples to its skip's
    size.

    The decoder stages are the taps for PDCR: :attr:`feature_layers` names them coarse → fine,
    e.g. ``FeatureTaps(net, net.feature_layers[-1:])`` taps the last decoder map, which is at
    input resolution with ``channels[0]`` channels.

    Args:
        in_channels: image channels.
        num_classes: K output channels (logits), background included.
        dims: 2 or 3 (Conv3d, BatchNorm3d, MaxPool3d, trilinear).
        channels: channels per level, fine → coarse (L ≥ 2 levels; SSL4MIS: 5).
        uafs: put a UAFS block after every decoder stage.
        dropout: encoder dropout per level (default SSL4MIS's (0.05, 0.1, 0.2, 0.3, 0.5) for 5
            levels, else evenly spaced from 0.05 to 0.5).
        upsample: ``"interpolate"`` (1×1 conv + interpolation, SSL4MIS) or ``"transpose"``
            (stride-2 transposed conv).
        uafs_hidden: hidden channels of the UAFS blocks.
        uafs_m: attention channels of the UAFS blocks.

    Returns:
        ``forward(x)`` returns the logits.

    Shape:
        x ``(B, in_channels, *S)`` -> ``(B, num_classes, *S)``, each side of S ≥ 2^(L-1) (16).

    Raises:
        ValueError: dims not 2 or 3, fewer than 2 levels, dropout of the wrong length, an unknown
            upsample mode; in forward, an input of the wrong rank or channels, or a side too small
            for L-1 poolings.

    Example:
        >>> net = affseg.models.UNet(1, 4, channels=(4, 8, 8, 8, 8))
        >>> net(torch.randn(2, 1, 40, 50)).shape
        torch.Size([2, 4, 40, 50])
        >>> net.feature_layers
        ('decoder.up1', 'decoder.up2', 'decoder.up3', 'decoder.up4')
    """

    def __init__(self, in_channels: int, num_classes: int, dims: int = 2,
                 channels=(16, 32, 64, 128, 256), uafs: bool = False, *, dropout=None,
                 upsample: str = "interpolate", uafs_hidden: int = 16, uafs_m: int = 2):
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims}")
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2 or min(channels) < 1:
            raise ValueError(f"channels must hold >= 2 positive ints (fine -> coarse), got {channels}")
        if in_channels < 1 or num_classes < 1:
            raise ValueError(f"in_channels and num_classes must be >= 1, got {in_channels} and {num_classes}")
        if dropout is None:
            n = len(channels)
            dropout = (0.05, 0.1, 0.2, 0.3, 0.5) if n == 5 else tuple(0.05 + 0.45 * i / (n - 1) for i in range(n))
        dropout = tuple(float(p) for p in dropout)
        if len(dropout) != len(channels) or not all(0.0 <= p < 1.0 for p in dropout):
            raise ValueError(f"dropout must hold one probability in [0, 1) per level ({len(channels)}), got {dropout}")
        if upsample not in ("interpolate", "transpose"):
            raise ValueError(f"upsample must be 'interpolate' or 'transpose', got {upsample!r}")
        self.in_channels, self.num_classes, self.dims, self.channels = in_channels, num_classes, dims, channels
        self.encoder = Encoder(in_channels, channels, dropout, dims)
        self.decoder = Decoder(channels, num_classes, dims, upsample, uafs, uafs_hidden, uafs_m)
        self.feature_layers = tuple(f"decoder.up{i}" for i in range(1, len(channels)))

    @property
    def feature_channels(self) -> tuple:
        """Channels of the :attr:`feature_layers` maps (coarse → fine)."""
        return tuple(reversed(self.channels[:-1]))

    def forward(self, x):
        if x.dim() != self.dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet(dims={self.dims}, in_channels={self.in_channels}) expects x of shape "
                             f"(B, {self.in_channels}, {', '.join('S' * self.dims)}), got {tuple(x.shape)}")
        smallest = 2 ** (len(self.channels) - 1)
        if min(x.shape[2:]) < smallest:
            raise ValueError(f"UNet with {len(self.channels)} levels pools {len(self.channels) - 1} times: every "
                             f"spatial side must be >= {smallest}, got {tuple(x.shape[2:])}")
        return self.decoder(self.encoder(x))
