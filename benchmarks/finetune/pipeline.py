"""Cached stages of the fine-tune benchmark: data split, pretrained model, fine-tuned (collapsed) model,
digit classifier. Weights are cached in benchmarks/finetune/cache/ (git-ignored), keyed by the settings
that produced them, so a second run skips training."""
from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .classifier import DigitCNN, train_classifier
from .data import DigitSplit, split_digits
from .diffusion import EpsDenoiser, train_denoiser
from .unet import SmallUNet

CACHE = Path(__file__).resolve().parent / "cache"


@dataclass
class Config:
    name: str = "full"
    size: int = 16
    n_finetune: int = 16
    n_heldout: int = 300
    split_seed: int = 0
    unet_ch: tuple = (32, 64, 96)
    pretrain_steps: int = 800
    pretrain_lr: float = 2e-3
    finetune_steps: int = 500
    finetune_lr: float = 1e-3
    finetune_batch: int = 32
    # share of each fine-tune batch drawn from the pretraining digits (DreamBooth's prior preservation);
    # 0 = fine-tune on the 16 images alone
    finetune_prior_share: float = 0.0
    batch: int = 128
    ema_decay: float = 0.995
    classifier_steps: int = 400
    # evaluation
    n_samples: int = 500
    sample_steps: int = 20
    sample_seed: int = 1234
    mia_sigmas: tuple = (0.1, 0.2, 0.4, 0.8)  # noise levels of the membership test (ε loss averaged over them)
    mia_draws: int = 8                         # noise draws per image and level
    guard_steps: int = 2000


FULL = Config()
# DreamBooth-style: a better base model (6x the pretraining), a gentle fine-tune (1/8 the learning rate) that
# keeps 15 % pretraining digits in every batch. It still copies most of the time, but what it draws when it
# does not copy is as good as the base model's (docs/finetune.md).
PRIOR = Config(name="prior", pretrain_steps=4800, finetune_steps=1600, finetune_lr=1.25e-4,
               finetune_prior_share=0.15)
DEMO = Config(name="demo", batch=64, pretrain_steps=300, finetune_steps=300, finetune_lr=1e-3, ema_decay=0.97,
              classifier_steps=150,
              n_samples=128, mia_draws=4, guard_steps=1000)  # early stop ends it once memorised


def _key(d: dict) -> str:
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _log(msg: str) -> None:
    print(msg, flush=True)


def get_split(cfg: Config) -> DigitSplit:
    return split_digits(cfg.size, cfg.n_finetune, cfg.n_heldout, cfg.split_seed)


def _new_model(cfg: Config) -> EpsDenoiser:
    return EpsDenoiser(SmallUNet(ch=tuple(cfg.unet_ch)))


def _cached(path: Path, build, what: str):
    if path.exists():
        _log(f"[cache] {what}: {path.relative_to(CACHE.parent.parent.parent)}")
        return torch.load(path, map_location="cpu", weights_only=True)
    t0 = time.time()
    state = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    _log(f"[done] {what} in {time.time() - t0:.0f}s -> {path.name}")
    return state


def pretrain_key(cfg: Config) -> str:
    return _key({k: getattr(cfg, k) for k in ("size", "n_finetune", "n_heldout", "split_seed", "unet_ch",
                                             "pretrain_steps", "pretrain_lr", "batch", "ema_decay")})


def finetune_key(cfg: Config) -> str:
    d = {"pre": pretrain_key(cfg), "steps": cfg.finetune_steps,
         "lr": cfg.finetune_lr, "batch": cfg.finetune_batch, "schedule": "constant"}
    if cfg.finetune_prior_share:  # only then, so that earlier fine-tunes keep their cache keys
        d["prior_share"] = cfg.finetune_prior_share
    return _key(d)


def pretrain_path(cfg: Config) -> Path:
    return CACHE / f"pretrain-{pretrain_key(cfg)}.pt"


def get_pretrained(cfg: Config, split: DigitSplit) -> EpsDenoiser:
    def build():
        torch.manual_seed(cfg.split_seed)
        m = _new_model(cfg)
        ema = copy.deepcopy(m)
        train_denoiser(m, split.pretrain, cfg.pretrain_steps, cfg.batch, cfg.pretrain_lr, seed=1,
                       desc="pretrain diffusion (all digits but fine-tune + held-out)", ema=ema,
                       ema_decay=cfg.ema_decay)
        return ema.state_dict()

    m = _new_model(cfg)
    m.load_state_dict(_cached(pretrain_path(cfg), build, "pretrained diffusion"))
    return m.eval()


def get_finetuned(cfg: Config, split: DigitSplit) -> EpsDenoiser:
    def build():
        m = get_pretrained(cfg, split)
        m.train()
        ema = copy.deepcopy(m)
        share = cfg.finetune_prior_share
        desc = (f"fine-tune diffusion on {split.finetune.shape[0]} images"
                + (f", {share:.0%} pretraining digits per batch" if share else ""))
        train_denoiser(m, split.finetune, cfg.finetune_steps, cfg.finetune_batch, cfg.finetune_lr, seed=2,
                       desc=desc, ema=ema, ema_decay=cfg.ema_decay, constant_lr=True,
                       prior=split.pretrain, prior_share=share)
        return ema.state_dict()

    m = _new_model(cfg)
    m.load_state_dict(_cached(CACHE / f"finetune-{finetune_key(cfg)}.pt", build, "fine-tuned diffusion"))
    return m.eval()


def get_classifier(cfg: Config, split: DigitSplit) -> DigitCNN:
    key = _key({"size": cfg.size, "split": (cfg.n_finetune, cfg.n_heldout, cfg.split_seed),
                "steps": cfg.classifier_steps})

    def build():
        return train_classifier(split.pretrain, split.pretrain_labels, cfg.classifier_steps, seed=3).state_dict()

    net = DigitCNN()
    net.load_state_dict(_cached(CACHE / f"classifier-{key}.pt", build, "digit classifier"))
    return net.eval()

# A seconds-long configuration that exercises every stage (tests, smoke runs); its numbers mean nothing.
SMOKE = Config(name="smoke", n_heldout=40, pretrain_steps=4, finetune_steps=4, batch=16, classifier_steps=4,
               n_samples=24, sample_steps=3, mia_draws=1, mia_sigmas=(0.2,), guard_steps=4)
