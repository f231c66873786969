"""cpsample_nodes.core.images: folder loading, policies, clear errors (no ComfyUI needed)."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from cpsample_nodes.core import images as imgs


def _save(path, w, h, color=(200, 30, 30), mode="RGB", **kw):
    Image.new(mode, (w, h), color).save(path, **kw)
    return path


def test_loads_rgb_sorted_and_sized(tmp_path):
    _save(tmp_path / "b.png", 64, 64, (0, 0, 255))
    _save(tmp_path / "a.jpg", 64, 64, (255, 0, 0))
    _save(tmp_path / "c.png", 64, 64, (10, 20, 30, 128), mode="RGBA")
    (tmp_path / "notes.txt").write_text("x")
    batch, names, hw = imgs.load_image_folder(tmp_path, multiple=8)
    assert names == ["a.jpg", "b.png", "c.png"]
    assert batch.shape == (3, 64, 64, 3) and batch.dtype == torch.float32
    assert 0 <= float(batch.min()) and float(batch.max()) <= 1
    assert hw == (64, 64)
    assert batch[1, 0, 0].tolist() == [0.0, 0.0, 1.0]


def test_resize_policy_mixed_sizes_multiple(tmp_path):
    _save(tmp_path / "wide.png", 100, 60)
    _save(tmp_path / "tall.png", 50, 90)
    batch, _, hw = imgs.load_image_folder(tmp_path, policy="resize", multiple=8)
    assert hw == (48, 48)  # smallest short side 50 → 48
    assert batch.shape == (2, 48, 48, 3)
    batch, _, hw = imgs.load_image_folder(tmp_path, policy="resize", size=32, multiple=8)
    assert hw == (32, 32)


def test_crop_policy_uses_smallest_common_size(tmp_path):
    _save(tmp_path / "a.png", 100, 60)
    _save(tmp_path / "b.png", 70, 90)
    batch, _, hw = imgs.load_image_folder(tmp_path, policy="crop", multiple=8)
    assert hw == (56, 64)
    assert batch.shape == (2, 56, 64, 3)


def test_exact_policy_names_the_odd_file(tmp_path):
    _save(tmp_path / "a.png", 64, 64)
    _save(tmp_path / "odd.png", 72, 64)
    with pytest.raises(imgs.ImageFolderError, match=r"odd\.png is 72x64"):
        imgs.load_image_folder(tmp_path, policy="exact", multiple=8)


def test_exif_orientation_applied(tmp_path):
    im = Image.new("RGB", (40, 24), (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    im.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    pil = imgs.open_rgb(tmp_path / "rot.jpg")
    assert pil.size == (24, 40)


@pytest.mark.parametrize("setup,needle", [
    (lambda d: None, "is empty"),
    (lambda d: (d / "readme.txt").write_text("hi"), "has no images"),
])
def test_folder_errors(tmp_path, setup, needle):
    setup(tmp_path)
    with pytest.raises(imgs.ImageFolderError, match=needle) as e:
        imgs.load_image_folder(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_missing_folder(tmp_path):
    with pytest.raises(imgs.ImageFolderError, match="does not exist"):
        imgs.list_images(tmp_path / "nope")


def test_corrupt_file_named(tmp_path):
    good = _save(tmp_path / "good.png", 32, 32)
    (tmp_path / "bad.png").write_bytes(good.read_bytes()[:50])
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    with pytest.raises(imgs.ImageFolderError, match=r"bad\.png"):
        imgs.load_image_folder(tmp_path)
    (tmp_path / "bad.png").unlink()
    with pytest.raises(imgs.ImageFolderError, match=r"junk\.jpg"):
        imgs.load_image_folder(tmp_path)


def test_conform_tensor_and_hash(tmp_path):
    x = torch.rand(2, 30, 50, 3)
    y = imgs.conform_tensor(x, (16, 24))
    assert y.shape == (2, 16, 24, 3)
    assert imgs.conform_tensor(y, (16, 24)) is not None
    assert imgs.content_hash(y) == imgs.content_hash(y.clone())
    assert imgs.content_hash(y) != imgs.content_hash(y + 1e-3)


def test_folder_fingerprint_changes(tmp_path):
    _save(tmp_path / "a.png", 8, 8)
    f1 = imgs.folder_fingerprint(tmp_path)
    _save(tmp_path / "b.png", 8, 8)
    assert imgs.folder_fingerprint(tmp_path) != f1
