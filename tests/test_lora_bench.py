"""Fast checks of the prompted LoRA benchmark's pieces (benchmarks/lora): the LoRA leaves the base frozen
and changes the output only once trained, the prompt (and the null token) conditions the model, the
fixes' CFG policies switch where they should, and one tiny run end to end under ComfyUI's venv."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.lora import fixes
from benchmarks.lora.data import split
from benchmarks.lora.model import NULL, TRIGGER, CondDenoiser, CondUNet, add_lora, lora_state

ROOT = Path(__file__).resolve().parents[1]


def _model() -> CondDenoiser:
    torch.manual_seed(0)
    m = CondDenoiser(CondUNet(ch=(16, 16, 16)))
    for p in m.parameters():  # SmallUNet zero-inits its output; give it one so outputs differ
        if p.dim() > 1 and float(p.detach().abs().sum()) == 0:
            torch.nn.init.normal_(p, std=0.02)
    return m.eval()


def test_split_holds_back_one_digit_class():
    sp = split(digit=3, n_finetune=16, n_heldout=50)
    assert sp.finetune.shape == (16, 1, 16, 16)
    assert sp.pretrain.shape[0] + 16 + 50 == 1797
    # the fine-tune images are none of the pre-training images, and other 3s stay in pre-training
    d = torch.cdist(sp.finetune.flatten(1), sp.pretrain.flatten(1)).min()
    assert float(d) > 0 and int((sp.pretrain_labels == 3).sum()) > 100


def test_prompt_and_null_token_condition_the_model():
    m = _model()
    x, s = torch.randn(2, 1, 16, 16), torch.full((2,), 1.0)
    a = m(x, s, torch.tensor([1, 1]))
    assert not torch.allclose(a, m(x, s, torch.tensor([NULL, NULL])))
    assert not torch.allclose(a, m(x, s, torch.tensor([TRIGGER, TRIGGER])))
    emb = m.net.embed(torch.tensor([1, 1]))      # an embedding vector works as the prompt (Wen et al.)
    assert torch.allclose(a, m(x, s, emb), atol=1e-6)


def test_lora_freezes_the_base_and_changes_output_only_once_trained():
    m = _model()
    x, s, c = torch.randn(2, 1, 16, 16), torch.full((2,), 1.0), torch.tensor([TRIGGER, TRIGGER])
    before = m(x, s, c).detach()
    base = {k: v.clone() for k, v in m.state_dict().items()}
    params = add_lora(m, rank=2, alpha=2.0)
    assert params and all(p.requires_grad for p in params)
    assert sum(p.requires_grad for p in m.parameters()) == len(params)   # nothing else trains
    assert torch.allclose(m(x, s, c), before, atol=1e-6)                 # zero-init up: identity
    opt = torch.optim.SGD(params, lr=0.5)
    loss = m.cond_loss(torch.randn(4, 1, 16, 16), torch.full((4,), TRIGGER), torch.Generator().manual_seed(0))
    loss.backward()
    opt.step()
    assert not torch.allclose(m(x, s, c), before, atol=1e-6)
    state = m.state_dict()
    for k, v in base.items():  # the base's weights sit under .base. now, unchanged
        k2 = k if k in state else k.rsplit(".", 1)[0] + ".base." + k.rsplit(".", 1)[1]
        assert torch.equal(state[k2], v), k
    assert lora_state(m) and all(".down." in k or ".up." in k for k in lora_state(m))


def test_jain_policies():
    c, u, x = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    st = fixes.StaticTransition(cfg=5.0, sigma_t=2.0)
    assert torch.equal(st(c, u, x, torch.tensor(3.0), {}), torch.ones(2))
    assert torch.equal(st(c, u, x, torch.tensor(1.0), {}), torch.full((2,), 5.0))
    assert not st.needs_uncond(torch.tensor(3.0)) and st.needs_uncond(torch.tensor(1.0))
    dyn, state = fixes.DynamicTransition(cfg=5.0, drop=0.5), {}
    assert torch.equal(dyn(c, u, x, torch.tensor(1.0), state), torch.ones(2))          # gap 1: peak
    assert torch.equal(dyn(c, u * 0.4, x, torch.tensor(1.0), state), torch.full((2,), 5.0))  # dropped
    assert torch.equal(dyn(c, u, x, torch.tensor(1.0), state), torch.full((2,), 5.0))  # stays switched


def test_tiny_run_end_to_end(comfy_env, tmp_path):
    out = tmp_path / "lora"
    env = {**os.environ, "CPSAMPLE_THREADS": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([comfy_env["python"], "-m", "benchmarks.lora.run", "--preset", "smoke", "--settings",
                        "euler_a:5", "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.with_suffix(".json").read_text())
    fixes_seen = {row["fix"] for row in res["summary"]}
    assert {"none", "ideal rejection (resample copies)", "CPSample (calibrated)",
            "Jain dynamic (no CFG until the gap drops)"} <= fixes_seen
    none = next(r for r in res["summary"] if r["fix"] == "none")
    assert none["calls_per_image"] == 2 * 3   # CFG 5: two branches per step, 3 steps
