"""benchmarks/guard_checkpoints.py: the trace trains the whole budget and keeps the checked weights."""
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.guard_checkpoints import MeanLogitGuard, trace  # noqa: E402
from cpsample_nodes.core import NoiseSpace, training  # noqa: E402
from cpsample_nodes.core.guard import Guard  # noqa: E402


def _bench() -> SimpleNamespace:
    latents = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    return SimpleNamespace(train=latents, space=NoiseSpace.vp(), training_options=dict)


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
