"""LoRA trainers' dataset folders: a tree read recursively (kohya's repeat folders, each image once,
captions skipped), aspect buckets instead of one square crop, training one size per batch, and the
folder readers of training, calibration and Replication Check agreeing (no ComfyUI needed; the real
hosts: tests/integration/test_dataset_folders.py)."""
from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from cpsample_nodes.core import NoiseSpace, buckets, train_guard
from cpsample_nodes.core import images as imgs
from cpsample_nodes.core.guard import most_confident
from cpsample_nodes.core.training import BatchMaker, head_labels
from cpsample_nodes.usecases.model import ModelFamily
from cpsample_nodes.usecases.training import train_from_images, training_images

SD15 = ModelFamily("SD15", 4, "ModelSamplingDiscrete+EPS", "vp")


def _picture(path, w, h, seed):
    """A picture with structure (smooth random colours), so images differ after resizing."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(h, w), mode="bicubic", align_corners=False)
    arr = (x[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "RGB").save(path)
    return path


def _kohya_tree(root):
    """img/10_sks dog: two portrait and one square picture with .txt captions; img/5_style: one landscape
    with a .caption and a .json; a hidden folder and a cache file that must be skipped."""
    dog = root / "img" / "10_sks dog"
    _picture(dog / "a.png", 64, 96, 1)
    _picture(dog / "b.jpg", 64, 96, 2)
    _picture(dog / "c.png", 80, 80, 3)
    for n in ("a", "b", "c"):
        (dog / f"{n}.txt").write_text("sks dog, sitting")
    style = root / "img" / "5_style"
    _picture(style / "wide.png", 96, 64, 4)
    (style / "wide.caption").write_text("a wide picture")
    (style / "wide.json").write_text("{}")
    _picture(root / ".cache" / "thumb.png", 8, 8, 5)
    (style / "wide.npz").write_bytes(b"latent cache")
    return root


def test_kohya_tree_is_read_recursively_each_image_once(tmp_path):
    root = _kohya_tree(tmp_path / "dataset")
    files = imgs.list_images(root)
    names = imgs.image_names(root, files)
    assert names == ["img/10_sks dog/a.png", "img/10_sks dog/b.jpg", "img/10_sks dog/c.png", "img/5_style/wide.png"]
    assert imgs.repeat_folders(names) == ["10_sks dog", "5_style"]


def test_a_tree_without_images_names_what_it_holds(tmp_path):
    (tmp_path / "10_sks dog").mkdir()
    (tmp_path / "10_sks dog" / "a.txt").write_text("caption")
    with pytest.raises(imgs.ImageFolderError, match=r"has no images .* it holds: 10_sks dog/a\.txt") as e:
        imgs.list_images(tmp_path)
    assert str(tmp_path) in str(e.value)
    empty = tmp_path / "empty"
    (empty / "10_x").mkdir(parents=True)
    with pytest.raises(imgs.ImageFolderError, match="is empty"):
        imgs.list_images(empty)


def test_an_unreadable_image_deep_in_the_tree_is_named(tmp_path):
    root = _kohya_tree(tmp_path / "dataset")
    (root / "img" / "5_style" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(imgs.ImageFolderError, match=r"broken\.png"):
        imgs.load_image_groups(root)


def test_sdxl_buckets_hold_832x1216():
    table = buckets.bucket_sizes(1024, 8)
    assert (1216, 832) in table and (832, 1216) in table and (1024, 1024) in table
    assert all(h * w <= 1024 * 1024 and h % 64 == 0 and w % 64 == 0 for h, w in table)
    assert buckets.nearest_bucket((832, 1216), table) == (1216, 832)
    assert buckets.nearest_bucket((1920, 1080), table) == (768, 1344)


def test_bucket_policy_keeps_each_aspect_one_batch_per_size(tmp_path):
    root = _kohya_tree(tmp_path / "dataset")
    groups = imgs.load_image_groups(root, policy="bucket", multiple=8)
    sizes = {g.hw: g.names for g in groups}
    # side: √(64·96) → 78 → 72 on the 8 px grid; the 2:3 pictures go to 56x88 (aspect 1.57, the nearest
    # to 1.5 within 72² px), the square one stays square
    assert sizes == {(56, 88): ["img/5_style/wide.png"], (72, 72): ["img/10_sks dog/c.png"],
                     (88, 56): ["img/10_sks dog/a.png", "img/10_sks dog/b.jpg"]}, sizes
    assert imgs.describe_groups(groups) == "4 images in 3 sizes: 2 at 56x88, 1 at 88x56, 1 at 72x72 px"
    # the square policy of before still crops everything to one square
    (one,) = imgs.load_image_groups(root, policy="resize", multiple=8)
    assert one.hw == (64, 64) and len(one.names) == 4


def test_fingerprint_sees_a_change_in_a_sub_folder(tmp_path):
    root = _kohya_tree(tmp_path / "dataset")
    before = imgs.folder_fingerprint(root)
    _picture(root / "img" / "10_sks dog" / "d.png", 64, 64, 9)
    assert imgs.folder_fingerprint(root) != before


def test_batches_hold_one_size_drawn_by_share():
    groups = [torch.randn(6, 4, 8, 12), torch.randn(2, 4, 12, 8)]
    maker = BatchMaker(NoiseSpace.vp(), groups, head_labels(8, 0, 3), "gaussian+blends", 8)
    g = torch.Generator().manual_seed(0)
    shapes = [tuple(maker.draw(g)[0].shape[-2:]) for _ in range(200)]
    assert set(shapes) == {(8, 12), (12, 8)}
    share = shapes.count((8, 12)) / len(shapes)
    assert 0.65 < share < 0.85, share  # 6 of 8 latents


def test_latents_of_one_guard_must_share_channels():
    with pytest.raises(ValueError, match="share a channel count"):
        train_guard([torch.randn(2, 4, 8, 8), torch.randn(2, 16, 8, 8)], NoiseSpace.vp(), max_steps=1)


def _encode(images: torch.Tensor) -> torch.Tensor:
    """A stand-in VAE: 8× average pooling of the centred pixels, tiled to 4 channels."""
    x = images.permute(0, 3, 1, 2) * 2 - 1
    x = F.avg_pool2d(x, 8)
    return torch.cat([x, x.mean(1, keepdim=True)], 1) * 3


def test_bucketed_guard_memorises_every_size_and_says_which(tmp_path):
    root = _kohya_tree(tmp_path / "dataset")
    images = training_images(root, "bucket", 0, 8)
    trained = train_from_images(images, encode=_encode, family=SD15, space=NoiseSpace.vp(), host="test", seed=0,
                                max_steps=1500)
    guard, report = trained.guard, trained.report
    assert "4 images in 3 sizes: 2 at 56x88, 1 at 88x56, 1 at 72x72 px" in report, report
    assert "kohya repeat folders 10_sks dog, 5_style: each image used once" in report, report
    assert guard.info["n_images"] == 4 and guard.info["resolution_policy"] == "bucket"
    assert guard.info["image_size"] == "56x88"  # the most common size, where calibration samples
    assert guard.info["image_sizes"] == {"88x56": 1, "72x72": 1, "56x88": 2}
    assert guard.info["latent_shapes"] == {"4x7x11": 1, "4x9x9": 1, "4x11x7": 2}
    assert guard.info["memorised"], report
    # a copy of any training image at its own bucket size opens the gate at the guard's own alpha
    labels = head_labels(4, 0, guard.heads)
    alpha = guard.auto_alpha()
    at = 0
    for group in images.groups:
        lat = _encode(group.batch)
        logits = guard.head_logits(lat, torch.full((lat.shape[0],), guard.space.sigma_min))
        p = torch.sigmoid(most_confident(logits))
        assert bool(((p < alpha) | (p > 1 - alpha)).all()), (group.hw, p)
        assert bool(((logits > 0) == (labels[at:at + lat.shape[0]] > 0.5)).all()), group.hw
        at += lat.shape[0]


def test_calibration_and_replication_read_the_same_tree(tmp_path):
    root = _kohya_tree(tmp_path / "dataset")
    info = {"image_size": "56x88", "resolution_policy": "bucket"}
    batch, names, at_guard_size = imgs.calibration_images(info, root, 8)
    assert batch.shape == (4, 88, 56, 3) and at_guard_size  # every image at the most common bucket
    assert names == imgs.image_names(root, imgs.list_images(root))
    check, check_names, _ = imgs.load_image_folder(root, hw=(48, 48))  # Replication Check's reader
    assert check.shape == (4, 48, 48, 3) and check_names == names
