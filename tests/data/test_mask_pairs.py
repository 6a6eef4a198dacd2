"""Few-shot SMIS pairs: the folder layout (matching, centre crop, nearest masks, palette PNGs), the built-in pairs and
their derived masks, colours, and one clear DatasetError for each thing a user gets wrong."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fsgan_fast.data import DatasetError
from fsgan_fast.data.mask_pairs import (
    BUILTIN_LABEL_NC,
    BUILTIN_PHOTOS,
    SCRIBBLE_STRIDE,
    MaskPairs,
    builtin_pairs,
    colorize,
    derive_masks,
    load_pair_folder,
    load_pairs,
    mode_filter,
    palette,
    read_mask,
    save_mask,
    scribbles,
    write_pair_folder,
)
from fsgan_fast.utils.images import read_image


def _pair(root, stem, rng, *, h=32, w=40, classes=5, mode="L", mask_size=None):
    """A photo and a mask of 2x2 blocks (so any nearest rule at a factor of two reads the same id); returns the
    block map ``[h/2, w/2]``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"{stem}.png")
    blocks = rng.integers(0, classes, (h // 2, w // 2)).astype(np.uint8)
    mask = np.repeat(np.repeat(blocks, 2, 0), 2, 1)
    im = Image.fromarray(mask, mode="L")
    if mode == "P":
        im = im.convert("P")
        im.putpalette([v for c in range(256) for v in ((37 * c) % 256, (91 * c) % 256, (13 * c) % 256)])
        im = Image.frombytes("P", im.size, mask.tobytes())
        im.putpalette([v for c in range(256) for v in ((37 * c) % 256, (91 * c) % 256, (13 * c) % 256)])
    elif mode == "RGB":
        im = Image.fromarray(np.stack([mask * 40] * 3, -1).astype(np.uint8))
    if mask_size is not None:
        im = im.resize(mask_size, Image.Resampling.NEAREST)
    im.save(root / "masks" / f"{stem}.png")
    return blocks


# ---------------------------------------------------------------------------------------------------
# The folder layout


@pytest.mark.parametrize("mode", ["L", "P"])
def test_pair_folder_matches_stems_and_crops_masks_like_photos(tmp_path, mode):
    rng = np.random.default_rng(0)
    blocks = {stem: _pair(tmp_path, stem, rng, mode=mode) for stem in ("b", "a", "c")}
    (tmp_path / "images" / ".hidden.png").write_bytes(b"not an image")  # hidden files are skipped
    pairs = load_pair_folder(tmp_path, 16)
    assert pairs.names == ["a", "b", "c"] and not pairs.sparse
    assert pairs.images.shape == (3, 3, 16, 16) and pairs.images.dtype == torch.uint8
    assert pairs.masks.shape == (3, 16, 16) and pairs.masks.dtype == torch.int64
    for i, stem in enumerate(pairs.names):
        # 40x32 photo: the centre square is columns 4..35 (two blocks in); halving it keeps one id per block
        expected = torch.from_numpy(blocks[stem][:, 2:18].astype(np.int64))
        assert torch.equal(pairs.masks[i], expected), stem
        assert torch.equal(pairs.images[i], read_image(tmp_path / "images" / f"{stem}.png", 16))


def test_pair_folder_reads_the_reference_labels_folder(tmp_path):
    rng = np.random.default_rng(5)
    blocks = _pair(tmp_path, "0", rng)
    (tmp_path / "masks").rename(tmp_path / "labels")  # Fewshot-SMIS's data/<set>/train/{images,labels}
    pairs = load_pair_folder(tmp_path, 16)
    assert torch.equal(pairs.masks[0], torch.from_numpy(blocks[:, 2:18].astype(np.int64)))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "labels" / "extra.png")
    with pytest.raises(DatasetError, match=r"1 mask\(s\) in .*labels.* have no photo"):
        load_pair_folder(tmp_path, 16)


def test_pair_folder_sparse_and_first_shots(tmp_path):
    rng = np.random.default_rng(1)
    for stem in ("x", "y"):
        _pair(tmp_path, stem, rng)
    pairs = load_pairs(tmp_path, 16, sparse=True)
    assert pairs.sparse and len(pairs.first(1)) == 1 and pairs.first(1).names == ["x"]
    with pytest.raises(DatasetError, match=r"3 shots asked for, but .* has only 2 pairs \(--shots at most 2\)"):
        pairs.first(3)


@pytest.mark.parametrize(
    "setup, match",
    [
        ("no_folder", r"pairs folder .*missing.* does not exist \(a pairs folder holds images/"),
        ("no_masks", r"has no masks/ sub-folder"),
        ("no_images", r"no image files in"),
        ("unmatched", r"1 photo\(s\) in .* have no mask of the same stem in masks/: lonely"),
        ("orphan", r"1 mask\(s\) in .* have no photo of the same stem in images/: ghost"),
        ("rgb", r"mask .*a\.png.* is a RGB image: masks must be single-channel class ids"),
        ("size", r"pair 'a': the photo is 40x32 but the mask 20x16"),
        ("corrupt", r"cannot read"),
    ],
)
def test_pair_folder_errors_name_the_problem(tmp_path, setup, match):
    rng = np.random.default_rng(2)
    root = tmp_path / "pairs"
    if setup == "no_folder":
        root = tmp_path / "missing"
    elif setup == "no_masks":
        (root / "images").mkdir(parents=True)
    elif setup == "no_images":
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
    elif setup == "rgb":
        _pair(root, "a", rng, mode="RGB")
    elif setup == "size":
        _pair(root, "a", rng, mask_size=(20, 16))
    else:
        _pair(root, "a", rng)
        if setup == "unmatched":
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / "images" / "lonely.png")
        elif setup == "orphan":
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / "ghost.png")
        elif setup == "corrupt":
            (root / "masks" / "a.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DatasetError, match=match):
        load_pair_folder(root, 16)


def test_class_ids_are_checked_against_label_nc(tmp_path):
    rng = np.random.default_rng(3)
    _pair(tmp_path, "a", rng, classes=7)
    pairs = load_pair_folder(tmp_path, 16)
    top = pairs.max_id()
    pairs.check_classes(top + 1)
    with pytest.raises(DatasetError, match=rf"mask 'a' holds class id {top}, but --label-nc is {top}"):
        pairs.check_classes(top)
    empty = MaskPairs(pairs.images, torch.zeros_like(pairs.masks), ["a"], sparse=True)
    with pytest.raises(DatasetError, match="annotates no pixel"):
        empty.check_classes(4)
    with pytest.raises(DatasetError, match="masks must be int64"):
        MaskPairs(pairs.images, pairs.masks.int(), ["a"])
    with pytest.raises(DatasetError, match="class ids must be >= 0"):
        MaskPairs(pairs.images, pairs.masks - 100, ["a"])


def test_mask_files_roundtrip(tmp_path):
    mask = torch.randint(0, 200, (9, 13), generator=torch.Generator().manual_seed(4))
    path = save_mask(mask, tmp_path / "m.png")
    assert torch.equal(read_mask(path), mask)
    with pytest.raises(ValueError, match=r"mask ids must lie in 0\.\.255"):
        save_mask(mask + 300, tmp_path / "big.png")
    with pytest.raises(DatasetError, match="cannot read mask"):
        read_mask(tmp_path / "nothing.png")


# ---------------------------------------------------------------------------------------------------
# Built-in pairs and derived masks


def test_builtin_pairs_are_deterministic_and_use_every_class():
    a, b = builtin_pairs(32), builtin_pairs(32)
    assert a.names == list(BUILTIN_PHOTOS) and a.source == "builtin"
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert a.images.shape == (5, 3, 32, 32) and a.masks.shape == (5, 32, 32)
    assert set(a.masks.unique().tolist()) == set(range(BUILTIN_LABEL_NC))
    assert a.masks[0].unique().numel() >= 3, "the 1-shot pair needs several regions"
    eight = builtin_pairs(32, 8)
    assert int(eight.masks.max()) == 7


def test_builtin_sparse_pairs_are_scribbles_of_the_dense_masks():
    dense, sparse = builtin_pairs(32), builtin_pairs(32, sparse=True)
    assert sparse.sparse and int(sparse.masks.max()) <= BUILTIN_LABEL_NC - 1
    assert 0.02 < float((sparse.masks > 0).float().mean()) < 0.4
    rows = (sparse.masks > 0).any(dim=(0, 2)).nonzero().squeeze(1)
    assert torch.equal(rows % SCRIBBLE_STRIDE, torch.full_like(rows, SCRIBBLE_STRIDE // 2))
    # scribbles keep their region's id (+1): derive them from the same 5-class dense masks
    five = derive_masks(dense.images, BUILTIN_LABEL_NC - 1)
    labelled = sparse.masks > 0
    assert torch.equal(sparse.masks[labelled], five[labelled] + 1)


def test_derive_masks_separates_known_colour_regions():
    """Two flat colours with speckle: k-means finds them (dark first) and the mode filter removes the speckle."""
    img = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
    img[:, :, :, 8:] = 220
    img[:, :, :, :8] = 30
    img[0, :, 3, 3] = 220  # one bright speck in the dark half
    ids = derive_masks(img, 2)
    expected = torch.zeros(2, 16, 16, dtype=torch.int64)
    expected[:, :, 8:] = 1
    assert torch.equal(ids, expected)


def test_mode_filter_and_scribbles_by_hand():
    m = torch.zeros(1, 7, 7, dtype=torch.int64)
    m[0, :, 4:] = 2
    m[0, 1, 1] = 1  # isolated
    out = mode_filter(m, 3, window=3)
    assert out[0, 1, 1] == 0 and torch.equal(out[0, :, 4:], m[0, :, 4:])
    with pytest.raises(ValueError, match="odd size"):
        mode_filter(m, 3, window=4)
    s = scribbles(torch.zeros(1, 8, 8, dtype=torch.int64), 1, stride=4)
    # interior of the single region (borders count as interior under the max-pool's padding), rows 2 and 6
    assert torch.equal(s[0].any(1).nonzero().squeeze(1), torch.tensor([2, 6])) and int(s.max()) == 1


def test_palette_and_colorize():
    pal = palette(21)
    assert pal[0].tolist() == [0, 0, 0] and pal[1].tolist() == [128, 0, 0] and pal[15].tolist() == [192, 128, 128]
    assert len({tuple(c) for c in pal.tolist()}) == 21
    ids = torch.tensor([[0, 1], [2, -1]])
    rgb = colorize(ids, 3)
    assert rgb.shape == (3, 2, 2) and rgb.min() >= -1 and rgb.max() <= 1
    assert torch.allclose(rgb[:, 1, 1], torch.ones(3)), "ids outside the classes are white"
    assert torch.allclose(rgb[:, 0, 1], pal[1].float() / 127.5 - 1)
    assert colorize(torch.zeros(4, 5, 6, dtype=torch.int64), 2).shape == (4, 3, 5, 6)
    with pytest.raises(TypeError, match="integer tensor of class ids"):
        colorize(torch.zeros(2, 2), 3)


def test_write_pair_folder_reads_back(tmp_path):
    pairs = builtin_pairs(16)
    back = load_pair_folder(write_pair_folder(pairs, tmp_path / "p"), 16)
    assert sorted(back.names) == sorted(pairs.names)
    order = [pairs.names.index(n) for n in back.names]
    assert torch.equal(back.masks, pairs.masks[order]) and torch.equal(back.images, pairs.images[order])
