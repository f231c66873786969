"""The demo's model, shipped with the repository: a fine-tuned digits diffusion model and the digit
classifier that grades its samples, in one half-precision file (about 1.8 MB).

The demo stands in for a user who brings a fine-tune: the product trains no diffusion model, so the
demo does not either. Training this one takes 15-25 minutes on a 2-core CPU (the DreamBooth-style
preset of docs/finetune.md, 4,800 pretraining steps), longer than the whole demo may take; why it is
shipped rather than trained: docs/design-log.md, "The demo ships its model". Rebuild it with

    CPSAMPLE_THREADS=1 .venv/bin/python -m benchmarks.finetune.demo_model

(weights cached in benchmarks/finetune/cache/ are reused; a rebuild on another CPU rounds differently,
so its numbers differ a little from the committed ones).
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch

from . import pipeline as P
from .classifier import DigitCNN
from .data import DigitSplit
from .diffusion import EpsDenoiser
from .unet import SmallUNet

MODEL_FILE = Path(__file__).resolve().parent / "demo_model.safetensors"
# The DreamBooth-style fine-tune: it copies its 16 images about two thirds of the time and draws good
# digits otherwise, so a guard that removes the copies has good digits to fall back on.
CONFIG = replace(P.PRIOR, name="demo")
REBUILD = "CPSAMPLE_THREADS=1 .venv/bin/python -m benchmarks.finetune.demo_model"


def build(path: Path | None = None) -> Path:
    """Train (or take from the cache) the fine-tune and the classifier, and write them in float16."""
    from safetensors.torch import save_file

    path = MODEL_FILE if path is None else path

    split = P.get_split(CONFIG)
    model = P.get_finetuned(CONFIG, split)
    clf = P.get_classifier(CONFIG, split)
    tensors = {f"denoiser.{k}": v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    tensors |= {f"classifier.{k}": v.detach().to(torch.float16).contiguous() for k, v in clf.state_dict().items()}
    meta = {"config": json.dumps(asdict(CONFIG), default=list), "command": REBUILD}
    save_file(tensors, str(path), metadata=meta)
    return path


def load(path: Path | None = None) -> tuple[EpsDenoiser, DigitCNN, DigitSplit]:
    """The fine-tune, the classifier (float32, eval mode) and the data split they were trained on
    (``path``: the shipped file when None)."""
    from safetensors import safe_open

    path = MODEL_FILE if path is None else path
    if not path.is_file():
        raise FileNotFoundError(f"the demo model {path} is missing: rebuild it with `{REBUILD}`")
    with safe_open(str(path), "pt") as f:
        cfg = json.loads(f.metadata()["config"])
        parts: dict[str, dict[str, torch.Tensor]] = {"denoiser": {}, "classifier": {}}
        for key in f.keys():
            part, name = key.split(".", 1)
            parts[part][name] = f.get_tensor(key).float()
    model = EpsDenoiser(SmallUNet(ch=tuple(cfg["unet_ch"])))
    model.load_state_dict(parts["denoiser"])
    clf = DigitCNN()
    clf.load_state_dict(parts["classifier"])
    split = P.get_split(replace(CONFIG, size=cfg["size"], n_finetune=cfg["n_finetune"],
                                n_heldout=cfg["n_heldout"], split_seed=cfg["split_seed"]))
    return model.eval(), clf.eval(), split


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("CPSAMPLE_THREADS", "1")))
    out = build(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
