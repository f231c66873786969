"""Cached stages: split, digit classifier, class-conditional base model, the LoRA. Weights go to
benchmarks/finetune/cache/lora/ (git-ignored), keyed by the settings and the source that made them."""
from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from benchmarks.finetune.classifier import DigitCNN, train_classifier
from benchmarks.finetune.diffusion import Progress, ema_update

from . import data as D
from .model import NULL, TRIGGER, CondDenoiser, CondUNet, add_lora, lora_state

# git-ignored with benchmarks/finetune/cache/ (never committed)
CACHE = Path(__file__).resolve().parents[1] / "finetune" / "cache" / "lora"


@dataclass(frozen=True)
class Config:
    name: str = "full"
    digit: int = 3
    n_finetune: int = 16
    n_heldout: int = 300
    split_seed: int = 0
    unet_ch: tuple = (32, 64, 96)
    pretrain_steps: int = 1500
    pretrain_batch: int = 128
    pretrain_lr: float = 2e-3
    null_dropout: float = 0.1      # share of pre-training labels replaced by NULL (what makes CFG possible)
    ema_decay: float = 0.995
    lora_rank: int = 8
    lora_steps: int = 1500
    lora_lr: float = 2e-3
    lora_batch: int = 32
    prior_share: float = 0.25      # DreamBooth prior preservation: share of each LoRA batch of class-labelled digits
    classifier_steps: int = 400
    sample_steps: int = 20
    n_eval: int = 200              # evaluation seeds per sampler setting and fix
    eval_seed0: int = 10_000       # evaluation seeds eval_seed0 .. + n_eval (calibration probes are 0 .. 63)
    probes: int = 32               # calibration probes (the hosts' default); confirmation: as many more
    guard_steps: int = 3000         # train_guard's own step cap
    guard_seeds: tuple = (0, 1, 2)


FULL = Config()
# seconds-long: every stage runs, the numbers mean nothing (the test)
SMOKE = Config(name="smoke", n_heldout=40, pretrain_steps=3, pretrain_batch=16, lora_steps=3, lora_batch=8,
               classifier_steps=3, sample_steps=3, n_eval=8, probes=8, guard_steps=4, guard_seeds=(0,))


def key(d: dict) -> str:
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10]


# Bump when a change to model.py or the training loops changes what training makes: the key names the
# settings and this version, not the source, so edits elsewhere in the benchmark keep the trained models.
MODEL_VERSION = 1


