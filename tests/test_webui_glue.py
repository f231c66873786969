"""The A1111/Forge glue without a webui: settings and infotext, the cond+uncond batch, the timestep
samplers, the family checks, refusals, and that nothing is left hooked after an error.

What only A1111 does (it cannot run here) is covered by these tests on the glue; the behaviour in a
real Forge is in tests/forge/test_webui_*.py.
"""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cpsample_nodes.core import Guard, GuardFileError, GuardNet, NoiseSpace, TrainingStopped, load_guard, save_guard
from cpsample_nodes.core.network import GuardConfig
from cpsample_nodes.usecases import guard_files as guards
from cpsample_nodes.usecases.guided_step import GuidedStep, PostCFG
from cpsample_nodes.usecases.model import GuardMismatch, ModelFamily, check_guard
from cpsample_nodes.usecases.settings import AppliedSettings, resolve_settings
from cpsample_nodes.webui import a1111, generation
from cpsample_nodes.webui.family import forge_family, forge_noise_space, forge_sampling_predictor
from cpsample_nodes.webui.settings import ARGS, INFOTEXT, Settings, SettingsError, restore_values
from cpsample_nodes.webui.train import TrainRequest, train

SD15 = ModelFamily("SD15", 4, "ModelSamplingDiscrete+EPS", "vp")


