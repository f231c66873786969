"""Training a guard: fit random binary labels on noisy latents until it has memorised them."""
from __future__ import annotations

import copy
import hashlib
import math
import time
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Callable

import torch
from torch.nn import functional as F

from .guard import Guard
from .network import GuardConfig, GuardNet
from .noise import NoiseSpace

Tensor = torch.Tensor
ProgressFn = Callable[[int, int, dict], None]


class TrainingStopped(Exception):
    """Raised when ``should_stop()`` asked training to end (a cancel, not a failure)."""


def dataset_digest(latents: Tensor) -> str:
    """One SHA-256 over the whole training set (shape and float32 values), never per image."""
    x = latents.detach().to("cpu", torch.float32).contiguous()
    h = hashlib.sha256(repr(tuple(x.shape)).encode())
    h.update(x.numpy().tobytes())
    return h.hexdigest()


def random_labels(n: int, seed: int) -> Tensor:
    """Balanced random binary labels (⌊n/2⌋ zeros, ⌈n/2⌉ ones) in an order drawn from seed."""
    g = torch.Generator().manual_seed(int(seed))
    labels = torch.cat([torch.zeros(n // 2), torch.ones(n - n // 2)])
    return labels[torch.randperm(n, generator=g)]


HEAD_SEED_STRIDE = 1_000_003  # head j > 0 of a guard with label seed s draws its labels from s + j·stride
MAX_HEADS = 16


def head_labels(n: int, seed: int, heads: int = 1) -> Tensor:
    """The labels of every head: [n] for one head (``random_labels(n, seed)``), else [n, heads], head
    0 with the labels of ``seed`` and each further head an independent random labelling."""
    if heads == 1:
        return random_labels(n, seed)
    return torch.stack([random_labels(n, seed + j * HEAD_SEED_STRIDE) for j in range(heads)], 1)


def sample_sigmas(space: NoiseSpace, n: int, g: torch.Generator) -> Tensor:
    """Half from the model's own schedule (uniform progress, so every noise level is seen), half
    log-uniform over the range where memorising is possible, which is where the guard has to be
    confident."""
    u = torch.rand(n, generator=g)
    schedule = space.percent_to_sigma(u)
    lo = math.log(space.sigma_min)
    hi = math.log(min(space.memorisable_max, space.sigma_max))
    low = torch.exp(lo + (hi - lo) * torch.rand(n, generator=g))
    pick = torch.rand(n, generator=g) < 0.5
    return torch.where(pick, schedule, low).float()


NEGATIVES = ("none", "gaussian", "mix", "blends", "gaussian+blends")
# Gaussian latents alone leave the guard free to be confident on what it reads early in sampling:
# the model's x0 prediction while the noise is high is a blend of many images pulled toward their
# mean, and a guard confident there pushes samples that were never going to copy (on the mixture,
# guard seeds 0 and 2 moved half the non-copying samples and the FD rose to 3.7-5.9x the floor).
DEFAULT_NEGATIVES = "gaussian+blends"


def make_negatives(kind: str | Tensor, x_all: Tensor, n: int, g: torch.Generator) -> Tensor | None:
    """Latents that are not training images, on which the guard is taught to say ½.

    "gaussian": noise with the training latents' per-channel mean and std; "mix": blends of two
    training latents; "blends": blends of 2-4 training latents pulled toward their mean, the form of
    an x0 prediction made before the model has settled on one image; "gaussian+blends" (the
    default): half each; a tensor [M, C, H, W]: the caller's own latents of images outside the set
    (e.g. DreamBooth class images), drawn at random. Without negatives a guard that memorised
    random labels is as confident on a novel latent as on its training images, so its gradient
    would push every sample.
    """
    if isinstance(kind, torch.Tensor):
        return kind[torch.randint(0, kind.shape[0], (n,), generator=g).to(kind.device)]
    if kind == "none" or n == 0:
        return None
    if kind == "gaussian":
        mean = x_all.mean(dim=(0, 2, 3), keepdim=True)
        std = x_all.std(dim=(0, 2, 3), keepdim=True)
        shape = (n, *x_all.shape[1:])
        return mean + std * torch.randn(shape, generator=g).to(x_all)
    if kind == "mix":
        i = torch.randint(0, x_all.shape[0], (n,), generator=g)
        j = torch.randint(0, x_all.shape[0], (n,), generator=g)
        w = (0.25 + 0.5 * torch.rand(n, generator=g)).to(x_all).view(-1, 1, 1, 1)
        blend = w * x_all[i] + (1 - w) * x_all[j]
        # keep the norm of a single latent so the guard cannot use contrast to spot blends
        scale = x_all[i].flatten(1).norm(dim=1) / blend.flatten(1).norm(dim=1).clamp_min(1e-6)
        return blend * scale.view(-1, 1, 1, 1)
    if kind == "blends":
        return blend_negatives(x_all, n, g)
    if kind == "gaussian+blends":
        half = n // 2
        parts = [make_negatives("gaussian", x_all, n - half, g), blend_negatives(x_all, half, g)]
        return torch.cat([p for p in parts if p is not None])
    raise ValueError(f"negatives must be one of {NEGATIVES}, got {kind!r}")


def blend_negatives(x_all: Tensor, n: int, g: torch.Generator) -> Tensor | None:
    """``n`` blends of 2-4 distinct training latents (no weight above ¾, so none is a copy of one
    image), pulled toward the set's mean by a factor in [0.3, 1]: what a denoiser predicts while it
    cannot yet tell which image a noisy latent will become. None for ``n`` 0."""
    if n == 0:
        return None
    count = x_all.shape[0]
    k = torch.randint(2, min(4, count) + 1, (n,), generator=g)
    order = torch.rand(n, count, generator=g).argsort(1)          # a random distinct subset per blend
    picked = (torch.arange(count)[None] < k[:, None]).float()      # the first k of each permutation
    dirichlet = -torch.log(torch.rand(n, count, generator=g).clamp_min(1e-12)) * picked
    weights = 0.5 * dirichlet / dirichlet.sum(1, keepdim=True) + 0.5 * picked / k[:, None]
    weights = torch.zeros(n, count).scatter(1, order, weights).to(x_all)
    blend = (weights @ x_all.flatten(1)).view(n, *x_all.shape[1:])
    mean = x_all.mean(0, keepdim=True)
    pull = (0.3 + 0.7 * torch.rand(n, generator=g)).to(x_all).view(-1, 1, 1, 1)
    return mean + pull * (blend - mean)


def _band_sigmas(band: tuple[float, float], k: int) -> Tensor:
    lo, hi = math.log(band[0]), math.log(band[1])
    return torch.exp(torch.linspace(lo, hi, k + 2)[1:-1])


@torch.no_grad()
def band_accuracy(guard: Guard, latents: Tensor, labels: Tensor, space: NoiseSpace,
                  g: torch.Generator, per_band: int = 2, batch_size: int = 64, confidence: float = 0.99,
                  bands: list[tuple[float, float]] | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """Per σ band, the share of training latents classified right, and right with p(true label)
    ≥ ``confidence``, at ``per_band`` noise levels inside each band (one pass for both)."""
    accuracy: dict[str, float] = {}
    confident: dict[str, float] = {}
    n = latents.shape[0]
    margin = math.log(confidence / (1 - confidence))
    for band in space.bands() if bands is None else bands:
        right = sure = 0
        for s in _band_sigmas(band, per_band):
            for i in range(0, n, batch_size):
                x0 = latents[i:i + batch_size]
                eps = torch.randn(x0.shape, generator=g).to(x0)
                sig = torch.full((x0.shape[0],), float(s), device=x0.device)
                logit = guard.head_logits(space.noise(x0, sig, eps), sig)
                y = labels[i:i + batch_size]
                signed = torch.where((y if y.dim() == 2 else y[:, None]) > 0.5, logit, -logit)
                right += int((signed > 0).sum())
                sure += int((signed > margin).sum())
        label = NoiseSpace.band_label(band)
        # with several heads, over every (latent, head) pair: each head must memorise its labels
        accuracy[label] = right / (n * per_band * guard.heads)
        confident[label] = sure / (n * per_band * guard.heads)
    return accuracy, confident


def memorised(accuracy: dict[str, float], confident: dict[str, float], required: list[str],
              target: float) -> bool:
    """Every required band at least ``target`` right, and right with the required confidence."""
    return all(min(accuracy.get(b, 0.0), confident.get(b, 0.0)) >= target for b in required)


def format_accuracy(acc: dict) -> str:
    """Per-band training accuracy for a report: "σ 0.03-0.3: 100%, …" (the hosts' guard reports)."""
    return ", ".join(f"σ {k}: {v:.0%}" for k, v in acc.items()) if acc else "not measured yet"


def outcome_text(info: dict) -> str:
    """The end of a guard's training report from its info: steps, time, accuracy, whether it memorised."""
    heads = info.get("heads", 1)
    return ((f"{heads} heads, " if isinstance(heads, int) and heads > 1 else "") +
            f"{info.get('steps')} steps in {info.get('train_seconds')} s; "
            f"accuracy {format_accuracy(info.get('accuracy', {}))}; "
            f"{'memorised' if info.get('memorised') else 'NOT fully memorised: raise max_steps'}")


def progress_text(step: int, total: int, stats: dict) -> str:
    """One line of training progress (worst band's accuracy, loss) from ``train_guard``'s stats."""
    acc = stats.get("accuracy") or {}
    worst = min(acc.values()) if acc else 0.0
    return f"step {step}/{total}: accuracy {worst:.0%} (worst band), loss {stats.get('loss', float('nan')):.3f}"


SCREEN_ACCURACY = 0.95  # the subset screen of a large set's stop check


def required_bands(space: NoiseSpace) -> list[str]:
    return [NoiseSpace.band_label(b) for b in space.bands() if b[1] <= space.memorisable_max + 1e-9]


def train_guard(latents: Tensor, space: NoiseSpace, seed: int = 0, progress: ProgressFn | None = None,
                should_stop: Callable[[], bool] | None = None, max_steps: int = 3000,
                batch_size: int = 32, lr: float = 2e-3, target_accuracy: float = 0.99,
                confidence: float = 0.99, eval_every: int = 50, negatives: str | Tensor = DEFAULT_NEGATIVES,
                negative_fraction: float = 0.5, ema_decay: float = 0.0, check_subset: int = 64,
                settle: float = 0.0, config: GuardConfig | None = None, heads: int | None = None,
                info: dict[str, Any] | None = None, device: str | torch.device | None = None) -> Guard:
    """Train a guard that memorises random labels on ``latents`` [N, C, H, W] at every noise level.

    Stops early once, in every σ band where memorising is possible (σ ≤ 1 for vp, σ ≤ 0.5 for
    flow), at least ``target_accuracy`` of the training latents are classified right, and right
    with p ≥ ``confidence``: guidance only acts where the guard is confident, so a guard that is
    merely right is not done. Sets larger than ``check_subset`` are screened on that many random
    latents (passing at 95 %) and checked in full only when the screen passes. ``negatives`` adds
    latents that are not training images with the target ½ (see ``make_negatives``), so the guard
    is confident only near its training images.
    ``ema_decay`` > 0 checks and returns a moving average of the weights, which holds a memorised
    band from one check to the next where the raw weights swing. ``settle`` > 0 goes on past the step
    that memorised for ``settle`` × that many steps, the learning rate falling linearly to 0 (a
    cool-down: the stop check passes on a noisy estimate, and a guard stopped there can be weak at
    some of its images; docs/protection.md, "Calibration"). ``heads`` is how many independent
    random labellings it fits at once, one output each, on the same network (None: ``config``'s, else
    ``DEFAULT_HEADS``, 3): a single labelling can send every copy it pushes the same way, several
    spread those pushes (docs/protection.md, "Guards with several heads: the default"); 1 is the
    one-labelling guard of the paper. ``progress(step, total, stats)``
    gets the loss and the accuracy per band; ``should_stop()`` returning True raises
    ``TrainingStopped``.
    """
    if not isinstance(latents, torch.Tensor) or latents.dim() != 4:
        raise ValueError(f"latents must be a tensor shaped [N, C, H, W], got "
                         f"{tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__}")
    n = latents.shape[0]
    if n < 2:
        raise ValueError(f"a guard needs at least 2 training images, got {n}")
    if not torch.isfinite(latents).all():
        raise ValueError("latents contain NaN or infinite values")
    if isinstance(negatives, torch.Tensor):
        if negatives.dim() != 4 or negatives.shape[1:] != latents.shape[1:] or negatives.shape[0] < 1:
            raise ValueError(f"negative latents must be shaped [M, {', '.join(map(str, latents.shape[1:]))}] "
                             f"like the training latents, got {tuple(negatives.shape)}")
        if not torch.isfinite(negatives).all():
            raise ValueError("negative latents contain NaN or infinite values")
    elif negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {NEGATIVES} or a latent tensor, got {negatives!r}")
    if not 0 <= ema_decay < 1:
        raise ValueError(f"ema_decay must lie in [0, 1), got {ema_decay}")
    if not 0 <= settle <= 10:
        raise ValueError(f"settle must lie in [0, 10] (a multiple of the steps that memorised), got {settle}")
    if heads is not None and (isinstance(heads, bool) or not isinstance(heads, int) or not 1 <= heads <= MAX_HEADS):
        raise ValueError(f"heads must be a whole number from 1 to {MAX_HEADS}, got {heads!r}")
    if max_steps < 1 or batch_size < 1 or check_subset < 1:
        raise ValueError(f"max_steps, batch_size and check_subset must be positive, got {max_steps}, "
                         f"{batch_size}, {check_subset}")
    device = torch.device(device) if device is not None else latents.device
    # Hosts run nodes under inference mode; parameters made there cannot be trained.
    with torch.inference_mode(False), torch.enable_grad():
        x_all = latents.detach().to(device, torch.float32).clone()
        if isinstance(negatives, torch.Tensor):
            negatives = negatives.detach().to(device, torch.float32).clone()
        cfg = config or GuardConfig.for_latents(x_all.shape)
        if heads is not None:
            cfg = replace(cfg, heads=heads)
        labels = head_labels(n, seed, cfg.heads).to(device)
        torch.manual_seed(seed)  # weight init
        if cfg.in_channels != x_all.shape[1]:
            raise ValueError(f"config expects {cfg.in_channels} channels, latents have {x_all.shape[1]}")
        guard = Guard(GuardNet(cfg).to(device), space)
        opt = torch.optim.AdamW(guard.net.parameters(), lr=lr, weight_decay=0.0)
        # Optionally the stop check and the returned guard use a moving average of the weights: the
        # raw weights swing between checks, the average settles (but is more confident off the
        # training set too, which widens the gate: docs/performance.md).
        averaged = guard
        if ema_decay > 0:
            averaged = Guard(copy.deepcopy(guard.net), space)
            averaged.net.requires_grad_(False)
        g = torch.Generator().manual_seed(seed + 1)
        g_eval = torch.Generator().manual_seed(seed + 2)
        required = required_bands(space)
        required_b = [b for b in space.bands() if NoiseSpace.band_label(b) in required]
        other_b = [b for b in space.bands() if NoiseSpace.band_label(b) not in required]
        accuracy: dict[str, float] = {}
        confident: dict[str, float] = {}
        loss_avg = float("nan")
        started = time.monotonic()
        step = 0
        settle_end = memorised_at = 0  # settle_end > 0: memorised at memorised_at; the cool-down runs to settle_end
        for step in range(1, max_steps + 1):
            if settle_end:
                for group in opt.param_groups:
                    group["lr"] = lr * (settle_end - step + 1) / (settle_end - memorised_at + 1)
            if should_stop is not None and should_stop():
                raise TrainingStopped(f"guard training stopped at step {step - 1} of {max_steps}")
            idx = torch.randint(0, n, (batch_size,), generator=g)
            x0 = x_all[idx]
            sig = sample_sigmas(space, len(idx), g).to(device)
            target = labels[idx]
            neg = make_negatives(negatives, x_all, int(round(batch_size * negative_fraction)), g)
            if neg is not None:
                x0 = torch.cat([x0, neg])
                sig = torch.cat([sig, sample_sigmas(space, len(neg), g).to(device)])
                target = torch.cat([target, torch.full((len(neg), *target.shape[1:]), 0.5, device=device)])
            eps = torch.randn(x0.shape, generator=g).to(device)
            logit = guard.head_logits(space.noise(x0, sig, eps), sig)
            logit = logit[:, 0] if target.dim() == 1 else logit
            loss = F.binary_cross_entropy_with_logits(logit, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if averaged is not guard:
                d = min(ema_decay, (1 + step) / (10 + step))
                with torch.no_grad():
                    for pa, p in zip(averaged.net.parameters(), guard.net.parameters()):
                        pa.lerp_(p, 1 - d)
            lv = float(loss.detach())
            loss_avg = lv if math.isnan(loss_avg) else 0.9 * loss_avg + 0.1 * lv
            done = False
            if settle_end:
                done = step >= settle_end
            elif step % eval_every == 0 or step == max_steps:
                # The stop check needs only the bands where memorising is possible; the others
                # are measured once at the end, for the report. Large sets are screened on a
                # random subset first, so a check costs the same at any N until it could pass;
                # the screen is lenient (a few misses in 64 may be under 1 % of the whole set).
                if n > check_subset:
                    pick = torch.randperm(n, generator=g_eval)[:check_subset].to(device)
                    accuracy, confident = band_accuracy(averaged, x_all[pick], labels[pick], space, g_eval,
                                                        confidence=confidence, bands=required_b)
                    done = memorised(accuracy, confident, required, SCREEN_ACCURACY)
                if n <= check_subset or done:
                    accuracy, confident = band_accuracy(averaged, x_all, labels, space, g_eval,
                                                        confidence=confidence, bands=required_b)
                    done = memorised(accuracy, confident, required, target_accuracy)
            if progress is not None:
                progress(step, max_steps, {"loss": loss_avg, "accuracy": dict(accuracy),
                                           "confident": dict(confident)})
            if done and settle > 0 and not settle_end:
                memorised_at, settle_end = step, step + max(1, math.ceil(settle * step))
                done = False
            if done:
                break
        guard = averaged
        guard.net.eval()
        if settle_end:  # the checks stopped at the cool-down's start: measure the weights returned
            accuracy, confident = band_accuracy(guard, x_all, labels, space, g_eval, confidence=confidence,
                                                bands=required_b)
        more_acc, more_conf = band_accuracy(guard, x_all, labels, space, g_eval, confidence=confidence,
                                            bands=other_b)
        accuracy, confident = {**accuracy, **more_acc}, {**confident, **more_conf}
        margin = guard.training_margin(x_all)
        guard.info = {
            "label_seed": int(seed),
            "heads": int(cfg.heads),
            "negatives": negatives if isinstance(negatives, str) else f"{negatives.shape[0]} latents",
            "n_images": int(n),
            "dataset_digest": dataset_digest(latents),
            "accuracy": accuracy,
            "confident": confident,
            "confidence": confidence,
            "required_bands": required,
            "memorised": memorised(accuracy, confident, required, target_accuracy),
            "steps": step,
            **({"settle_from": memorised_at} if settle_end else {}),
            "train_margin": round(margin, 4),
            "train_seconds": round(time.monotonic() - started, 2),
            "latent_shape": list(latents.shape[1:]),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **(info or {}),
        }
        for p in guard.net.parameters():
            p.requires_grad_(False)
        return guard
