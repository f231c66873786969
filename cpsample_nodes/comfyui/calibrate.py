"""Calibrate Guard's sampler: the user's MODEL, prompt and sampler as the core's ``sample(guide, seeds)``.

Every probe is deterministic per seed, whatever batch it runs in: its starting noise is
``comfy.sample.prepare_noise`` of that seed (as KSampler with batch size 1), and samplers that add noise get
a noise sampler built per probe the way their own default is built for a batch of one with that seed (a
seeded generator for the ancestral family, a seeded Brownian tree for the DPM++ SDE family). So probe seed s
is the image KSampler makes with seed s and batch size 1 (up to the float rounding of batching).
"""
from __future__ import annotations

import inspect
import math
from typing import Callable, Iterable, Sequence

import torch

from ..core.probing import Guide, PostCFGGuide, probe_batch
from . import host
from ..usecases.guided_step import MARKER

# Samplers whose default noise is a Brownian tree (value: the tree lives on the CPU), as comfy's
# k_diffusion/sampling.py builds it; the other noise-adding samplers use default_noise_sampler.
BROWNIAN = {"dpmpp_sde": True, "dpmpp_2m_sde": True, "dpmpp_2m_sde_heun": True, "dpmpp_3m_sde": True,
            "dpmpp_sde_gpu": False, "dpmpp_2m_sde_gpu": False, "dpmpp_2m_sde_heun_gpu": False,
            "dpmpp_3m_sde_gpu": False}


def _per_probe_noise(sampler_name: str, seeds: Sequence[int], shape: tuple, device, sigmas: torch.Tensor
                     ) -> Callable:
    """A noise sampler for a batch of probes: each probe's noise comes from its own copy of the sampler's
    default noise sampler, built as for a batch of one with the probe's seed."""
    one = torch.zeros((1,) + tuple(shape), device=device)
    if sampler_name in BROWNIAN:
        from comfy.k_diffusion.sampling import BrownianTreeNoiseSampler

        lo, hi = sigmas[sigmas > 0].min(), sigmas.max()
        per = [BrownianTreeNoiseSampler(one, lo, hi, seed=int(s), cpu=BROWNIAN[sampler_name]) for s in seeds]
    else:
        from comfy.k_diffusion.sampling import default_noise_sampler

        per = [default_noise_sampler(one, seed=int(s)) for s in seeds]

    def sample(sigma, sigma_next):
        return torch.cat([p(sigma, sigma_next) for p in per])

    return sample


