"""A small 2D U-Net for slice-wise segmentation (background, lung, GGO, consolidation).

Why this shape: 4 resolution levels with GroupNorm (batch-size independent, so training
with small CPU batches and inference with any batch agree), bilinear upsampling plus
convolution (no checkerboard artefacts, fewer weights than transposed convolutions).
About 1.9 M parameters at base width 16: a few MB of fp16/fp32 weights.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

NUM_CLASSES = 4
HU_MIN, HU_MAX = -1024.0, 300.0


def normalise_hu(hu: torch.Tensor) -> torch.Tensor:
    """Map HU to about [-1, 1] after clipping to [-1024, 300]: the lung-window range.

    The upper clip sits near the top of common lung windows so that 8-bit windowed exports
    (which saturate there) and raw HU look alike to the network.
    """
    clipped = hu.float().clamp(HU_MIN, HU_MAX)
    return (clipped - (HU_MIN + HU_MAX) / 2) / ((HU_MAX - HU_MIN) / 2)


def _groups(channels: int) -> int:
    return min(8, channels // 4) or 1


class DoubleConv(nn.Sequential):
    """(3x3 conv, GroupNorm, ReLU) x 2."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(_groups(out_channels), out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(_groups(out_channels), out_channels),
            nn.ReLU(inplace=True),
        )


class UNet2D(nn.Module):
    """U-Net: `levels` encoder stages of widths base*2^i, a bottleneck, a mirrored decoder.

    Input (N, in_channels, H, W) normalised HU; H and W must be divisible by 2**levels.
    Output (N, num_classes, H, W) logits.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = NUM_CLASSES, base: int = 16, levels: int = 4) -> None:
        super().__init__()
        self.config = {"in_channels": in_channels, "num_classes": num_classes, "base": base, "levels": levels}
        widths = [base * 2**i for i in range(levels + 1)]
        self.down = nn.ModuleList()
        channels = in_channels
        for w in widths[:-1]:
            self.down.append(DoubleConv(channels, w))
            channels = w
        self.bottleneck = DoubleConv(channels, widths[-1])
        self.up = nn.ModuleList()
        for i in reversed(range(levels)):
            self.up.append(DoubleConv(widths[i + 1] + widths[i], widths[i]))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    @property
    def size_divisor(self) -> int:
        return 2 ** self.config["levels"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for block, skip in zip(self.up, reversed(skips), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
