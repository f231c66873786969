"""Guards with several heads: independent random labellings fitted by one network."""
import pytest
import torch

from cpsample_nodes.core import Guard, GuardConfig, GuardNet, NoiseSpace, load_guard, random_labels, save_guard, train_guard
from cpsample_nodes.core.training import head_labels


def _latents() -> torch.Tensor:
    return torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(0))


def test_three_heads_are_the_default_and_older_configs_load_as_one():
    assert GuardConfig().heads == 3 and GuardConfig.for_latents((4, 64, 64)).heads == 3
    assert GuardConfig.from_dict(GuardConfig().to_dict()).heads == 3
    old = GuardConfig().to_dict()
    del old["heads"]  # a guard file written before heads existed
    assert GuardConfig.from_dict(old).heads == 1
    out = GuardNet(GuardConfig.from_dict(old)).eval()(torch.randn(3, 4, 8, 8), torch.ones(3))
    assert out.shape == (3,)
    with pytest.raises(ValueError, match="head"):
        GuardNet(GuardConfig(heads=0))


def test_logit_is_the_most_confident_head():
    torch.manual_seed(0)
    guard = Guard(GuardNet(GuardConfig(heads=3)).eval(), NoiseSpace.vp())
    x = torch.randn(5, 4, 8, 8)
    z = guard.head_logits(x, 0.5)
    assert z.shape == (5, 3)
    pick = z.abs().argmax(1)
    assert torch.equal(guard.logit(x, 0.5), z[torch.arange(5), pick])
    assert guard.probability(x, 0.5).shape == (5,)


def test_head_labels_start_with_the_seed_and_differ_per_head():
    labels = head_labels(32, 7, 3)
    assert labels.shape == (32, 3)
    assert torch.equal(labels[:, 0], random_labels(32, 7))
    assert not torch.equal(labels[:, 0], labels[:, 1]) and not torch.equal(labels[:, 1], labels[:, 2])
    assert torch.equal(head_labels(32, 7), random_labels(32, 7))


def test_training_memorises_every_head_and_the_file_keeps_them(tmp_path):
    latents = _latents()
    guard = train_guard(latents, NoiseSpace.vp(), seed=0, max_steps=3000)  # the default: three heads
    assert guard.heads == 3 and guard.info["heads"] == 3
    assert guard.info["memorised"], guard.info
    labels = head_labels(8, 0, 3)
    z = guard.head_logits(latents + 0.05 * torch.randn_like(latents), 0.05)
    assert torch.equal((z > 0).float(), labels)  # each head fits its own labelling
    path = save_guard(guard, tmp_path / "three.safetensors")
    back = load_guard(path)
    assert back.heads == 3
    x = torch.randn(2, 4, 8, 8)
    assert torch.equal(back.head_logits(x, 0.3), guard.head_logits(x, 0.3))
    with pytest.raises(ValueError, match="heads"):
        train_guard(latents, NoiseSpace.vp(), heads=0)
    with pytest.raises(ValueError, match="heads"):
        train_guard(latents, NoiseSpace.vp(), heads=2.5)


def _heads(factors: list[float]) -> Guard:
    """A guard whose heads are one network's logit times each factor."""
    torch.manual_seed(1)
    one = GuardNet(GuardConfig(heads=1)).eval()
    net = GuardNet(GuardConfig(heads=len(factors))).eval()
    state = {k: v for k, v in one.state_dict().items() if not k.startswith("head.")}
    f = torch.tensor(factors)[:, None]
    state["head.weight"] = one.head.weight.detach() * f
    state["head.bias"] = one.head.bias.detach() * f[:, 0]
    net.load_state_dict(state)
    return Guard(net, NoiseSpace.vp())


def test_each_head_pushes_only_where_its_own_gate_is_open():
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    sigma = torch.full((1,), 0.5)
    z = float(_heads([1.0]).logit(x, NoiseSpace.vp().sigma_min).detach().abs())
    assert z > 0
    alpha = float(torch.sigmoid(torch.tensor(-5 * z)))  # open for 50·z, shut for 0.5·z
    kw = {"alpha": alpha, "max_step": None, "scale": 10.0}
    sure = _heads([50.0]).guide(x, x, sigma, **kw)
    assert not torch.equal(sure, x)
    # a second head that is unsure adds nothing, though its own gradient is not zero (unmasked, it would
    # change the step by a few 10⁻⁴ of its size)
    tol = 1e-5 * float((sure - x).abs().max())
    assert torch.allclose(_heads([50.0, 0.5]).guide(x, x, sigma, **kw) - x, sure - x, rtol=0, atol=tol)
    # a second head as sure pushes as much again
    assert torch.allclose(_heads([50.0, 50.0]).guide(x, x, sigma, **kw) - x, 2 * (sure - x), rtol=1e-4, atol=1e-5)
    # the gate of the whole guard opens where any head's does; the trace reports each head's p
    _, q = _heads([0.5, 50.0]).guide_traced(x, x, sigma, **kw)
    margin = torch.minimum(q, 1 - q)
    assert q.shape == (1, 2) and float(margin[0, 1]) < alpha < float(margin[0, 0])
