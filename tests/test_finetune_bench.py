"""Cheap checks of the fine-tune benchmark pieces (data split, sigma-form denoiser, Euler sampler)."""
from __future__ import annotations

import math

import torch

from benchmarks.finetune.data import split_digits
from benchmarks.finetune.diffusion import EpsDenoiser, karras_sigmas, sample_euler, sd_sigmas


def test_split_is_disjoint_and_scaled():
    s = split_digits(size=16, n_finetune=16, n_heldout=100, seed=0)
    assert s.finetune.shape == (16, 1, 16, 16) and s.heldout.shape[0] == 100
    assert s.pretrain.shape[0] + 16 + 100 == 1797
    assert float(s.pretrain.min()) >= -1 and float(s.pretrain.max()) <= 1
    assert set(s.finetune_labels.tolist()) == set(range(10))          # spans every digit
    a = split_digits(seed=0)
    assert torch.equal(a.finetune, s.finetune)                          # fixed by the seed


def test_sd_sigma_range():
    s = sd_sigmas()
    assert math.isclose(float(s[0]), 0.0292, abs_tol=2e-4) and math.isclose(float(s[-1]), 14.6146, abs_tol=2e-3)


class _ConstEps(torch.nn.Module):
    """An eps network whose denoised output is always the fixed image c."""

    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x_in, sigma):
        x = x_in * (sigma ** 2 + 1).sqrt()[:, None, None, None]        # undo c_in
        return (x - self.c) / sigma[:, None, None, None]


def test_denoiser_sigma_form_and_euler_reaches_target():
    c = torch.linspace(-1, 1, 256).reshape(1, 1, 16, 16)
    m = EpsDenoiser(_ConstEps(c))
    x = torch.randn(3, 1, 16, 16)
    assert torch.allclose(m(x, torch.full((3,), 2.0)), c.expand(3, -1, -1, -1), atol=1e-5)
    out = sample_euler(m, torch.randn(4, 1, 16, 16), karras_sigmas(5))
    assert torch.allclose(out, c.expand(4, -1, -1, -1), atol=1e-4)


class _GaussEps(torch.nn.Module):
    """Optimal eps for data ~ N(0, s^2 I): denoised = x s^2 / (s^2 + sigma^2)."""

    def __init__(self, s):
        super().__init__()
        self.s = s

    def forward(self, x_in, sigma):
        sg = sigma[:, None, None, None]
        x = x_in * (sg ** 2 + 1).sqrt()
        den = x * self.s ** 2 / (self.s ** 2 + sg ** 2)
        return (x - den) / sg


def test_euler_samples_gaussian_with_the_right_spread():
    m = EpsDenoiser(_GaussEps(0.5))
    g = torch.Generator().manual_seed(0)
    out = sample_euler(m, torch.randn((64, 1, 16, 16), generator=g), karras_sigmas(40))
    assert abs(float(out.std()) - 0.5) < 0.03
    anc = sample_euler(m, torch.randn((64, 1, 16, 16), generator=g), karras_sigmas(40), ancestral=True, generator=g)
    assert abs(float(anc.std()) - 0.5) < 0.05


def test_blurred_replica_rate_sees_through_speckle():
    from benchmarks.finetune.evaluate import blurred_replication, replica_flags

    split = split_digits(size=16, n_finetune=16, n_heldout=20, seed=0)
    train = split.finetune
    g = torch.Generator().manual_seed(0)
    speckled = (train + 0.25 * torch.randn(train.shape, generator=g)).clamp(-1, 1)  # copies + fine noise
    plain = replica_flags(speckled, train).double().mean()
    assert plain < 0.2                                   # pixel ℓ2 is fooled by the speckle
    assert blurred_replication(speckled, train) > 0.9    # after the blur they are copies again
    assert blurred_replication(split.heldout, train) < 0.1  # other digits stay non-replicas


class _BatchRecorder(torch.nn.Module):
    """Stands in for EpsDenoiser in train_denoiser: records every batch, loss from one weight."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.batches: list[torch.Tensor] = []

    def loss(self, x0, generator=None):
        self.batches.append(x0.clone())
        return ((x0 - self.w) ** 2).mean()


def test_prior_preservation_puts_the_share_of_prior_images_in_every_batch():
    import pytest

    from benchmarks.finetune.diffusion import train_denoiser

    data = torch.zeros(16, 1, 4, 4)
    prior = torch.ones(100, 1, 4, 4)
    m = _BatchRecorder()
    train_denoiser(m, data, steps=5, batch=32, lr=1e-3, prior=prior, prior_share=0.15)
    for b in m.batches:
        assert b.shape[0] == 32
        assert int(b.flatten(1)[:, 0].sum()) == 5             # round(32 * 0.15) prior images, the rest data
    plain, shared0 = _BatchRecorder(), _BatchRecorder()
    train_denoiser(plain, data + torch.arange(16.0)[:, None, None, None], 3, batch=8, lr=1e-3)
    train_denoiser(shared0, data + torch.arange(16.0)[:, None, None, None], 3, batch=8, lr=1e-3,
                   prior=prior, prior_share=0.0)
    assert all(torch.equal(a, b) for a, b in zip(plain.batches, shared0.batches))  # share 0: unchanged draws
    with pytest.raises(ValueError, match="prior_share 1.0"):
        train_denoiser(_BatchRecorder(), data, 1, batch=8, prior=prior, prior_share=1.0)

