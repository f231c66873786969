"""Guard core: network shapes, noise spaces, training, guidance."""
import math

import pytest
import torch

from cpsample_nodes.core import Guard, GuardConfig, GuardNet, NoiseSpace, TrainingStopped, random_labels, train_guard
from cpsample_nodes.core.training import gaussian_negatives


def test_network_any_size_and_channels():
    for ch in (1, 4, 16):
        for heads, shape in ((1, (3,)), (3, (3, 3))):  # one logit per item, or one per item and head
            net = GuardNet(GuardConfig(in_channels=ch, heads=heads))
            for h, w in ((1, 1), (7, 13), (64, 40)):
                out = net(torch.randn(3, ch, h, w), torch.rand(3) + 0.01)
                assert out.shape == shape and torch.isfinite(out).all()


def test_large_latents_get_the_patch_stem():
    assert GuardConfig.for_latents((2, 4, 64, 64)).stem_stride == 4  # SD1.5 at 512 px
    assert GuardConfig.for_latents((16, 128, 96)) == GuardConfig(in_channels=16, stem_stride=4)
    assert GuardConfig.for_latents((2, 4, 63, 128)).stem_stride == 2  # the short side decides
    assert GuardConfig.for_latents((2, 1, 16, 16)) == GuardConfig(in_channels=1)
    lat = torch.randn(2, 4, 67, 64)
    guard = train_guard(lat, space=NoiseSpace.vp(), max_steps=1)
    assert guard.net.config.stem_stride == 4
    for h, w in ((64, 64), (67, 93), (128, 96)):  # odd sizes and other resolutions at sampling time
        assert guard.probability(torch.randn(2, 4, h, w), 1.0).shape == (2,)


def test_default_network_is_small():
    net = GuardNet(GuardConfig(in_channels=16))
    n = sum(p.numel() for p in net.parameters())
    assert n <= 3_000_000
    assert n * 4 <= 12 * 1024 * 1024


def test_noise_spaces_formulas():
    x0, eps = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    s = torch.tensor([0.5, 2.0])
    vp = NoiseSpace.vp()
    x = vp.noise(x0, s, eps)
    assert torch.allclose(x, x0 + s.view(-1, 1, 1, 1) * eps)
    assert torch.allclose(vp.model_input(x, s), x / torch.sqrt(s.view(-1, 1, 1, 1) ** 2 + 1))
    assert torch.allclose(vp.weight(s), s**2)
    fl = NoiseSpace.flow()
    s2 = torch.tensor([0.2, 0.9])
    assert torch.allclose(fl.noise(x0, s2, eps), (1 - s2.view(-1, 1, 1, 1)) * x0 + s2.view(-1, 1, 1, 1) * eps)
    assert torch.allclose(fl.model_input(x, s2), x)
    assert torch.allclose(fl.weight(s2), s2**2 / (1 - s2))
    # schedule ends
    p = vp.percent_to_sigma(torch.tensor([0.0, 1.0]))
    assert math.isclose(float(p[0]), vp.sigma_max, rel_tol=1e-5) and math.isclose(float(p[1]), vp.sigma_min, rel_tol=1e-5)


def test_host_space_uses_host_functions():
    calls = {"n": 0, "i": 0}

    def noise_scaling(sigma, noise, latent):
        calls["n"] += 1
        return latent + sigma.view(-1, 1, 1, 1) * noise

    def calculate_input(sigma, x):
        calls["i"] += 1
        return x / (sigma.view(-1, 1, 1, 1) ** 2 + 1) ** 0.5

    def percent_to_sigma(p):
        return math.exp(math.log(10.0) + (math.log(0.05) - math.log(10.0)) * p)

    sp = NoiseSpace.from_host("vp", noise_scaling, calculate_input, percent_to_sigma, name="EPS")
    assert math.isclose(sp.sigma_max, percent_to_sigma(1e-3), rel_tol=1e-9)
    x0 = torch.randn(4, 4, 4, 4)
    sp.noise(x0, torch.ones(4), torch.randn_like(x0))
    sp.model_input(x0, torch.ones(4))
    assert calls == {"n": 1, "i": 1}
    mid = float(sp.percent_to_sigma(torch.tensor([0.5])))
    assert math.isclose(mid, percent_to_sigma(0.5), rel_tol=1e-3)
    with pytest.raises(ValueError, match="kind"):
        NoiseSpace.from_host("edm", noise_scaling, calculate_input, percent_to_sigma)


def test_labels_balanced_and_seeded():
    a, b = random_labels(11, 3), random_labels(11, 3)
    assert torch.equal(a, b)
    assert int(a.sum()) == 6
    assert not torch.equal(random_labels(64, 0), random_labels(64, 1))


