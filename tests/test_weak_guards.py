"""benchmarks/weak_guards.py: the copy test, the normalized push and the adapted guard do what they say."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.calibration import MixtureBench  # noqa: E402
from benchmarks.weak_guards import adapted, copies, normalized_guide, reading, rms  # noqa: E402
from cpsample_nodes.core import train_guard  # noqa: E402
from cpsample_nodes.core.training import random_labels  # noqa: E402


@pytest.fixture(scope="module")
def bench() -> MixtureBench:
    bench = MixtureBench("flow", samples=8, steps=5)
    bench.train = bench.train[:4].clone()  # a small guard trains in seconds
    bench.threshold = 0.1 * float(torch.cdist(bench.train.flatten(1), bench.train.flatten(1)).add(
        torch.eye(4) * 1e9).min(1).values.median())
    return bench


@pytest.fixture(scope="module")
def guard(bench):
    return train_guard(bench.train, bench.space, seed=0, max_steps=20)


def test_copies_finds_the_latent_a_sample_copies_and_nothing_far_away(bench):
    g = torch.Generator().manual_seed(0)
    near = bench.train[[2, 0]] + 1e-3 * torch.randn(2, *bench.train.shape[1:], generator=g)
    far = 10 * torch.randn(1, *bench.train.shape[1:], generator=g)
    copied, nearest = copies(bench, torch.cat([near, far]))
    assert copied.tolist() == [True, True, False]
    assert nearest[:2].tolist() == [2, 0]


def test_normalized_push_is_a_share_of_the_cap_times_the_confidence(bench, guard):
    d = torch.cat([bench.train, torch.randn(3, *bench.train.shape[1:], generator=torch.Generator().manual_seed(1))])
    sigma = torch.full((d.shape[0],), 0.6)
    p = guard.probability(d, guard.space.sigma_min)
    moved = normalized_guide(guard, alpha=0.5, share=0.5)(d, d, sigma)
    expected = 0.5 * guard.space.x0_noise(sigma) * (1 - 2 * p).abs()
    assert torch.allclose(rms(moved - d), expected, rtol=1e-3, atol=1e-6)
    # items inside the gate are left alone
    gate = float((1 - 2 * p).abs().max()) + 1e-3
    alpha = (1 - gate) / 2
    assert torch.equal(normalized_guide(guard, alpha=alpha, share=0.5)(d, d, sigma), d)


def test_reading_changes_only_the_sigma_the_guard_reads_at(bench, guard):
    blurred = reading(guard, 0.3)
    assert blurred.net is guard.net and blurred.space.sigma_min == 0.3
    sig = torch.full((4,), 0.3)
    assert torch.equal(blurred.probability(bench.train, 0.3), guard.probability(bench.train, sig))


def test_adapting_on_copies_leaves_the_guard_alone_and_fits_the_copies(bench, guard):
    before = {k: v.clone() for k, v in guard.net.state_dict().items()}
    noise = torch.randn(16, *bench.train.shape[1:], generator=torch.Generator().manual_seed(2))
    probes = bench.train.repeat(4, 1, 1, 1) + 1e-3 * noise
    labels = random_labels(4, 0).repeat(4)
    new = adapted(guard, bench, 0, probes, steps=30)
    assert all(torch.equal(before[k], v) for k, v in guard.net.state_dict().items())  # the input guard is untouched

    def loss(g) -> float:
        z = g.logit(probes, torch.full((16,), g.space.sigma_min))
        return float(torch.nn.functional.binary_cross_entropy_with_logits(z, labels))
    assert loss(new) < loss(guard)
