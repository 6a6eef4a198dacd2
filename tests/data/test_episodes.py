"""Few-shot data: episode shapes, labels, distinctness, reproducibility; loaders; split; bad data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fsgan_fast.data import (
    ClassSplit,
    DatasetError,
    EpisodeSampler,
    ImageClasses,
    builtin_classes,
    from_array,
    load_class_folders,
    load_classes,
    load_npy,
    split_classes,
)


def coded_classes(counts: list[int], size: int = 4) -> ImageClasses:
    """Image m of class c is the constant 8 * c + m + 1, so an episode can be decoded back to (c, m)."""
    imgs = [torch.full((3, size, size), 8 * c + m + 1, dtype=torch.uint8) for c, n in enumerate(counts) for m in range(n)]
    return ImageClasses(torch.stack(imgs), torch.tensor(counts), [f"c{c}" for c in range(len(counts))])


def decode(xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    code = ((xs[..., 0, 0, 0] + 1) * 127.5).round().long() - 1  # [B, K]
    return code // 8, code % 8


@pytest.mark.parametrize("counts", [[5, 5, 5, 5], [3, 7, 4], [3]])
def test_episode_shapes_labels_distinct(counts):
    data = coded_classes(counts)
    sampler = EpisodeSampler(data, batch=16, shots=3, seed=1)
    for _ in range(5):
        xs, labels = sampler.sample()
        assert xs.shape == (16, 3, 3, 4, 4) and xs.dtype == torch.float32
        assert labels.shape == (16,) and labels.dtype == torch.int64
        assert xs.min() >= -1 and xs.max() <= 1
        cls, idx = decode(xs)
        assert torch.equal(cls, labels.unsqueeze(1).expand(-1, 3)), "every shot of a row comes from the row's class"
        assert bool((idx < torch.tensor(counts)[labels].unsqueeze(1)).all()), "indices stay inside the class"
        assert all(len(set(row)) == 3 for row in idx.tolist()), "the K shots of a row are distinct"


def test_episodes_cover_every_class_and_image():
    data = coded_classes([4, 6, 5])
    sampler = EpisodeSampler(data, batch=32, shots=2, seed=0)
    seen = set()
    for _ in range(20):
        cls, idx = decode(sampler.sample()[0])
        seen |= set(zip(cls.flatten().tolist(), idx.flatten().tolist()))
    assert seen == {(c, m) for c, n in enumerate([4, 6, 5]) for m in range(n)}


def test_episodes_reproducible_and_resumable():
    data = coded_classes([5, 6, 7])
    a, b, c = (EpisodeSampler(data, 4, 3, seed=s) for s in (3, 3, 4))
    xa, la = a.sample()
    xb, lb = b.sample()
    assert torch.equal(xa, xb) and torch.equal(la, lb)
    assert not torch.equal(xa, c.sample()[0])
    state = a.state_dict()
    expected = a.sample()
    fresh = EpisodeSampler(data, 4, 3, seed=99)
    fresh.load_state_dict(state)
    assert all(torch.equal(u, v) for u, v in zip(fresh.sample(), expected))


def test_sampler_generator_must_be_on_the_data_device():
    from fsgan_fast.data.episodes import _same_device

    data = coded_classes([5, 6, 7])
    EpisodeSampler(data, 2, 3, generator=torch.Generator("cpu").manual_seed(1)).sample()
    dev = torch.device
    assert _same_device(dev("cpu"), dev("cpu")) and _same_device(dev("cuda:1"), dev("cuda", 1))
    assert not _same_device(dev("cpu"), dev("cuda:0")) and not _same_device(dev("cuda:0"), dev("cuda:1"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sampler_accepts_cuda_without_index():
    """torch.Generator("cuda") reports device 'cuda', tensors moved with .to("cuda") report 'cuda:0'."""
    data = coded_classes([5, 6, 7]).to(torch.device("cuda"))
    xs, labels = EpisodeSampler(data, 2, 3, generator=torch.Generator("cuda").manual_seed(1)).sample()
    assert xs.device == data.device and labels.device == data.device


def test_flip_is_off_by_default_and_mirrors_when_on():
    img = torch.zeros(4, 3, 4, 4, dtype=torch.uint8)
    img[..., 0] = 255  # bright left column: a flip moves it to the right
    data = ImageClasses(img, torch.tensor([4]), ["one"])
    plain = EpisodeSampler(data, 8, 3, seed=0).sample()[0]
    assert bool((plain[..., 0] == 1).all())
    flipped = EpisodeSampler(data, 8, 3, seed=0, flip=True).sample()[0]
    mirrored = flipped[..., 0, 0, -1] == 1
    assert bool(mirrored.any()) and not bool(mirrored.all())
    assert torch.equal(flipped[mirrored], plain[mirrored].flip(-1))


def test_select_reindexes_classes():
    data = coded_classes([3, 4, 5])
    sub = data.select([2, 0])
    assert sub.names == ["c2", "c0"] and sub.counts.tolist() == [5, 3]
    cls, _ = decode(EpisodeSampler(sub, 8, 2, seed=0).sample()[0].unsqueeze(0)[0])
    assert set(cls.flatten().tolist()) <= {0, 2}


def _write(path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_class_folders_any_format_and_aspect(tmp_path):
    rng = np.random.default_rng(0)
    _write(tmp_path / "b_dogs" / "1.png", rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    _write(tmp_path / "b_dogs" / "2.jpg", rng.integers(0, 255, (40, 16, 3), dtype=np.uint8))
    _write(tmp_path / "b_dogs" / "3.bmp", rng.integers(0, 255, (16, 16), dtype=np.uint8))  # grey
    _write(tmp_path / "a_cats" / "x.png", np.full((12, 12, 4), 200, dtype=np.uint8))  # RGBA
    _write(tmp_path / "a_cats" / "y.webp", np.full((50, 50, 3), 10, dtype=np.uint8))
    (tmp_path / "a_cats" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    data = load_class_folders(tmp_path, size=8)
    assert data.names == ["a_cats", "b_dogs"] and data.counts.tolist() == [2, 3]
    assert data.images.shape == (5, 3, 8, 8) and data.images.dtype == torch.uint8
    assert int(data.class_images(0)[0, :, 4, 4].float().mean()) == 200
    assert torch.equal(load_classes(str(tmp_path), 8).images, data.images)


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_npy_layout(tmp_path, dtype):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (3, 5, 16, 16, 3), dtype=np.uint8)
    path = tmp_path / "data.npy"
    np.save(path, arr if dtype == "uint8" else arr.astype(np.float32) / 255)
    data = load_npy(path, size=16)
    assert data.num_classes == 3 and data.counts.tolist() == [5, 5, 5]
    assert torch.equal(data.class_images(1)[2], torch.from_numpy(arr[1, 2]).permute(2, 0, 1))
    small = load_classes(str(path), 8)
    assert small.images.shape == (15, 3, 8, 8)


def test_builtin_is_deterministic():
    a = builtin_classes(size=16, per_class=3, seed=0)
    b = builtin_classes(size=16, per_class=3, seed=0)
    assert torch.equal(a.images, b.images) and a.num_classes == 16 and a.images.shape == (48, 3, 16, 16)
    assert not torch.equal(a.images, builtin_classes(size=16, per_class=3, seed=1).images)
    assert len(set(a.images.float().mean(dim=(1, 2, 3)).tolist())) > 40, "crops differ"


def test_split_reproducible_saved_and_checked(tmp_path):
    names = [f"c{i}" for i in range(10)]
    s = split_classes(names, seed=5)
    assert len(s.seen) == 8 and len(s.unseen) == 2 and sorted(s.seen + s.unseen) == list(range(10))
    assert split_classes(names, seed=5) == s
    assert any(split_classes(names, seed=k).seen != s.seen for k in range(6, 10))
    first = split_classes(names, 7, mode="first")
    assert first.seen == list(range(7)) and first.unseen == [7, 8, 9]
    path = s.save(tmp_path / "split.json")
    assert ClassSplit.load(path, names) == s
    with pytest.raises(DatasetError, match="made for 10 other classes"):
        ClassSplit.load(path, names[:9])
    with pytest.raises(DatasetError, match="between 1 and the number of classes"):
        split_classes(names, 11)


def test_bad_data_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_classes(str(tmp_path / "nope"), 8)
    with pytest.raises(DatasetError, match="does not exist"):
        load_npy(tmp_path / "nope.npy")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DatasetError, match="not .npy"):
        load_classes(str(tmp_path / "file.txt"), 8)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no class folders"):
        load_class_folders(empty, 8)
    (empty / "cls").mkdir()
    with pytest.raises(DatasetError, match="no image files"):
        load_class_folders(empty, 8)
    (empty / "cls" / "broken.png").write_bytes(b"definitely not a png")
    with pytest.raises(DatasetError, match="broken.png"):
        load_class_folders(empty, 8)
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="cannot read"):
        load_npy(tmp_path / "bad.npy")
    np.save(tmp_path / "shape.npy", np.zeros((4, 16, 16, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"expected \[classes, images, H, W, 3\]"):
        load_npy(tmp_path / "shape.npy")
    with pytest.raises(DatasetError, match="must lie in"):
        from_array(np.full((2, 2, 4, 4, 3), 3.0, np.float32))
    with pytest.raises(DatasetError, match=r"fewer: 'c1' \(2\)"):
        EpisodeSampler(coded_classes([4, 2, 5]), batch=2, shots=3)
    with pytest.raises(DatasetError, match="no classes"):
        ImageClasses(torch.zeros(0, 3, 4, 4, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64), []).check_shots(3)
