"""Labelled image sets for MatchGAN: CelebA-format attribute files (selection, order, exclusive groups, every kind of
malformed file), label folders, the class-balanced labelled split against a loop of the reference rule, the built-in
transforms, and the one entry point's errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from fsgan_fast.data.attributes import (
    BUILTIN_ATTRIBUTES,
    BUILTIN_CATEGORIES,
    LabelledImages,
    _builtin_crops,
    apply_transforms,
    builtin_attributes,
    label_classes,
    load_attribute_file,
    load_label_folders,
    load_labelled_images,
    parse_exclusive,
    read_attribute_file,
    split_labelled,
)
from fsgan_fast.data.types import DatasetError

NAMES = ["Arched", "Bald", "Curly", "Dark", "Eyes", "Freckles"]


def _colour(i: int) -> tuple[int, int, int]:
    return (10 + 20 * i) % 256, (200 - 15 * i) % 256, (7 * i) % 256


def write_attr_file(folder, values: np.ndarray, names=NAMES, image_folder: str | None = "img_align_celeba",
                    zero_for_false: bool = False):
    """A CelebA-format file over solid-colour 12x10 images (image i has colour _colour(i))."""
    lines = [str(len(values)), " ".join(names)]
    neg = "0" if zero_for_false else "-1"
    for i, row in enumerate(values):
        lines.append(f"{i:06d}.png " + " ".join("1" if v else neg for v in row))
    path = folder / "list_attr.txt"
    path.write_text("\n".join(lines) + "\n")
    if image_folder is not None:
        img_dir = folder / image_folder if image_folder else folder
        img_dir.mkdir(exist_ok=True)
        for i in range(len(values)):
            Image.new("RGB", (12, 10), _colour(i)).save(img_dir / f"{i:06d}.png")
    return path


def random_values(n: int = 9, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, len(NAMES))) < 0.5


# ---------------------------------------------------------------------------------------------------
# Attribute files


def test_attribute_file_selects_and_orders_attributes(tmp_path):
    values = random_values()
    path = write_attr_file(tmp_path, values)
    data = load_attribute_file(path, 8, attrs=("Dark", "Arched", "Eyes"))
    assert data.names == ["Dark", "Arched", "Eyes"] and data.kind == "attributes" and data.source == str(path)
    expected = torch.from_numpy(values[:, [3, 0, 4]]).float()
    torch.testing.assert_close(data.labels, expected)
    assert data.images.shape == (9, 3, 8, 8) and data.images.dtype == torch.uint8
    for i in range(9):  # image i is its own solid colour: the rows follow the file's order
        assert data.images[i, :, 4, 4].tolist() == list(_colour(i))
    assert bool(data.labelled.all()) and data.num_labelled == 9
    every = load_attribute_file(path, 8)  # no selection: every attribute, in the file's order
    assert every.names == NAMES and torch.equal(every.labels, torch.from_numpy(values).float())


def test_attribute_file_reads_zero_as_unset_and_images_beside_it(tmp_path):
    values = random_values(5, seed=3)
    path = write_attr_file(tmp_path, values, image_folder="", zero_for_false=True)
    data = load_attribute_file(path, 4)
    assert torch.equal(data.labels, torch.from_numpy(values).float())


def test_exclusive_groups_drop_images_with_two_set(tmp_path):
    values = random_values(40, seed=1)
    path = write_attr_file(tmp_path, values)
    data = load_attribute_file(path, 4, attrs=("Arched", "Bald", "Curly", "Eyes"), exclusive=("Arched,Bald,Curly",))
    keep = values[:, :3].sum(1) <= 1
    assert 0 < keep.sum() < 40 and len(data) == keep.sum()
    torch.testing.assert_close(data.labels, torch.from_numpy(values[keep][:, [0, 1, 2, 4]]).float())
    assert data.exclusive == (("Arched", "Bald", "Curly"),)
    kept_index = np.flatnonzero(keep)
    assert data.images[1, :, 2, 2].tolist() == list(_colour(int(kept_index[1])))


@pytest.mark.parametrize("groups, message", [
    (("Arched",), "two or more"),
    (("Arched,Arched",), "two or more"),
    (("Arched,Nose",), "unknown name.*'Nose'"),
    (("Arched,Bald", "Bald,Curly"), "two groups"),
])
def test_exclusive_groups_are_checked(groups, message):
    with pytest.raises(DatasetError, match=message):
        parse_exclusive(groups, NAMES)
    assert parse_exclusive(("Arched, Bald", "Curly,Dark"), NAMES) == (("Arched", "Bald"), ("Curly", "Dark"))


def test_unknown_attribute_names_are_named_with_a_suggestion(tmp_path):
    path = write_attr_file(tmp_path, random_values(3))
    with pytest.raises(DatasetError, match=r"attrs: unknown name\(s\) 'Curley' \(did you mean 'Curly'\?\), 'Zzz'"):
        load_attribute_file(path, 4, attrs=("Arched", "Curley", "Zzz"))
    with pytest.raises(DatasetError, match="more than once"):
        load_attribute_file(path, 4, attrs=("Arched", "Arched"))
    with pytest.raises(DatasetError, match="exclusive: unknown"):  # a group outside the selected attributes
        load_attribute_file(path, 4, attrs=("Arched", "Bald"), exclusive=("Arched,Curly",))


MALFORMED = {
    "count": ("3\nA B\nx.png 1 -1\ny.png -1 1\n", "line 1 says 3 images but 2 image lines follow"),
    "header": ("two\nA B\nx.png 1 -1\n", "line 1: expected the number of images"),
    "fields": ("2\nA B\nx.png 1 -1\ny.png -1\n", "line 4: expected a file name and 2 values, got 2 fields"),
    "value": ("1\nA B\nx.png 1 2\n", "line 3: attribute values must be 1 or -1 .*'2'"),
    "names": ("1\nA A\nx.png 1 -1\n", "line 2: attribute names repeat: A"),
    "no_names": ("1\n1 -1\nx.png 1 -1\n", "line 2: expected attribute names"),
    "twice": ("2\nA B\nx.png 1 -1\nx.png -1 1\n", "line 4: file 'x.png' is listed twice \\(first on line 3\\)"),
    "short": ("0\n", "too short"),
    "empty_list": ("0\nA B\n", "lists no images"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_attribute_files_name_the_line(tmp_path, case):
    text, message = MALFORMED[case]
    path = tmp_path / "list_attr.txt"
    path.write_text(text)
    with pytest.raises(DatasetError, match=message):
        load_attribute_file(path, 4)


def test_attribute_file_images_are_found_or_the_error_says_where(tmp_path):
    values = random_values(4)
    path = write_attr_file(tmp_path, values, image_folder="photos")
    with pytest.raises(DatasetError, match="cannot find the images.*--image-dir"):
        load_attribute_file(path, 4)
    assert len(load_attribute_file(path, 4, image_dir=tmp_path / "photos")) == 4
    (tmp_path / "photos" / "000002.png").unlink()
    with pytest.raises(DatasetError, match="1 of 4 image files .* missing, the first: .*000002.png"):
        load_attribute_file(path, 4, image_dir=tmp_path / "photos")
    with pytest.raises(DatasetError, match="is not a folder"):
        load_attribute_file(path, 4, image_dir=tmp_path / "nowhere")
    (tmp_path / "photos" / "000002.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="cannot read image"):
        load_attribute_file(path, 4, image_dir=tmp_path / "photos")
    with pytest.raises(DatasetError, match="does not exist"):
        read_attribute_file(tmp_path / "missing.txt")


# ---------------------------------------------------------------------------------------------------
# Label folders (categorical)


def _label_folders(root, counts: dict[str, int]):
    for k, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (9, 9), _colour(10 * k + i)).save(root / name / f"{i}.png")
    return root


def test_label_folders_give_one_hot_categories(tmp_path):
    root = _label_folders(tmp_path / "rafd", {"angry": 2, "happy": 3, "sad": 1})
    data = load_label_folders(root, 8)
    assert data.kind == "categorical" and data.names == ["angry", "happy", "sad"]
    assert data.labels.argmax(1).tolist() == [0, 0, 1, 1, 1, 2] and torch.equal(data.labels.sum(1), torch.ones(6))
    picked = load_labelled_images(root, 8, attrs=("sad", "angry"))  # selection and order
    assert picked.names == ["sad", "angry"] and picked.labels.argmax(1).tolist() == [0, 1, 1]
    assert picked.images[0, :, 3, 3].tolist() == list(_colour(20))
    with pytest.raises(DatasetError, match="unknown name.*'glad'"):
        load_label_folders(root, 8, names=("happy", "glad"))
    with pytest.raises(DatasetError, match="two or more labels"):
        load_label_folders(root, 8, names=("happy",))
    with pytest.raises(DatasetError, match="exclusive groups apply to attribute files"):
        load_labelled_images(root, 8, exclusive=("angry,sad",))


# ---------------------------------------------------------------------------------------------------
# The labelled split


def reference_split(class_index: torch.Tensor, fraction: float, seed: int) -> set[int]:
    """The rule written as the reference's loop: each class's images in one seeded order, then round-robin."""
    N = len(class_index)
    order = torch.randperm(N, generator=torch.Generator().manual_seed(seed)).tolist()
    per_class: dict[int, list[int]] = {}
    for i in order:
        per_class.setdefault(int(class_index[i]), []).append(i)
    want = math.ceil(round(fraction * N, 9))
    taken: list[int] = []
    k = 0
    while len(taken) < want:
        for c in sorted(per_class):
            if k < len(per_class[c]) and len(taken) < want:
                taken.append(per_class[c][k])
        k += 1
    return set(taken)


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.25, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("seed", [0, 3])
def test_split_labelled_matches_the_round_robin_rule(fraction, seed):
    g = torch.Generator().manual_seed(seed + 11)
    class_index = torch.randint(7, (203,), generator=g)
    class_index[class_index == 5] = 6  # a missing class id, and uneven class sizes
    mask = split_labelled(class_index, fraction, seed)
    assert mask.dtype == torch.bool and int(mask.sum()) == math.ceil(round(fraction * 203, 9))
    assert set(mask.nonzero().flatten().tolist()) == reference_split(class_index, fraction, seed)
    counts = torch.bincount(class_index[mask], minlength=7)[[0, 1, 2, 3, 4, 6]]
    sizes = torch.bincount(class_index, minlength=7)[[0, 1, 2, 3, 4, 6]]
    # balanced: a class that did not run out of images has at most one fewer than the most-labelled class
    assert bool((counts[counts < sizes] >= counts.max() - 1).all())


def test_split_labelled_is_deterministic_and_seeded():
    idx = torch.randint(4, (60,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(split_labelled(idx, 0.3, 5), split_labelled(idx, 0.3, 5))
    assert not torch.equal(split_labelled(idx, 0.3, 5), split_labelled(idx, 0.3, 6))
    assert bool(split_labelled(idx, 1.0).all())
    assert int(split_labelled(torch.zeros(30, dtype=torch.long), 0.1).sum()) == 3  # 0.1 * 30 is not 4


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan"), float("inf")])
def test_split_labelled_refuses_fractions_out_of_range(fraction):
    with pytest.raises(ValueError, match=r"labelled_fraction must be in \(0, 1\]"):
        split_labelled(torch.zeros(5, dtype=torch.long), fraction)


def test_split_labelled_bad_types():
    with pytest.raises(TypeError, match="labelled_fraction must be a number"):
        split_labelled(torch.zeros(5, dtype=torch.long), True)
    with pytest.raises(TypeError, match="class_index must be a 1-D integer tensor"):
        split_labelled(torch.zeros(5), 0.5)
    with pytest.raises(ValueError, match="empty"):
        split_labelled(torch.zeros(0, dtype=torch.long), 0.5)


def test_label_classes_order_and_index():
    labels = torch.tensor([[1, 0, 1], [0, 0, 0], [0, 1, 0], [1, 0, 1], [1, 0, 0]]).float()
    classes, index = label_classes(labels)
    # binary value with the first column as the lowest bit: 000, 100 (1), 010 (2), 101 (5)
    assert classes.tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 0, 1]]
    assert index.tolist() == [3, 0, 2, 3, 1]
    one_hot = torch.eye(4)[[2, 0, 3]]
    assert label_classes(one_hot)[0].argmax(1).tolist() == [0, 2, 3]  # categories keep their order


def test_labelled_images_checks_its_fields():
    images = torch.zeros(3, 3, 4, 4, dtype=torch.uint8)
    with pytest.raises(DatasetError, match="labels must be"):
        LabelledImages(images, torch.zeros(3, 2), ["a"], "attributes")
    with pytest.raises(DatasetError, match="0 and 1 only"):
        LabelledImages(images, torch.full((3, 1), 0.5), ["a"], "attributes")
    with pytest.raises(DatasetError, match="one-hot"):
        LabelledImages(images, torch.zeros(3, 2), ["a", "b"], "categorical")
    with pytest.raises(DatasetError, match="kind must be"):
        LabelledImages(images, torch.zeros(3, 1), ["a"], "multi")
    data = LabelledImages(images, torch.tensor([[1.0], [0.0], [1.0]]), ["a"], "attributes")
    data = data.with_labelled(torch.tensor([True, False, True]))
    assert data.describe()["labelled_per_class"] == {"a": 2} and data.describe()["unlabelled"] == 1


# ---------------------------------------------------------------------------------------------------
# Built-in data


@pytest.fixture(scope="module")
def builtin():
    return builtin_attributes(32)


def test_builtin_labels_are_the_transforms(builtin):
    data = builtin
    assert data.names == list(BUILTIN_ATTRIBUTES) and data.kind == "attributes" and len(data) == 480
    assert data.exclusive == (("Red_Tint", "Blue_Tint"),)
    assert not bool((data.labels[:, 1] * data.labels[:, 2]).any())  # one tint at most
    assert len(label_classes(data.labels)[0]) == 12  # 3 tints x gray x blur, all present
    x = data.images.float()
    plain_gray = (data.labels[:, 0] == 1) & (data.labels[:, 1:3].sum(1) == 0)
    spread = (x.amax(1) - x.amin(1)).flatten(1).amax(1)  # max channel spread per image
    assert bool((spread[plain_gray] <= 1).all())  # grey: R = G = B (up to rounding)
    assert float(spread[data.labels.sum(1) == 0].mean()) > 30  # untouched photos are colourful
    red, blue = data.labels[:, 1] == 1, data.labels[:, 2] == 1
    redness = (x[:, 0] - x[:, 2]).mean((1, 2))
    assert float(redness[red].min()) > float(redness[blue].max())



def test_builtin_data_is_deterministic_from_its_seed():
    a = builtin_attributes(8, n=10, seed=4)
    assert torch.equal(_builtin_crops.__wrapped__(8, 2, 4), _builtin_crops(8, 2, 4))  # rebuilt, not cached
    b = builtin_attributes(8, n=10, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.labels, builtin_attributes(8, n=10, seed=5).labels)


def test_builtin_categorical_and_selection():
    data = load_labelled_images("builtin:categorical", 32)
    assert data.names == list(BUILTIN_CATEGORIES) and data.kind == "categorical"
    assert torch.equal(data.labels.sum(1), torch.ones(len(data)))
    sub = load_labelled_images("builtin:categorical", 32, attrs=("Inverted", "Gray"))
    assert sub.names == ["Inverted", "Gray"] and len(sub) == int(data.labels[:, [5, 1]].sum())
    attrs = load_labelled_images("builtin", 32, attrs=("Blue_Tint", "Gray"), exclusive=("Blue_Tint,Gray",))
    assert attrs.names == ["Blue_Tint", "Gray"] and attrs.exclusive == (("Blue_Tint", "Gray"),)
    assert int(attrs.labels.sum(1).max()) == 1


def test_apply_transforms_formulas():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 10, 10, generator=g)
    names = ["Gray", "Red_Tint", "Inverted", "Original"]
    labels = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0]]).float()
    out = apply_transforms(x, labels, names)
    luma = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1).expand(-1, 3, -1, -1)
    torch.testing.assert_close(out[0], luma[0])
    red = torch.tensor([0.95, 0.15, 0.10]).view(3, 1, 1)
    torch.testing.assert_close(out[1], 0.55 * x[1] + 0.45 * red)
    torch.testing.assert_close(out[2], 0.55 * luma[2] + 0.45 * red)  # grey first, then the tint
    torch.testing.assert_close(out[3], 1 - x[3])
    blurred = apply_transforms(x, torch.ones(4, 1), ["Blurred"])
    assert float(blurred.diff(dim=-1).abs().mean()) < 0.6 * float(x.diff(dim=-1).abs().mean())
    torch.testing.assert_close(blurred.mean((2, 3)), x.mean((2, 3)), atol=0.03, rtol=0)


def test_load_labelled_images_errors(tmp_path):
    with pytest.raises(DatasetError, match="unknown built-in dataset 'builtin:faces'"):
        load_labelled_images("builtin:faces", 8)
    with pytest.raises(DatasetError, match="does not exist"):
        load_labelled_images(tmp_path / "nope", 8)
    (tmp_path / "list.csv").write_text("x")
    with pytest.raises(DatasetError, match="not a .txt attribute file"):
        load_labelled_images(tmp_path / "list.csv", 8)
    with pytest.raises(DatasetError, match="exclusive groups apply to attribute labels"):
        load_labelled_images("builtin:categorical", 8, exclusive=("Gray,Inverted",))
