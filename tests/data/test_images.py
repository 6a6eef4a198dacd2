"""read_image: high-bit-depth and float images scaled (not clipped) to 8 bits, other modes as PIL converts
them, and unreadable files (decompression bombs, truncation) as one clear ValueError naming the file."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from fsgan_fast.utils.images import read_image


def _grey(t: torch.Tensor) -> np.ndarray:
    """The one channel of a decoded grey image (all three must agree)."""
    assert t.dtype == torch.uint8 and t.shape[0] == 3
    assert torch.equal(t[0], t[1]) and torch.equal(t[1], t[2]), "grey must be repeated over RGB"
    return t[0].numpy().astype(np.int64)


def test_16bit_png_spans_the_full_range(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.integers(0, 65536, (37, 53), dtype=np.uint16)
    values[0, :2] = (0, 65535)  # both ends of the range
    Image.fromarray(values).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")  # PIL keeps 16 bits (convert("RGB") would clip them at 255)
    decoded = _grey(read_image(tmp_path / "g16.png"))
    assert np.abs(decoded - values / 257).max() <= 1
    assert decoded[0, 0] == 0 and decoded[0, 1] == 255
    assert decoded.std() > 50, "not a washed-out (white) image"


def test_16bit_big_endian_tiff_and_pgm(tmp_path):
    rng = np.random.default_rng(1)
    values = rng.integers(0, 65536, (24, 31), dtype=np.uint16)
    Image.fromarray(values.astype(">u2")).save(tmp_path / "big.tiff")  # mode I;16B
    with open(tmp_path / "g.pgm", "wb") as fh:  # 16-bit PGM: PIL opens it as mode "I"
        fh.write(b"P5\n31 24\n65535\n" + values.astype(">u2").tobytes())
    for name in ("big.tiff", "g.pgm"):
        assert np.abs(_grey(read_image(tmp_path / name)) - values / 257).max() <= 1, name


def test_32bit_int_and_float_images(tmp_path):
    rng = np.random.default_rng(2)
    i32 = rng.integers(0, 2**31 - 1, (16, 20), dtype=np.int32)
    Image.fromarray(i32).save(tmp_path / "i32.tiff")  # mode "I", BitsPerSample 32
    assert np.abs(_grey(read_image(tmp_path / "i32.tiff")) - i32 / ((2**31 - 1) / 255)).max() <= 1
    unit = rng.random((16, 20), dtype=np.float32)
    Image.fromarray(unit).save(tmp_path / "unit.tiff")  # mode "F" in [0, 1]
    assert np.abs(_grey(read_image(tmp_path / "unit.tiff")) - unit * 255).max() <= 1
    wide = (unit * 255).astype(np.float32)
    wide[0, 0] = 255.0  # mode "F" in [0, 255] (some value above 1)
    Image.fromarray(wide).save(tmp_path / "wide.tiff")
    assert np.abs(_grey(read_image(tmp_path / "wide.tiff")) - wide).max() <= 1


def test_float_images_that_do_not_map_to_8_bits(tmp_path):
    rng = np.random.default_rng(3)
    nan = rng.random((8, 8), dtype=np.float32)
    nan[3, 4] = np.nan
    Image.fromarray(nan).save(tmp_path / "nan.tiff")
    with pytest.raises(ValueError, match=r"nan\.tiff.*1 NaN/inf"):
        read_image(tmp_path / "nan.tiff")
    Image.fromarray((rng.random((8, 8)) * 1000 - 500).astype(np.float32)).save(tmp_path / "wide.tiff")
    with pytest.raises(ValueError, match=r"wide\.tiff.*expected \[0, 1\] or \[0, 255\]"):
        read_image(tmp_path / "wide.tiff")
    Image.fromarray(-rng.integers(1, 1000, (8, 8), dtype=np.int32)).save(tmp_path / "neg.tiff")
    with pytest.raises(ValueError, match=r"neg\.tiff.*negative"):
        read_image(tmp_path / "neg.tiff")


@pytest.mark.parametrize("mode", ["P", "LA", "RGBA", "CMYK", "1", "L"])
def test_other_modes_convert_as_pil_does(tmp_path, mode):
    rng = np.random.default_rng(4)
    rgba = Image.fromarray(rng.integers(0, 256, (19, 23, 4), dtype=np.uint8))
    im = rgba.convert(mode) if mode != "P" else rgba.convert("RGB").quantize(16)
    path = tmp_path / ("x.tiff" if mode == "CMYK" else "x.png")
    im.save(path)
    with Image.open(path) as reopened:
        assert reopened.mode == mode
        expected = np.asarray(reopened.convert("RGB"))
    assert torch.equal(read_image(path), torch.from_numpy(expected.copy()).permute(2, 0, 1))


@pytest.mark.parametrize("limit", [1000, 500])  # 1200 pixels: over the warning limit, over the error limit
def test_decompression_bomb_is_one_clear_error(tmp_path, monkeypatch, limit):
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match=r"huge\.png") as info:
            read_image(tmp_path / "huge.png")
    message = str(info.value)
    assert "\n" not in message and "PIL.Image.MAX_IMAGE_PIXELS" in message and f"now {limit}" in message
    assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)], "no stray warning"
    assert warnings.filters == before
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # the advice works
    assert read_image(tmp_path / "huge.png", 8).shape == (3, 8, 8)


def test_concurrent_reads_leave_warning_filters_alone(tmp_path):
    """read_image turns PIL's bomb warning into an error in a warnings.catch_warnings block: threads take turns."""
    rng = np.random.default_rng(6)
    paths = []
    for i in range(24):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(paths[-1])
    before = list(warnings.filters)
    errors = []

    def work() -> None:
        try:
            for p in paths:
                read_image(p, 4)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and warnings.filters == before


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp", "gif"])
def test_truncated_file(tmp_path, fmt):
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / f"full.{fmt}")
    data = (tmp_path / f"full.{fmt}").read_bytes()
    (tmp_path / f"cut.{fmt}").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"cannot read image .*cut\.{fmt}"):
        read_image(tmp_path / f"cut.{fmt}")


def test_pixel_limit_from_the_environment(tmp_path, monkeypatch):
    """FSGAN_FAST_MAX_IMAGE_PIXELS: the command line's way to lower or lift PIL's bomb limit, restored after."""
    rng = np.random.default_rng(6)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    default = Image.MAX_IMAGE_PIXELS
    monkeypatch.setenv("FSGAN_FAST_MAX_IMAGE_PIXELS", "500")
    with pytest.raises(ValueError, match="FSGAN_FAST_MAX_IMAGE_PIXELS"):
        read_image(tmp_path / "big.png")
    assert Image.MAX_IMAGE_PIXELS == default
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    monkeypatch.setenv("FSGAN_FAST_MAX_IMAGE_PIXELS", "none")
    assert read_image(tmp_path / "big.png", 8).shape == (3, 8, 8)
    assert Image.MAX_IMAGE_PIXELS == 100
    monkeypatch.setenv("FSGAN_FAST_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match="positive pixel count"):
        read_image(tmp_path / "big.png")