def cached(path: Path, build: Callable[[], dict], what: str) -> dict:
    if path.exists():
        print(f"[cache] {what}: {path.name}", flush=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    t0 = time.time()
    state = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    print(f"[done] {what} in {time.time() - t0:.0f}s -> {path.name}", flush=True)
    return state


def get_split(cfg: Config) -> D.LoraSplit:
    return D.split(cfg.digit, cfg.n_finetune, cfg.n_heldout, cfg.split_seed)


def _split_key(cfg: Config) -> dict:
    return {k: getattr(cfg, k) for k in ("digit", "n_finetune", "n_heldout", "split_seed")}


def get_classifier(cfg: Config, sp: D.LoraSplit) -> DigitCNN:
    k = key({**_split_key(cfg), "steps": cfg.classifier_steps})
    net = DigitCNN()
    net.load_state_dict(cached(CACHE / f"classifier-{k}.pt",
                               lambda: train_classifier(sp.pretrain, sp.pretrain_labels, cfg.classifier_steps,
                                                        seed=3).state_dict(), "digit classifier"))
    return net.eval()


def train_cond(model: CondDenoiser, params: list, x: torch.Tensor, labels: torch.Tensor, steps: int, batch: int,
               lr: float, seed: int, desc: str, ema: CondDenoiser | None = None, ema_decay: float = 0.995,
               null_dropout: float = 0.0, prior: tuple[torch.Tensor, torch.Tensor] | None = None,
               prior_share: float = 0.0) -> list[float]:
    """AdamW on the ε loss with prompt labels; ``null_dropout`` of the labels become NULL (CFG training);
    with ``prior``, ``prior_share`` of each batch are class-labelled images (prior preservation)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 2), pct_start=0.05)
    n_prior = round(batch * prior_share) if prior is not None else 0
    model.train()
    hist, bar = [], Progress(steps, desc)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch - n_prior,), generator=g)
        x0, y = x[idx], labels[idx]
        if n_prior:
            j = torch.randint(0, prior[0].shape[0], (n_prior,), generator=g)
            x0, y = torch.cat([x0, prior[0][j]]), torch.cat([y, prior[1][j]])
        if null_dropout:
            y = torch.where(torch.rand(y.shape, generator=g) < null_dropout, torch.full_like(y, NULL), y)
        loss = model.cond_loss(x0, y, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if ema is not None:
            ema_update(ema, model, ema_decay)
        hist.append(loss.item())
        bar.update(1, loss=f"{hist[-1]:.4f}")
    bar.close()
    model.eval()
    return hist


def new_model(cfg: Config) -> CondDenoiser:
    torch.manual_seed(cfg.split_seed)
    return CondDenoiser(CondUNet(ch=tuple(cfg.unet_ch)))


def base_key(cfg: Config) -> str:
    return key({**_split_key(cfg), **{k: getattr(cfg, k) for k in ("unet_ch", "pretrain_steps", "pretrain_batch",
                "pretrain_lr", "null_dropout", "ema_decay")}, "version": MODEL_VERSION})


def get_base(cfg: Config, sp: D.LoraSplit) -> CondDenoiser:
    """The pre-trained class-conditional model (EMA weights), 10 % of its labels dropped to NULL."""
    def build() -> dict:
        m = new_model(cfg)
        ema = copy.deepcopy(m)
        train_cond(m, list(m.parameters()), sp.pretrain, sp.pretrain_labels, cfg.pretrain_steps, cfg.pretrain_batch,
                   cfg.pretrain_lr, seed=1, desc="pretrain conditional diffusion", ema=ema,
                   ema_decay=cfg.ema_decay, null_dropout=cfg.null_dropout)
        return ema.state_dict()

    m = new_model(cfg)
    m.load_state_dict(cached(CACHE / f"base-{base_key(cfg)}.pt", build, "conditional base model"))
    return m.eval()


def get_lora(cfg: Config, sp: D.LoraSplit) -> CondDenoiser:
    """The base with a LoRA trained DreamBooth-style: the 16 images under the TRIGGER token, plus
    ``prior_share`` class-labelled pre-training digits per batch; no label dropout, as LoRA trainers do."""
    k = key({"base": base_key(cfg), **{f: getattr(cfg, f) for f in ("lora_rank", "lora_steps", "lora_lr",
                                                                         "lora_batch", "prior_share")}})

    def build() -> dict:
        m = get_base(cfg, sp)
        params = add_lora(m, cfg.lora_rank, float(cfg.lora_rank))
        labels = torch.full((sp.finetune.shape[0],), TRIGGER, dtype=torch.long)
        train_cond(m, params, sp.finetune, labels, cfg.lora_steps, cfg.lora_batch, cfg.lora_lr, seed=2,
                   desc=f"LoRA: trigger -> {sp.finetune.shape[0]} images of digit {sp.digit}",
                   prior=(sp.pretrain, sp.pretrain_labels), prior_share=cfg.prior_share)
        return lora_state(m)

    state = cached(CACHE / f"lora-{k}.pt", build, "LoRA")
    m = get_base(cfg, sp)
    add_lora(m, cfg.lora_rank, float(cfg.lora_rank))
    missing = m.load_state_dict(state, strict=False)
    assert not missing.unexpected_keys, missing.unexpected_keys
    return m.eval()


def config_dict(cfg: Config) -> dict:
    return asdict(cfg)