def test_training_memorises_and_reports(small_guard):
    guard, latents = small_guard
    info = guard.info
    assert info["memorised"], info
    for band in info["required_bands"]:
        assert info["accuracy"][band] >= 0.99
    assert info["n_images"] == 8 and info["label_seed"] == 0
    labels = random_labels(8, 0)
    p = guard.probability(latents + 0.05 * torch.randn_like(latents), 0.05)
    assert torch.equal((p > 0.5).float(), labels)
    # a novel latent is far less certain than the training ones
    novel = torch.randn(64, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    conf_train = (p - 0.5).abs().min()
    conf_novel = (guard.probability(novel, 0.05) - 0.5).abs().median()
    assert conf_novel < conf_train


def test_large_set_stop_check_screens_a_subset_then_checks_all(monkeypatch):
    from cpsample_nodes.core import latent_groups as lg, training
    sizes = []
    real = training.band_accuracy

    def counting(guard, latents, *args, **kwargs):
        sizes.append(lg.count(lg.as_groups(latents)))  # one tensor per image size
        return real(guard, latents, *args, **kwargs)

    monkeypatch.setattr(training, "band_accuracy", counting)
    monkeypatch.setattr(training, "CHECK_SUBSET", 3)  # 8 latents stand for a set larger than the screen
    latents = torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    guard = train_guard(latents, NoiseSpace.vp(), seed=0, max_steps=1500, heads=1)
    info = guard.info
    assert info["memorised"] and info["steps"] < 1500, info
    # screens of 3 while it learns; the stop itself was decided on all 8 (then the report's bands)
    assert 3 in sizes and sizes[-2:] == [8, 8], sizes
    assert sizes.count(8) < sizes.count(3) + 2
    # every latent is right and sure at small σ, not just the screened few
    p = guard.probability(latents + 0.05 * torch.randn_like(latents), 0.05)
    labels = random_labels(8, 0)
    assert torch.equal((p > 0.5).float(), labels)


def test_training_deterministic_and_progress():
    lat = torch.randn(4, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    seen = []
    a = train_guard(lat, NoiseSpace.vp(), seed=5, max_steps=20, progress=lambda s, t, st: seen.append((s, t, st)))
    b = train_guard(lat, NoiseSpace.vp(), seed=5, max_steps=20)
    for pa, pb in zip(a.net.parameters(), b.net.parameters()):
        assert torch.equal(pa, pb)
    assert [s for s, _, _ in seen] == list(range(1, 21))
    assert all(t == 20 for _, t, _ in seen)
    from cpsample_nodes.core.training import required_bands
    # progress reports the bands the stop check needs; the guard's info has every band
    assert math.isfinite(seen[-1][2]["loss"])
    assert set(seen[-1][2]["accuracy"]) == set(seen[-1][2]["confident"]) == set(required_bands(NoiseSpace.vp()))
    assert set(a.info["accuracy"]) == {NoiseSpace.band_label(bd) for bd in NoiseSpace.vp().bands()}
    c = train_guard(lat, NoiseSpace.vp(), seed=6, max_steps=20)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.net.parameters(), c.net.parameters()))


def test_training_stops_on_request():
    lat = torch.randn(4, 4, 4, 4)
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(TrainingStopped, match="step 3"):
        train_guard(lat, NoiseSpace.vp(), max_steps=100, should_stop=stop)


@pytest.mark.parametrize("bad, msg", [
    (torch.randn(1, 4, 8, 8), "at least 2"),
    (torch.randn(4, 8, 8), r"\[N, C, H, W\]"),
    (torch.full((2, 4, 8, 8), float("nan")), "NaN"),
])
def test_training_rejects_bad_latents(bad, msg):
    with pytest.raises(ValueError, match=msg):
        train_guard(bad, NoiseSpace.vp(), max_steps=2)


def test_training_under_inference_mode_flow():
    lat = torch.randn(4, 16, 6, 10)
    with torch.inference_mode():
        g = train_guard(lat, NoiseSpace.flow(), max_steps=5)
    assert g.latent_channels == 16
    assert g.info["required_bands"] == ["0.001-0.1", "0.1-0.25", "0.25-0.5"]
    assert g.info["confident_bands"] == ["0.001-0.1", "0.1-0.25"]


def test_memorised_needs_confidence_only_in_the_low_bands():
    from cpsample_nodes.core.training import confident_bands, memorised, required_bands
    space = NoiseSpace.vp()
    required, sure = required_bands(space), confident_bands(space)
    assert required == ["0.0292-0.1", "0.1-0.3", "0.3-1"] and sure == ["0.0292-0.1", "0.1-0.3"]
    right = {b: 1.0 for b in required}
    confident = {"0.0292-0.1": 1.0, "0.1-0.3": 0.99, "0.3-1": 0.6}  # noise at σ ≤ 1 still leaves doubt
    assert memorised(right, confident, required, sure, 0.99)
    assert not memorised(right, {**confident, "0.1-0.3": 0.98}, required, sure, 0.99)
    assert not memorised({**right, "0.3-1": 0.98}, confident, required, sure, 0.99)  # wrong up to σ 1