def sd_alphas(n: int = 1000) -> torch.Tensor:
    """SD1.5's schedule (scaled linear betas 0.00085 … 0.012)."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, n, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def tiny_guard(channels: int = 4, kind: str = "vp", latent_format: str | None = "SD15") -> Guard:
    with torch.inference_mode(False):
        net = GuardNet(GuardConfig.for_latents((2, channels, 8, 8)))
    space = NoiseSpace.vp() if kind == "vp" else NoiseSpace.flow()
    return Guard(net, space, {"latent_format": latent_format} if latent_format else {})


class Proc:
    """A processing object (A1111's StableDiffusionProcessing is a plain class, weakly referenceable)."""


def manual(scale: float, alpha: float) -> AppliedSettings:
    return AppliedSettings({"scale": scale, "alpha": alpha}, False, "manual")


class RecordingGuidance:
    """Stands in for GuidedStep where a test needs to see what it was given: adds a fixed shift to x0."""

    def __init__(self, shift: float = 0.0):
        self.shift = shift
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def __call__(self, denoised, x, sigma, key, make_space, percent_to_sigma):
        self.calls.append((denoised.clone(), x.clone(), sigma.clone()))
        return denoised if self.shift == 0 else denoised + self.shift


# --- settings and infotext ----------------------------------------------------------------------

def test_settings_from_positional_args_partial_list_and_dict():
    s = Settings.from_args([True, "g.safetensors", 500, 0.2])
    assert (s.enabled, s.guard, s.scale, s.alpha, s.end_percent) == (True, "g.safetensors", 500.0, 0.2, 1.0)
    assert Settings.from_args([{"enabled": True, "guard": "g", "alpha": 0.3}]).alpha == 0.3
    # the webui fills the places after a dict with the accordion's defaults
    assert Settings.from_args([{"enabled": True, "guard": "g"}, False, "", 7.0]).scale == Settings().scale
    with pytest.raises(SettingsError, match="unknown CPSample setting 'strength'"):
        Settings.from_args([{"strength": 2}])
    with pytest.raises(SettingsError, match=f"at most {len(ARGS)} args"):
        Settings.from_args([True] * (len(ARGS) + 1))
    with pytest.raises(SettingsError, match="scale must be a float, got 'big'"):
        Settings.from_args([True, "g", "big"])


@pytest.mark.parametrize("bad, message", [
    (dict(enabled=True, guard=""), "no guard is chosen"),
    (dict(scale=-1.0), r"scale must lie in \[0, 100000\], got -1"),
    (dict(alpha=0.7), r"alpha must lie in \[0, 0.5\], got 0.7"),
    (dict(start_percent=0.6, end_percent=0.4), r"start_percent \(0.6\) must be below end_percent \(0.4\)"),
    (dict(objective="away"), "objective must be one of uncertainty, opposite, got 'away'"),
    (dict(guard_input="latent"), "guard_input must be one of denoised, noisy, got 'latent'"),
    (dict(alpha=float("nan")), "alpha must lie"),
])
def test_settings_refuse_bad_values_naming_them(bad, message):
    with pytest.raises(SettingsError, match=message):
        Settings(**{"guard": "g", **bad}).validate()


def test_infotext_round_trip_through_strings():
    s = Settings(enabled=True, guard="sub/my guard.safetensors", scale=1234.5, alpha=0.25, start_percent=0.1,
                 end_percent=0.9, objective="opposite", guard_input="noisy", use_calibration=False)
    written = s.infotext()
    assert written[INFOTEXT["use_calibration"]] == "off"
    # the webui hands pasted values back as strings
    assert Settings.from_infotext({k: str(v) for k, v in written.items()}) == s
    assert Settings.from_infotext({"Steps": "20"}) == Settings()  # no CPSample keys: off
    assert restore_values({"Steps": "20"}) == {"enabled": False}


def test_xyz_axes_override_settings_and_turn_protection_on():
    settings = Settings.from_args((False, "g", 1000.0, 0.01), overrides={"scale": 50.0})
    assert settings.enabled and settings.scale == 50.0 and settings.alpha == 0.01
    assert not Settings.from_args((False, "g")).enabled
    # settings are checked once protection is on, not while it is off
    assert not Settings.from_args((False, "g", 1.0, 0.9)).enabled
    with pytest.raises(SettingsError, match="alpha must lie"):
        Settings.from_args((False, "g", 1.0, 0.9), overrides={"scale": 5.0})


# --- calibration ---------------------------------------------------------------------------------

class CalibratedGuard(Guard):
    def calibrated_settings(self):
        return {"scale": 321.0, "alpha": 0.2, "max_step": None, "sigma_max": 2.0}


def test_calibration_applies_unless_off_or_pinned():
    base = tiny_guard()
    guard = CalibratedGuard(base.net, base.space, base.info)
    used = resolve_settings(guard, 1000.0, 0.01)
    assert used.calibrated and used.guide == {"scale": 321.0, "alpha": 0.2, "max_step": None, "sigma_max": 2.0}
    assert used.description == "calibrated settings scale 321, α 0.2, max step none, σ ≤ 2"
    pinned = resolve_settings(guard, 1000.0, 0.01, pinned=frozenset({"scale"}))  # an X/Y/Z axis wins
    assert pinned.scale == 1000.0 and pinned.alpha == 0.2
    off = resolve_settings(guard, 1000.0, 0.01, use_calibration=False)
    assert not off.calibrated and off.guide == {"scale": 1000.0, "alpha": 0.01}
    zero = resolve_settings(guard, 0.0, 0.01)  # scale 0 is off, always
    assert not zero.calibrated and zero.scale == 0.0 and "protection off" in zero.description
    plain = resolve_settings(base, 1000.0, 0.01)  # a guard without a calibration
    assert not plain.calibrated and plain.scale == 1000.0
    assert plain.description.startswith("manual settings scale 1000, α 0.01 (this guard has no calibration")


# --- A1111: the cond+uncond batch ----------------------------------------------------------------

def _cfg_batch(x: torch.Tensor, sigma: torch.Tensor, conds_per_item: list[int]):
    """What A1111's CFGDenoiser passes to on_cfg_denoiser: each item repeated per prompt, then the batch."""
    x_in = torch.cat([torch.stack([x[i]] * n) for i, n in enumerate(conds_per_item)] + [x])
    s_in = torch.cat([torch.stack([sigma[i]] * n) for i, n in enumerate(conds_per_item)] + [sigma])
    return x_in, s_in


def _session(p, guidance, alphas=None):
    sch = a1111.DiscreteSchedule(sd_alphas() if alphas is None else alphas)
    return a1111.Session(p, guidance, sch, "ModelSamplingDiscrete+EPS")


def test_a1111_guides_the_plain_batch_out_of_cond_uncond():
    torch.manual_seed(0)
    x, sigma = torch.randn(2, 4, 8, 8), torch.tensor([3.0, 3.0])
    x_in, s_in = _cfg_batch(x, sigma, [2, 1])  # item 0 has an AND prompt: 2 conds
    assert x_in.shape[0] == 5
    p = Proc()
    rec = RecordingGuidance(shift=0.5)
    session = _session(p, rec)
    denoiser = SimpleNamespace(p=p)
    session.on_denoiser(SimpleNamespace(x=x_in, sigma=s_in, denoiser=denoiser))
    denoised = torch.randn(2, 4, 8, 8)
    params = SimpleNamespace(x=denoised)
    session.on_after_cfg(params)
    _, seen_x, seen_sigma = rec.calls[0]
    assert torch.equal(seen_x, x) and torch.equal(seen_sigma, sigma)
    assert torch.equal(params.x, denoised + 0.5)


def test_a1111_leaves_other_generations_alone():
    p, other = Proc(), Proc()
    rec = RecordingGuidance(shift=1.0)
    a1111.begin(p, rec, SimpleNamespace(alphas_cumprod=sd_alphas()), SD15)
    try:
        x = torch.randn(1, 4, 8, 8)
        params = SimpleNamespace(x=x)
        a1111.on_cfg_denoiser(SimpleNamespace(x=torch.cat([x, x]), sigma=torch.ones(2),
                                              denoiser=SimpleNamespace(p=other)))
        a1111.on_cfg_after_cfg(params)
        assert params.x is x and not rec.calls
    finally:
        a1111.end()


def test_a1111_after_an_error_nothing_stays_hooked():
    """A generation that fails skips postprocess; its session must not touch the next generation,
    and the next CPSample process() (even one that is off) drops it."""
    failed, nxt = Proc(), Proc()

    class Boom:
        def __call__(self, *a, **k):
            raise RuntimeError("guard failed")

    a1111.begin(failed, Boom(), SimpleNamespace(alphas_cumprod=sd_alphas()), SD15)
    x = torch.randn(1, 4, 8, 8)
    a1111.on_cfg_denoiser(SimpleNamespace(x=torch.cat([x, x]), sigma=torch.ones(2),
                                          denoiser=SimpleNamespace(p=failed)))
    with pytest.raises(RuntimeError):  # A1111 reports and swallows this; the step is then unguided
        a1111.on_cfg_after_cfg(SimpleNamespace(x=x))
    # the next generation (no CPSample) runs while the failed session is still registered
    params = SimpleNamespace(x=x)
    a1111.on_cfg_denoiser(SimpleNamespace(x=torch.cat([x, x]), sigma=torch.ones(2),
                                          denoiser=SimpleNamespace(p=nxt)))
    a1111.on_cfg_after_cfg(params)
    assert params.x is x
    a1111.end(nxt)  # another generation's end does not drop it ...
    assert a1111.active() is not None
    a1111.end()  # ... CPSample's next process() does
    assert a1111.active() is None
    a1111.on_cfg_after_cfg(params)  # and with no session the callbacks do nothing
    assert params.x is x


# --- A1111: timestep samplers (DDIM, PLMS, UniPC) ------------------------------------------------

def test_timestep_conversion_is_exact_both_ways():
    ac = sd_alphas()
    torch.manual_seed(1)
    x0, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([999.0, 500.0, 1.0])
    a = ac.float()[t.long()].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    got_x0, x_k, sigma = a1111.timestep_to_k(x_t, t, eps, ac)
    assert torch.allclose(got_x0, x0, atol=1e-3)
    assert torch.allclose(sigma, ((1 - a) / a).sqrt().flatten())
    assert torch.allclose(x_k, x0 + sigma.view(-1, 1, 1, 1) * eps, atol=1e-3)  # k-diffusion form
    assert torch.allclose(a1111.k_to_eps(x_t, t, x0, ac), eps, atol=1e-3)


def test_timestep_sampler_gets_the_guided_x0_back_as_eps():
    ac = sd_alphas()
    torch.manual_seed(2)
    x0, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    t = torch.tensor([400.0])
    a = ac.float()[400]
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    p = Proc()
    rec = RecordingGuidance(shift=0.25)
    session = _session(p, rec, ac)
    denoiser = type("CFGDenoiserTimesteps", (), {})()
    denoiser.p, denoiser.alphas = p, ac.float()
    session.on_denoiser(SimpleNamespace(x=torch.cat([x_t, x_t]), sigma=torch.cat([t, t]), denoiser=denoiser))
    params = SimpleNamespace(x=eps.clone())
    session.on_after_cfg(params)
    seen_x0, seen_x, seen_sigma = rec.calls[0]
    assert torch.allclose(seen_x0, x0, atol=1e-3)
    assert math.isclose(float(seen_sigma), float(((1 - a) / a).sqrt()), rel_tol=1e-5)
    # stepping on the new ε is stepping on x0 + 0.25
    new_x0 = (x_t - (1 - a).sqrt() * params.x) / a.sqrt()
    assert torch.allclose(new_x0, x0 + 0.25, atol=1e-3)
    # untouched guidance hands back the sampler's own ε, bit for bit
    same = _session(p, RecordingGuidance(shift=0.0), ac)
    same.on_denoiser(SimpleNamespace(x=torch.cat([x_t, x_t]), sigma=torch.cat([t, t]), denoiser=denoiser))
    params = SimpleNamespace(x=eps)
    same.on_after_cfg(params)
    assert params.x is eps


def test_timestep_sampler_without_a_schedule_is_refused_clearly():
    denoiser = type("CFGDenoiserTimesteps", (), {})()
    with pytest.raises(a1111.Unsupported, match="use a k-diffusion sampler"):
        a1111.timestep_alphas(denoiser)
    assert a1111.timestep_alphas(SimpleNamespace()) is None  # k-diffusion denoisers


def test_discrete_schedule_matches_the_model_sigmas():
    ac = sd_alphas()
    sch = a1111.DiscreteSchedule(ac)
    sig = ((1 - ac) / ac).sqrt()
    assert math.isclose(sch.sigma(0), float(sig[0]), rel_tol=1e-9)
    assert math.isclose(sch.sigma(999), float(sig[999]), rel_tol=1e-9)
    assert sch.percent_to_sigma(0.0) > 1e8 and sch.percent_to_sigma(1.0) == 0.0
    assert math.isclose(sch.percent_to_sigma(0.5), float((0.5 * (sig[499].log() + sig[500].log())).exp()),
                        rel_tol=1e-6)
    space = sch.space("ModelSamplingDiscrete+EPS")
    assert space.kind == "vp" and math.isclose(space.sigma_max, float(sig[-1]), rel_tol=1e-6)


def test_a1111_family_and_sd3_refusal():
    assert a1111.family(SimpleNamespace(is_sdxl=False, parameterization="eps")) == SD15
    xl = a1111.family(SimpleNamespace(is_sdxl=True, parameterization="v"))
    assert (xl.latent_format, xl.model_sampling) == ("SDXL", "ModelSamplingDiscrete+V_PREDICTION")
    with pytest.raises(a1111.Unsupported, match="for SD3 use Forge or ComfyUI"):
        a1111.family(SimpleNamespace(is_sd3=True))


# --- a real guard through the A1111 path ---------------------------------------------------------

def test_real_guard_steers_through_the_a1111_callbacks_and_scale_zero_does_not():
    # alpha 0.5 opens the gate wherever p ≠ ½: an untrained guard's gradient is enough to see it act
    guard = tiny_guard()
    p = Proc()
    x0 = torch.randn(2, 4, 8, 8)
    sigma = torch.tensor([0.5, 0.5])
    x = x0 + sigma.view(-1, 1, 1, 1) * torch.randn_like(x0)
    x_in, s_in = _cfg_batch(x, sigma, [1, 1])
    outs = {}
    for scale in (0.0, 5000.0):
        g = GuidedStep(guard, manual(scale, 0.5), 0.0, 1.0)
        session = _session(p, g)
        session.on_denoiser(SimpleNamespace(x=x_in, sigma=s_in, denoiser=SimpleNamespace(p=p)))
        params = SimpleNamespace(x=x0.clone())
        session.on_after_cfg(params)
        outs[scale] = params.x
    assert torch.equal(outs[0.0], x0)
    assert (outs[5000.0] - x0).abs().max() > 1e-3


def test_window_outside_leaves_steps_alone():
    g = GuidedStep(tiny_guard(), manual(5000.0, 0.5), 0.0, 0.2)  # only the first fifth (high σ)
    sch = a1111.DiscreteSchedule(sd_alphas())
    x0 = torch.randn(1, 4, 8, 8)
    out = g(x0, x0, torch.tensor([0.1]), "k", lambda: sch.space("s"), sch.percent_to_sigma)
    assert out is x0 and g.steps == 0


# --- Forge's post-CFG function -------------------------------------------------------------------

class FakeForgePrediction(torch.nn.Module):
    """Forge's backend Prediction formulas (its noise_scaling does not reshape σ)."""

    def __init__(self, prediction_type="epsilon"):
        super().__init__()
        self.prediction_type = prediction_type
        ac = sd_alphas().float()
        self.sigmas = ((1 - ac) / ac).sqrt()

    def calculate_input(self, sigma, noise):
        return noise / (sigma.view(sigma.shape[:1] + (1,) * (noise.ndim - 1)) ** 2 + 1) ** 0.5

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        return noise * sigma + latent_image

    def set_sigmas(self, sigmas):
        self.sigmas = sigmas.float()

    def percent_to_sigma(self, percent):
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return float(a1111.DiscreteSchedule(sd_alphas()).percent_to_sigma(percent))


FakeForgePrediction.__name__ = "Prediction"


def test_forge_family_uses_comfyui_names():
    SD15Format = type("SD15", (), {"latent_channels": 4})
    unet = SimpleNamespace(model=SimpleNamespace(predictor=FakeForgePrediction()))
    sd_model = SimpleNamespace(model_config=SimpleNamespace(latent_format=SD15Format()),
                               forge_objects=SimpleNamespace(unet=unet))
    assert forge_family(sd_model) == SD15
    v = FakeForgePrediction("v_prediction")
    unet.model.predictor = v
    assert forge_family(sd_model).model_sampling == "ModelSamplingDiscrete+V_PREDICTION"
    unet.model.predictor = FakeForgePrediction("const")
    assert forge_family(sd_model).noise_kind == "flow"


def _zero_terminal(sigmas):
    """Forge's backend.modules.k_prediction.rescale_zero_terminal_snr_sigmas (as ComfyUI's)."""
    a = 1 / (sigmas * sigmas + 1)
    s = a.sqrt()
    s0, st = s[0].clone(), s[-1].clone()
    s = (s - st) * s0 / (s0 - st)
    a = s**2
    a[-1] = 4.8973451890853435e-08
    return ((1 - a) / a) ** 0.5


def test_forge_sampling_predictor_follows_forges_zero_terminal_snr(monkeypatch):
    # Forge rescales the predictor's sigmas only around each sampling call (model_config.ztsnr from the
    # checkpoint's marker, or the "Noise schedule for sampling" option); training sees the loaded predictor
    import sys
    import types
    kp = types.ModuleType("backend.modules.k_prediction")
    kp.rescale_zero_terminal_snr_sigmas = _zero_terminal
    opts = SimpleNamespace(sd_noise_schedule="Default")
    for name, mod in (("backend", types.ModuleType("backend")), ("backend.modules", types.ModuleType("backend.modules")),
                      ("backend.modules.k_prediction", kp), ("modules", types.ModuleType("modules")),
                      ("modules.shared", SimpleNamespace(opts=opts))):
        monkeypatch.setitem(sys.modules, name, mod)
    predictor = FakeForgePrediction("v_prediction")
    plain = predictor.sigmas.clone()
    config = SimpleNamespace(latent_format=type("SDXL", (), {"latent_channels": 4})())
    sd_model = SimpleNamespace(model_config=config,
                               forge_objects=SimpleNamespace(unet=SimpleNamespace(model=SimpleNamespace(predictor=predictor))))
    assert forge_sampling_predictor(sd_model) is predictor  # no marker, option Default: the plain schedule
    for marker, option in ((True, "Default"), (False, "Zero Terminal SNR")):
        config.ztsnr, opts.sd_noise_schedule = marker, option
        rescaled = forge_sampling_predictor(sd_model)
        assert rescaled is not predictor and torch.equal(predictor.sigmas, plain)  # the loaded one is left alone
        assert math.isclose(float(rescaled.sigmas[0]), float(plain[0]), rel_tol=1e-5)
        assert 4000 < float(rescaled.sigmas[-1]) < 5000 and float(plain[-1]) < 15
        assert rescaled.prediction_type == "v_prediction"
    # inside a generation Forge has rescaled already: not twice
    predictor.set_sigmas(_zero_terminal(plain))
    assert forge_sampling_predictor(sd_model) is predictor


def test_forge_noise_space_noises_like_the_builtin_vp():
    space = forge_noise_space(FakeForgePrediction())
    x0, eps, s = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([0.5, 2.0])
    assert torch.allclose(space.noise(x0, s, eps), NoiseSpace.vp().noise(x0, s, eps))
    assert torch.allclose(space.model_input(x0, s), NoiseSpace.vp().model_input(x0, s))


def test_forge_post_cfg_passes_the_step_through():
    rec = RecordingGuidance(shift=1.0)
    fn = PostCFG(rec, generation.forge_sampling)
    d, x, s = torch.zeros(1, 4, 8, 8), torch.ones(1, 4, 8, 8), torch.tensor([2.0])
    out = fn({"denoised": d, "input": x, "sigma": s, "model": SimpleNamespace(predictor=FakeForgePrediction())})
    assert torch.equal(out, d + 1.0) and torch.equal(rec.calls[0][1], x)
    assert fn({"denoised": d, "input": x, "sigma": s, "model": None}) is d


# --- family checks and refusals ------------------------------------------------------------------

@pytest.mark.parametrize("guard_kw, message", [
    (dict(channels=16, latent_format="SD3"), "this guard takes 16-channel latents \\(SD3\\) but the model's latent "
                                             "format SD15 has 4 channels"),
    (dict(latent_format="SDXL"), "trained on SDXL latents but the model uses SD15 latents"),
    (dict(kind="flow"), "trained for a flow model but this model's sampling \\(ModelSamplingDiscrete\\+EPS\\) is vp"),
])
def test_family_mismatch_says_why(guard_kw, message):
    with pytest.raises(GuardMismatch, match=message):
        check_guard(tiny_guard(**guard_kw), SD15)
    check_guard(tiny_guard(), SD15)  # the right family passes


def test_prepare_refuses_with_the_guard_name_and_refusal_reaches_sampling(tmp_path):
    save_guard(tiny_guard(latent_format="SDXL"), tmp_path / "xl.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"not a guard")
    s = Settings(enabled=True, guard="xl.safetensors")
    with pytest.raises(generation.Refused, match="guard 'xl.safetensors' does not fit this model: this guard was "
                                              "trained on SDXL latents"):
        generation.prepare(s, SD15, tmp_path)
    with pytest.raises(generation.Refused, match="cannot load guard 'broken.safetensors': .*broken.safetensors: "
                                              "not a safetensors file"):
        generation.prepare(Settings(enabled=True, guard="broken.safetensors"), SD15, tmp_path)
    with pytest.raises(generation.Refused, match="guard 'missing' not found in .* \\(it has: broken.safetensors, "
                                              "xl.safetensors\\)"):
        generation.prepare(Settings(enabled=True, guard="missing"), SD15, tmp_path)
    p = Proc()
    err = generation.Refused("why")
    generation.refuse(p, err)
    with pytest.raises(generation.Refused, match="why") as info:
        p.sample(conditioning=None)
    # the webui's API answers with the exception's own status_code and detail (vars(e), not the class)
    assert vars(info.value).get("status_code") == 400 and vars(info.value).get("detail") == "why"


def test_prepare_writes_what_was_used_into_the_infotext(tmp_path):
    save_guard(tiny_guard(), tmp_path / "ok.safetensors")
    prepared = generation.prepare(Settings(enabled=True, guard="ok.safetensors", scale=0.0), SD15, tmp_path)
    assert prepared.step.scale == 0.0
    assert prepared.infotext[INFOTEXT["guard"]] == "ok.safetensors"
    assert prepared.infotext[INFOTEXT["scale"]] == 0.0


# --- guard files ---------------------------------------------------------------------------------

def test_guard_names_stay_inside_the_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    save_guard(tiny_guard(), tmp_path / "sub" / "a.safetensors")
    (tmp_path / "notes.txt").write_text("x")
    assert guards.list_guards(tmp_path) == ["sub/a.safetensors"]
    assert guards.resolve(tmp_path, "sub/a") == (tmp_path / "sub" / "a.safetensors").resolve()
    with pytest.raises(Exception, match="outside"):
        guards.resolve(tmp_path / "sub", "../../etc/passwd")
    with pytest.raises(ValueError, match="not allowed"):
        guards.new_path(tmp_path, "../evil")
    first = guards.new_path(tmp_path / "sub", "a")
    assert first.name == "a_00001.safetensors"
    assert guards.new_path(tmp_path / "sub", "a", overwrite=True).name == "a.safetensors"
    g1 = guards.load(tmp_path, "sub/a.safetensors")
    assert guards.load(tmp_path, "sub/a.safetensors") is g1  # cached while the file is unchanged


# --- training --------------------------------------------------------------------------------------

def _image_folder(path: Path, n: int, size: int = 32) -> Path:
    from PIL import Image

    path.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(n)
    for i in range(n):
        arr = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(path / f"img{i}.png")
    return path


def _encode(images: torch.Tensor) -> torch.Tensor:
    """A stand-in VAE: 8× average pooling and a fourth channel (latents shaped like SD1.5's)."""
    x = images.permute(0, 3, 1, 2)
    x = torch.nn.functional.avg_pool2d(x, 8) * 2 - 1
    return torch.cat([x, x.mean(1, keepdim=True)], 1)


def test_train_request_names_bad_fields():
    with pytest.raises(ValueError, match="no training images"):
        TrainRequest.from_dict({"folder": " "})
    with pytest.raises(ValueError, match="unknown field 'steps'"):
        TrainRequest.from_dict({"folder": "x", "steps": 3})
    with pytest.raises(ValueError, match="max_steps must be a whole number, got 'many'"):
        TrainRequest.from_dict({"folder": "x", "max_steps": "many"})
    with pytest.raises(ValueError, match="resolution_policy must be one of resize, crop, exact"):
        TrainRequest.from_dict({"folder": "x", "resolution_policy": "stretch"})
    assert TrainRequest.from_dict({"folder": "x", "max_steps": 10.0}).max_steps == 10
    assert TrainRequest.from_dict({"folder": "x"}).heads == 3  # requests made before heads existed: the default
    with pytest.raises(ValueError, match="heads must lie between 1 and 16, got 0"):
        TrainRequest.from_dict({"folder": "x", "heads": 0})


def test_train_saves_a_guard_that_loads_and_a_stop_saves_nothing(tmp_path):
    folder = _image_folder(tmp_path / "imgs", 4)
    out = tmp_path / "models" / "cpsample"
    req = TrainRequest.from_dict({"folder": str(folder), "name": "mine", "max_steps": 3, "batch_size": 4,
                                  "heads": 3})
    seen = []
    result = train(req, encode=_encode, family=SD15, space=NoiseSpace.vp(), out_folder=out, host="test",
                   progress=lambda s, t, text: seen.append((s, t)))
    assert result["name"] == "mine.safetensors" and seen[-1][1] == 3
    assert "3 heads, 3 steps" in result["report"]
    g = load_guard(result["path"])
    assert g.heads == 3 and g.info["heads"] == 3
    assert g.info["latent_format"] == "SD15" and g.info["model_sampling"] == "ModelSamplingDiscrete+EPS"
    assert g.info["n_images"] == 4 and g.info["host"] == "test"
    check_guard(g, SD15)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(TrainingStopped):
        train(req, encode=_encode, family=SD15, space=NoiseSpace.vp(), out_folder=out, host="test",
              should_stop=lambda: True)
    assert sorted(p.name for p in out.iterdir()) == before  # no new file, no temporary left behind


def test_train_refuses_empty_folder_wrong_vae_and_class_duplicates(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    kw = dict(encode=_encode, family=SD15, space=NoiseSpace.vp(), out_folder=tmp_path / "out", host="test")
    with pytest.raises(ValueError, match=f"image folder {empty} is empty"):
        train(TrainRequest(folder=str(empty)), **kw)
    folder = _image_folder(tmp_path / "imgs", 3)
    with pytest.raises(ValueError, match="the VAE makes 3-channel latents but the model's latent format SD15 has 4"):
        train(TrainRequest(folder=str(folder)), **{**kw, "encode": lambda im: _encode(im)[:, :3]})
    with pytest.raises(ValueError, match="class image #0 is the training image img0.png"):
        train(TrainRequest(folder=str(folder), class_folder=str(folder)), **kw)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --- API input -------------------------------------------------------------------------------------

def test_api_check_names_bad_images():
    from cpsample_nodes.webui import api

    with pytest.raises(ValueError, match="images must be a non-empty list"):
        api.check({"folder": "x"})
    with pytest.raises(ValueError, match=r"images\[1\] is not a readable base64 image"):
        from PIL import Image

        ok = api.encode_png(Image.new("RGB", (8, 8)))
        api.check({"images": [ok, "bm90IGFuIGltYWdl"], "folder": "x"})


def test_a_guard_file_with_a_calibration_steers_with_it(tmp_path):
    guard = tiny_guard()
    if not callable(getattr(guard, "calibrated_settings", None)):
        pytest.skip("this core has no guard calibration")
    guard.info["calibration"] = {"settings": {"scale": 200.0, "alpha": 0.1, "sigma_max": 1.5}}
    save_guard(guard, tmp_path / "cal.safetensors")
    prepared = generation.prepare(Settings(enabled=True, guard="cal.safetensors"), SD15, tmp_path)
    assert prepared.step.settings.calibrated
    assert prepared.step.kwargs["sigma_max"] == 1.5
    assert prepared.infotext[INFOTEXT["scale"]] == 200.0 and prepared.infotext[INFOTEXT["alpha"]] == 0.1
    guard.info["calibration"] = {"settings": {"scale": 200.0, "alpha": 3.0}}  # a hand-edited file
    save_guard(guard, tmp_path / "edited.safetensors")
    with pytest.raises(generation.Refused, match="guard 'edited.safetensors' has an unusable calibration: .*alpha"):
        generation.prepare(Settings(enabled=True, guard="edited.safetensors"), SD15, tmp_path)
    # the calibration checkbox off: the sliders steer
    manual = generation.prepare(Settings(enabled=True, guard="cal.safetensors", use_calibration=False), SD15, tmp_path)
    assert not manual.step.settings.calibrated and manual.infotext[INFOTEXT["scale"]] == Settings().scale


# --- one generation through the script's calls (what scripts/cpsample.py forwards) -----------------

class FakeA1111Model:
    is_sdxl = False
    parameterization = "eps"

    def __init__(self):
        self.alphas_cumprod = sd_alphas().float()


class FakeUnetPatcher:
    """Forge's UnetPatcher as the hook uses it: clone() and set_model_sampler_post_cfg_function()."""

    def __init__(self):
        self.post_cfg = []

    def clone(self):
        c = FakeUnetPatcher()
        c.post_cfg = list(self.post_cfg)
        return c

    def set_model_sampler_post_cfg_function(self, fn, disable_cfg1_optimization=False):
        self.post_cfg.append(fn)


def _forge_model():
    SD15Format = type("SD15", (), {"latent_channels": 4})
    unet = FakeUnetPatcher()
    unet.model = SimpleNamespace(predictor=FakeForgePrediction())
    return SimpleNamespace(model_config=SimpleNamespace(latent_format=SD15Format()),
                           forge_objects=SimpleNamespace(unet=unet))


def _proc(sd_model):
    p = Proc()
    p.sd_model, p.extra_generation_params = sd_model, {}
    return p


def test_a1111_generation_from_process_to_postprocess(tmp_path):

    save_guard(tiny_guard(), tmp_path / "g.safetensors")
    p = _proc(FakeA1111Model())
    prepared = generation.start(p, (True, "g.safetensors", 5000.0, 0.5), tmp_path)
    assert prepared is not None and a1111.active() is not None
    assert p.extra_generation_params[INFOTEXT["guard"]] == "g.safetensors"
    x0 = torch.randn(1, 4, 8, 8)
    x = x0 + 2.0 * torch.randn_like(x0)
    a1111.on_cfg_denoiser(SimpleNamespace(x=torch.cat([x, x]), sigma=torch.tensor([2.0, 2.0]),
                                          denoiser=SimpleNamespace(p=p)))
    params = SimpleNamespace(x=x0)
    a1111.on_cfg_after_cfg(params)
    assert not torch.equal(params.x, x0)  # steered
    generation.before_sampling(p)  # nothing to do on A1111
    generation.after_batch(p)
    assert p.extra_generation_params["CPSample gate"].startswith("gate opened on 1 of 1 samples")
    generation.finish(p)
    assert a1111.active() is None
    # the next generation with CPSample off leaves everything alone and writes nothing
    q = _proc(FakeA1111Model())
    assert generation.start(q, (False, "g.safetensors"), tmp_path) is None
    assert a1111.active() is None and not q.extra_generation_params


def test_a1111_generation_refused_fails_at_sampling_and_hooks_nothing(tmp_path):

    save_guard(tiny_guard(latent_format="SDXL"), tmp_path / "xl.safetensors")
    p = _proc(FakeA1111Model())
    assert generation.start(p, (True, "xl.safetensors"), tmp_path) is None
    assert a1111.active() is None and not p.extra_generation_params
    with pytest.raises(generation.Refused, match="trained on SDXL latents but the model uses SD15 latents"):
        p.sample(conditioning=None, unconditional_conditioning=None)
    sd3 = _proc(SimpleNamespace(is_sd3=True))
    generation.start(sd3, (True, "xl.safetensors"), tmp_path)
    with pytest.raises(generation.Refused, match="for SD3 use Forge or ComfyUI"):
        sd3.sample()


def test_forge_generation_hooks_a_clone_of_the_unet_only(tmp_path):

    save_guard(tiny_guard(), tmp_path / "g.safetensors")
    model = _forge_model()
    original = model.forge_objects.unet
    p = _proc(model)
    generation.start(p, (True, "g.safetensors", 5000.0, 0.5), tmp_path)
    assert a1111.active() is None  # Forge needs no callbacks
    generation.before_sampling(p)
    hooked = model.forge_objects.unet
    assert hooked is not original and not original.post_cfg
    assert len(hooked.post_cfg) == 1 and isinstance(hooked.post_cfg[0], PostCFG)
    d = torch.randn(1, 4, 8, 8)
    out = hooked.post_cfg[0]({"denoised": d, "input": d + torch.randn_like(d), "sigma": torch.tensor([1.0]),
                              "model": original.model})
    assert not torch.equal(out, d)
    # scale 0: no hook at all (the same image bit for bit)
    model.forge_objects.unet = original
    zero = _proc(model)
    generation.start(zero, (True, "g.safetensors", 0.0, 0.5), tmp_path)
    generation.before_sampling(zero)
    assert model.forge_objects.unet is original


def test_api_credentials_as_the_webui_reads_them():
    from cpsample_nodes.webui import api

    creds = api.parse_auth("alice:s3cret,bob:pa:ss")
    assert creds == {"alice": "s3cret", "bob": "pa:ss"}
    assert api.authorized(creds, "alice", "s3cret")
    assert not api.authorized(creds, "alice", "wrong") and not api.authorized(creds, "eve", "s3cret")
    assert api.parse_auth(None) == {} and api.parse_auth("") == {}
    with pytest.raises(ValueError, match="'alice' has no ':password'"):
        api.parse_auth("alice")


# --- calibration -----------------------------------------------------------------------------------

def _decode(latents: torch.Tensor) -> torch.Tensor:
    """The stand-in VAE's way back: IMAGE [N, 8h, 8w, 3] in [0, 1]."""
    x = torch.nn.functional.interpolate(latents[:, :3], scale_factor=8, mode="nearest")
    return ((x + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)


@pytest.fixture(scope="module")
def calibration_setup(tmp_path_factory):
    """A guard trained through the webui glue on 8 images, and a closed-form model that copies their latents
    about half the time (the exact denoiser of a mixture: the training latents and a wide Gaussian)."""
    from benchmarks.calibration_samplers import denoiser, schedule, seeded_sampler
    from benchmarks.mixture import Mixture

    root = tmp_path_factory.mktemp("calibrate")
    folder = _image_folder(root / "imgs", 8)
    out = root / "models" / "cpsample"
    req = TrainRequest.from_dict({"folder": str(folder), "name": "mine", "max_steps": 1500, "batch_size": 8,
                                  "seed": 2})
    train(req, encode=_encode, family=SD15, space=NoiseSpace.vp(), out_folder=out, host="test")
    from cpsample_nodes.core import images as imgs
    latents = _encode(imgs.load_image_folder(folder)[0])
    space = NoiseSpace.vp()
    den = denoiser(Mixture(latents.flatten(1), lam=0.5, tau=0.05), space)
    sigmas = schedule(space, 20)
    made = []

    def make_sampler(width: int, height: int):
        made.append((width, height))
        sample = seeded_sampler(den, "vp", sigmas, tuple(latents.shape[1:]), "euler_a", sigmas[0])
        sample.description = "euler_a 20 steps (closed form)"
        return sample

    return folder, out, make_sampler, made


def _calibrate_kw(out, make_sampler, **kw):
    from cpsample_nodes.webui.calibrate import calibrate_guard

    return calibrate_guard, dict(guards_dir=out, make_sampler=make_sampler, encode=lambda im, seed: _encode(im),
                                 decode=_decode, family=SD15, space=NoiseSpace.vp(), **kw)


def test_calibrate_request_names_bad_fields():
    from cpsample_nodes.webui.calibrate import CalibrateRequest

    with pytest.raises(ValueError, match="no guard chosen"):
        CalibrateRequest.from_dict({"guard": "", "folder": "x"})
    with pytest.raises(ValueError, match="no training images"):
        CalibrateRequest.from_dict({"guard": "g", "folder": " "})
    with pytest.raises(ValueError, match="probes must be between 8 and 4096 .* got 4"):
        CalibrateRequest.from_dict({"guard": "g", "folder": "x", "probes": 4})
    with pytest.raises(ValueError, match="cfg_scale must be a number, got 'high'"):
        CalibrateRequest.from_dict({"guard": "g", "folder": "x", "cfg_scale": "high"})
    with pytest.raises(ValueError, match="unknown field 'sampler'"):
        CalibrateRequest.from_dict({"guard": "g", "folder": "x", "sampler": "Euler"})
    req = CalibrateRequest.from_dict({"guard": "g", "folder": "x", "cfg_scale": 5, "probes": 16.0})
    assert req.cfg_scale == 5.0 and isinstance(req.cfg_scale, float) and req.probes == 16


def test_calibrate_writes_the_calibration_into_the_guard_file(calibration_setup):
    from cpsample_nodes.webui.calibrate import CalibrateRequest

    folder, out, make_sampler, made = calibration_setup
    fn, kw = _calibrate_kw(out, make_sampler)
    weights = load_guard(out / "mine.safetensors").net.state_dict()
    seen = []
    result = fn(CalibrateRequest(guard="mine", folder=str(folder), seed=500, probes=32), **kw,
                progress=lambda d, t, text: seen.append((d, t, text)))
    assert made[-1] == (32, 32)  # the guard's training size (width, height 0)
    report = result["report"]
    assert "8 training images" in report and "note: these are not exactly" not in report, report
    assert "reaches the target" in report and "probe seeds that copied" in report, report
    g = load_guard(out / "mine.safetensors")  # written into the guard's own file, weights unchanged
    assert result["name"] == "mine.safetensors" and g.info["calibration"] == result["calibration"]
    assert g.calibrated_settings() == result["calibration"]["settings"]
    assert g.info["calibration"]["sampler"] == "euler_a 20 steps (closed form)"
    assert all(torch.equal(weights[k], v) for k, v in g.net.state_dict().items())
    assert result["summary"].startswith("calibrated: ") and result["picture"].size[0] > 0
    assert seen and seen[-1][0] == seen[-1][1] and "model calls" in seen[-1][2]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_calibrate_save_as_keeps_the_guard_and_a_stop_writes_nothing(calibration_setup):
    from cpsample_nodes.core import CalibrationStopped
    from cpsample_nodes.webui.calibrate import CalibrateRequest

    folder, out, make_sampler, _ = calibration_setup
    fn, kw = _calibrate_kw(out, make_sampler)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(CalibrationStopped):
        fn(CalibrateRequest(guard="mine", folder=str(folder), seed=500, probes=8, save_as="copy"), **kw,
           should_stop=lambda: True)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    result = fn(CalibrateRequest(guard="mine", folder=str(folder), seed=900, probes=8, save_as="copy"), **kw)
    assert result["name"] == "copy.safetensors" and (out / "copy.safetensors").is_file()
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "copy.safetensors"} == before


def test_calibrate_refuses_bad_input_clearly(calibration_setup, tmp_path):
    from cpsample_nodes.webui.calibrate import CalibrateRequest

    folder, out, make_sampler, _ = calibration_setup
    fn, kw = _calibrate_kw(out, make_sampler)
    with pytest.raises(GuardFileError, match="guard 'nope' not found"):
        fn(CalibrateRequest(guard="nope", folder=str(folder)), **kw)
    with pytest.raises(GuardMismatch):
        fn(CalibrateRequest(guard="mine", folder=str(folder)),
           **{**kw, "family": ModelFamily("SDXL", 4, "ModelSamplingDiscrete+EPS", "vp")})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"image folder {empty} is empty"):
        fn(CalibrateRequest(guard="mine", folder=str(empty)), **kw)
    with pytest.raises(ValueError, match="width 32 and height 0: set both"):
        fn(CalibrateRequest(guard="mine", folder=str(folder), width=32), **kw)
    with pytest.raises(ValueError, match="guard name '../x' is not allowed"):
        fn(CalibrateRequest(guard="mine", folder=str(folder), save_as="../x"), **kw)
    with pytest.raises(ValueError, match="the VAE makes 3-channel latents but the guard takes 4"):
        fn(CalibrateRequest(guard="mine", folder=str(folder)), **{**kw, "encode": lambda im, s: _encode(im)[:, :3]})


# --- calibration probes through the webui's txt2img ------------------------------------------------

class _FakeTxt2Img:
    """The fields of A1111's StableDiffusionProcessingTxt2Img that the probe sampler sets."""

    def __init__(self, **kw):
        self.__dict__.update(kw)
        self.scripts = None
        self.closed = False

    def close(self):
        self.closed = True


def _fake_webui(monkeypatch, steps: int = 3, interrupt_after: int | None = None):
    """Just enough of ``modules`` for probes.ProbeSampler: process_images runs a k-diffusion-like loop that
    calls the CFG callbacks as A1111 does (Forge: the post-CFG functions of the UNet clone) and hands the
    latents to the scripts' post_sample. Each image's noise comes from its own seed."""
    import sys

    seen: dict = {"batches": [], "guided_calls": 0}
    state = SimpleNamespace(interrupted=False)

    def process_images(p):
        seen["batches"].append(p)
        seeds = p.seed
        x = torch.stack([torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(s)) * 3 for s in seeds])
        sigmas = torch.linspace(3.0, 0.0, steps + 1)
        if p.scripts is not None:
            p.scripts.process_before_every_sampling(p, x=x, noise=x, c=None, uc=None)
        for i in range(steps):
            s = sigmas[i].expand(len(seeds))
            denoised = x / (1 + s.view(-1, 1, 1, 1) ** 2)
            if hasattr(p.sd_model, "forge_objects"):
                for fn in p.sd_model.forge_objects.unet.post_cfg:
                    denoised = fn({"denoised": denoised, "input": x, "sigma": s, "model": None})
            else:
                a1111.on_cfg_denoiser(SimpleNamespace(x=torch.cat([x, x]), sigma=torch.cat([s, s]),
                                                      denoiser=SimpleNamespace(p=p)))
                params = SimpleNamespace(x=denoised)
                a1111.on_cfg_after_cfg(params)
                denoised = params.x
            x = denoised + (x - denoised) * (sigmas[i + 1] / sigmas[i])
            if interrupt_after is not None and len(seen["batches"]) > interrupt_after:
                state.interrupted = True
        ps = SimpleNamespace(samples=x)
        p.scripts.post_sample(p, ps)
        assert getattr(ps.samples, "already_decoded", False) and len(ps.samples) == len(seeds)
        torch.stack(list(ps.samples))  # the webui stacks the "decoded" batch

    modules = SimpleNamespace(
        processing=SimpleNamespace(StableDiffusionProcessingTxt2Img=_FakeTxt2Img, process_images=process_images),
        sd_samplers=SimpleNamespace(find_sampler_config=lambda n: object() if n in ("Euler", "Euler a") else None,
                                    all_samplers=[SimpleNamespace(name="Euler"), SimpleNamespace(name="Euler a")]),
        shared=SimpleNamespace(state=state))
    monkeypatch.setitem(sys.modules, "modules", modules)
    for name in ("processing", "sd_samplers", "shared"):
        monkeypatch.setitem(sys.modules, f"modules.{name}", getattr(modules, name))
    monkeypatch.setitem(sys.modules, "modules.sd_schedulers", None)  # an older webui: no schedule types
    return seen


def test_probes_run_the_webui_txt2img_with_the_guide_on_a1111(monkeypatch):
    from cpsample_nodes.core import CalibrationStopped
    from cpsample_nodes.webui.probes import ProbeSampler

    seen = _fake_webui(monkeypatch)
    sampler = ProbeSampler(FakeA1111Model(), SD15, "a red house", "", "Euler a", "Automatic", 3, 5.0, 64, 64)
    assert sampler.description == "Euler a/Automatic, 3 steps, cfg 5, 64x64 px (SD15 model)"
    plain = sampler(None, [7, 8, 9])
    p = seen["batches"][0]
    assert p.seed == [7, 8, 9] and p.batch_size == 3 and p.n_iter == 1 and p.prompt == "a red house"
    assert p.do_not_save_samples and p.do_not_save_grid and p.closed and p.width == 64 and p.steps == 3
    assert plain.shape == (3, 4, 8, 8)
    # a probe does not depend on its batch
    assert torch.allclose(sampler(None, [8]), plain[1:2])
    calls = []

    def guide(d, x, s):
        calls.append(d.shape[0])
        return d + 0.1

    guided = sampler(guide, [7, 8, 9])
    assert calls == [3, 3, 3]  # every model call of the batch, the plain batch out of cond + uncond
    assert not torch.allclose(guided, plain) and a1111.active() is None  # nothing stays hooked
    # a user's generation afterwards is not guided
    x = torch.randn(1, 4, 8, 8)
    params = SimpleNamespace(x=x)
    a1111.on_cfg_denoiser(SimpleNamespace(x=torch.cat([x, x]), sigma=torch.ones(2), denoiser=SimpleNamespace(p=Proc())))
    a1111.on_cfg_after_cfg(params)
    assert params.x is x
    with pytest.raises(ValueError, match="sampler_name 'Eulr' is not a sampler of this webui; it has: Euler, Euler a"):
        ProbeSampler(FakeA1111Model(), SD15, "", "", "Eulr", "Automatic", 3, 5.0, 64, 64)
    seen_i = _fake_webui(monkeypatch, interrupt_after=0)
    stopping = ProbeSampler(FakeA1111Model(), SD15, "", "", "Euler", "Automatic", 3, 5.0, 64, 64)
    with pytest.raises(CalibrationStopped):
        stopping(guide, [1, 2])
    assert len(seen_i["batches"]) == 1 and a1111.active() is None


def test_probes_on_forge_hook_a_clone_of_the_unet(monkeypatch):
    from cpsample_nodes.webui.probes import ProbeSampler

    seen = _fake_webui(monkeypatch)
    model = _forge_model()
    original = model.forge_objects.unet
    sampler = ProbeSampler(model, SD15, "", "", "Euler", "Automatic", 3, 5.0, 64, 64)
    plain = sampler(None, [1, 2])
    assert model.forge_objects.unet is original  # unguarded: no hook at all
    calls = []
    guided = sampler(lambda d, x, s: calls.append(1) or d * 0.5, [1, 2])
    assert len(calls) == 3 and not torch.allclose(guided, plain)
    assert not original.post_cfg and model.forge_objects.unet is not original  # Forge rebuilds it per sampling
    assert len(seen["batches"]) == 2
