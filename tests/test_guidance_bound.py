"""The guard's push is bounded at every σ: max_step · min(r, R) per element, r the noise-to-signal ratio,
R 15 in vp and 4 in flow.

The real schedules of each model family (flow starting at σ = 1, zero-terminal-SNR vp) are checked in
the real ComfyUI by tests/integration/test_guidance_bounds.py; these are the rule's own cases.
"""
from __future__ import annotations

import math

import pytest
import torch

from cpsample_nodes.core import Guard, GuardConfig, GuardNet, NoiseSpace


def _guard(kind: str, channels: int = 4) -> Guard:
    torch.manual_seed(0)
    space = NoiseSpace.vp() if kind == "vp" else NoiseSpace.flow()
    return Guard(GuardNet(GuardConfig(in_channels=channels, widths=(16, 32))), space)


def _push_rms(guard: Guard, sigma: float, max_step: float | None = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    denoised = torch.randn(4, guard.latent_channels, 8, 8, generator=g)
    x = denoised + min(sigma, 10.0) * torch.randn(4, guard.latent_channels, 8, 8, generator=g)
    out = guard.guide(denoised, x, sigma, alpha=0.5, scale=1e6, max_step=max_step)
    assert torch.isfinite(out).all()
    return (out - denoised).pow(2).flatten(1).mean(1).sqrt()


@pytest.mark.parametrize("kind,sigma,bound", [
    ("vp", 0.05, 0.05), ("vp", 1.0, 1.0), ("vp", 3.5, 3.5), ("vp", 14.6146, 14.6146), ("vp", 15.0, 15.0), ("vp", 4518.76, 15.0),
    ("flow", 0.05, 0.05 / 0.95), ("flow", 0.5, 1.0), ("flow", 0.75, 3.0), ("flow", 0.9, 4.0), ("flow", 0.999, 4.0),
    ("flow", 1.0, 4.0),
])
def test_push_reaches_but_never_passes_its_bound(kind: str, sigma: float, bound: float) -> None:
    guard = _guard(kind)
    assert float(guard.space.push_bound(torch.tensor([sigma]))[0]) == pytest.approx(bound, rel=1e-6)
    rms = _push_rms(guard, sigma)
    # a scale of 1e6 with the gate wide open saturates the cap: the push is exactly the bound
    assert torch.allclose(rms, torch.full_like(rms, bound), rtol=1e-4), (kind, sigma, rms)


def test_bound_scales_with_max_step() -> None:
    guard = _guard("flow")
    # at flow's σ = 1 the bound is 4 units per max_step: max_step 0.25 gives 1
    assert torch.allclose(_push_rms(guard, 1.0, max_step=0.25), torch.full((4,), 1.0), rtol=1e-4)


def test_below_the_ceiling_the_bound_is_the_x0_predictions_noise() -> None:
    # vp up to SD's σ_max (every standard vp schedule), flow up to σ 0.8 (r = 4, the widest calibration
    # window): the cap is the noise still in the x0 prediction, as it always was
    for kind in ("vp", "flow"):
        space = _guard(kind).space
        sigma = torch.linspace(space.sigma_min, 14.6146 if kind == "vp" else 0.8, 50)
        r = sigma if kind == "vp" else sigma / (1 - sigma)
        assert torch.allclose(space.push_bound(sigma), r, rtol=1e-5)


def test_flow_noise_to_signal_is_infinite_at_sigma_one_and_the_bound_is_not() -> None:
    space = _guard("flow").space
    assert math.isinf(float(space.noise_to_signal(torch.tensor(1.0))))
    assert float(space.push_bound(torch.tensor(1.0))) == 4.0


def test_uncapped_paper_form_stays_available() -> None:
    # max_step None: the paper's uncapped step, for the benchmarks that compare with it
    guard = _guard("vp")
    assert float(_push_rms(guard, 2.0, max_step=None).min()) > 2.0
