import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def small_guard():
    """A guard memorised on 8 latents of 4×8×8 (shared: training is the slow part)."""
    from cpsample_nodes.core import NoiseSpace, train_guard

    g = torch.Generator().manual_seed(0)
    latents = torch.randn(8, 4, 8, 8, generator=g)
    guard = train_guard(latents, NoiseSpace.vp(), seed=0, max_steps=1500)
    return guard, latents
