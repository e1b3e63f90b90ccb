"""The one network every baseline shares, and the thin wrappers some methods need.

``UNet``: 4 down / 4 up levels (configurable), BN + ReLU, bilinear upsampling, random init (no pretrained
encoder exists offline). Inputs of any size are reflect-padded to a multiple of ``2**depth`` and the
output is cropped back, so CamVid's 240x180 test images and DSB's odd sizes run unchanged.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net (Ronneberger et al. 2015) with widths ``base * 2**level`` capped at ``base * 8``.

    ``features(x)`` is the last decoder map (``base`` channels, full resolution); ``forward(x)`` applies the
    1x1 classifier ``head``. Inputs are RGB in [0, 1], centred inside the model.
    """

    def __init__(self, num_classes: int, base: int = 16, depth: int = 4, in_channels: int = 3):
        super().__init__()
        if depth < 1:
            raise ValueError(f"UNet depth must be >= 1, got {depth}")
        self.num_classes, self.base, self.depth = num_classes, base, depth
        widths = [base * 2 ** min(i, 3) for i in range(depth + 1)]
        self.inc = _block(in_channels, widths[0])
        self.downs = nn.ModuleList(_block(widths[i], widths[i + 1]) for i in range(depth))
        self.ups = nn.ModuleList(_block(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = 2 ** self.depth
        ph, pw = (-h) % m, (-w) % m
        x = (x - 0.5) / 0.25
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(F.max_pool2d(skips[-1], 2)))
        y = skips.pop()
        for up in self.ups:
            skip = skips.pop()
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = up(torch.cat([y, skip], 1))
        return y[..., :h, :w]

    def forward(self, x: torch.Tensor, output: str = "pixels") -> torch.Tensor:
        """Pixel logits ``[B, C, H, W]``, or with ``output="image"`` the image logits of ``image_logits``
        (a forward argument, so that tag training also goes through DistributedDataParallel)."""
        logits = self.head(self.features(x))
        return logits.mean((2, 3)) if output == "image" else logits

    def image_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-label image logits for tag supervision: global average pooling of the pixel logits,
        i.e. GAP of the features followed by the 1x1 head (GAP and a linear layer commute), so the class
        activation maps of this classifier are exactly ReLU of the pixel logits minus the bias."""
        return self.forward(x, output="image")

    def cams(self, x: torch.Tensor) -> torch.Tensor:
        """Un-normalised CAMs ``ReLU(sum_k w_ck f_k)`` at full resolution, ``[B, C, H, W]``."""
        return F.relu(torch.einsum("ck,bkhw->bchw", self.head.weight[:, :, 0, 0], self.features(x)))


class ClusterNet(nn.Module):
    """IIC: a UNet trunk with two softmax heads, ``k`` clusters (main) and ``k_over`` (over-clustering)."""

    def __init__(self, k: int, k_over: int, base: int = 16, depth: int = 4):
        super().__init__()
        self.trunk = UNet(k, base, depth)
        self.over_head = nn.Conv2d(self.trunk.head.in_channels, k_over, 1)

    def forward(self, x: torch.Tensor, both_heads: bool = False):
        """Main-head logits, or ``(main, over)`` with ``both_heads`` (what IIC trains, through DDP's forward)."""
        return self.both_heads(x) if both_heads else self.trunk(x)

    def both_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.trunk.features(x)
        return self.trunk.head(f), self.over_head(f)


class MeanTeacher(nn.Module):
    """Student plus an EMA teacher (no gradients). Training mode runs the student; eval mode the teacher,
    which is the model Mean Teacher reports. The teacher is part of ``state_dict`` so resume is exact."""

    def __init__(self, student: nn.Module):
        super().__init__()
        self.student = student
        self.teacher = copy.deepcopy(student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x) if self.training else self.teacher(x)

    @torch.no_grad()
    def update_teacher(self, alpha: float = 0.99) -> None:
        """teacher <- a teacher + (1 - a) student with ``a = min(1 - 1/(t+1), alpha)`` (warm start as in
        Tarvainen & Valpola's code); BN statistics are copied."""
        a = min(1 - 1 / (int(self.ema_steps) + 1), alpha)
        for t, s in zip(self.teacher.parameters(), self.student.parameters()):
            t.mul_(a).add_(s.detach(), alpha=1 - a)
        for t, s in zip(self.teacher.buffers(), self.student.buffers()):
            t.copy_(s)
        self.ema_steps += 1

    def trainable_parameters(self):
        return self.student.parameters()


class DualNet(nn.Module):
    """Cross pseudo supervision: two identically shaped networks with different initialisations.
    Evaluation reports branch A (as the CPS paper reports a single branch)."""

    def __init__(self, net_a: nn.Module, net_b: nn.Module):
        super().__init__()
        self.net_a, self.net_b = net_a, net_b

    def forward(self, x: torch.Tensor, both: bool = False):
        """Branch A's logits, or ``(A, B)`` with ``both`` (what CPS trains, through DDP's forward)."""
        return (self.net_a(x), self.net_b(x)) if both else self.net_a(x)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