class ProbeSampler:
    """``sample(guide, seeds)`` → final clean latents [len(seeds), C, h, w] in the model's latent space
    (``latent_format.process_in``, the space the guard was trained in)."""

    def __init__(self, model, positive, negative, steps: int, cfg: float, sampler_name: str, scheduler: str,
                 latent_shape: tuple[int, int, int], on_step: Callable[[], None] | None = None):
        import comfy.samplers

        self.model = model
        self.positive, self.negative = positive, negative
        self.steps, self.cfg = int(steps), float(cfg)
        self.sampler_name, self.scheduler = sampler_name, scheduler
        self.latent_shape = tuple(int(v) for v in latent_shape)
        self.on_step = on_step
        self.latent_format = host.latent_format(model)
        fn = getattr(comfy.samplers.sampler_object(sampler_name), "sampler_function", None)
        try:
            self._takes_noise_sampler = fn is not None and "noise_sampler" in inspect.signature(fn).parameters
        except (TypeError, ValueError):
            self._takes_noise_sampler = False
        self.batch = probe_batch(math.prod(self.latent_shape))
        self.images = 0  # probe images sampled so far (each is `steps` sampler steps)

    def describe(self, width: int, height: int) -> str:
        return (f"{self.sampler_name}/{self.scheduler}, {self.steps} steps, cfg {self.cfg:g}, {width}x{height} px "
                f"({_model_name(self.model)})")

    def _sampler(self, seeds: Sequence[int], device, sigmas: torch.Tensor):
        import comfy.samplers

        sampler = comfy.samplers.sampler_object(self.sampler_name)
        if self._takes_noise_sampler:
            noise = _per_probe_noise(self.sampler_name, seeds, self.latent_shape, device, sigmas)
            sampler.extra_options = {**sampler.extra_options, "noise_sampler": noise}
        return sampler

    def _callback(self, step, x0, x, total):
        if self.on_step is not None:
            self.on_step()

    def _batch(self, model, seeds: Sequence[int]) -> torch.Tensor:
        import comfy.sample
        import comfy.samplers

        latent = torch.zeros((len(seeds),) + self.latent_shape)
        latent = comfy.sample.fix_empty_latent_channels(model, latent)
        noise = torch.cat([comfy.sample.prepare_noise(latent[:1], int(s)) for s in seeds])
        sigmas = comfy.samplers.KSampler(model, steps=self.steps, device=model.load_device, sampler=self.sampler_name,
                                         scheduler=self.scheduler, denoise=1.0,
                                         model_options=model.model_options).sigmas
        sampler = self._sampler(seeds, model.load_device, sigmas)
        out = comfy.sample.sample_custom(model, noise, self.cfg, sampler, sigmas, self.positive, self.negative, latent,
                                         callback=self._callback, disable_pbar=True, seed=int(seeds[0]))
        return self.latent_format.process_in(out.to("cpu", torch.float32))

    @property
    def replays(self) -> bool:
        """Can calibration's Replay stand in for model calls? Only where the CFG result is the plain
        combination of the conditional and unconditional predictions and the guard's is the only post-CFG
        function: another one would be applied to the replayed result a second time."""
        options = self.model.model_options
        return not any(options.get(k) for k in ("sampler_cfg_function", "sampler_pre_cfg_function",
                                                 "sampler_post_cfg_function", "sampler_calc_cond_batch_function"))

    def __call__(self, guide: Guide | None, seeds: Iterable[int]) -> torch.Tensor:
        seeds = [int(s) for s in seeds]
        if not seeds:
            return torch.zeros((0,) + self.latent_shape)
        model = self.model
        replay = getattr(guide, "replay", None)
        if guide is not None:  # on a clone, as Protect Model does: the input MODEL is never changed
            model = self.model.clone()
            model.set_model_sampler_post_cfg_function(PostCFGGuide(guide))
            if replay is not None:
                model.set_model_sampler_calc_cond_batch_function(_replayed(replay))
        outs = []
        for i in range(0, len(seeds), self.batch):
            if replay is not None:
                replay.begin(seeds[i:i + self.batch])
            outs.append(self._batch(model, seeds[i:i + self.batch]))
            self.images += len(seeds[i:i + self.batch])
        return torch.cat(outs)


def _replayed(replay) -> Callable[[dict], list]:
    """ComfyUI's cond-batch step, served from calibration's Replay while it has the calls recorded: both
    predictions are the recorded CFG result, so CFG returns it unchanged and the model does not run."""
    import comfy.samplers

    def calc_cond_batch(args: dict) -> list:
        recorded = replay.next()
        if recorded is None:
            return comfy.samplers.calc_cond_batch(args["model"], args["conds"], args["input"], args["sigma"],
                                                  args["model_options"])
        recorded = recorded.to(args["input"].device, args["input"].dtype)
        return [recorded for _ in args["conds"]]

    return calc_cond_batch


def check_unprotected(model) -> None:
    """Calibration measures the model's own copies: a MODEL already through Protect Model would be guided
    twice (its guard on top of every setting tried)."""
    fns = (getattr(model, "model_options", None) or {}).get("sampler_post_cfg_function", [])
    if any(getattr(fn, MARKER, False) for fn in fns):
        raise ValueError("the model is already protected (CPSample Protect Model comes before Calibrate Guard): "
                         "connect the fine-tuned model without Protect Model; protect it after calibrating")


def _model_name(model) -> str:
    try:
        return host.describe(model)["latent_format"] + " model"
    except Exception:  # noqa: BLE001 - only a description
        return "model"


def vae_decoder(vae, latent_format) -> Callable[[torch.Tensor], torch.Tensor]:
    """Latents in the model's space → IMAGE [B, H, W, 3] in [0, 1] (VAE Decode's output)."""

    def decode(latents: torch.Tensor) -> torch.Tensor:
        raw = latent_format.process_out(latents.clone())
        return vae.decode(raw)[..., :3].to("cpu", torch.float32).clamp(0, 1)

    return decode