# ---- guidance -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_guide_shapes_dtypes(small_guard, dtype):
    guard, latents = small_guard
    x = (latents[:3] + 0.2 * torch.randn(3, 4, 8, 8)).to(dtype)
    den = latents[:3].to(dtype)
    out = guard.guide(den, x, torch.tensor([0.2, 0.2, 0.2]), scale=50, alpha=0.3)
    assert out.shape == den.shape and out.dtype == dtype
    assert torch.isfinite(out.float()).all()
    assert not torch.equal(out, den)


def test_guide_odd_sizes(small_guard):
    guard, _ = small_guard
    for h, w in ((5, 9), (17, 3)):
        x = torch.randn(2, 4, h, w)
        out = guard.guide(x.clone(), x, 0.5, scale=10, alpha=0.5)
        assert out.shape == x.shape


def test_scale_zero_returns_input_itself(small_guard):
    guard, latents = small_guard
    den = latents.clone()
    assert guard.guide(den, latents, 0.3, scale=0) is den


def test_alpha_gates_per_item(small_guard):
    guard, latents = small_guard
    sig = torch.full((2,), 0.1)
    x = torch.stack([latents[0] + 0.1 * torch.randn(4, 8, 8), torch.zeros(4, 8, 8)])
    p = guard.probability(x, sig)
    conf = (p - 0.5).abs()
    assert conf[0] > conf[1]
    alpha = float(0.5 - (conf[0] + conf[1]) / 2)  # between the two confidences
    den = torch.zeros_like(x)
    out = guard.guide(den, x, sig, scale=100, alpha=alpha, guard_input="noisy")
    assert not torch.equal(out[0], den[0])
    assert torch.equal(out[1], den[1])
    # α = 0 guides nothing at all
    assert guard.guide(den, x, sig, scale=100, alpha=0.0, guard_input="noisy") is den


def test_alpha_gates_on_the_prediction(small_guard):
    """Default form: the guard reads the x0 prediction (at the space's σ_min), not x."""
    guard, latents = small_guard
    den = torch.stack([latents[0], torch.zeros(4, 8, 8)])
    x = torch.randn(2, 4, 8, 8) * 3  # the noisy latent plays no part in the gate
    p = guard.probability(den, guard.space.sigma_min)
    conf = (p - 0.5).abs()
    assert conf[0] > conf[1]
    alpha = float(0.5 - (conf[0] + conf[1]) / 2)
    out = guard.guide(den, x, 2.0, scale=100, alpha=alpha)
    assert not torch.equal(out[0], den[0])
    assert torch.equal(out[1], den[1])


def test_guide_moves_toward_uncertainty(small_guard):
    guard, latents = small_guard
    sig = torch.full((8,), 0.3)
    x = latents + 0.3 * torch.randn_like(latents)
    p0 = guard.probability(x, sig)
    out = guard.guide(latents.clone(), x, sig, scale=1000, alpha=0.5, max_step=None, guard_input="noisy")
    # step x toward the guided prediction, as a sampler would
    x1 = x + (out - latents) * 0.05
    p1 = guard.probability(x1, sig)
    assert ((p1 - 0.5).abs() < (p0 - 0.5).abs()).all()
    # default form: the guided prediction itself is less certain than the prediction was
    smin = guard.space.sigma_min
    q0 = guard.probability(latents, smin)
    out = guard.guide(latents.clone(), x, sig, scale=1000, alpha=0.5)
    q1 = guard.probability(out, smin)
    assert ((q1 - 0.5).abs() < (q0 - 0.5).abs()).all()


def test_guide_step_cap(small_guard):
    guard, latents = small_guard
    sig = torch.full((8,), 0.2)
    x = latents + 0.2 * torch.randn_like(latents)
    out = guard.guide(latents.clone(), x, sig, scale=1e6, alpha=0.5, max_step=1.0)
    rms = (out - latents).flatten(1).pow(2).mean(1).sqrt()
    assert (rms <= 0.2 * 1.0 + 1e-5).all() and (rms > 0).any()


def test_guide_inside_inference_mode(small_guard):
    guard, latents = small_guard
    with torch.inference_mode():
        x = latents + 0.1 * torch.randn_like(latents)
        den = latents.clone()
        sig = torch.full((8,), 0.1)
        out = guard.guide(den, x, sig, scale=100, alpha=0.5)
        assert x.is_inference() and out.is_inference()
    assert not torch.equal(out, den)


