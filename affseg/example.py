"""`affseg example`: PDCR as a drop-in term next to cross-entropy, on CPU, fused vs reference.

A small conv net with a UAFS block segments a synthetic 3-class phantom (two nested ellipses in
noise). Each step adds the dense PDCR term (every feature location a row) to the CE loss. The
first step is also computed with ``backend="reference"`` to show that both agree.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

import affseg


def phantom(batch: int, size: int, generator: torch.Generator):
    """Noisy images of two nested random ellipses and their labels 0 (background), 1, 2."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    labels = torch.zeros(batch, size, size, dtype=torch.long)
    for b in range(batch):
        cy, cx, ry, rx = (torch.rand(4, generator=generator) * torch.tensor([0.4, 0.4, 0.3, 0.3]) + torch.tensor([-0.2, -0.2, 0.4, 0.4])).tolist()
        outer = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        inner = ((yy - cy) / (0.5 * ry)) ** 2 + ((xx - cx) / (0.5 * rx)) ** 2 <= 1
        labels[b][outer] = 1
        labels[b][inner] = 2
    images = labels.float()[:, None] / 2 + 0.6 * torch.randn(batch, 1, size, size, generator=generator)
    return images, labels


class TinySegNet(torch.nn.Module):
    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.encoder = torch.nn.Sequential(
            torch.nn.Conv2d(1, channels, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(channels, channels, 3, stride=2, padding=1), torch.nn.ReLU(),
        )
        self.uafs = affseg.nn.UAFS(channels, dims=2)
        self.head = torch.nn.Conv2d(channels, num_classes, 1)

    def forward(self, x):
        hidden = self.uafs(self.encoder(x))
        logits = F.interpolate(self.head(hidden), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits, hidden


def run(size: int = 64, channels: int = 32, steps: int = 20, seed: int = 0, num_classes: int = 3) -> list[float]:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    net = TinySegNet(channels, num_classes)
    optim = torch.optim.Adam(net.parameters(), lr=3e-3)
    images, labels = phantom(4, size, generator)
    print(f"PDCR drop-in example: 4 phantom images {size}x{size}, hidden map {channels}x{size // 2}x{size // 2}, "
          f"dense rows N={(size // 2) ** 2} per image, windows (5, 7, 9)")
    history = []
    for step in range(steps):
        logits, hidden = net(images)
        ce = F.cross_entropy(logits, labels)
        t0 = time.perf_counter()
        pdcr = affseg.pdcr_loss(hidden, labels, num_classes=num_classes)
        fused_ms = (time.perf_counter() - t0) * 1e3
        if step == 0:
            t0 = time.perf_counter()
            ref = affseg.pdcr_loss(hidden, labels, num_classes=num_classes, backend="reference")
            ref_ms = (time.perf_counter() - t0) * 1e3
            print(f"step 0: PDCR auto backend {pdcr.item():.6f} ({fused_ms:.1f} ms), reference {ref.item():.6f} "
                  f"({ref_ms:.1f} ms), |diff| {abs(pdcr.item() - ref.item()):.2e}")
        loss = ce + 0.1 * pdcr
        optim.zero_grad()
        loss.backward()
        optim.step()
        with torch.no_grad():
            acc = (logits.argmax(1) == labels).float().mean().item()
        history.append(loss.item())
        if step % 5 == 0 or step == steps - 1:
            print(f"step {step:3d}: CE {ce.item():.4f}  PDCR {pdcr.item():.4f}  pixel accuracy {acc:.3f}")
    return history
