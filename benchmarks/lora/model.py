"""The conditional model and its LoRA.

``CondUNet`` is benchmarks/finetune's SmallUNet with a prompt: a token index (0-9 the digit classes,
``NULL`` the empty prompt CFG uses, ``TRIGGER`` the new word the LoRA binds) looked up in an embedding table
and added to the σ embedding, so every residual block's FiLM sees it (the role cross-attention plays in SD).
A float tensor [B, EMB] can be passed instead of indices: Wen et al.'s mitigation optimises that vector.

The LoRA is the kind users train: low-rank adapters beside every Linear and Conv2d of the UNet, the base
frozen, the up-projection zero-initialised so an untrained LoRA changes nothing. The trigger's embedding row
is never trained (a rare token, as "sks" in DreamBooth): the LoRA alone learns what it means.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from benchmarks.finetune.diffusion import EpsDenoiser
from benchmarks.finetune.unet import SmallUNet, sigma_embedding

N_CLASSES = 10
NULL = 10       # the empty prompt (CFG's unconditional branch; dropped-out labels in pre-training)
TRIGGER = 11    # the new word ("sks")
VOCAB = 12
EMB = 128       # SmallUNet's time-embedding width


class CondUNet(SmallUNet):
    """SmallUNet whose time embedding gets the prompt's embedding added."""

    def __init__(self, ch: tuple[int, int, int] = (32, 64, 96)):
        super().__init__(ch=ch)
        self.prompt = nn.Embedding(VOCAB, EMB)

    def embed(self, cond: torch.Tensor) -> torch.Tensor:
        return self.prompt(cond) if not cond.is_floating_point() else cond

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.trunk(x, self.tmlp(sigma_embedding(sigma, self.temb)) + self.embed(cond))


class CondDenoiser(EpsDenoiser):
    """k-diffusion denoiser D(x, σ, cond) → x0 estimate (ε-prediction, SD1.5's σ range)."""

    def eps(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        sigma = sigma.reshape(-1).expand(x.shape[0]) if sigma.numel() == 1 else sigma.reshape(-1)
        c_in = 1.0 / (sigma ** 2 + 1).sqrt()
        return self.net(x * c_in[:, None, None, None], sigma, cond)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        sigma = sigma.reshape(-1).expand(x.shape[0]) if sigma.numel() == 1 else sigma.reshape(-1)
        return x - sigma[:, None, None, None] * self.eps(x, sigma, cond)

    def cond_loss(self, x0: torch.Tensor, cond: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        idx = torch.randint(0, self.train_sigmas.numel(), (x0.shape[0],), generator=generator)
        sigma = self.train_sigmas[idx]
        eps = torch.randn(x0.shape, generator=generator)
        return ((self.eps(x0 + sigma[:, None, None, None] * eps, sigma, cond) - eps) ** 2).mean()


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.down = nn.Linear(base.in_features, rank, bias=False)
        self.up = nn.Linear(rank, base.out_features, bias=False)
        nn.init.zeros_(self.up.weight)  # an untrained LoRA is the identity patch
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.up(self.down(x)) * self.scale


class LoRAConv2d(nn.Module):
    """A conv LoRA as the kohya-style trainers make it: a rank-r conv with the base's kernel, then 1×1 up."""

    def __init__(self, base: nn.Conv2d, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.down = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding, bias=False)
        self.up = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        nn.init.zeros_(self.up.weight)
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.up(self.down(x)) * self.scale


def add_lora(model: nn.Module, rank: int = 8, alpha: float = 8.0) -> list[nn.Parameter]:
    """Freeze every parameter of ``model`` and wrap each Linear / Conv2d in a LoRA; returns the LoRA's
    parameters (the only trainable ones). The prompt table stays frozen, the trigger row included."""
    for p in model.parameters():
        p.requires_grad_(False)
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if type(child) in (nn.Linear, nn.Conv2d)]
    for parent, name, child in targets:
        wrap = LoRALinear(child, rank, alpha) if isinstance(child, nn.Linear) else LoRAConv2d(child, rank, alpha)
        setattr(parent, name, wrap)
    return [p for m in model.modules() if isinstance(m, (LoRALinear, LoRAConv2d))
            for p in (*m.down.parameters(), *m.up.parameters())]


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapters' weights (what a LoRA file holds)."""
    return {k: v for k, v in model.state_dict().items() if ".down." in k or ".up." in k}
