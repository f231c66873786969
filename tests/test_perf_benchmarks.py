"""Smoke tests for the cost benchmarks (issue 5). No timings are asserted."""
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import training_cost  # noqa: E402


def test_smooth_latents_are_seeded_and_standardised():
    a = training_cost.smooth_latents(3, 4, 32, seed=5)
    b = training_cost.smooth_latents(3, 4, 32, seed=5)
    assert a.shape == (3, 4, 32, 32) and torch.equal(a, b)
    std = a.flatten(1).std(dim=1)
    assert torch.allclose(std, torch.ones(3), atol=1e-4)


def test_training_worker_reports_steps_memory_and_file_size():
    r = training_cost.run_worker(["--worker", "train", "--n", "2", "--channels", "4", "--side", "16",
                                  "--max-steps", "2", "--time-cap", "0", "--threads", "1"], timeout=300)
    assert "error" not in r, r.get("error")
    assert r["steps"] == 2 and r["memorised"] is False and r["stopped"].startswith("step cap")
    assert r["file_bytes"] > 1_000_000 and r["peak_rss_mb"] >= r["rss_before_mb"]


def test_guide_worker_reports_memory():
    r = training_cost.run_worker(["--worker", "guide", "--channels", "16", "--side", "16", "--threads", "1"],
                                 timeout=300)
    assert "error" not in r, r.get("error")
    assert r["peak_rss_mb"] > 0 and r["guide_ms"] > 0


def test_overhead_without_comfyui_says_so_and_exits_2(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--comfyui", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "ComfyUI not found" in p.stderr and "comfyui_env.py" in p.stderr


def test_machine_line_names_the_cpu_and_the_kernels_torch_dispatches_to():
    import machine  # benchmarks/machine.py: the guard a seed trains depends on these

    m = machine.info()
    assert m["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert m["torch"] == torch.__version__ and m["threads"] == torch.get_num_threads()
    line = machine.describe()
    assert line.startswith(str(m["cpu"])) and f"{m['cpu_capability']} kernels)" in line
    # two CPUs of one name can train different guards: where the kernel reports the family and model,
    # the line carries them
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists() and "cpu family" in cpuinfo.read_text():
        assert m["cpu_id"].startswith("family ") and " model " in m["cpu_id"] and m["cpu_id"] in line
    else:
        assert m["cpu_id"] == ""
