"""Calibration's probe sampler on the webui: its own txt2img, one batch per chunk of probe seeds.

Each probe is the image txt2img makes with that seed: the seeds go in as a list (the webui draws every
image's starting and ancestral noise from its own seed's generator, so a probe does not depend on the
batch it runs in). Nothing is saved and no script of the user's runs: the processing object gets only
CPSample's two hooks, the guide (a post-CFG function on Forge's UNet clone, the CFG callbacks on A1111)
and the capture of the final latents before decoding, which is skipped.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch

from ..core import CalibrationStopped
from ..core.probing import Guide, PostCFGGuide, probe_batch
from . import a1111, host
from ..usecases.model import ModelFamily


class _CoreGuide:
    """The core's ``guide(denoised, x, sigma)`` where A1111's session expects a GuidedStep."""

    def __init__(self, guide: Guide):
        self.guide = guide

    def __call__(self, denoised, x, sigma, **_host) -> torch.Tensor:
        return self.guide(denoised, x, sigma)


class _Decoded(list):
    """Stand-in images where the webui expects the decoded batch."""
    already_decoded = True


class _ProbeScripts:
    """``p.scripts`` for a probe batch: the guide hook (Forge) and the latent capture; every other script
    callback the webui makes is a no-op, so no user script (or CPSample's own accordion) acts on probes."""

    def __init__(self, guide: Guide | None):
        self.guide = guide
        self.samples: torch.Tensor | None = None

    def process_before_every_sampling(self, p, **kwargs) -> None:
        if self.guide is not None and host.is_forge(p.sd_model):
            objects = p.sd_model.forge_objects
            clone = objects.unet.clone()
            clone.set_model_sampler_post_cfg_function(PostCFGGuide(self.guide))
            objects.unet = clone

    def post_sample(self, p, ps) -> None:
        self.samples = ps.samples.detach().to("cpu", torch.float32).clone()
        # Skip the VAE decode (calibration decodes what it measures itself): the webui takes a list of
        # images marked already_decoded as the decoded batch.
        ps.samples = _Decoded(torch.zeros(3, 8, 8) for _ in range(ps.samples.shape[0]))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None


def check_sampler(sampler_name: str, scheduler: str) -> None:
    """A clear error for a sampler or scheduler this webui does not have (it would fall back silently)."""
    from modules import sd_samplers

    if sd_samplers.find_sampler_config(sampler_name) is None:
        names = [s.name for s in sd_samplers.all_samplers]
        raise ValueError(f"sampler_name {sampler_name!r} is not a sampler of this webui; it has: {', '.join(names)}")
    try:
        from modules import sd_schedulers
    except ImportError:  # an older webui: no scheduler choice
        return
    known = {s.label for s in sd_schedulers.schedulers} | {s.name for s in sd_schedulers.schedulers}
    if scheduler not in known:
        raise ValueError(f"scheduler {scheduler!r} is not a scheduler of this webui; it has: "
                         f"{', '.join(s.label for s in sd_schedulers.schedulers)}")


class ProbeSampler:
    """``sample(guide, seeds)`` → final latents [len(seeds), C, h, w] in the model's sampling space."""

    def __init__(self, sd_model, family: ModelFamily, prompt: str, negative_prompt: str, sampler_name: str,
                 scheduler: str, steps: int, cfg_scale: float, width: int, height: int):
        check_sampler(sampler_name, scheduler)
        self.sd_model, self.family = sd_model, family
        self.prompt, self.negative_prompt = prompt, negative_prompt
        self.sampler_name, self.scheduler = sampler_name, scheduler
        self.steps, self.cfg_scale = int(steps), float(cfg_scale)
        self.width, self.height = int(width), int(height)
        numel = family.latent_channels * (height // 8) * (width // 8)
        self.batch = probe_batch(numel)
        self.description = (f"{sampler_name}/{scheduler}, {steps} steps, cfg {cfg_scale:g}, {width}x{height} px "
                            f"({family.latent_format} model)")

    def _batch(self, guide: Guide | None, seeds: list[int]) -> torch.Tensor:
        from modules import processing

        p = processing.StableDiffusionProcessingTxt2Img(
            sd_model=self.sd_model, prompt=self.prompt, negative_prompt=self.negative_prompt, seed=list(seeds),
            subseed_strength=0.0, sampler_name=self.sampler_name, scheduler=self.scheduler,
            batch_size=len(seeds), n_iter=1, steps=self.steps, cfg_scale=self.cfg_scale, width=self.width,
            height=self.height, do_not_save_samples=True, do_not_save_grid=True)
        scripts = _ProbeScripts(guide)
        p.scripts = scripts
        if guide is not None and not host.is_forge(self.sd_model):
            a1111.begin(p, _CoreGuide(guide), self.sd_model, self.family)
        try:
            processing.process_images(p)
        finally:
            a1111.end(p)
            p.close()
        if host.interrupted():
            raise CalibrationStopped("calibration interrupted")
        if scripts.samples is None or scripts.samples.shape[0] != len(seeds):
            raise RuntimeError(f"the webui handed over no latents for probe seeds {seeds[0]}…{seeds[-1]}: "
                               f"calibration needs the post_sample script callback (AUTOMATIC1111 1.8 or later, Forge)")
        return scripts.samples

    def __call__(self, guide: Guide | None, seeds: Iterable[int]) -> torch.Tensor:
        seeds = [int(s) for s in seeds]
        return torch.cat([self._batch(guide, seeds[i:i + self.batch]) for i in range(0, len(seeds), self.batch)])
