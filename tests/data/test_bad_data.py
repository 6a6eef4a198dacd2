"""A user's bad data ends as one DatasetError naming the file or folder, never as garbage or a traceback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import fsgan_fast.data.classes as classes_mod
from fsgan_fast.data import DatasetError, EpisodeSampler, ImageClasses, from_array, load_class_folders, load_npy


def _img(path, rng, shape=(20, 24, 3)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)


def _classes(root, rng, per_class=(3, 3)) -> None:
    for c, n in enumerate(per_class):
        for m in range(n):
            _img(root / f"class{c}" / f"{m}.png", rng)


# ---------------------------------------------------------------------------------------------------
# .npy files


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_npy_non_finite_values_are_rejected(tmp_path, bad):
    rng = np.random.default_rng(0)
    arr = rng.random((3, 4, 8, 8, 3), dtype=np.float32)
    arr[1, 2, 3, 4, 0] = bad
    arr[2, 0, 0, 0, 1] = bad
    np.save(tmp_path / "nan.npy", arr)
    kind = "2 NaN, 0 inf" if np.isnan(bad) else "0 NaN, 2 inf"
    with pytest.raises(DatasetError, match=rf"nan\.npy: 2 of {arr.size} values are not finite \({kind}\), "
                       r"the first in class 1 image 2"):
        load_npy(tmp_path / "nan.npy")


def test_float_npy_outside_unit_range(tmp_path):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "bytes.npy", (rng.random((2, 3, 8, 8, 3)) * 255).astype(np.float32))
    with pytest.raises(DatasetError,
                       match=r"bytes\.npy: float images must lie in \[0, 1\].*divide 0\.\.255 data by 255"):
        load_npy(tmp_path / "bytes.npy")
    np.save(tmp_path / "signed.npy", (rng.random((2, 3, 8, 8, 3)) * 2 - 1).astype(np.float32))
    with pytest.raises(DatasetError, match=r"signed\.npy: float images must lie in \[0, 1\], found \[-1"):
        load_npy(tmp_path / "signed.npy")


@pytest.mark.parametrize("size", [None, 6])
def test_chunked_conversion_matches_whole_array(monkeypatch, size):
    """from_array converts a few images at a time; the result must not depend on where the chunks fall."""
    rng = np.random.default_rng(2)
    arr = rng.random((3, 5, 8, 8, 3), dtype=np.float32)
    whole = from_array(arr, size)
    monkeypatch.setattr(classes_mod, "_CHUNK_VALUES", 8 * 8 * 3 * 2)  # two images per chunk
    chunked = from_array(arr, size)
    assert torch.equal(whole.images, chunked.images) and whole.images.shape == (15, 3, size or 8, size or 8)
    expected = torch.from_numpy(np.rint(arr.astype(np.float64) * 255).astype(np.uint8)).reshape(15, 8, 8, 3)
    if size is None:
        assert torch.equal(chunked.images, expected.permute(0, 3, 1, 2))


def test_npy_big_endian_and_tensor_inputs(tmp_path):
    rng = np.random.default_rng(3)
    arr = rng.random((2, 3, 8, 8, 3)).astype(">f4")  # e.g. written on another machine: torch rejects it as is
    np.save(tmp_path / "be.npy", arr)
    expected = from_array(arr.astype("<f4")).images
    assert torch.equal(load_npy(tmp_path / "be.npy").images, expected)
    bf16 = torch.from_numpy(arr.astype("<f4")).bfloat16()
    assert from_array(bf16).images.shape == (6, 3, 8, 8)


def test_npy_wrong_dtype_and_npz(tmp_path):
    np.save(tmp_path / "int.npy", np.zeros((2, 3, 8, 8, 3), np.int16))
    with pytest.raises(DatasetError, match=r"int\.npy: dtype must be uint8 or float.*int16"):
        load_npy(tmp_path / "int.npy")
    np.save(tmp_path / "str.npy", np.full((2, 3, 8, 8, 3), "a"))
    with pytest.raises(DatasetError, match=r"str\.npy: dtype must be uint8 or float"):
        load_npy(tmp_path / "str.npy")
    with open(tmp_path / "zip.npy", "wb") as fh:
        np.savez(fh, images=np.zeros((2, 3, 8, 8, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"zip\.npy' is a \.npz archive"):
        load_npy(tmp_path / "zip.npy")
    with pytest.raises(DatasetError, match="no images"):
        from_array(np.zeros((2, 3, 0, 0, 3), np.uint8))


def test_image_classes_rejects_negative_counts():
    with pytest.raises(DatasetError, match="counts must be >= 0"):
        ImageClasses(torch.zeros(4, 3, 2, 2, dtype=torch.uint8), torch.tensor([5, -1]), ["a", "b"])


# ---------------------------------------------------------------------------------------------------
# Folders of class folders


def test_empty_class_folder(tmp_path):
    rng = np.random.default_rng(4)
    _classes(tmp_path, rng)
    (tmp_path / "class2").mkdir()
    (tmp_path / "class3").mkdir()
    (tmp_path / "class3" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=r"2 of 4 class folders of .* have no image files: "
                       r"'class2' \(empty\), 'class3' \(1 other file\); images are files ending in \.png"):
        load_class_folders(tmp_path, 8)


def test_images_in_the_root_instead_of_class_folders(tmp_path):
    rng = np.random.default_rng(5)
    for m in range(3):
        _img(tmp_path / f"{m}.jpg", rng)
    with pytest.raises(DatasetError, match="no class folders.*holds 3 image files itself: pass its parent folder"):
        load_class_folders(tmp_path, 8)


def test_class_with_fewer_images_than_shots(tmp_path):
    rng = np.random.default_rng(6)
    _classes(tmp_path, rng, per_class=(3, 1, 4))
    data = load_class_folders(tmp_path, 8)
    assert data.counts.tolist() == [3, 1, 4]
    with pytest.raises(DatasetError, match=r"need 3 distinct images per class, but 1 class\(es\) .* 'class1' \(1\)"):
        EpisodeSampler(data, batch=4, shots=3)


def test_non_image_and_hidden_files_are_skipped(tmp_path):
    rng = np.random.default_rng(7)
    _classes(tmp_path, rng)
    (tmp_path / "class0" / "labels.csv").write_text("a,b\n")
    # macOS copies leave "._name.jpg" resource forks next to the images: not images at all
    (tmp_path / "class1" / "._0.png").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
    data = load_class_folders(tmp_path, 8)
    assert data.counts.tolist() == [3, 3]


def test_unreadable_images_are_counted_and_the_first_named(tmp_path):
    rng = np.random.default_rng(8)
    _classes(tmp_path, rng)
    (tmp_path / "class0" / "a_text.png").write_text("not a png")
    full = (tmp_path / "class1" / "0.png").read_bytes()
    (tmp_path / "class1" / "9_cut.png").write_bytes(full[: len(full) // 2])
    first = r"the first: cannot read image .*a_text\.png"
    with pytest.raises(DatasetError, match=rf"^2 of 8 image files in .* cannot be read, {first}"):
        load_class_folders(tmp_path, 8)


def test_truncated_image_in_a_class_folder(tmp_path):
    rng = np.random.default_rng(9)
    _classes(tmp_path, rng)
    full = (tmp_path / "class1" / "2.png").read_bytes()
    (tmp_path / "class1" / "2.png").write_bytes(full[: len(full) * 2 // 3])
    with pytest.raises(DatasetError, match=r"^cannot read image .*class1/2\.png.*truncated"):
        load_class_folders(tmp_path, 8)


def test_decompression_bomb_in_a_class_folder(tmp_path, monkeypatch):
    rng = np.random.default_rng(10)
    _classes(tmp_path, rng)
    _img(tmp_path / "class1" / "huge.png", rng, (60, 80, 3))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 20x24 images pass, 60x80 does not
    with pytest.raises(DatasetError, match=r"huge\.png.*decompression bomb.*raise PIL\.Image\.MAX_IMAGE_PIXELS"):
        load_class_folders(tmp_path, 8)


@pytest.mark.parametrize("where", ["root", "class"])
def test_unreadable_folder(tmp_path, monkeypatch, where):
    """Permissions cannot be tested as root, so listing the folder fails as it would without them."""
    rng = np.random.default_rng(11)
    _classes(tmp_path, rng)
    locked = tmp_path if where == "root" else tmp_path / "class1"
    real = type(tmp_path).iterdir

    def iterdir(self):
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(type(tmp_path), "iterdir", iterdir)
    what = "dataset folder" if where == "root" else "class folder"
    with pytest.raises(DatasetError, match=rf"cannot list {what} '{locked}': Permission denied"):
        load_class_folders(tmp_path, 8)