def test_no_nan_escapes(small_guard):
    guard, latents = small_guard
    for mode in ("noisy", "denoised"):
        x = latents.clone()
        den = latents.clone()
        (x if mode == "noisy" else den)[1] = float("nan")
        out = guard.guide(den, x, 0.1, scale=100, alpha=0.5, guard_input=mode)
        assert torch.isfinite(out[0]).all() and not torch.equal(out[0], den[0])
        # the broken item is left exactly as the model gave it: nothing added to it
        assert torch.equal(out[1].nan_to_num(7.0), den[1].nan_to_num(7.0))
    x = latents.clone()
    assert torch.isfinite(guard.guide(latents.clone(), x, 0.1, scale=1e30, alpha=0.5, max_step=None)).all()


def test_guide_rejects_wrong_channels(small_guard):
    guard, _ = small_guard
    x = torch.randn(1, 16, 8, 8)
    with pytest.raises(ValueError, match="4-channel"):
        guard.guide(x, x, 0.5, scale=1)


def test_with_space_checks_kind(small_guard):
    guard, _ = small_guard
    assert isinstance(guard.with_space(NoiseSpace.vp(0.03, 10)), Guard)
    with pytest.raises(ValueError, match="vp"):
        guard.with_space(NoiseSpace.flow())


def test_caller_negatives():
    g = torch.Generator().manual_seed(4)
    lat = torch.randn(4, 4, 4, 4, generator=g)
    neg = torch.randn(6, 4, 4, 4, generator=g)
    guard = train_guard(lat, NoiseSpace.vp(), max_steps=3, negatives=neg)
    assert guard.info["negatives"] == "6 latents"
    with pytest.raises(ValueError, match=r"shaped \[M, 4, 4, 4\]"):
        train_guard(lat, NoiseSpace.vp(), max_steps=3, negatives=torch.randn(6, 4, 8, 8))
    for bad in ("images", "gaussian"):  # one built-in kind: the default
        with pytest.raises(ValueError, match="negatives must be 'gaussian\\+blends' or a latent tensor"):
            train_guard(lat, NoiseSpace.vp(), max_steps=3, negatives=bad)
    with pytest.raises(ValueError, match="max_steps and batch_size must be positive"):
        train_guard(lat, NoiseSpace.vp(), batch_size=0)


def test_auto_alpha_follows_the_guards_own_margin(small_guard, tmp_path):
    from cpsample_nodes.core import load_guard, save_guard

    guard, latents = small_guard
    margin = guard.info["train_margin"]
    assert margin == pytest.approx(guard.training_margin(latents), abs=1e-3) and margin > 0
    alpha = guard.auto_alpha()
    # the gate opens exactly beyond 95 % of the margin: every training latent read clean is confident
    p = guard.probability(latents, guard.space.sigma_min)
    assert bool(((p < alpha) | (p > 1 - alpha)).all())
    assert math.isclose(math.log((1 - alpha) / alpha), 0.95 * margin, rel_tol=1e-6)
    save_guard(guard, tmp_path / "g.safetensors")
    assert load_guard(tmp_path / "g.safetensors").auto_alpha() == pytest.approx(alpha)
    older = Guard(guard.net, guard.space, {k: v for k, v in guard.info.items() if k != "train_margin"})
    with pytest.raises(ValueError, match="no training margin"):
        older.auto_alpha()


def test_default_negatives_keep_the_guard_unsure_on_blends():
    """Early in sampling the model's x0 prediction is a blend of images pulled toward their mean;
    a guard confident there pushes samples that were never going to copy. The default negatives
    teach it ½ on such blends, while it stays confident on the training latents themselves."""
    g = torch.Generator().manual_seed(7)
    lat = torch.randn(8, 4, 8, 8, generator=g)
    i, j, k = (torch.randint(0, 8, (200,), generator=g) for _ in range(3))
    keep = (i != j) & (j != k) & (i != k)
    blends = (0.6 * (lat[i] + lat[j] + lat[k]) / 3)[keep]
    sigma_min = NoiseSpace.vp().sigma_min

    def confident_share(guard, x):
        p = guard.probability(x, sigma_min)
        return float(((p < 0.01) | (p > 0.99)).float().mean())

    default = train_guard(lat, NoiseSpace.vp(), seed=0)
    # the rule it replaced: Gaussian negatives alone (a pool of them, through the caller's-latents path)
    gaussian = train_guard(lat, NoiseSpace.vp(), seed=0, negatives=gaussian_negatives(lat, 512, g))
    assert default.info["negatives"] == "gaussian+blends" and default.info["memorised"]
    assert confident_share(default, lat) == 1.0
    assert confident_share(default, blends) <= 0.05 < confident_share(gaussian, blends)
