"""Training a guard: fit random binary labels on noisy latents until it has memorised them."""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Callable

import torch
from torch.nn import functional as F

from . import latent_groups as lg
from .guard import Guard
from .latent_groups import Latents
from .network import GuardConfig, GuardNet
from .noise import NoiseSpace

Tensor = torch.Tensor
ProgressFn = Callable[[int, int, dict], None]

# The training recipe and its stop rule (docs/protection.md, "The defaults"; docs/design-log.md).
LEARNING_RATE = 2e-3   # AdamW, no weight decay
NEGATIVE_SHARE = 0.5   # negatives per batch, as a share of the batch of training latents
CHECK_EVERY = 50       # steps between stop checks (and at the last step)
TARGET_ACCURACY = 0.99  # memorised: in every required band this share right, and in the confident bands
CONFIDENCE = 0.99      # this share right with p >= CONFIDENCE: guidance acts only where the guard is sure
# Confidence is required up to this σ (the two lowest bands): the guide reads the model's x0 prediction as
# a clean latent, and above it noise alone keeps even the ideal classifier under p 0.99 on many draws
# when a training image has a class image nearby (docs/design-log.md, "Confidence up to σ 0.3").
CONFIDENT_UP_TO = {"vp": 0.3, "flow": 0.25}
CHECK_SUBSET = 64      # sets larger than this are screened on this many random latents before a full check
SCREEN_ACCURACY = 0.95  # the screen's pass mark: a few misses in 64 may be under 1 % of the whole set


class TrainingStopped(Exception):
    """Raised when ``should_stop()`` asked training to end (a cancel, not a failure)."""


def dataset_digest(latents: Latents) -> str:
    """One SHA-256 over the whole training set (shape and float32 values), never per image; a set of
    several sizes hashes its groups' shapes, then their values, in order."""
    groups = [g.detach().to("cpu", torch.float32).contiguous() for g in lg.as_groups(latents)]
    shapes = tuple(groups[0].shape) if len(groups) == 1 else [tuple(x.shape) for x in groups]
    h = hashlib.sha256(repr(shapes).encode())
    for x in groups:
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


# Gaussian latents alone leave the guard free to be confident on what it reads early in sampling:
# the model's x0 prediction while the noise is high is a blend of many images pulled toward their
# mean, and a guard confident there pushes samples that were never going to copy (on the mixture,
# guard seeds 0 and 2 moved half the non-copying samples and the FD rose to 3.7-5.9x the floor).
DEFAULT_NEGATIVES = "gaussian+blends"


def make_negatives(kind: str | Tensor, x_all: Tensor, n: int, g: torch.Generator) -> Tensor | None:
    """``n`` latents that are not training images, on which the guard is taught to say ½.

    ``DEFAULT_NEGATIVES``: half noise with the training latents' per-channel mean and std, half
    blends of 2-4 training latents pulled toward their mean (``blend_negatives``); a tensor [M, C, H,
    W]: the caller's own latents of images outside the set (class images), drawn at random. Without
    negatives a guard that memorised random labels is as confident on a novel latent as on its
    training images, so its gradient would push every sample.
    """
    if isinstance(kind, torch.Tensor):
        return kind[torch.randint(0, kind.shape[0], (n,), generator=g).to(kind.device)]
    if n == 0:
        return None
    half = n // 2
    parts = [gaussian_negatives(x_all, n - half, g), blend_negatives(x_all, half, g)]
    return torch.cat([p for p in parts if p is not None])


def gaussian_negatives(x_all: Tensor, n: int, g: torch.Generator) -> Tensor | None:
    """``n`` draws of Gaussian noise with the training latents' per-channel mean and std; None for 0."""
    if n == 0:
        return None
    mean = x_all.mean(dim=(0, 2, 3), keepdim=True)
    std = x_all.std(dim=(0, 2, 3), keepdim=True)
    return mean + std * torch.randn((n, *x_all.shape[1:]), generator=g).to(x_all)


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


