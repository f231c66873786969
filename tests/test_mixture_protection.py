"""Fast version of benchmarks/mixture.py: the guard must stop a memorising denoiser from copying."""
import torch

from benchmarks.mixture import Mixture, evaluate, sample
from cpsample_nodes.core import NoiseSpace, train_guard, training
from cpsample_nodes.core.metrics import pairwise_l2


def test_guard_cuts_replicas(small_guard, monkeypatch):
    _, train = small_guard  # 8 latents of 4×8×8 from N(0, I)
    # A guard trained a fixed 800 steps (a target the stop check never reaches): the same guard on every CPU.
    # The fixture's guard stops where the stop check first passes, which depends on the CPU's float kernels;
    # on an AVX2 machine it stopped at step 350-400, a weak guard whose pushed samples came out inflated
    # (std 1.11, FD 201.5 against 198.4 unguarded); trained 800 steps, FD 103.7.
    monkeypatch.setattr(training, "TARGET_ACCURACY", 1.01)
    guard = train_guard(train, NoiseSpace.vp(), seed=0, max_steps=800)
    n = train.shape[0]
    d = pairwise_l2(train, train) + torch.eye(n, dtype=torch.float64) * 1e9
    threshold = 0.1 * float(d.min(1).values.median())
    mix = Mixture(train.flatten(1), lam=0.5, tau=0.05)
    reference = torch.randn(300, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    space = NoiseSpace.vp()
    plain = evaluate(sample(mix, 300, 20, space, None, {}, "euler_a", 1), train, reference, threshold)
    guarded = evaluate(sample(mix, 300, 20, space, guard, {"scale": 1000}, "euler_a", 1), train, reference,
                       threshold)
    assert plain["replicas"] >= 0.25, plain
    assert guarded["replicas"] <= 0.05, guarded
    assert guarded["fd"] < plain["fd"], (plain, guarded)
