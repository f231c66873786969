import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def small_guard():
    """A one-head guard memorised on 8 latents of 4×8×8 (shared: training is the slow part). One head:
    the tests that use it read a single labelling; tests/test_guard_heads.py trains the default three."""
    from cpsample_nodes.core import NoiseSpace, train_guard

    g = torch.Generator().manual_seed(0)
    latents = torch.randn(8, 4, 8, 8, generator=g)
    guard = train_guard(latents, NoiseSpace.vp(), seed=0, max_steps=1500, heads=1)
    return guard, latents


@pytest.fixture(scope="session")
def comfy_env():
    """The offline ComfyUI test environment (tools/comfyui_env.py), built once; skipped when it cannot
    be built, unless CPSAMPLE_REQUIRE_COMFYUI is set (CI), where that fails instead."""
    sys.path.insert(0, str(ROOT / "tools"))
    import comfyui_env

    t0 = time.time()
    try:
        env = comfyui_env.ensure()
    except (subprocess.CalledProcessError, OSError, RuntimeError) as e:
        if os.environ.get("CPSAMPLE_REQUIRE_COMFYUI"):
            raise
        pytest.skip(f"cannot build the offline ComfyUI test environment (tools/comfyui_env.py): {e}")
    env["build_s"] = round(time.time() - t0, 1)
    return env
