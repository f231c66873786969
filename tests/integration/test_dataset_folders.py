"""A LoRA trainer's dataset tree in the real ComfyUI: Train Guard reads kohya's repeat folders (each image
once, captions skipped) and trains at aspect buckets, saying which; Replication Check reads the same tree."""
from __future__ import annotations

import shutil

import pytest

import comfyui_harness as H
from pack_helpers import CKPT, replication_prompt, ui_text

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kohya_folder(comfy_layout):
    """input/cpsample_kohya/img/10_sks dog: three 64x96 pictures with .txt captions; img/5_style: one 96x64
    with a .caption; and a copy of one training picture at the input's top (LoadImage lists only that)."""
    root = comfy_layout["input"] / "cpsample_kohya"
    dog = root / "img" / "10_sks dog"
    for i in range(3):
        H.synthetic_png(dog / f"dog_{i}.png", 64, 96, seed=300 + i)
        (dog / f"dog_{i}.txt").write_text("sks dog")
    H.synthetic_png(root / "img" / "5_style" / "wide.png", 96, 64, seed=310)
    (root / "img" / "5_style" / "wide.caption").write_text("a wide picture")
    shutil.copy(dog / "dog_1.png", comfy_layout["input"] / "cpsample_kohya_copy.png")
    return root


def test_train_guard_reads_a_kohya_tree_at_its_aspects(kohya_folder, comfy, run_prompt):
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "2": {"class_type": "CPSampleTrainGuard",
              "inputs": {"model": ["1", 0], "vae": ["1", 2], "folder": "cpsample_kohya", "seed": 0, "max_steps": 2,
                         "batch_size": 4, "resolution_policy": "bucket", "resolution": 0}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 1]}},
    }
    report = ui_text(run_prompt(prompt), 3)
    # 2:3 pictures at about 72² px go to 56x88 (the nearest aspect on the 8 px grid), not a square crop
    assert "4 images in 2 sizes: 3 at 56x88, 1 at 88x56 px (policy bucket" in report, report
    assert "kohya repeat folders 10_sks dog, 5_style: each image used once" in report, report
    assert "latents (4, 11, 7), (4, 7, 11)" in report or "latents (4, 7, 11), (4, 11, 7)" in report, report


def test_replication_check_reads_the_same_tree(kohya_folder, comfy, run_prompt):
    entry = run_prompt(replication_prompt("cpsample_kohya_copy.png", "cpsample_kohya", k=2))
    report = ui_text(entry, 3)
    assert "nearest img/10_sks dog/dog_1.png" in report and "LIKELY COPY" in report, report
