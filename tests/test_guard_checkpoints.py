"""benchmarks/guard_checkpoints.py: the trace trains the whole budget and keeps the checked weights."""
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.guard_checkpoints import MeanLogitGuard, proxy_copies, proxy_sampler, trace  # noqa: E402
from cpsample_nodes.core import NoiseSpace, training  # noqa: E402
from cpsample_nodes.core.guard import Guard  # noqa: E402


def _bench() -> SimpleNamespace:
    latents = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    return SimpleNamespace(train=latents, space=NoiseSpace.vp(), training_options=dict, heads=1)


def test_trace_trains_the_whole_budget_and_keeps_the_checked_weights():
    bench = _bench()
    guard, kept, checks = trace(bench, seed=0, every=50, max_steps=100)
    assert guard.info["steps"] == 100                 # the check never stopped training
    assert sorted(checks) == [50, 100] and all(0.0 <= v <= 1.0 for v in checks.values())
    assert sorted(kept) == [50, 100]
    final = guard.net.state_dict()
    assert all(torch.equal(kept[100][k], final[k]) for k in final)
    assert not all(torch.equal(kept[50][k], final[k]) for k in final)
    assert training.Guard is Guard                    # the watcher is removed afterwards


def test_mean_logit_guard_reads_the_mean_of_its_networks():
    bench = _bench()
    first, _, _ = trace(bench, seed=0, every=50, max_steps=50)
    second, _, _ = trace(bench, seed=1, every=50, max_steps=50)
    both = MeanLogitGuard([first.net, second.net], bench.space)
    x, sigma = bench.train, torch.full((4,), 0.5)
    expected = (first.logit(x, sigma) + second.logit(x, sigma)) / 2
    assert torch.allclose(both.logit(x, sigma), expected, atol=1e-6)
    moved = both.guide(x, x, sigma, alpha=0.5, scale=1000.0)
    assert moved.shape == x.shape and not torch.equal(moved, x)


def test_the_stand_in_copies_its_training_latents_unless_pushed_off_them():
    for space in (NoiseSpace.vp(), NoiseSpace.flow()):
        bench = SimpleNamespace(train=torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(1)), space=space)
        sample = proxy_sampler(bench)
        x = sample(None, [1, 2, 3])
        assert x.shape == (3, 4, 8, 8) and torch.equal(x, sample(None, [1, 2, 3]))  # seeded
        plain = proxy_copies(bench, sample, None)
        assert 0.2 <= plain <= 0.8, (space.kind, plain)  # half its mass sits on the training latents
        # an x0 prediction moved well away from every latent at every step leaves no copy
        assert proxy_copies(bench, sample, lambda d, x, s: d + 3.0) == 0.0
