"""core.gate_log: what the gate did in one run, from the x0 predictions before and after the guide."""
from __future__ import annotations

import pytest
import torch

from cpsample_nodes.core.gate_log import GateLog, describe


def test_counts_opened_samples_steps_and_push():
    log = GateLog()
    sigmas = torch.tensor([10.0, 5.0, 1.0, 0.5, 0.0])
    log.reset(sigmas)
    x = torch.zeros(3, 4, 2, 2)
    log.record(torch.tensor([10.0] * 3), x, x)  # gate closed: guide returned its input
    moved = x.clone()
    moved[1] += 0.5  # item 1 pushed by 0.5 per element
    log.record(torch.tensor([5.0] * 3), x, moved)
    moved2 = x.clone()
    moved2[1] += 0.2
    moved2[2] -= 0.4
    log.record(torch.tensor([1.0] * 3), x, moved2)
    s = log.summary()
    assert s["samples"] == 3 and s["opened_samples"] == 2 and s["total_steps"] == 4
    assert s["evaluated_steps"] == 3 and s["opened_steps"] == [1, 2]
    per = {p["step"]: p for p in s["per_step"]}
    assert per[0]["opened"] == 0 and per[0]["push"] == 0
    assert per[1]["opened"] == 1 and per[1]["push"] == pytest.approx(0.5) and per[1]["push_over_sigma"] == pytest.approx(0.1)
    assert per[2]["opened"] == 2 and per[2]["push"] == pytest.approx(0.3) and per[2]["push_max"] == pytest.approx(0.4)
    assert describe(s).startswith("gate opened on 2 of 3 samples, in steps 1-2 of 4")
    one = GateLog()
    one.record(2.0, x, moved)
    assert describe(one.summary()).startswith("gate opened on 1 of 3 samples, in step 0 of 1;")


def test_without_a_schedule_each_new_sigma_is_a_step_and_reset_starts_over():
    log = GateLog()
    x = torch.zeros(2, 1, 1, 1)
    for sig in (3.0, 3.0, 2.0, 1.0):  # a second evaluation at the same σ (e.g. Heun) is the same step
        log.record(sig, x, x + 1)
    s = log.summary()
    assert s["evaluated_steps"] == 3 and s["opened_steps"] == [0, 1, 2] and s["per_step"][0]["sigma"] == 3.0
    log.reset()
    assert log.summary()["evaluated_steps"] == 0
    assert describe(log.summary()).startswith("gate never evaluated")


def test_closed_gate_is_described_as_such():
    log = GateLog()
    log.reset(torch.tensor([2.0, 1.0, 0.0]))
    x = torch.randn(4, 4, 8, 8)
    log.record(torch.tensor(2.0), x, x)
    log.record(torch.tensor(1.0), x, x.clone())
    assert describe(log.summary()) == ("gate opened on 0 of 4 samples in 2 guided steps of 2: the guard was "
                                       "not confident about any of them")
    log.reset(torch.tensor([2.0, 1.0, 0.0]))
    log.record(torch.tensor(2.0), x, x)
    assert describe(log.summary()).startswith("gate opened on 0 of 4 samples in 1 guided step of 2:")


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="one shape"):
        GateLog().record(1.0, torch.zeros(2, 3), torch.zeros(3, 3))
