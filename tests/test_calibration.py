"""calibrate() on the closed-form mixture: it finds settings that remove a copying model's copies,
says so when a model does not copy, survives save/load, and rejects bad arguments clearly."""
import json

import pytest
import torch

from benchmarks.calibration_samplers import mixture_sampler
from benchmarks.mixture import Mixture
from cpsample_nodes.core import (Calibration, CalibrationStopped, NoiseSpace, calibrate, load_guard, read_metadata,
                                 save_guard)
from cpsample_nodes.core.calibration import RANKING
from cpsample_nodes.core.metrics import REPLICA_L2_RATIO, calibrated_l2_ratio

STEPS = 20


class _Gaussian:
    """The mixture with λ = 0: the exact posterior mean of N(0, I) alone, a model that never copies."""

    @staticmethod
    def denoise(x, sigma):
        return (x / (1.0 + sigma**2)).float()


def _copy_rate(x, train):
    return float((calibrated_l2_ratio(x, train, 5) < REPLICA_L2_RATIO).double().mean())


@pytest.fixture(scope="module")
def copying(small_guard):
    """A mixture that copies its 8 training latents about half the time, calibrated once."""
    guard, train = small_guard
    sample = mixture_sampler(Mixture(train.flatten(1), lam=0.5, tau=0.05), NoiseSpace.vp(), STEPS, "euler_a")
    seen = []
    # probe seeds away from 0: seed 0's start noise would be the fixture's first training latent
    cal = calibrate(guard, sample, train, seeds=range(500, 532), sampler_description="euler_a 20 steps",
                    progress=lambda done, total, stats: seen.append((done, total)))
    return guard, train, sample, cal, seen


def test_copying_model_gets_settings_that_remove_its_copies(copying):
    guard, train, sample, cal, seen = copying
    assert isinstance(cal, Calibration) and not cal.no_copies
    assert cal.unguarded_rate >= 0.25, cal.report()
    assert cal.reached and cal.calibrated_rate <= 0.1 * cal.unguarded_rate, cal.report()
    # the settings really are guide() arguments, and on fresh seeds they still cut the copies
    fresh = list(range(1000, 1064))
    plain = sample(None, fresh)
    guarded = sample(lambda d, x, s: guard.guide(d, x, s, **cal.settings), fresh)
    assert _copy_rate(guarded, train) <= 0.25 * _copy_rate(plain, train), (cal.settings, cal.report())
    # gentlest first: every setting tried before the chosen one failed
    tried = [r for r in cal.rows if r["settings"] is not None]
    assert tried[-1]["outcome"] == "chosen" or any(r["outcome"] == "chosen" for r in tried)
    assert cal.rows[0]["label"] == "unguarded" and cal.rows[0]["copies"] == int(cal.copied.sum())
    # early abandonment: a setting that fails stops before all 32 probes
    assert any(r["outcome"].startswith("abandoned") and r["evaluated"] < 32 for r in tried), cal.report()
    assert cal.model_calls == sum(r["model_calls"] for r in cal.rows) > 0
    assert (cal.model_calls + cal.calls_replayed) % STEPS == 0  # replayed calls are whole steps too
    assert seen and seen[-1][0] == seen[-1][1]
    report = cal.report()
    assert "unguarded" in report and "chosen" in report and "model calls" in report


def test_calibration_is_stored_and_survives_save_load(copying, tmp_path):
    guard, _, _, cal, _ = copying
    stored = guard.info["calibration"]
    for key in ("settings", "unguarded_rate", "calibrated_rate", "probes", "sampler", "model_calls", "target"):
        assert key in stored, key
    assert stored["probes"] == 32 and stored["sampler"] == "euler_a 20 steps"
    # the ranking, recorded with the choice in the words guard files have always held
    assert stored["ranking"] == RANKING == "spoiled+moved; windows widened on spoiled; copies not counted as spoiled"
    assert guard.calibrated_settings() == cal.settings
    path = save_guard(guard, tmp_path / "g.safetensors")
    back = load_guard(path)
    assert back.info["calibration"] == json.loads(json.dumps(stored))
    assert back.calibrated_settings() == cal.settings
    assert json.loads(read_metadata(path)["calibration"])["settings"] == json.loads(json.dumps(cal.settings))


def test_non_copying_model_is_told_so(small_guard):
    guard, train = small_guard
    g = guard.with_space(guard.space)  # own info dict: leave the shared fixture's alone
    sample = mixture_sampler(_Gaussian(), NoiseSpace.vp(), STEPS, "euler")
    cal = calibrate(g, sample, train, seeds=range(500, 516))
    assert cal.no_copies and cal.unguarded_rate == 0.0 and cal.rows == []
    assert "no copies among 16 probes" in cal.report()
    assert cal.model_calls == 16 * STEPS  # only the unguarded run
    assert g.calibrated_settings() == cal.settings and g.info["calibration"]["no_copies"] is True


