"""Sampling through ComfyUI's own code: the k-diffusion sampler functions (``comfy.k_diffusion.sampling``),
its Karras schedule, and its CFG combination with post-CFG hooks (``comfy.samplers.cfg_function``, where
Protect Model's guard runs in ComfyUI). Nothing here re-implements a sampler.

Why the benchmark runs under ComfyUI's test venv (``.cache/comfyui/venv``, built by tools/comfyui_env.py):
importing ``comfy.k_diffusion.sampling`` pulls in comfy.model_patcher and, through it, comfy.ldm (torchsde,
tqdm, psutil, torchvision, ...), none of which the project venv has; a CUDA check also needs
``args.cpu``. ComfyUI's venv has them all; the benchmark's only other need, scikit-learn's digits, is
read from the project venv's data file (data.py).

``make_sampler`` returns ``sample(guide, seeds)``, the form the product's ``calibrate`` takes: each seed
draws its own start noise and ancestral noise, so a seed's sample does not depend on its batch.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

ROOT = Path(__file__).resolve().parents[2]
COMFY = ROOT / ".cache" / "comfyui" / "ComfyUI"


def import_comfy():
    """(comfy.k_diffusion.sampling, comfy.samplers, comfy.model_sampling) from the test environment."""
    if str(COMFY) not in sys.path:
        sys.path.insert(0, str(COMFY))
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # model_management asserts CUDA otherwise
    import comfy.k_diffusion.sampling as ks
    import comfy.model_sampling as ms
    import comfy.samplers as cs

    return ks, cs, ms


SAMPLERS = {"euler": "sample_euler", "euler_a": "sample_euler_ancestral", "dpmpp_2m": "sample_dpmpp_2m"}
GuideFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# A CFG policy: (cond_pred, uncond_pred, x, sigma, state) -> per-item CFG scale [B] (Jain et al.'s fixes
# change the scale per step and per sample; None = the plain scale)
ScalePolicy = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict], torch.Tensor]


def model_sampling_eps():
    """ComfyUI's SD1.5 noise schedule object (ModelSamplingDiscrete + EPS), as its model_base builds it."""
    _, _, ms = import_comfy()

    class ModelSampling(ms.ModelSamplingDiscrete, ms.EPS):
        pass

    return ModelSampling()


@dataclass
class Counter:
    """Model calls (one call = one image through the UNet once) and backward passes."""
    forward: int = 0
    backward: int = 0
    extra: dict = field(default_factory=dict)


class _Inner:
    """What ComfyUI's euler_ancestral inspects: model.inner_model.inner_model.model_sampling."""

    def __init__(self, model_sampling):
        self.inner_model = self
        self.model_sampling = model_sampling


def make_sampler(model, prompt: int | torch.Tensor, null: int, sampler: str, cfg: float, steps: int,
                 counter: Optional[Counter] = None, policy: Optional[ScalePolicy] = None,
                 prompt_for: Optional[Callable[[Sequence[int], torch.Tensor], torch.Tensor]] = None):
    """``sample(guide, seeds) -> [len(seeds), 1, 16, 16]`` (clean, unclamped) through ComfyUI's sampler.

    ``model(x, sigma, cond)`` is the denoiser; ``prompt`` the token (or an embedding [EMB]); ``cfg`` the
    scale (1: the unconditional branch is skipped, as ComfyUI does); ``policy`` replaces the scale per item
    and step (Jain et al.); ``prompt_for(seeds, start_noise)`` returns per-seed prompt embeddings [B, EMB]
    (Wen et al.'s optimised embedding). ``guide`` runs as a post-CFG function, as Protect Model does.
    """
    ks, cs, _ = import_comfy()
    msamp = model_sampling_eps()
    fn = getattr(ks, SAMPLERS[sampler])
    sigmas = ks.get_sigmas_karras(steps, float(msamp.sigma_min), float(msamp.sigma_max))
    counter = counter if counter is not None else Counter()

    def sample(guide: Optional[GuideFn], seeds: Sequence[int]) -> torch.Tensor:
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        noise = torch.stack([torch.randn(1, 16, 16, generator=g) for g in gens])
        b = len(seeds)
        if prompt_for is not None:
            cond = prompt_for(seeds, noise)
        elif isinstance(prompt, torch.Tensor):
            cond = prompt.expand(b, -1)
        else:
            cond = torch.full((b,), int(prompt), dtype=torch.long)
        uncond = torch.full((b,), null, dtype=torch.long)
        state: dict = {}
        opts = {"sampler_post_cfg_function": [lambda a: guide(a["denoised"], a["input"], a["sigma"])]} if guide else {}
        replay = getattr(guide, "replay", None)  # calibration's recorded start of these paths
        if replay is not None:
            replay.begin(seeds)

        def denoise(x, sigma, **_):
            recorded = replay.next() if replay is not None else None
            if recorded is not None:  # the model is not run: CFG of two equal predictions is that prediction
                return cs.cfg_function(None, recorded, recorded, cfg, x, sigma, model_options=opts)
            c = model(x, sigma, cond)
            counter.forward += b
            need_uncond = (policy.needs_uncond(sigma) if policy is not None  # type: ignore[attr-defined]
                           else not math.isclose(cfg, 1.0))
            u = model(x, sigma, uncond) if need_uncond else c  # ComfyUI skips it at CFG 1
            counter.forward += b if need_uncond else 0
            scale = cfg if policy is None else policy(c, u, x, sigma, state).reshape(-1, 1, 1, 1)
            if not need_uncond:  # CFG 1 without the branch: cond + (cond - cond)·scale = cond
                scale = 1.0
            return cs.cfg_function(None, c, u, scale, x, sigma, model_options=opts)

        def noise_sampler(sigma, sigma_next):
            return torch.stack([torch.randn(1, 16, 16, generator=g) for g in gens])

        kw = {"noise_sampler": noise_sampler} if sampler == "euler_a" else {}
        x = msamp.noise_scaling(sigmas[0], noise, torch.zeros_like(noise), max_denoise=True)
        with torch.no_grad():
            out = fn(_DenoiserShim(denoise, msamp), x, sigmas, disable=True, **kw)
        sample.last_state = state
        return out

    sample.sigmas = sigmas
    sample.counter = counter
    sample.replays = policy is None  # a CFG policy keeps per-step state the replayed calls would skip
    return sample


class _DenoiserShim:
    def __init__(self, fn, model_sampling):
        self.fn = fn
        self.inner_model = _Inner(model_sampling)

    def __call__(self, x, sigma, **kw):
        return self.fn(x, sigma, **kw)
