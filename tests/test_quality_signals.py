"""benchmarks/quality_signals.py: the pull back and the share of the push the model undid, read from
the guide's own calls, on a denoiser whose answer is known."""
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.calibration_samplers import seeded_sampler  # noqa: E402
from benchmarks.quality_signals import measure, summarize  # noqa: E402

SIGMAS = [4.0, 2.0, 1.0, 0.5, 0.25, 0.0]
TARGET = torch.full((1, 4, 4), 0.3)


class _Push:
    """A guard whose guide adds ``push`` to the x0 prediction at every step."""

    def __init__(self, push: float):
        self.push = push

    def guide(self, d, x, s, **_):
        return d + self.push


def _sampler(den):
    return seeded_sampler(den, "vp", SIGMAS, (1, 4, 4), "euler", start=1.0)


def test_a_model_that_returns_to_its_own_answer_undoes_the_whole_push():
    # the denoiser always predicts TARGET, wherever the guided step took x: every push is taken back
    sample = _sampler(lambda x, s: TARGET.expand_as(x))
    x, _, pull, undone = measure(_Push(0.2), sample, [0, 1, 2], {})
    steps = len(SIGMAS) - 1
    assert torch.allclose(undone, torch.ones(3, dtype=torch.float64))
    # each later call is 0.2 per element from the guided prediction before it (16 elements: norm 0.8)
    assert torch.allclose(pull, torch.full((3,), 0.8 * (steps - 1), dtype=torch.float64))
    assert torch.allclose(x, TARGET + 0.2, atol=1e-6)  # the last push is never corrected


def test_a_model_sure_of_the_noise_undoes_the_push_in_the_ratio_of_the_sigmas():
    # the denoiser reads a fixed noise E in every x (D = x − σE). Euler carries the pushed prediction G
    # on with the noise (x − G)/σ = E − push/σ, so at the next σ' the model finds D' = G − push·σ'/σ:
    # it undoes the share σ'/σ of the push, 1/2 on these halving sigmas
    noise = torch.linspace(-1, 1, 16).reshape(1, 4, 4)
    sample = _sampler(lambda x, s: x - s * noise)
    _, _, _, undone_unguarded = measure(_Push(0.0), sample, [0], None)
    assert float(undone_unguarded[0]) == 0.0  # no push, nothing undone (and no division by zero)
    _, _, pull, undone = measure(_Push(0.2), sample, [0], {})
    assert abs(float(undone[0]) - 0.5) < 1e-6
    # each pull back is 0.2·σ'/σ = 0.1 per element: norm 0.4, over the 4 pairs of calls
    assert abs(float(pull[0]) - 0.4 * 4) < 1e-5


def test_summarize_keeps_to_the_signals_every_file_has(tmp_path):
    row = {"bench": "digits-full", "sampler": "euler", "guard_seed": 0, "quality_new": 0.5,
           "spoiled": 0.0, "change": 0.1, "late_push": 1.0, "redenoise": 2.0}
    old = [dict(row, setting=f"s{i}", quality_new=0.5 + i / 10, change=0.1 * (3 - i)) for i in range(3)]
    new = [dict(r, pull_back=float(i), undone=0.5) for i, r in enumerate(old)]
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    both = summarize([tmp_path / "old.json", tmp_path / "new.json"])
    assert "pull_back" not in both and "change" in both
    alone = summarize([tmp_path / "new.json"])
    assert "pull_back, guard seed" in alone and "undone, guard seed" in alone
    # change falls as quality rises (ρ −1), pull back rises with it (ρ +1)
    line = alone.splitlines()[-1]
    assert "-1.00" in line and "+1.00" in line


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
