"""Guard files: round trip, metadata, and every kind of bad file."""
import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from cpsample_nodes.core import GuardFileError, load_guard, read_metadata, save_guard


def test_round_trip(small_guard, tmp_path):
    guard, latents = small_guard
    path = save_guard(guard, tmp_path / "sub" / "g.safetensors")
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    back = load_guard(path)
    x = latents + 0.1 * torch.randn_like(latents)
    assert torch.equal(guard.probability(x, 0.1), back.probability(x, 0.1))
    meta = read_metadata(path)
    for key in ("format_version", "config", "latent_channels", "noise_space", "label_seed", "n_images",
                "dataset_digest", "accuracy", "created"):
        assert meta[key] != "", key
    assert json.loads(meta["noise_space"])["kind"] == "vp"
    assert meta["n_images"] == "8" and meta["latent_channels"] == "4"
    assert back.info["dataset_digest"] == guard.info["dataset_digest"]
    assert path.stat().st_size <= 12 * 1024 * 1024


def test_saved_file_has_ordinary_permissions(small_guard, tmp_path):
    guard, _ = small_guard
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")
    saved = save_guard(guard, tmp_path / "g.safetensors")
    assert saved.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_no_per_image_fingerprint(small_guard, tmp_path):
    """Only one digest of the whole set; nothing that identifies a single image."""
    from cpsample_nodes.core import dataset_digest
    guard, latents = small_guard
    path = save_guard(guard, tmp_path / "g.safetensors")
    text = json.dumps(read_metadata(path))
    for i in range(len(latents)):
        assert dataset_digest(latents[i:i + 1]) not in text
    assert text.count(guard.info["dataset_digest"]) >= 1


def test_save_is_atomic_on_failure(small_guard, tmp_path, monkeypatch):
    guard, _ = small_guard
    path = tmp_path / "g.safetensors"
    path.write_bytes(b"previous guard")
    import cpsample_nodes.core.files as files

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(files, "save_file", boom)
    with pytest.raises(OSError):
        save_guard(guard, path)
    assert path.read_bytes() == b"previous guard"
    assert [p.name for p in tmp_path.iterdir()] == ["g.safetensors"]


def _rewrite(path, out, tensors=None, meta=None):
    t = load_file(str(path))
    m = read_metadata(path)
    if tensors:
        tensors(t)
    if meta:
        meta(m)
    save_file(t, str(out), metadata=m)
    return out


@pytest.fixture
def saved(small_guard, tmp_path):
    return save_guard(small_guard[0], tmp_path / "good.safetensors")


def test_rejects_not_safetensors(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_bytes(b"\x89PNG not a guard")
    with pytest.raises(GuardFileError, match="x.safetensors.*not a safetensors"):
        load_guard(p)
    p.write_bytes(struct.pack("<Q", 10**12))
    with pytest.raises(GuardFileError, match="not a safetensors"):
        load_guard(p)


def test_rejects_missing_file(tmp_path):
    with pytest.raises(GuardFileError, match="no such file"):
        load_guard(tmp_path / "nope.safetensors")


def test_rejects_other_safetensors(tmp_path):
    p = tmp_path / "lora.safetensors"
    save_file({"w": torch.zeros(2)}, str(p))
    with pytest.raises(GuardFileError, match="not a CPSample guard"):
        load_guard(p)


def test_rejects_newer_version(saved, tmp_path):
    p = _rewrite(saved, tmp_path / "v.safetensors", meta=lambda m: m.update(format_version="99"))
    with pytest.raises(GuardFileError, match="version 99 is newer"):
        load_guard(p)


def test_rejects_bad_metadata(saved, tmp_path):
    p = _rewrite(saved, tmp_path / "m.safetensors", meta=lambda m: m.update(config="{not json"))
    with pytest.raises(GuardFileError, match="metadata does not parse"):
        load_guard(p)
    p = _rewrite(saved, tmp_path / "k.safetensors", meta=lambda m: m.pop("noise_space"))
    with pytest.raises(GuardFileError, match="metadata does not parse"):
        load_guard(p)


def test_rejects_missing_and_unexpected_tensors(saved, tmp_path):
    p = _rewrite(saved, tmp_path / "a.safetensors", tensors=lambda t: t.pop("head.weight"))
    with pytest.raises(GuardFileError, match="missing tensors: head.weight"):
        load_guard(p)
    p = _rewrite(saved, tmp_path / "b.safetensors", tensors=lambda t: t.update(extra=torch.zeros(1)))
    with pytest.raises(GuardFileError, match="unexpected tensors: extra"):
        load_guard(p)


def test_rejects_wrong_shape_and_nonfinite(saved, tmp_path):
    p = _rewrite(saved, tmp_path / "s.safetensors", tensors=lambda t: t.update({"head.bias": torch.zeros(3)}))
    with pytest.raises(GuardFileError, match=r"head.bias has shape \(3,\)"):
        load_guard(p)

    def poison(t):
        t["head.weight"] = t["head.weight"].clone()
        t["head.weight"][0, 0] = float("inf")

    p = _rewrite(saved, tmp_path / "n.safetensors", tensors=poison)
    with pytest.raises(GuardFileError, match="NaN or infinite"):
        load_guard(p)