def _chunks(groups: list[Tensor], batch_size: int):
    """(index of the first latent in the concatenated order, up to ``batch_size`` latents of one size)."""
    for start, group in zip(lg.offsets(groups), groups):
        for i in range(0, group.shape[0], batch_size):
            yield start + i, group[i:i + batch_size]


@torch.no_grad()
def band_accuracy(guard: Guard, latents: Latents, labels: Tensor, space: NoiseSpace,
                  g: torch.Generator, per_band: int = 2, batch_size: int = 64, confidence: float = CONFIDENCE,
                  bands: list[tuple[float, float]] | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """Per σ band, the share of training latents classified right, and right with p(true label)
    ≥ ``confidence``, at ``per_band`` noise levels inside each band (one pass for both). ``latents``:
    one tensor, or one per size with ``labels`` in their concatenated order."""
    accuracy: dict[str, float] = {}
    confident: dict[str, float] = {}
    groups = lg.as_groups(latents)
    n = lg.count(groups)
    margin = math.log(confidence / (1 - confidence))
    for band in space.bands() if bands is None else bands:
        right = sure = 0
        for s in _band_sigmas(band, per_band):
            for start, x0 in _chunks(groups, batch_size):
                eps = torch.randn(x0.shape, generator=g).to(x0)
                sig = torch.full((x0.shape[0],), float(s), device=x0.device)
                logit = guard.head_logits(space.noise(x0, sig, eps), sig)
                y = labels[start:start + x0.shape[0]]
                signed = torch.where((y if y.dim() == 2 else y[:, None]) > 0.5, logit, -logit)
                right += int((signed > 0).sum())
                sure += int((signed > margin).sum())
        label = NoiseSpace.band_label(band)
        # with several heads, over every (latent, head) pair: each head must memorise its labels
        accuracy[label] = right / (n * per_band * guard.heads)
        confident[label] = sure / (n * per_band * guard.heads)
    return accuracy, confident


def memorised_margin(accuracy: dict[str, float], confident: dict[str, float], required: list[str],
                     sure: list[str]) -> float:
    """The share the stop check compares with its target: the least of the accuracy in every ``required``
    band and of the share right with the required confidence in every ``sure`` band (1 when none)."""
    return min([accuracy.get(b, 0.0) for b in required] + [confident.get(b, 0.0) for b in sure], default=1.0)


def memorised(accuracy: dict[str, float], confident: dict[str, float], required: list[str], sure: list[str],
              target: float) -> bool:
    """Every ``required`` band at least ``target`` right, and every ``sure`` band that share right with
    the required confidence."""
    return memorised_margin(accuracy, confident, required, sure) >= target


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


def required_bands(space: NoiseSpace) -> list[str]:
    """The σ bands the stop check needs right: those where memorising is possible (σ ≤ memorisable_max)."""
    return [NoiseSpace.band_label(b) for b in space.bands() if b[1] <= space.memorisable_max + 1e-9]


def confident_bands(space: NoiseSpace) -> list[str]:
    """The σ bands the stop check needs confident: those up to ``CONFIDENT_UP_TO`` of the space's kind."""
    return [NoiseSpace.band_label(b) for b in space.bands() if b[1] <= CONFIDENT_UP_TO[space.kind] + 1e-9]


class StopCheck:
    """The stop rule, run every ``CHECK_EVERY`` steps: in every required band at least
    ``TARGET_ACCURACY`` of the training latents right, and in the confident bands right with
    p ≥ ``CONFIDENCE``.

    Only the required bands are measured while training; the others once at the end, for the report.
    Sets larger than ``CHECK_SUBSET`` are screened on that many random latents first (passing at
    ``SCREEN_ACCURACY``), so a check costs the same at any N until it could pass."""

    def __init__(self, space: NoiseSpace, latents: list[Tensor], labels: Tensor, seed: int):
        self.space, self.latents, self.labels = space, latents, labels  # latents: one tensor per size
        self.required = required_bands(space)
        self.sure = confident_bands(space)
        self.checked_bands = [b for b in space.bands() if NoiseSpace.band_label(b) in self.required]
        self.report_bands = [b for b in space.bands() if NoiseSpace.band_label(b) not in self.required]
        self.g = torch.Generator().manual_seed(seed + 2)
        self.accuracy: dict[str, float] = {}
        self.confident: dict[str, float] = {}

    def _measure(self, guard: Guard, pick: Tensor | None, bands: list[tuple[float, float]]) -> None:
        latents, labels = self.latents, self.labels
        if pick is not None and len(latents) == 1:
            latents, labels = [latents[0][pick]], labels[pick]
        elif pick is not None:  # the picked latents of each size, labels in the same order
            inside = lg.pick_per_group(latents, pick)
            labels = torch.cat([labels[idx + s] for idx, s in zip(inside, lg.offsets(latents))])
            latents = [x[idx] for x, idx in zip(latents, inside) if len(idx)]
        self.accuracy, self.confident = band_accuracy(guard, latents, labels, self.space, self.g,
                                                      confidence=CONFIDENCE, bands=bands)

    def passes(self, guard: Guard) -> bool:
        n = lg.count(self.latents)
        done = False
        if n > CHECK_SUBSET:
            pick = torch.randperm(n, generator=self.g)[:CHECK_SUBSET].to(self.latents[0].device)
            self._measure(guard, pick, self.checked_bands)
            done = memorised(self.accuracy, self.confident, self.required, self.sure, SCREEN_ACCURACY)
        if n <= CHECK_SUBSET or done:
            self._measure(guard, None, self.checked_bands)
            done = memorised(self.accuracy, self.confident, self.required, self.sure, TARGET_ACCURACY)
        return done

    def report(self, guard: Guard) -> tuple[dict[str, float], dict[str, float]]:
        """Accuracy and confident share in every band: the last check's plus the other bands now."""
        more_acc, more_conf = band_accuracy(guard, self.latents, self.labels, self.space, self.g,
                                            confidence=CONFIDENCE, bands=self.report_bands)
        return {**self.accuracy, **more_acc}, {**self.confident, **more_conf}


def check_training_inputs(latents: Latents, negatives: str | Tensor, heads: int | None, max_steps: int,
                          batch_size: int) -> None:
    """ValueError naming the bad value, before any work is done. ``latents``: a tensor [N, C, H, W], or
    a list of them of one channel count (one per size; negatives are then brought to each size)."""
    groups = latents if isinstance(latents, (list, tuple)) and latents else [latents]
    for x in groups:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] < 1:
            raise ValueError(f"latents must be a tensor shaped [N, C, H, W] (or a list of them, one per size), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x.shape[1] != groups[0].shape[1]:
            raise ValueError(f"latents of one guard must share a channel count, got {groups[0].shape[1]} and "
                             f"{x.shape[1]}")
        if not torch.isfinite(x).all():
            raise ValueError("latents contain NaN or infinite values")
    if lg.count(groups) < 2:
        raise ValueError(f"a guard needs at least 2 training images, got {lg.count(groups)}")
    shape = groups[0].shape[1:]
    if isinstance(negatives, torch.Tensor):
        bad_size = len(groups) == 1 and negatives.dim() == 4 and negatives.shape[1:] != shape
        if negatives.dim() != 4 or negatives.shape[1] != shape[0] or bad_size or negatives.shape[0] < 1:
            raise ValueError(f"negative latents must be shaped [M, {', '.join(map(str, shape))}] "
                             f"like the training latents, got {tuple(negatives.shape)}")
        if not torch.isfinite(negatives).all():
            raise ValueError("negative latents contain NaN or infinite values")
    elif negatives != DEFAULT_NEGATIVES:
        raise ValueError(f"negatives must be {DEFAULT_NEGATIVES!r} or a latent tensor [M, C, H, W] "
                         f"(class images), got {negatives!r}")
    if heads is not None and (isinstance(heads, bool) or not isinstance(heads, int) or not 1 <= heads <= MAX_HEADS):
        raise ValueError(f"heads must be a whole number from 1 to {MAX_HEADS}, got {heads!r}")
    if max_steps < 1 or batch_size < 1:
        raise ValueError(f"max_steps and batch_size must be positive, got {max_steps}, {batch_size}")


def training_batch(space: NoiseSpace, x_all: Tensor, labels: Tensor, negatives: str | Tensor, batch_size: int,
                   g: torch.Generator, pool: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """One batch: ``batch_size`` training latents with their labels and half as many negatives with
    the target ½, each at its own σ, noised. Returns (noisy latents, σ, targets). ``pool``: what the
    default negatives are made of (``x_all`` unless the set has other sizes, ``lg.pool_for``)."""
    device = x_all.device
    idx = torch.randint(0, x_all.shape[0], (batch_size,), generator=g)
    x0 = x_all[idx]
    sig = sample_sigmas(space, len(idx), g).to(device)
    target = labels[idx]
    neg = make_negatives(negatives, x_all if pool is None else pool, int(round(batch_size * NEGATIVE_SHARE)), g)
    if neg is not None:
        x0 = torch.cat([x0, neg])
        sig = torch.cat([sig, sample_sigmas(space, len(neg), g).to(device)])
        target = torch.cat([target, torch.full((len(neg), *target.shape[1:]), 0.5, device=device)])
    eps = torch.randn(x0.shape, generator=g).to(device)
    return space.noise(x0, sig, eps), sig, target


def training_step(guard: Guard, opt: torch.optim.Optimizer, x: Tensor, sig: Tensor, target: Tensor) -> float:
    """One optimiser step of binary cross-entropy on every head; the loss."""
    logit = guard.head_logits(x, sig)
    logit = logit[:, 0] if target.dim() == 1 else logit
    loss = F.binary_cross_entropy_with_logits(logit, target)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def train_guard(latents: Latents, space: NoiseSpace, *, seed: int = 0, progress: ProgressFn | None = None,
                should_stop: Callable[[], bool] | None = None, max_steps: int = 3000, batch_size: int = 32,
                negatives: str | Tensor = DEFAULT_NEGATIVES, heads: int | None = None,
                info: dict[str, Any] | None = None, device: str | torch.device | None = None) -> Guard:
    """Train a guard that memorises random labels on ``latents`` [N, C, H, W] at every noise level;
    or on a list of such tensors, one per size (an aspect-bucketed set): each batch then holds one
    size, drawn in proportion to its images, and the negatives are brought to that size.

    Stops at the first check (every ``CHECK_EVERY`` steps, see ``StopCheck``) that finds it memorised,
    or after ``max_steps``. ``negatives``: the default Gaussian latents and blends, or the caller's
    latents of images outside the set (class images), taught with the target ½ so the guard is
    confident only near its training images (``make_negatives``). ``heads``: how many independent
    random labellings it fits at once, one output each, on one network (None: ``DEFAULT_HEADS``, 3; 1
    is the paper's guard): several spread the pushes that one labelling sends every copy along
    (docs/protection.md, "Guards with several heads"). ``progress(step, total, stats)`` gets the loss
    and the accuracy per required band; ``should_stop()`` returning True raises ``TrainingStopped``.
    ``info`` is added to the guard's info (what the file stores).
    """
    check_training_inputs(latents, negatives, heads, max_steps, batch_size)
    device = torch.device(device) if device is not None else lg.as_groups(latents)[0].device
    # Hosts run nodes under inference mode; parameters made there cannot be trained.
    with torch.inference_mode(False), torch.enable_grad():
        groups = [x.detach().to(device, torch.float32).clone() for x in lg.as_groups(latents)]
        if isinstance(negatives, torch.Tensor):
            negatives = negatives.detach().to(device, torch.float32).clone()
        channels = groups[0].shape[1]
        smallest = (min(x.shape[2] for x in groups), min(x.shape[3] for x in groups))  # the stem's stride fits all
        config = GuardConfig.for_latents((channels, *smallest))
        if heads is not None:
            config = replace(config, heads=heads)
        labels = head_labels(lg.count(groups), seed, config.heads).to(device)
        batches = BatchMaker(space, groups, labels, negatives, batch_size)
        torch.manual_seed(seed)  # weight init
        guard = Guard(GuardNet(config).to(device), space)
        opt = torch.optim.AdamW(guard.net.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
        g = torch.Generator().manual_seed(seed + 1)
        check = StopCheck(space, groups, labels, seed)
        loss_avg = float("nan")
        started = time.monotonic()
        step = 0
        for step in range(1, max_steps + 1):
            if should_stop is not None and should_stop():
                raise TrainingStopped(f"guard training stopped at step {step - 1} of {max_steps}")
            loss = training_step(guard, opt, *batches.draw(g))
            loss_avg = loss if math.isnan(loss_avg) else 0.9 * loss_avg + 0.1 * loss
            done = (step % CHECK_EVERY == 0 or step == max_steps) and check.passes(guard)
            if progress is not None:
                progress(step, max_steps, {"loss": loss_avg, "accuracy": dict(check.accuracy),
                                           "confident": dict(check.confident)})
            if done:
                break
        guard.net.eval()
        guard.info = training_info(guard, check, groups, seed, negatives, step, started, info)
        guard.net.requires_grad_(False)
        return guard


class BatchMaker:
    """Draws training batches of one size each: with several sizes, a size in proportion to its
    latents, negatives made at that size (one size draws exactly as ``training_batch`` alone)."""

    def __init__(self, space: NoiseSpace, groups: list[Tensor], labels: Tensor, negatives: str | Tensor,
                 batch_size: int):
        self.space, self.groups, self.batch_size = space, groups, batch_size
        starts = lg.offsets(groups)
        self.labels = [labels[s:s + x.shape[0]] for s, x in zip(starts, groups)]
        self.weights = torch.tensor([float(x.shape[0]) for x in groups])
        several = len(groups) > 1
        self.pools = [lg.pool_for(groups, i) if several else None for i in range(len(groups))]
        self.negatives = [lg.cover_resize(negatives, *x.shape[-2:]) if isinstance(negatives, torch.Tensor)
                          else negatives for x in groups]

    def draw(self, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        i = 0 if len(self.groups) == 1 else int(torch.multinomial(self.weights, 1, generator=g))
        return training_batch(self.space, self.groups[i], self.labels[i], self.negatives[i], self.batch_size, g,
                              pool=self.pools[i])


def training_info(guard: Guard, check: StopCheck, groups: list[Tensor], seed: int, negatives: str | Tensor,
                  steps: int, started: float, extra: dict[str, Any] | None) -> dict[str, Any]:
    """What the guard file records of its training (``extra``, the host's, last). A set of several
    sizes records its most common latent shape as ``latent_shape`` and every shape's count."""
    accuracy, confident = check.report(guard)
    margin = min(guard.training_margin(x) for x in groups)
    main = max(groups, key=lambda x: x.shape[0])
    sizes = {"latent_shapes": lg.shapes_text(groups)} if len(groups) > 1 else {}
    return {
        "label_seed": int(seed),
        "heads": int(guard.heads),
        "negatives": negatives if isinstance(negatives, str) else f"{negatives.shape[0]} latents",
        "n_images": lg.count(groups),
        "dataset_digest": dataset_digest(groups),
        "accuracy": accuracy,
        "confident": confident,
        "confidence": CONFIDENCE,
        "required_bands": check.required,
        "confident_bands": check.sure,
        "memorised": memorised(accuracy, confident, check.required, check.sure, TARGET_ACCURACY),
        "steps": steps,
        "train_margin": round(margin, 4),
        "train_seconds": round(time.monotonic() - started, 2),
        "latent_shape": list(main.shape[1:]),
        **sizes,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
