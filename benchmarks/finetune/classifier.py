"""Digit classifier for the quality metrics: a small CNN on 16x16 digits, trained only on the pretrain split
(never on the fine-tune or held-out images). Its penultimate 64-d features give the Fréchet distance."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .diffusion import Progress


class DigitCNN(nn.Module):
    def __init__(self, feat: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),     # 8x8
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),    # 4x4
            nn.Flatten(), nn.Linear(64 * 16, feat), nn.ReLU(),
        )
        self.head = nn.Linear(feat, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 1 pixel plus slight noise, so generated digits are read fairly."""
    b = x.shape[0]
    pad = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dx = torch.randint(0, 3, (b,), generator=g)
    dy = torch.randint(0, 3, (b,), generator=g)
    h, w = x.shape[2], x.shape[3]
    shift = dy * 3 + dx
    out = torch.empty_like(x)
    for k in range(9):
        sel = shift == k
        if sel.any():
            i, j = divmod(k, 3)
            out[sel] = pad[sel, :, i:i + h, j:j + w]
    return out + 0.05 * torch.randn(out.shape, generator=g)


def train_classifier(x: torch.Tensor, y: torch.Tensor, steps: int = 600, batch: int = 128, seed: int = 0,
                     lr: float = 2e-3) -> DigitCNN:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = DigitCNN()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    bar = Progress(steps, "digit classifier")
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        loss = F.cross_entropy(net(_augment(x[idx], g)), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.update(1, loss=f"{loss.item():.3f}")
    bar.close()
    net.eval()
    return net


@torch.no_grad()
def classify(net: DigitCNN, x: torch.Tensor, batch: int = 1000) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(predicted label [B], confidence [B], features [B, 64]) for images in [-1, 1]."""
    labels, confs, feats = [], [], []
    for i in range(0, x.shape[0], batch):
        f = net.features(x[i:i + batch].clamp(-1, 1))
        p = net.head(f).softmax(1)
        c, l = p.max(1)
        labels.append(l), confs.append(c), feats.append(f)
    return torch.cat(labels), torch.cat(confs), torch.cat(feats)
