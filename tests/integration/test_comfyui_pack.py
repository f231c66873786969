"""The CPSample pack inside a real ComfyUI 0.3.75 server (CPU, tiny random SD1.5-shaped model)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import comfyui_harness as H
from cpsample_nodes.core import load_guard, read_metadata
from pack_helpers import (CKPT, assert_still_serving, error_of, interrupt_when_running, replication_prompt,
                          sample_prompt, saved_latent, ui_text)

REPO = Path(__file__).resolve().parents[2]
NODE_IDS = ["CPSampleTrainGuard", "CPSampleTrainGuardWithClassImages", "CPSampleSaveGuard", "CPSampleLoadGuard", "CPSampleProtectModel",
            "CPSampleReplicationCheck", "CPSampleCalibrateGuard"]
EXAMPLES = ["cpsample_train_guard", "cpsample_protected_txt2img", "cpsample_replication_check",
            "cpsample_calibrated_txt2img", "cpsample_protected_img2img"]
DEMO_GUARD = "cpsample_demo_guard.safetensors"  # saved by the train example, loaded by the img2img one
CALIBRATED_GUARD = "cpsample_demo_calibrated.safetensors"  # saved by the recommended, loaded by protected txt2img
MIN_PROBES = 8

pytestmark = pytest.mark.integration


MAX_TEST_STEPS = 12


def cap_training(prompt: dict) -> dict:
    """Examples ship with max_steps and probes for real use; on this 2-core CPU the tests cap them (the
    only changes)."""
    for node in prompt.values():
        if node["class_type"] == "CPSampleTrainGuard":
            node["inputs"]["max_steps"] = min(node["inputs"]["max_steps"], MAX_TEST_STEPS)
        if node["class_type"] == "CPSampleCalibrateGuard":
            node["inputs"]["probes"] = MIN_PROBES
    return prompt


def train_prompt(folder: str, steps: int = 3, policy: str = "resize", resolution: int = 0, seed: int = 0,
                 batch: int = 8) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "2": {"class_type": "CPSampleTrainGuard",
              "inputs": {"model": ["1", 0], "vae": ["1", 2], "folder": folder, "seed": seed, "max_steps": steps,
                         "batch_size": batch, "resolution_policy": policy, "resolution": resolution}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 1]}},
    }


# ------------------------------------------------------------------------------------------- loading

def test_pack_imports_without_errors(comfy):
    log = comfy.startup_log  # later tests refuse bad input on purpose; their errors are not import errors
    assert re.search(r"seconds: .*custom_nodes[/\\]CPSample\s*$", log, re.M), log[-3000:]
    bad = [l for l in log.splitlines() if "CPSample" in l and ("IMPORT FAILED" in l or "Error" in l or "Cannot import" in l)]
    assert not bad, bad
    assert "comfy_entrypoint" not in log, log[-3000:]
    assert comfy.get("/system_stats")["system"]["comfyui_version"] == "0.3.75"


def test_object_info_lists_every_node_with_tooltips(object_info):
    for nid in NODE_IDS:
        assert nid in object_info, f"{nid} missing from /object_info"
        info = object_info[nid]
        assert info["category"] == "CPSample"
        assert info["display_name"].startswith("CPSample ")
        inputs = {**info["input"]["required"], **info["input"].get("optional", {})}
        assert inputs, nid
        for name, spec in inputs.items():
            opts = spec[1] if len(spec) > 1 else {}
            assert opts.get("tooltip"), f"{nid}.{name} has no tooltip"
    train = object_info["CPSampleTrainGuard"]
    assert train["output"] == ["CPSAMPLE_GUARD", "STRING"]
    req = train["input"]["required"]
    assert {"model", "vae", "folder", "seed", "max_steps", "batch_size", "resolution_policy"} <= set(req)
    assert "images" in train["input"]["optional"]
    folders = req["folder"][0] if isinstance(req["folder"][0], list) else req["folder"][1]["options"]
    assert "cpsample_demo" in folders and "cpsample_empty" in folders
    assert object_info["CPSampleProtectModel"]["output"] == ["MODEL"]
    assert object_info["CPSampleReplicationCheck"]["output"] == ["STRING", "IMAGE"]
    assert "clip_vision" in object_info["CPSampleReplicationCheck"]["input"]["optional"]
    guards = object_info["CPSampleLoadGuard"]["input"]["required"]["guard_name"]
    options = guards[0] if isinstance(guards[0], list) else guards[1]["options"]
    # from the extra_model_paths.yaml `cpsample:` folder; non-.safetensors files are not listed
    assert "flux16_guard.safetensors" in options


# ------------------------------------------------------------------------------------------- examples

@pytest.fixture(scope="session")
def trained_demo_guard(comfy, comfy_layout, object_info):
    """Runs example_workflows/cpsample_train_guard.json (converted from UI format) once."""
    wf = json.loads((REPO / "example_workflows" / "cpsample_train_guard.json").read_text())
    prompt = H.ui_to_api(wf, object_info)
    cap_training(prompt)
    entry = comfy.run(prompt, timeout=400)
    assert entry["status"]["status_str"] == "success", H.history_error(entry)
    return entry


@pytest.fixture(scope="session")
def recommended_run(comfy, object_info):
    """Runs example_workflows/cpsample_calibrated_txt2img.json (converted from UI format) once."""
    wf = json.loads((REPO / "example_workflows" / "cpsample_calibrated_txt2img.json").read_text())
    entry = comfy.run(cap_training(H.ui_to_api(wf, object_info)), timeout=600)
    assert entry["status"]["status_str"] == "success", H.history_error(entry)
    return entry


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_workflow_runs(name, comfy, comfy_layout, object_info, trained_demo_guard, recommended_run,
                               run_prompt):
    wf = json.loads((REPO / "example_workflows" / f"{name}.json").read_text())
    assert wf["nodes"] and wf["links"] is not None
    assert (REPO / "example_workflows" / f"{name}.png").is_file(), "thumbnail missing"
    prompt = H.ui_to_api(wf, object_info)
    cap_training(prompt)
    types = {n["class_type"] for n in prompt.values()}
    if name == "cpsample_train_guard":
        entry = trained_demo_guard
        guard = Path(comfy_layout["guards"]) / DEMO_GUARD
        assert guard.is_file(), f"guard not saved in models/cpsample: {list(Path(comfy_layout['models']).rglob('*'))}"
        report = ui_text(entry, next(k for k, v in prompt.items() if v["class_type"] == "PreviewAny"))
        assert "8 images at 64x64" in report, report
    elif name == "cpsample_calibrated_txt2img":
        entry = recommended_run
        assert (Path(comfy_layout["guards"]) / CALIBRATED_GUARD).is_file()
    else:
        entry = run_prompt(prompt)
    if name == "cpsample_protected_txt2img":
        assert {"LoraLoader", "CPSampleProtectModel", "CPSampleLoadGuard"} <= types
        loads = next(v for v in prompt.values() if v["class_type"] == "CPSampleLoadGuard")["inputs"]["guard_name"]
        assert loads == CALIBRATED_GUARD  # the chain: what the recommended example saved
        images = H.output_images(entry, comfy_layout)
        assert len(images) == 2 and all(p.is_file() for p in images)
    if name == "cpsample_protected_img2img":
        loads = next(v for v in prompt.values() if v["class_type"] == "CPSampleLoadGuard")["inputs"]["guard_name"]
        assert loads == DEMO_GUARD  # the chain: what the train example saved
    if name == "cpsample_replication_check":
        rep_id = next(k for k, v in prompt.items() if v["class_type"] == "PreviewAny")
        report = ui_text(entry, rep_id)
        assert report.count("nearest train_") == 4, report
        grid = H.output_images(entry, comfy_layout)
        assert grid, entry["outputs"]


def test_ui_to_api_conversion_matches_widgets(object_info):
    wf = json.loads((REPO / "example_workflows" / "cpsample_protected_txt2img.json").read_text())
    api = H.ui_to_api(wf, object_info)
    ks = next(v for v in api.values() if v["class_type"] == "KSampler")["inputs"]
    assert ks["seed"] == 42 and ks["steps"] == 8 and ks["sampler_name"] == "euler_ancestral" and ks["denoise"] == 1.0
    prot = next(v for v in api.values() if v["class_type"] == "CPSampleProtectModel")["inputs"]
    assert prot["alpha"] == 0.01 and prot["objective"] == "uncertainty" and prot["guard_input"] == "denoised"
    assert isinstance(prot["model"], list) and isinstance(prot["guard"], list)


# ------------------------------------------------------------------------------------------- guard files

def test_trained_guard_saved_and_loads_back(comfy, comfy_layout, trained_demo_guard, run_prompt):
    path = Path(comfy_layout["guards"]) / DEMO_GUARD
    assert path.is_file()
    entry = run_prompt({"1": {"class_type": "CPSampleLoadGuard", "inputs": {"guard_name": DEMO_GUARD}},
                        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}}})
    info = json.loads(ui_text(entry, 2))
    assert info["latent_format"] == "SD15"
    assert info["model_sampling"] == "ModelSamplingDiscrete+EPS"
    assert info["n_images"] == 8 and info["image_size"] == "64x64"
    assert "train_00" not in json.dumps(info)  # no image names in the file


def test_save_guard_numbers_instead_of_overwriting(comfy, comfy_layout, run_prompt):
    p = train_prompt("cpsample_demo", steps=3)
    p["4"] = {"class_type": "CPSampleSaveGuard", "inputs": {"guard": ["2", 0], "filename": "numbered",
                                                              "overwrite": False}}
    run_prompt(p)
    p["4"]["inputs"]["filename"] = "numbered.safetensors"  # new input value: the node runs again
    run_prompt(p)
    names = sorted(x.name for x in Path(comfy_layout["guards"]).glob("numbered*.safetensors"))
    assert names == ["numbered.safetensors", "numbered_00001.safetensors"], names


# ------------------------------------------------------------------------------------------- protection

def test_protected_differs_and_scale_zero_is_bit_identical(comfy, comfy_layout, trained_demo_guard, run_prompt):
    run_prompt(sample_prompt("plain"))
    run_prompt(sample_prompt("prot", guard=DEMO_GUARD, scale=5.0, alpha=0.5))
    run_prompt(sample_prompt("zero", guard=DEMO_GUARD, scale=0.0, alpha=0.5))
    plain, prot, zero = (saved_latent(comfy_layout, k) for k in ("plain", "prot", "zero"))
    assert torch.isfinite(prot).all()
    assert not torch.equal(plain, prot), "protection changed nothing"
    assert torch.equal(plain, zero), "scale 0 must be bit-identical to the unprotected model"


@pytest.mark.parametrize("cfg,sampler,guard_input", [(1.0, "euler", "denoised"), (4.0, "dpmpp_2m", "denoised"),
                                                     (5.0, "euler", "noisy")])
def test_protection_acts_with_cfg_one_and_other_samplers(cfg, sampler, guard_input, comfy, comfy_layout,
                                                         trained_demo_guard, run_prompt):
    tag = f"c{int(cfg)}{sampler}{guard_input}"
    run_prompt(sample_prompt(f"plain_{tag}", cfg=cfg, sampler=sampler))
    run_prompt(sample_prompt(f"prot_{tag}", guard=DEMO_GUARD, scale=5.0, alpha=0.5, cfg=cfg, sampler=sampler,
                             guard_input=guard_input))
    a, b = saved_latent(comfy_layout, f"plain_{tag}"), saved_latent(comfy_layout, f"prot_{tag}")
    assert torch.isfinite(b).all() and not torch.equal(a, b)


# ------------------------------------------------------------------------------------------- training details

def test_guard_for_512px_images_uses_the_patch_stem_and_protects(comfy, comfy_layout, run_prompt):
    # SD1.5 at 512 px: 4×64×64 latents get the stride-4 network. Sampling runs at 128 px, since the
    # tiny test UNet takes ~40 s a step at 512 px on this CPU; the guard is fully convolutional.
    p = train_prompt("cpsample_mixed", steps=2, resolution=512)
    p["4"] = {"class_type": "CPSampleSaveGuard", "inputs": {"guard": ["2", 0], "filename": "large_512",
                                                              "overwrite": True}}
    report = ui_text(run_prompt(p), 3)
    assert "4 images at 512x512" in report and "(4, 64, 64)" in report, report
    config = json.loads(read_metadata(Path(comfy_layout["guards"]) / "large_512.safetensors")["config"])
    assert config["stem_stride"] == 4, config
    run_prompt(sample_prompt("plain_128", size=128, steps=2))
    run_prompt(sample_prompt("prot_128", guard="large_512.safetensors", scale=5.0, alpha=0.5, size=128, steps=2))
    a, b = saved_latent(comfy_layout, "plain_128"), saved_latent(comfy_layout, "prot_128")
    assert a.shape[-1] == 16 and torch.isfinite(b).all() and not torch.equal(a, b)


def test_guard_with_three_heads_saves_them_and_protects(comfy, comfy_layout, object_info, run_prompt):
    # heads is the last input of both train nodes and optional, so saved workflows and API prompts made
    # before it existed keep loading; they train the default, three heads (train_prompt gives none)
    for nid in ("CPSampleTrainGuard", "CPSampleTrainGuardWithClassImages"):
        info = object_info[nid]
        assert list(info["input"]["optional"])[-1] == "heads", info["input"]
        assert info["input"]["optional"]["heads"][1]["default"] == 3
    p = train_prompt("cpsample_demo", steps=3)
    assert "heads" not in p["2"]["inputs"]
    p["4"] = {"class_type": "CPSampleSaveGuard", "inputs": {"guard": ["2", 0], "filename": "three_heads",
                                                              "overwrite": True}}
    report = ui_text(run_prompt(p), 3)
    assert "3 heads, 3 steps" in report, report
    meta = read_metadata(Path(comfy_layout["guards"]) / "three_heads.safetensors")
    assert json.loads(meta["config"])["heads"] == 3 and json.loads(meta["info"])["heads"] == 3
    run_prompt(sample_prompt("plain_heads"))
    run_prompt(sample_prompt("prot_heads", guard="three_heads.safetensors", scale=5.0, alpha=0.5))
    a, b = saved_latent(comfy_layout, "plain_heads"), saved_latent(comfy_layout, "prot_heads")
    assert torch.isfinite(b).all() and not torch.equal(a, b)


def test_latents_cached_across_training_settings(comfy, run_prompt):
    first = ui_text(run_prompt(train_prompt("cpsample_mixed", steps=2, seed=1)), 3)
    second = ui_text(run_prompt(train_prompt("cpsample_mixed", steps=3, seed=2, batch=4)), 3)
    assert "encoded" in first or "from cache" in first
    assert "from cache" in second, second


def test_mixed_sizes_resize_policy_reports_size(comfy, run_prompt):
    report = ui_text(run_prompt(train_prompt("cpsample_mixed", steps=2, resolution=40)), 3)
    assert "4 images at 40x40" in report, report
    report = ui_text(run_prompt(train_prompt("cpsample_mixed", steps=2, policy="crop")), 3)
    assert "4 images at 64x64" in report, report


def test_exact_policy_names_the_odd_image(comfy, run_prompt):
    entry = run_prompt(train_prompt("cpsample_mixed", steps=2, policy="exact"), expect="error")
    msg = error_of(entry)["exception_message"]
    assert "img_1.png" in msg and "80x64" in msg, msg


def test_cancel_stops_training(comfy, run_prompt):
    interrupt_when_running(comfy, train_prompt("cpsample_demo", steps=100000, seed=5), after=1.5)
    assert_still_serving(comfy, run_prompt)


# ------------------------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("folder,needle", [
    ("cpsample_empty", "is empty"),
    ("cpsample_noimages", "has no images"),
    ("cpsample_corrupt", "broken.png"),
])
def test_bad_folders_fail_clearly(folder, needle, comfy, run_prompt):
    entry = run_prompt(train_prompt(folder, steps=2), expect="error")
    err = error_of(entry)
    assert err["node_type"] == "CPSampleTrainGuard"
    assert needle in err["exception_message"] and folder in err["exception_message"], err["exception_message"]
    assert_still_serving(comfy, run_prompt)


@pytest.mark.parametrize("guard,needle", [
    ("flux16_guard.safetensors", "16-channel"),
    ("sdxl_guard.safetensors", "SDXL"),
])
def test_mismatched_guard_refused(guard, needle, comfy, run_prompt):
    entry = run_prompt(sample_prompt("mismatch", guard=guard, scale=1.0), expect="error")
    err = error_of(entry)
    assert err["node_type"] == "CPSampleProtectModel", err
    assert needle in err["exception_message"] and "SD15" in err["exception_message"], err["exception_message"]
    assert_still_serving(comfy, run_prompt)


def test_not_a_guard_file_fails_clearly(comfy, run_prompt):
    entry = run_prompt({"1": {"class_type": "CPSampleLoadGuard", "inputs": {"guard_name": "not_a_guard.safetensors"}},
                        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}}}, expect="error")
    assert "not_a_guard.safetensors" in error_of(entry)["exception_message"]
    assert_still_serving(comfy, run_prompt)


def test_unknown_folder_fails_clearly(comfy, run_prompt):
    # Rejected at validation (HTTP 400) where the ComfyUI version checks combo values, else at execution.
    try:
        entry = run_prompt(train_prompt("no_such_folder", steps=2), expect="error")
    except H.PromptError as e:
        assert e.status == 400 and "no_such_folder" in json.dumps(e.body)
    else:
        assert "no_such_folder" in error_of(entry)["exception_message"]
    assert_still_serving(comfy, run_prompt)


# ------------------------------------------------------------------------------------------- replication

def test_replication_check_flags_an_exact_copy(comfy, comfy_layout, run_prompt):
    entry = run_prompt(replication_prompt("cpsample_copy.png", "cpsample_demo", grid=True))
    report = ui_text(entry, 3)
    assert "nearest train_03.png" in report and "LIKELY COPY" in report, report
    assert re.search(r"ratio 0\.000\s+SSIM 1\.000", report), report
    assert "1 of 1 flagged" in report
    grid = H.output_images(entry, comfy_layout, "4")
    assert len(grid) == 1 and grid[0].is_file()


def test_protection_composes_with_another_post_cfg_node(comfy, comfy_layout, trained_demo_guard, run_prompt):
    """PAG (a built-in post-CFG user) before Protect Model: both run; the guard still changes the result."""
    def with_pag(prefix, guard):
        p = sample_prompt(prefix, guard=guard, scale=5.0, alpha=0.5)
        p["20"] = {"class_type": "PerturbedAttentionGuidance", "inputs": {"model": ["1", 0], "scale": 2.0}}
        if guard:
            p["11"]["inputs"]["model"] = ["20", 0]
        else:
            p["6"]["inputs"]["model"] = ["20", 0]
        return p

    run_prompt(with_pag("pag_only", None))
    run_prompt(with_pag("pag_prot", DEMO_GUARD))
    a, b = saved_latent(comfy_layout, "pag_only"), saved_latent(comfy_layout, "pag_prot")
    assert torch.isfinite(b).all() and not torch.equal(a, b)


def test_train_guard_takes_extra_images_input(comfy, run_prompt):
    p = train_prompt("cpsample_demo", steps=2)
    p["5"] = {"class_type": "LoadImage", "inputs": {"image": "cpsample_copy.png"}}
    p["2"]["inputs"]["images"] = ["5", 0]
    assert "9 images at 64x64" in ui_text(run_prompt(p), 3)
    p["2"]["inputs"]["folder"] = "(none: use the images input)"
    entry = run_prompt(p, expect="error")
    assert "at least 2 training images" in error_of(entry)["exception_message"]
    assert_still_serving(comfy, run_prompt)


def class_prompt(class_folder: str, steps: int = 2) -> dict:
    p = train_prompt("cpsample_demo", steps=steps)
    p["2"]["class_type"] = "CPSampleTrainGuardWithClassImages"
    p["2"]["inputs"]["class_folder"] = class_folder
    return p


def test_train_guard_with_class_images(comfy, comfy_layout, run_prompt):
    # the four pictures of cpsample_mixed (other sizes) serve as class images for the eight of cpsample_demo
    p = class_prompt("cpsample_mixed")
    p["4"] = {"class_type": "CPSampleSaveGuard", "inputs": {"guard": ["2", 0], "filename": "class_guard",
                                                            "overwrite": True}}
    report = ui_text(run_prompt(p), 3)
    assert "8 images at 64x64" in report and "4 class images as negatives" in report, report
    info = load_guard(str(Path(comfy_layout["guards"]) / "class_guard.safetensors")).info
    assert info["negatives"] == "4 latents" and info["class_images"] == 4, info


def test_class_images_refuse_a_training_image_and_none(comfy, run_prompt):
    p = class_prompt("(none: use the images input)")
    p["5"] = {"class_type": "LoadImage", "inputs": {"image": "cpsample_copy.png"}}
    p["2"]["inputs"]["class_images"] = ["5", 0]
    msg = error_of(run_prompt(p, expect="error"))["exception_message"]
    assert "class image #0 is the training image train_03.png" in msg, msg
    del p["2"]["inputs"]["class_images"]
    msg = error_of(run_prompt(p, expect="error"))["exception_message"]
    assert "no class images" in msg, msg
    assert_still_serving(comfy, run_prompt)


def test_templates_route_lists_examples(comfy):
    templates = comfy.get("/workflow_templates")
    assert sorted(templates.get("CPSample", [])) == sorted(EXAMPLES), templates


def test_replication_check_with_clip_vision(comfy, comfy_layout, run_prompt):
    """The optional CLIP_VISION input (random ViT-L): an exact copy has embedding cosine 1."""
    entry = run_prompt(replication_prompt("cpsample_copy.png", "cpsample_demo",
                                          clip_vision=comfy_layout["clip_vision"]))
    report = ui_text(entry, 3)
    m = re.search(r"nearest train_03\.png .*CLIP cos (-?[0-9.]+)", report)
    assert m and abs(float(m.group(1)) - 1.0) < 1e-2, report