def test_sigma_window_in_guide(small_guard):
    guard, train = small_guard
    x = train + 0.05 * torch.randn_like(train)
    sig = torch.full((train.shape[0],), 0.5)
    moved = guard.guide(train, x, sig, alpha=0.3)
    assert not torch.equal(moved, train)
    assert guard.guide(train, x, sig, alpha=0.3, sigma_max=0.4) is train  # nobody inside the window
    assert torch.equal(guard.guide(train, x, sig, alpha=0.3, sigma_max=1.0), moved)
    mixed = torch.tensor([0.5, 2.0] * (train.shape[0] // 2))
    out = guard.guide(train, x, mixed, alpha=0.3, sigma_max=1.0)
    assert torch.equal(out[1::2], train[1::2]) and not torch.equal(out[0::2], train[0::2])
    with pytest.raises(ValueError, match="sigma_max"):
        guard.guide(train, x, sig, sigma_max=-1.0)


def test_bad_arguments_get_clear_errors(small_guard):
    guard, train = small_guard
    g = guard.with_space(guard.space)
    g.info.pop("calibration", None)  # the shared fixture may have been calibrated by another test
    sample = mixture_sampler(Mixture(train.flatten(1), lam=0.5, tau=0.05), NoiseSpace.vp(), 4, "euler")
    with pytest.raises(ValueError, match="at least 8 probe seeds.*got 4"):
        calibrate(g, sample, train, seeds=range(4))
    with pytest.raises(ValueError, match=r"\[N, C, H, W\], got \(4, 8, 8\)"):
        calibrate(g, sample, train[0], seeds=range(8))
    with pytest.raises(ValueError, match="4-channel latents.*3 channels"):
        calibrate(g, sample, train[:, :3], seeds=range(8))
    with pytest.raises(ValueError, match=r"shaped \[8, 4, 4, 4\] for 8 seeds"):
        calibrate(g, lambda guide, seeds: torch.zeros(len(seeds), 4, 4, 4), train, seeds=range(8))
    with pytest.raises(ValueError, match="NaN or infinite values in 8 of 8"):
        calibrate(g, lambda guide, seeds: torch.full((len(seeds), 4, 8, 8), float("nan")), train, seeds=range(8))
    with pytest.raises(ValueError, match="sample must return a tensor.*got list"):
        calibrate(g, lambda guide, seeds: [0] * len(seeds), train, seeds=range(8))
    with pytest.raises(ValueError, match="distinct"):
        calibrate(g, sample, train, seeds=[1] * 8)
    with pytest.raises(ValueError, match="target_ratio.*1.5"):
        calibrate(g, sample, train, seeds=range(8), target_ratio=1.5)
    with pytest.raises(CalibrationStopped):
        calibrate(g, sample, train, seeds=range(8), should_stop=lambda: True)
    assert "calibration" not in g.info
    g.info = {**g.info, "calibration": {"settings": {"alpha": 2.0}}}
    with pytest.raises(ValueError, match="alpha must lie in .* got 2.0"):
        g.calibrated_settings()
    g.info = {**g.info, "calibration": {"settings": {"gate": 0.1}}}
    with pytest.raises(ValueError, match="unknown guide settings \\['gate'\\]"):
        g.calibrated_settings()


def test_copy_target_keeps_a_margin_for_the_probes():
    """A setting passes only if its probe count shows, with 80 % confidence, a copy rate under the
    target: one whose true rate sits on the target passes at most 20 % of the time."""
    from math import comb

    from cpsample_nodes.core.calibration import CONFIDENCE, allowed_copies, upper_rate

    def p_at_most(k, n, p):
        return sum(comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))

    for unguarded, n in ((51, 64), (64, 64), (36, 64), (400, 1000)):
        goal = 0.1 * unguarded / n
        k = allowed_copies(unguarded, n, 0.1)
        assert k >= 0 and upper_rate(k, n) <= goal < upper_rate(k + 1, n)
        assert p_at_most(k, n, goal) <= 1 - CONFIDENCE + 1e-9
        assert k < round(0.1 * unguarded)  # stricter than the bare count
    assert allowed_copies(51, 64, 0.1) == 2
    assert allowed_copies(3, 64, 0.1) == -1  # 64 probes cannot show a 10x cut of 3 copies
    assert upper_rate(64, 64) == 1.0 and upper_rate(0, 64) == pytest.approx(1 - 0.2 ** (1 / 64), abs=1e-6)


def _probe_only_model(train, new_from: int):
    """A closed-form model that copies a training latent from every seed. On seeds below ``new_from`` the
    guard's push turns the copy into a new latent; on later seeds nothing the guard does helps: a setting
    that passes on such probes only looks good on them."""
    def sample(guide, seeds):
        out = []
        for s in seeds:
            copy = train[s % train.shape[0]].unsqueeze(0)
            moved = guide(copy, copy, torch.tensor([0.5]))
            if s < new_from and not torch.equal(moved, copy):
                out.append(torch.randn(copy.shape, generator=torch.Generator().manual_seed(10_000 + s)))
            else:
                out.append(copy + 1e-3 * torch.randn(copy.shape, generator=torch.Generator().manual_seed(s)))
        return torch.cat(out)
    return sample


def test_a_setting_must_pass_again_on_new_seeds(small_guard):
    guard, train = small_guard
    sample = _probe_only_model(train, new_from=516)
    g = guard.with_space(guard.space)
    cal = calibrate(g, sample, train, seeds=range(500, 516))
    # every probe copies; settings clear all probes, then copy every confirmation seed (516..531)
    assert cal.unguarded_rate == 1.0 and cal.confirm_seeds == list(range(516, 532))
    failed = [r for r in cal.rows if r["outcome"].startswith("failed confirmation")]
    assert failed and all(r["copies"] <= cal.allowed for r in failed), cal.report()
    assert not cal.reached and "MISSES" in cal.report() and cal.confirm_copies is None
    # a stronger scale was tried once the default one had nothing left
    assert any(r["settings"]["scale"] > 1000 for r in cal.rows if r["settings"]), cal.report()
    assert "failed confirmation" in cal.report()
    assert cal.weak_guard and "no setting reached the target" in cal.report()
    # the same model, its later seeds included among the probes' range, passes when nothing is confirmed
    g2 = guard.with_space(guard.space)
    quick = calibrate(g2, sample, train, seeds=range(500, 516), confirm_seeds=[])
    assert quick.reached and quick.confirm_seeds == [] and quick.calibrated_rate == 0.0
    assert quick.model_calls < cal.model_calls
    stored = g.info["calibration"]
    assert stored["confirm_seeds"] == 16 and stored["confirm_copies"] is None


def test_confirmation_of_a_good_setting(copying):
    guard, train, sample, cal, _ = copying
    # the mixture's chosen setting passed on probes and on the 32 seeds after them, pooled
    assert cal.confirm_seeds == list(range(532, 564)) and cal.confirm_copies is not None
    assert cal.calibrated_copied.sum() + cal.confirm_copies <= cal.confirm_allowed
    chosen = next(r for r in cal.rows if r["outcome"] == "chosen")
    assert chosen["confirm"] == f"{cal.confirm_copies}/32"
    assert guard.info["calibration"]["confirm_copies"] == cal.confirm_copies


def test_confirm_seeds_errors(small_guard):
    guard, train = small_guard
    g = guard.with_space(guard.space)
    sample = _probe_only_model(train, new_from=10**9)
    with pytest.raises(ValueError, match=r"confirm_seeds must be new seeds, not probes; shared: \[3\]"):
        calibrate(g, sample, train, seeds=range(8), confirm_seeds=[3, 100])
    with pytest.raises(ValueError, match="confirm_seeds must be distinct"):
        calibrate(g, sample, train, seeds=range(8), confirm_seeds=[100, 100])
    with pytest.raises(ValueError, match="confirm_seeds must be integers"):
        calibrate(g, sample, train, seeds=range(8), confirm_seeds=["a"])


def _late_push_spoils(train, spoiled_seeds: set[int]):
    """Every seed copies a training latent; a guide that acts at σ 0.5 turns it into a new latent. On
    ``spoiled_seeds`` that latent is blown up (10x) unless the guide also acts at σ 3, i.e. unless its
    window is wider than σ ≤ 2: pushed only late, those samples break."""
    def sample(guide, seeds):
        out = []
        for s in seeds:
            copy = train[s % train.shape[0]].unsqueeze(0)
            if torch.equal(guide(copy, copy, torch.tensor([0.5])), copy):
                out.append(copy + 1e-3 * torch.randn(copy.shape, generator=torch.Generator().manual_seed(s)))
                continue
            new = torch.randn(copy.shape, generator=torch.Generator().manual_seed(10_000 + s))
            early = not torch.equal(guide(copy, copy, torch.tensor([3.0])), copy)
            out.append(new if early or s not in spoiled_seeds else 10 * new)
        return torch.cat(out)
    return sample


@pytest.mark.parametrize("n_spoiled, window", [(2, 4.0), (1, 1.0)])
def test_a_wider_window_is_tried_while_the_best_spoils_more_than_one_probe(small_guard, n_spoiled, window):
    guard, train = small_guard
    sample = _late_push_spoils(train, set(range(500, 500 + n_spoiled)))
    # 32 probes: the earlier rule (widen only while the best spoils over a tenth) stopped at σ ≤ 1 with 2
    cal = calibrate(guard.with_space(guard.space), sample, train, seeds=range(500, 532), confirm_seeds=[])
    assert cal.reached and cal.calibrated_rate == 0.0, cal.report()
    # the narrow windows spoil the late-pushed seeds: with two of them σ ≤ 4 (which pushes early too)
    # is measured and chosen for spoiling none; with one, σ ≤ 1 is kept and no wider window is tried
    assert cal.settings["sigma_max"] == window, cal.report()
    assert cal.spoiled_rate == (0.0 if n_spoiled > 1 else 1 / 32), cal.report()
    windows = {r["settings"]["sigma_max"] for r in cal.rows if r["settings"]}
    assert windows == ({1.0, 2.0, 4.0} if n_spoiled > 1 else {1.0}), cal.report()


def _wide_window_moves_new_samples(train, spoiled_seeds: set[int], moved_at: float = 3.0):
    """Even seeds copy a training latent, odd seeds draw a new one. A guide acting at σ 0.5 turns every
    copy into a new latent, but on ``spoiled_seeds`` blows it up (10x) unless it also acts at σ 3; a
    guide acting at σ 3 (windows wider than σ ≤ 2) also moves every new sample (same norm, relative
    change about 0.6): the narrow windows spoil two copies, the wide ones move every sample that did
    not copy. ``moved_at`` 0.5 instead: every guide that removes the copies moves the new samples."""
    def noise(seed):
        return torch.randn(train[:1].shape, generator=torch.Generator().manual_seed(seed))

    def sample(guide, seeds):
        out = []
        for s in seeds:
            copy = train[s % train.shape[0]].unsqueeze(0)
            late = not torch.equal(guide(copy, copy, torch.tensor([0.5])), copy)
            early = not torch.equal(guide(copy, copy, torch.tensor([3.0])), copy)
            new = noise(10_000 + s)
            if s % 2:
                moved = not torch.equal(guide(copy, copy, torch.tensor([moved_at])), copy)
                out.append(0.8 * new + 0.6 * noise(20_000 + s) if moved else new)
            elif not late:
                out.append(copy + 1e-3 * noise(s))
            else:
                out.append(new if early or s not in spoiled_seeds else 10 * new)
        return torch.cat(out)
    return sample


def test_the_cost_counts_the_non_copies_a_setting_moves(small_guard):
    guard, train = small_guard
    sample = _wide_window_moves_new_samples(train, {500, 502})
    cal = calibrate(guard.with_space(guard.space), sample, train, seeds=range(500, 532), confirm_seeds=[])
    assert cal.reached and cal.calibrated_rate == 0.0, cal.report()
    # by spoil alone σ ≤ 4 would win (it spoils none); counting the 16 moved non-copies, σ ≤ 1 does,
    # though it spoils the blown-up copies (and, by chance, a near copy)
    assert cal.settings["sigma_max"] == 1.0 and cal.spoiled_rate > 0, cal.report()
    wide = [r for r in cal.rows if r["settings"] and r["settings"]["sigma_max"] == 4.0
            and r["change_noncopy"] is not None]
    assert wide and min(r["change_noncopy"] for r in wide) > 0.3, cal.report()
    # a σ ≤ 4 row's cost: its spoiled probes, plus the many non-copies it moved
    assert all(r["cost"] - r["spoiled"] > 1.0 for r in wide), cal.report()
    # costs only grow as probes are added: every σ ≤ 4 gate was left once it cost more than the choice
    chosen = next(r for r in cal.rows if r["outcome"] == "chosen")
    assert all(chosen["cost"] < r["cost"] for r in wide), cal.report()


class _ScaledLogits(torch.nn.Module):
    """A guard network whose logits are multiplied by ``factor``: shrunk, it is right but with gradients
    too small to push hard; grown, its push reaches the step cap everywhere."""

    def __init__(self, net, factor: float):
        super().__init__()
        self.inner, self.factor, self.config = net, factor, net.config

    def forward(self, x, sigma):
        return self.inner(x, sigma) * self.factor


def _escapes_past(train, sigma, escape: dict[int, float]):
    """A sampler whose every seed copies a training latent unless one guide step at σ moves the copy by
    more than ``escape[seed]`` (RMS per element); then it draws something new."""
    def sample(guide, seeds):
        out = []
        for s in seeds:
            copy = train[s % train.shape[0]].unsqueeze(0)
            moved = float((guide(copy, copy, sigma) - copy).pow(2).mean().sqrt())
            out.append(torch.randn(copy.shape, generator=torch.Generator().manual_seed(10_000 + s))
                       if moved > escape[s] else copy)
        return torch.cat(out)
    return sample


def test_a_guard_that_needs_a_stronger_push_is_called_weak(small_guard, copying):
    from cpsample_nodes.core import Guard
    from cpsample_nodes.core.evidence import calibration_summary

    guard, train = small_guard
    weak = Guard(_ScaledLogits(guard.net, 0.05), guard.space, dict(guard.info))
    sigma = torch.tensor([0.5])

    def push(seed: int, scale: float) -> float:
        copy = train[seed % train.shape[0]].unsqueeze(0)
        return float((weak.guide(copy, copy, sigma, scale=scale, alpha=0.5) - copy).pow(2).mean().sqrt())

    # every probe copies unless the guard moves it by more than its push at the default scale
    escape = {s: 2 * push(s, 1000.0) for s in range(500, 532)}
    assert all(push(s, 3000.0) > escape[s] for s in escape), "the damped guard's push is capped already"

    cal = calibrate(weak, _escapes_past(train, sigma, escape), train, seeds=range(500, 532), confirm_seeds=[])
    assert cal.reached and cal.settings["scale"] == 3000.0 and cal.push_limit == "gradient", cal.report()
    # each window's strongest gate is measured first; where even it cannot pass, the window is skipped
    standard = [r for r in cal.rows[1:] if r["settings"]["scale"] == 1000.0]
    assert [r["label"] for r in standard] == ["α 0.5, σ ≤ 1", "α 0.5, σ ≤ 2", "α 0.5, σ ≤ 4", "α 0.5, all steps"]
    # every probe copies there, so each is abandoned after the fewest probes that can show it fails
    assert all(r["outcome"] == "abandoned: too many copies" and r["evaluated"] == cal.allowed + 1 for r in standard)
    assert cal.weak_guard and "this guard is weak on this model: it needed 3x the standard push" in cal.report()
    assert "another seed" in calibration_summary(cal)
    # the trained guard on the copying mixture protects at the default scale: no push is named as a reason
    # (with 20 steps its chosen setting spoils over a tenth of the probes, which is reason enough: the
    # next test; measured on 1,000 fresh seeds, FD 1.35 x the ideal sampler's at 20 steps, 1.06 x at 50)
    strong = copying[3]
    assert strong.settings["scale"] == 1000.0, strong.report()
    assert not any("standard push" in r for r in strong.weak_reasons()) and "standard push" not in strong.report()


def test_a_model_that_pulls_past_the_step_cap_gets_a_larger_cap_and_the_guard_is_not_called_weak(small_guard):
    """As with CFG: the guard's push reaches the standard step cap at every copy, and the model pulls a
    sample back unless a step moves it further than the cap allows. A larger scale alone changes nothing
    there (the cap binds); the next push of the ladder doubles the cap, and the guard is not to blame."""
    from cpsample_nodes.core import Guard
    from cpsample_nodes.core.calibration import STRENGTHS

    plain, train = small_guard
    guard = Guard(_ScaledLogits(plain.net, 20.0), plain.space, dict(plain.info))
    sigma = torch.tensor([0.5])

    def push(seed: int, **settings) -> float:
        copy = train[seed % train.shape[0]].unsqueeze(0)
        return float((guard.guide(copy, copy, sigma, alpha=0.5, **settings) - copy).pow(2).mean().sqrt())

    seeds = range(500, 532)
    capped = {s: push(s, scale=1000.0, max_step=1.0) for s in seeds}
    assert all(push(s, scale=3000.0, max_step=1.0) == pytest.approx(capped[s]) for s in seeds), \
        "the guard's push at the copies does not reach the cap"

    sample = _escapes_past(train, sigma, {s: 1.5 * capped[s] for s in seeds})
    cal = calibrate(guard, sample, train, seeds=seeds, confirm_seeds=[])
    assert cal.reached and (cal.settings["scale"], cal.settings["max_step"]) == STRENGTHS[1], cal.report()
    # every setting at the standard push was tried and failed, the larger scales did not help
    standard = [r for r in cal.rows[1:] if r["settings"]["max_step"] == 1.0]
    assert standard and all(r["copies"] > 0 for r in standard)
    assert cal.push_limit == "cap" and not cal.weak_guard, cal.report()
    assert "step cap 2" in cal.report() and "harder than that (as with CFG)" in cal.report()
    assert cal.summary()["push_limit"] == "cap" and cal.summary()["settings"]["max_step"] == 2.0


@pytest.mark.parametrize("n_spoiled, weak", [(4, True), (3, False)])
def test_a_guard_whose_best_setting_still_spoils_over_a_tenth_is_called_weak(small_guard, n_spoiled, weak):
    from cpsample_nodes.core.evidence import calibration_summary

    guard, train = small_guard
    spoiled = set(range(500, 500 + n_spoiled))

    def sample(guide, seeds):
        """Every seed copies; any push turns it into a new latent, blown up (10x) on ``spoiled`` seeds."""
        out = []
        for s in seeds:
            copy = train[s % train.shape[0]].unsqueeze(0)
            if torch.equal(guide(copy, copy, torch.tensor([0.5])), copy):
                out.append(copy)
                continue
            new = torch.randn(copy.shape, generator=torch.Generator().manual_seed(10_000 + s))
            out.append(10 * new if s in spoiled else new)
        return torch.cat(out)

    cal = calibrate(guard.with_space(guard.space), sample, train, seeds=range(500, 532), confirm_seeds=[])
    assert cal.reached and cal.calibrated_rate == 0.0 and cal.settings["scale"] == 1000.0, cal.report()
    assert cal.spoiled_rate == n_spoiled / 32, cal.report()   # 12.5 % | 9.4 %: no setting does better
    assert cal.weak_guard is weak, cal.report()
    line = "this guard is weak on this model: even the chosen setting spoils 12.5% of the probes"
    assert (line in cal.report()) is weak and ("another seed" in calibration_summary(cal)) is weak


def test_moved_non_copies_alone_do_not_widen_the_window(small_guard):
    guard, train = small_guard
    # no setting spoils anything, but every passing one moves the 16 non-copies
    cal = calibrate(guard.with_space(guard.space), _wide_window_moves_new_samples(train, set(), 0.5), train,
                    seeds=range(500, 532), confirm_seeds=[])
    assert cal.reached and cal.calibrated_rate == 0.0 and cal.spoiled_rate == 0.0, cal.report()
    # the moved non-copies keep the best's cost above one probe, yet the search stops after σ ≤ 1,
    # whose best spoils none (widening on the cost would try every window, and keep σ ≤ 1 all the same)
    best = next(r for r in cal.rows if r["outcome"] == "chosen")
    assert best["cost"] > 1.0, cal.report()
    assert {r["settings"]["sigma_max"] for r in cal.rows if r["settings"]} == {1.0}, cal.report()
    assert cal.settings["sigma_max"] == 1.0, cal.report()


class _ScriptedGuard:
    """Stands in for a guard where the test needs to say what each gate does: its guide marks the
    denoised latent with the gate α, so the sampler below knows which setting it runs under."""

    def __init__(self, latent_channels: int):
        self.space, self.latent_channels, self.info = NoiseSpace.vp(), latent_channels, {}

    def guide(self, denoised, x, sigma, *, alpha, sigma_max=None, **_):
        return denoised if sigma_max is not None and float(sigma[0]) > sigma_max else torch.full_like(denoised, alpha)

    def guide_traced(self, denoised, x, sigma, **settings):
        # its step is the gate α itself (the mark), not a push the gate lets through: no gate's path stands
        # for another's, so the p it reports is unknown (NaN), which calibration never reuses
        out = self.guide(denoised, x, sigma, **settings)
        return out, None if out is denoised else torch.full((denoised.shape[0],), float("nan"))

    def probability(self, x, sigma):
        return torch.zeros(x.shape[0])  # sure everywhere: its gates open wherever their window lets them


def _gates_spoil(train, spoils: dict[float, int], copy_on_confirmation: set[float], first_new: int):
    """Every seed copies a training latent unguarded; every gate turns the copy into a new latent and
    blows up (10x) the first ``spoils[α]`` probes; the gates in ``copy_on_confirmation`` leave the
    copies of the seeds from ``first_new`` on (the confirmation seeds). α is the value the scripted
    guard marks the latent with (another scripted guard may mark another setting)."""
    def sample(guide, seeds):
        out = []
        for s in seeds:
            copy = train[s % train.shape[0]].unsqueeze(0)
            marked = guide(copy, copy, torch.tensor([0.5]))
            if torch.equal(marked, copy):
                out.append(copy + 1e-3 * torch.randn(copy.shape, generator=torch.Generator().manual_seed(s)))
                continue
            alpha = round(float(marked.flatten()[0]), 6)
            if s >= first_new and alpha in copy_on_confirmation:
                out.append(copy + 1e-3 * torch.randn(copy.shape, generator=torch.Generator().manual_seed(s)))
                continue
            new = torch.randn(copy.shape, generator=torch.Generator().manual_seed(10_000 + s))
            out.append(10 * new if s - 500 < spoils[alpha] else new)
        return torch.cat(out)
    return sample


@pytest.mark.parametrize("fails, chosen, confirmations", [
    # spoiling fewer probes at every step up in α: each gate beats the one before, yet one is confirmed
    (set(), 0.5, 1),
    # the least costly gate fails confirmation; the next by cost is chosen, measured in full only then
    ({0.001}, 0.01, 2),
])
def test_a_window_is_confirmed_once_least_costly_first(small_guard, fails, chosen, confirmations):
    _, train = small_guard
    if fails:   # α 0.001 spoils least; 0.003 and 0.01 cost more, and are set aside until it fails
        spoils = {0.001: 1, 0.003: 3, 0.01: 2, 0.05: 3, 0.1: 3, 0.2: 3, 0.3: 3, 0.4: 3, 0.5: 3}
    else:
        spoils = {a: 9 - i for i, a in enumerate((0.001, 0.003, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5))}
    sample = _gates_spoil(train, spoils, fails, first_new=532)
    cal = calibrate(_ScriptedGuard(train.shape[1]), sample, train, seeds=range(500, 532))
    assert cal.reached and cal.settings["alpha"] == chosen and cal.settings["sigma_max"] == 1.0, cal.report()
    narrow = [r for r in cal.rows if r["settings"] and r["settings"]["sigma_max"] == 1.0]
    assert sum(r["confirm"] is not None for r in narrow) == confirmations, cal.report()
    rows = {r["settings"]["alpha"]: r for r in narrow}
    assert rows[chosen]["spoiled"] == spoils[chosen] and rows[chosen]["outcome"] == "chosen", cal.report()
    # the choice is the least costly setting that passes on the probes and is confirmed: every complete
    # setting that costs less failed its confirmation
    for r in cal.rows[1:]:
        if r["complete"] and r["copies"] <= cal.allowed and r["cost"] < rows[chosen]["cost"]:
            assert r["outcome"].startswith("failed confirmation"), cal.report()
    if fails:
        assert rows[0.001]["outcome"].startswith("failed confirmation") and rows[0.003]["complete"], cal.report()
        assert rows[0.05]["outcome"].startswith("abandoned: spoils or moves more than α 0.01"), cal.report()
    # the wider windows are tried only while the best spoils more than one probe (α 0.01 spoils 2;
    # there, too, α 0.001 spoils least and fails confirmation, and the rest cost more than α 0.01)
    windows = {r["settings"]["sigma_max"] for r in cal.rows if r["settings"]}
    assert windows == ({1.0, 2.0, 4.0, None} if fails else {1.0}), cal.report()


class _CapScriptedGuard(_ScriptedGuard):
    """A scripted guard whose guide marks the denoised latent with the step cap instead of the gate."""

    def guide(self, denoised, x, sigma, *, max_step=1.0, sigma_max=None, **_):
        if sigma_max is not None and float(sigma[0]) > sigma_max:
            return denoised
        return torch.full_like(denoised, 0.0 if max_step is None else max_step)


@pytest.mark.parametrize("spoiled_at_cap, chosen_cap, pushes_tried", [
    ({1.0: 8, 2.0: 0}, 2.0, 2),   # the standard push passes only by spoiling 8 of 32: the next one is cleaner
    ({1.0: 3, 2.0: 0}, 1.0, 1),   # 3 of 32 is within a tenth: the standard push is kept, nothing stronger tried
    ({1.0: 8, 2.0: 8}, 1.0, 2),   # the next push finds nothing better: the search ends there
    ({1.0: 8, 2.0: 5}, 2.0, 3)])  # it finds a better one that still spoils: the one after finds nothing better
def test_a_stronger_push_is_tried_while_the_best_spoils_more_than_a_tenth(small_guard, spoiled_at_cap, chosen_cap,
                                                                          pushes_tried):
    _, train = small_guard
    sample = _gates_spoil(train, spoiled_at_cap, set(), first_new=532)  # keyed by the step cap the guide marks
    cal = calibrate(_CapScriptedGuard(train.shape[1]), sample, train, seeds=range(500, 532), confirm_seeds=[])
    assert cal.reached and cal.settings["max_step"] == chosen_cap, cal.report()
    assert cal.spoiled_rate == spoiled_at_cap[chosen_cap] / 32, cal.report()
    pushes = {(r["settings"]["scale"], r["settings"]["max_step"]) for r in cal.rows if r["settings"]}
    assert len(pushes) == pushes_tried, cal.report()


@pytest.mark.parametrize("spoiled_at_cap", [{1.0: 8, 2.0: 0}, {1.0: 8, 2.0: 8}, {1.0: 8, 2.0: 5}])
def test_weak_settings_set_aside_decide_as_measured_to_the_end(small_guard, copying, monkeypatch, spoiled_at_cap):
    # A setting that spoils over a tenth of the probes is set aside and measured on only where it might
    # still be chosen: the choice, and how far the search goes, are those of measuring it to the end.
    from cpsample_nodes.core.calibration_search import Search

    _, train = small_guard
    guard, _, sample, cal, _ = copying
    scripted = _gates_spoil(train, spoiled_at_cap, set(), first_new=532)
    aside = [calibrate(_CapScriptedGuard(train.shape[1]), scripted, train, seeds=range(500, 532), confirm_seeds=[]),
             cal]
    monkeypatch.setattr(Search, "set_aside_limit", lambda self: float("inf"))
    to_end = [calibrate(_CapScriptedGuard(train.shape[1]), scripted, train, seeds=range(500, 532), confirm_seeds=[]),
              calibrate(guard.with_space(guard.space), sample, train, seeds=range(500, 532))]
    for a, b in zip(aside, to_end):
        assert a.settings == b.settings and a.spoiled_rate == b.spoiled_rate, (a.report(), b.report())
        assert [r["label"] for r in a.rows] == [r["label"] for r in b.rows]  # the same settings tried
        assert a.model_calls <= b.model_calls
    assert any(r["outcome"] == "abandoned: spoils over a tenth of the probes" for r in aside[1].rows), cal.report()
    assert aside[1].model_calls < to_end[1].model_calls


def _one_copy_left_or_moved(train):
    """Three of every four seeds copy a training latent unguarded. α 0.001 turns every copy but probe
    500's into a new latent and leaves the new samples alone; every stronger gate turns all the copies
    and moves each new sample by about 5 % of its norm (natural statistics, a small change)."""
    def draw(s):
        return torch.randn((1, *train.shape[1:]), generator=torch.Generator().manual_seed(10_000 + s))

    def sample(guide, seeds):
        out = []
        for s in seeds:
            copy = train[s % train.shape[0]].unsqueeze(0)
            new = draw(s)
            marked = guide(copy, copy, torch.tensor([0.5]))
            alpha = None if torch.equal(marked, copy) else round(float(marked.flatten()[0]), 6)
            if s % 4 != 3:  # copies unguarded
                keep = alpha is None or (alpha == 0.001 and s == 500)
                out.append(copy + 1e-3 * draw(-s) if keep else new)
            else:
                moved = alpha is not None and alpha != 0.001
                out.append((1 - 0.05 ** 2) ** 0.5 * new + 0.05 * draw(50_000 + s) if moved else new)
        return torch.cat(out)
    return sample


def test_a_copy_the_target_allows_is_not_counted_as_spoiled(small_guard):
    # α 0.001 leaves one copy (within the target) and moves nothing; α 0.003 leaves none but moves the
    # 16 new samples by 5 % each (0.8 of a probe). Counted as spoiled, the copy (under the near-copy
    # line) would cost α 0.001 a whole probe; left to the target, α 0.001 is the gentler and cheaper.
    _, train = small_guard
    cal = calibrate(_ScriptedGuard(train.shape[1]), _one_copy_left_or_moved(train), train, seeds=range(500, 564))
    assert cal.allowed >= 1 and cal.reached, cal.report()
    assert cal.settings["alpha"] == 0.001 and cal.settings["sigma_max"] == 1.0, cal.report()
    rows = {r["settings"]["alpha"]: r for r in cal.rows
            if r["settings"] and r["settings"]["sigma_max"] == 1.0 and r["settings"]["scale"] == 1000.0}
    gentle, next_ = rows[0.001], rows[0.003]
    assert gentle["copies"] == 1 and next_["copies"] == 0, cal.report()
    assert gentle["spoiled"] == next_["spoiled"], cal.report()  # the copy left is not spoiled as well
    assert next_["outcome"] == "abandoned: spoils or moves more than α 0.001, σ ≤ 1", cal.report()


def _in_batches_of(sample, size: int):
    """The same sampler run the way a host with little memory runs it: the seeds in batches, one after
    another (each batch's model calls come before the next batch's)."""
    def batched(guide, seeds):
        return torch.cat([sample(guide, list(seeds[i:i + size])) for i in range(0, len(seeds), size)])
    return batched


def _decisions(cal):
    """What a calibration decided, row by row: everything but what it cost (and rounding noise)."""
    keep = ("label", "copies", "evaluated", "complete", "spoiled", "confirm", "outcome")
    return [{k: r.get(k) for k in keep} for r in cal.rows]


def test_small_batches_of_the_troubled_probes_first_decide_as_batches_of_eight_in_order(copying, monkeypatch):
    # A setting's copies and cost only grow as probes are added, so the order the probes are measured in
    # and the batch sizes change how soon a failing setting is abandoned, not what is chosen.
    from cpsample_nodes.core.calibration_search import CHUNK, Search

    guard, train, sample, cal, _ = copying
    monkeypatch.setattr(Search, "troubled_first", lambda self, todo: todo)
    monkeypatch.setattr(Search, "fewest_to_settle", lambda self, row, ahead: CHUNK)
    in_order = calibrate(guard, sample, train, seeds=range(500, 532))
    assert cal.settings == in_order.settings and cal.confirm_copies == in_order.confirm_copies
    assert torch.equal(cal.calibrated_copied, in_order.calibrated_copied)
    # the same settings were tried; those measured to the end in both measured the same
    assert [r["label"] for r in cal.rows] == [r["label"] for r in in_order.rows]
    both = [(a, b) for a, b in zip(cal.rows, in_order.rows) if a.get("complete") and b.get("complete")]
    assert len(both) >= 2 and all(a["copies"] == b["copies"] and a["spoiled"] == b["spoiled"] for a, b in both)
    # and the settings abandoned early cost fewer probes
    assert cal.model_calls < in_order.model_calls, (cal.model_calls, in_order.model_calls)
    assert sum(r["evaluated"] for r in cal.rows) < sum(r["evaluated"] for r in in_order.rows)


class _NoGateLooksShut:
    """The guard as calibration uses it, but reporting p = 0 along every unguarded path and an unknown p
    (NaN) along every guided one: no gate ever looks shut and no two gates look alike, so every seed of
    every setting is sampled (calibration without reuse). ``guided=True``: the guided paths report the
    real p, so only paths under another gate are reused."""

    def __init__(self, guard, guided: bool = False):
        self.guard, self.space, self.latent_channels, self.info = guard, guard.space, guard.latent_channels, {}
        self.guided = guided

    def probability(self, x, sigma):
        return torch.zeros(x.shape[0])

    def guide_traced(self, denoised, x, sigma, **settings):
        out, p = self.guard.guide_traced(denoised, x, sigma, **settings)
        return out, p if p is None or self.guided else torch.full_like(p, float("nan"))


def _without_replay(sample):
    """The same sampler as a host that cannot replay a path's start: every call of every path runs the model."""
    return lambda guide, seeds: sample(guide, seeds)


def test_replaying_the_start_of_known_paths_decides_as_running_the_model(copying, monkeypatch):
    # Up to the first call where a setting pushes otherwise than a path already sampled (outside its σ
    # window it never pushes; the unguarded path never does), the model sees the x it saw there: a sampler
    # that takes those calls' x0 predictions from the path samples the same probes, with fewer model calls.
    from cpsample_nodes.core import calibration_probes
    from cpsample_nodes.core.calibration_reuse import KnownPaths

    guard, train, sample, cal, _ = copying
    plain = calibrate(guard.with_space(guard.space), _without_replay(sample), train, seeds=range(500, 532))
    assert plain.calls_replayed == 0 and cal.calls_replayed > 0, cal.report()
    assert cal.settings == plain.settings and _decisions(cal) == _decisions(plain), (cal.report(), plain.report())
    assert torch.equal(cal.calibrated_copied, plain.calibrated_copied) and cal.confirm_copies == plain.confirm_copies
    assert torch.allclose(cal.calibrated, plain.calibrated, atol=1e-4)  # batching rounds differently, no more
    assert cal.reused == plain.reused and cal.calls_saved == plain.calls_saved
    assert cal.model_calls + cal.calls_replayed == plain.model_calls
    assert cal.summary()["model_calls_replayed"] == cal.calls_replayed
    assert "taken from paths already sampled" in cal.report()
    # with no memory left for guided paths' x0 predictions, only the unguarded paths are replayed: the same
    # decisions, fewer calls replayed
    monkeypatch.setattr(calibration_probes, "REPLAY_MEMORY", 0)
    unguarded_only = calibrate(guard.with_space(guard.space), sample, train, seeds=range(500, 532))
    assert unguarded_only.settings == cal.settings and _decisions(unguarded_only) == _decisions(cal)
    assert 0 < unguarded_only.calls_replayed < cal.calls_replayed, (unguarded_only.calls_replayed, cal.calls_replayed)
    assert unguarded_only.model_calls + unguarded_only.calls_replayed == plain.model_calls
    # which is what replaying the unguarded paths alone gives
    monkeypatch.setattr(calibration_probes, "REPLAY_MEMORY", 2**62)
    monkeypatch.setattr(KnownPaths, "_keep_to_replay", lambda self, seed, path: None)
    kept_none = calibrate(guard.with_space(guard.space), sample, train, seeds=range(500, 532))
    assert kept_none.calls_replayed == unguarded_only.calls_replayed and _decisions(kept_none) == _decisions(cal)


def test_reusing_paths_decides_as_sampling_every_seed(copying):
    # A gate that stays shut along a seed's unguarded path leaves the seed unguarded, and a gate that opens
    # with the same heads wherever another gate opened along that gate's path takes the same path: reusing
    # those samples changes nothing calibration decides, only the model calls it makes.
    guard, train, sample, _, _ = copying
    sample = _without_replay(sample)  # reuse alone: every call of a path that is sampled runs the model
    cal = calibrate(guard.with_space(guard.space), sample, train, seeds=range(500, 532))
    every = calibrate(_NoGateLooksShut(guard), sample, train, seeds=range(500, 532))
    assert every.calls_saved == 0 and every.reused == 0
    assert cal.settings == every.settings and _decisions(cal) == _decisions(every), (cal.report(), every.report())
    # paths under another gate alone, and both kinds together, each save calls here
    guided = calibrate(_NoGateLooksShut(guard, guided=True), sample, train, seeds=range(500, 532))
    assert guided.settings == every.settings and _decisions(guided) == _decisions(every)
    assert 0 < guided.reused < cal.reused, (guided.reused, cal.reused)
    assert torch.equal(cal.calibrated_copied, every.calibrated_copied) and cal.confirm_copies == every.confirm_copies
    assert torch.allclose(cal.calibrated, every.calibrated, atol=1e-4)  # batching rounds differently, no more
    # every reused sample would have cost its model calls: the two add up to sampling every seed
    assert cal.reused > 0 and cal.calls_saved == cal.reused * STEPS
    assert cal.model_calls + cal.calls_saved == every.model_calls
    assert sum(r["reused"] for r in cal.rows) == cal.reused
    assert cal.summary()["model_calls_saved"] == cal.calls_saved and "more saved by reusing" in cal.report()
    # a host that runs the seeds in smaller batches, one after another, is traced as well
    batched = calibrate(guard.with_space(guard.space), _in_batches_of(sample, 3), train, seeds=range(500, 532))
    assert batched.settings == cal.settings and _decisions(batched) == _decisions(cal)
    assert batched.calls_saved == cal.calls_saved


def test_a_path_is_reused_only_where_the_gate_stays_shut_by_a_margin():
    from cpsample_nodes.core.calibration_reuse import REUSE_MARGIN, Trace, UnguardedPath

    path = UnguardedPath([14.0, 3.0, 0.5], [0.002, 0.2, 0.3], torch.zeros(1))
    gate = {"alpha": 0.1, "sigma_max": None}
    assert not path.shut(gate)                          # at σ 14 p came within 0.002 of 0 or 1
    assert path.shut({**gate, "sigma_max": 4.0})        # that call lies outside the window
    assert not path.shut({**gate, "alpha": 0.2, "sigma_max": 4.0})  # p at 0.2 exactly: too close
    assert path.shut({**gate, "alpha": 0.2 - 2 * REUSE_MARGIN, "sigma_max": 4.0})
    assert not path.shut({**gate, "sigma_max": 4.0, "guard_input": "noisy"})  # p was read on x0 predictions
    unknown = UnguardedPath([14.0, 3.0], [0.4, None], torch.zeros(1))  # the guard did not run at σ 3
    assert not unknown.shut({"alpha": 0.01, "sigma_max": None})
    # two batches of 2 seeds, 2 calls each: the second seed of the first batch was guided at its 2nd call
    trace = Trace()
    x = torch.zeros(2, 1, 1, 1)
    for changed in (False, True):
        out = x.clone()
        out[1] += float(changed)
        trace.add(x, out, x, torch.tensor(1.0), torch.full((2,), 0.5))
    for _ in range(2):
        trace.add(x, x, x, torch.tensor(1.0), torch.full((2,), 0.5))
    found = trace.paths([7, 8, 9, 10], torch.arange(4.0).view(4, 1, 1, 1))
    assert sorted(found) == [7, 9, 10] and float(found[9].sample) == 2.0 and found[7].margins == [0.5, 0.5]
    # batches that do not each run the same number of calls (a host interleaving them): no path at all
    trace.add(x[:1], x[:1], x[:1], torch.tensor(1.0), None)
    assert trace.paths([7, 8, 9, 10, 11], torch.zeros(5, 1, 1, 1)) == {}


def test_a_path_under_another_gate_is_reused_only_where_the_same_heads_open():
    from cpsample_nodes.core.calibration_reuse import REUSE_MARGIN, GuidedPath, Trace, step_key

    gate = {"scale": 1000.0, "alpha": 0.05, "max_step": 1.0, "sigma_max": 4.0}
    # two heads, sampled under α 0.05; at σ 14, outside the window, the guard did not run
    path = GuidedPath([14.0, 3.0, 0.5], [None, [0.02, 0.5], [0.001, 0.3]], 0.05, step_key(gate), torch.zeros(1))
    assert path.same_steps({**gate, "alpha": 0.03})     # head 0 open and head 1 shut at both calls, as under 0.05
    assert path.same_steps({**gate, "alpha": 0.25})     # 0.3 still lies inside [0.25, 0.75]
    assert not path.same_steps({**gate, "alpha": 0.35})  # head 1 would open at σ 0.5
    assert not path.same_steps({**gate, "alpha": 0.01})  # head 0 would stay shut at σ 3
    assert not path.same_steps({**gate, "alpha": 0.02 + REUSE_MARGIN / 2})  # too close to head 0's p
    for other in ({"sigma_max": None}, {"scale": 3000.0}, {"max_step": 2.0}, {"guard_input": "noisy"}):
        assert not path.same_steps({**gate, "alpha": 0.03, **other}), other  # another push or window
    unknown = GuidedPath([3.0], [[float("nan")]], 0.05, step_key(gate), torch.zeros(1))
    assert not unknown.same_steps({**gate, "alpha": 0.03}) and not unknown.same_steps(gate)
    # a trace keeps every head's p of every seed, guided or not
    trace, x = Trace(), torch.zeros(2, 1, 1, 1)
    trace.add(x, x + 1, x, torch.tensor(1.0), torch.tensor([[0.25, 0.625], [0.5, 0.5]]))
    found = trace.guided([7, 8], torch.arange(2.0).view(2, 1, 1, 1), gate)
    assert found[7].heads == [[0.25, 0.625]] and found[8].alpha == 0.05 and float(found[8].sample) == 1.0
    assert trace.paths([7, 8], x) == {}  # both were guided: neither is an unguarded path

def test_a_path_is_replayed_up_to_the_first_call_where_a_setting_pushes_otherwise():
    from cpsample_nodes.core.calibration_reuse import GuidedPath, KnownPaths, UnguardedPath, step_key

    gate = {"scale": 1000.0, "alpha": 0.05, "max_step": 1.0, "sigma_max": 4.0}
    sigmas = [14.0, 6.0, 3.0, 1.0, 0.5]
    x0 = [torch.full((1,), float(i)) for i in range(5)]
    unguarded = UnguardedPath(sigmas, [0.3, 0.3, 0.02, 0.01, 0.001], torch.zeros(1), x0)
    # sampled under α 0.05, σ ≤ 4, two heads: head 0 open at every call inside the window, head 1 never
    heads = [None, None, [0.02, 0.5], [0.01, 0.3], [0.001, 0.4]]
    path = GuidedPath(sigmas, heads, 0.05, step_key(gate), torch.zeros(1), [t + 10 for t in x0])
    assert path.alike_calls({**gate, "alpha": 0.03}, unguarded) == 5     # the same heads open at every call
    assert path.alike_calls({**gate, "alpha": 0.35}, unguarded) == 3     # head 1 opens at σ 1 (p 0.3 < 0.35)
    assert path.alike_calls({**gate, "alpha": 0.015}, unguarded) == 2    # head 0 stays shut at σ 3 (p 0.02)
    assert path.alike_calls({**gate, "alpha": 0.03, "scale": 3000.0}, unguarded) == 2  # opens alike, pushes harder
    assert path.alike_calls({**gate, "sigma_max": 2.0}, unguarded) == 2  # does not guide at σ 3, where it pushed
    # a wider window: before the recorded setting's first push its path is the unguarded one, whose p says
    # whether the new gate stays shut there
    assert path.alike_calls({**gate, "sigma_max": None}, unguarded) == 5  # p 0.3 at σ 14 and 6: shut
    assert path.alike_calls({**gate, "sigma_max": None}, None) == 0       # unknown without the unguarded path
    opened = UnguardedPath(sigmas, [0.3, 0.04, 0.02, 0.01, 0.001], torch.zeros(1), x0)
    assert path.alike_calls({**gate, "sigma_max": None}, opened) == 1     # p 0.04 at σ 6: the gate opens there
    # the start served: the calls before the first that parts, and that one (the model sees the same x)
    known = KnownPaths()
    known.add({7: unguarded})
    assert known.known_start(7, gate) == x0[:3]                 # shut at σ 14 and 6 (outside), opens at σ 3
    known.add_guided({7: path})
    assert known.known_start(7, {**gate, "alpha": 0.35}) == [t + 10 for t in x0[:4]]  # the guided path's
    assert known.known_start(7, {**gate, "alpha": 0.015}) == x0[:4]  # the unguarded path's: shut up to σ 1
    # two guided paths per seed keep their x0 predictions: the latest and the window's strongest gate's
    key = step_key(gate)
    strong, weak, mid = (GuidedPath(sigmas, heads, a, key, torch.zeros(1), list(x0)) for a in (0.5, 0.01, 0.1))
    for p in (strong, weak, mid):
        known.add_guided({7: p})
    assert known.latest[7] is mid and known.strongest[7] is strong
    assert path.denoised is None and weak.denoised is None and mid.denoised is not None
    assert known.reusable(7, {**gate, "alpha": 0.03}) is path  # a sample is still reused without them
    wider = GuidedPath(sigmas, heads, 0.01, step_key({**gate, "sigma_max": None}), torch.zeros(1), list(x0))
    known.add_guided({7: wider})  # a new window: its strongest so far is the only gate it measured
    assert known.latest[7] is wider and known.strongest[7] is wider and strong.denoised is None
    assert known.kept_bytes() == 5 * 4  # one float per call, shared by the paths kept: counted once


def test_a_decoder_counts_copies_on_pixels_too(small_guard):
    """With a decoder a sample copies when its latents or its pixels sit on a training image. Here the
    samples copy channel 0 of a training latent and draw the rest anew: the latents do not copy, the
    'pixels' (channel 0) do."""
    guard, train = small_guard

    def sample(guide, seeds):
        out = torch.randn((len(seeds), *train.shape[1:]), generator=torch.Generator().manual_seed(seeds[0]))
        out[:, 0] = torch.stack([train[s % train.shape[0], 0] for s in seeds])
        return out

    latents_only = calibrate(guard.with_space(guard.space), sample, train, seeds=range(500, 516))
    assert latents_only.no_copies, latents_only.report()
    decoded = calibrate(guard.with_space(guard.space), sample, train, seeds=range(500, 516), confirm_seeds=[],
                        decode=lambda x: x[:, :1])
    assert decoded.unguarded_rate == 1.0 and not decoded.reached, decoded.report()  # the guide cannot help here
    with pytest.raises(ValueError, match=r"decode must return one image per latent \(8\)"):
        calibrate(guard.with_space(guard.space), sample, train, seeds=range(500, 516), decode=lambda x: x[:1])


def test_spoiled_means_outside_the_natural_range_or_a_near_copy():
    from cpsample_nodes.core.calibration_stats import Reference

    natural = torch.randn(32, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ref = Reference.of(natural, torch.tensor([0.6, 0.5, 0.8]))  # the non-copies' calibrated ℓ2 ratios
    fine = natural[:4]
    assert not ref.spoiled(fine, torch.full((4,), 0.7)).any()
    assert ref.spoiled(fine, torch.full((4,), 0.45)).all()           # a copy pushed just past the line
    assert ref.spoiled(10 * fine, torch.full((4,), 0.7)).all()       # blown up
    assert ref.spoiled(0.05 * fine, torch.full((4,), 0.7)).all()     # washed out
    assert ref.spoiled(fine + 5.0, torch.full((4,), 0.7)).all()      # shifted
    i = torch.arange(8)
    board = ((i.view(8, 1) + i.view(1, 8)) % 2 * 2 - 1).float()
    speckled = fine.abs() * board  # the same spread and extremes, signs in a checkerboard: speckle
    assert ref.spoiled(speckled, torch.full((4,), 0.7)).all()
    assert ((Reference.stats(speckled)[:, :3] > ref.lo[:3]) & (Reference.stats(speckled)[:, :3] < ref.hi[:3])).all()


def test_a_tie_goes_to_the_gate_considered_first(small_guard):
    # every gate spoils the same 3 probes and moves nothing: each costs 3, and the gentlest, considered
    # first, is chosen (the window's strongest gate is measured first but considered last)
    _, train = small_guard
    spoils = dict.fromkeys((0.001, 0.003, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5), 3)
    cal = calibrate(_ScriptedGuard(train.shape[1]), _gates_spoil(train, spoils, set(), first_new=532), train,
                    seeds=range(500, 532))
    assert cal.reached and cal.settings["alpha"] == 0.001 and cal.settings["sigma_max"] == 1.0, cal.report()
    assert cal.rows[1]["label"] == "α 0.5, σ ≤ 1" and cal.rows[1]["complete"], cal.report()


def test_a_guard_file_calibrated_by_an_older_rule_still_applies(small_guard, tmp_path):
    # guard files from before 2026-12-03 hold the rule of their day in "ranking"; their settings apply
    guard, _ = small_guard
    g = guard.with_space(guard.space)
    old = {"version": 1, "settings": {"scale": 1000.0, "alpha": 0.4, "max_step": 1.0, "sigma_max": 1.0},
           "unguarded_rate": 0.8, "calibrated_rate": 0.03125, "reached": True, "spoiled_rate": 0.046875,
           "no_copies": False, "probes": 64, "target": 0.1, "allowed_copies": 2, "confidence": 0.8,
           "confirm_seeds": 64, "confirm_copies": 1, "ranking": "spoiled", "sampler": "euler 20 steps",
           "model_calls": 9000, "seconds": 12.5, "tried": []}
    g.info = {**g.info, "calibration": old}
    back = load_guard(save_guard(g, tmp_path / "old.safetensors"))
    assert back.info["calibration"] == old
    assert back.calibrated_settings() == old["settings"]
