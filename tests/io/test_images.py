"""Image and map I/O: formats, bit depths, modes, orientation, bad files, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image as PILImage

from defocus_cli.errors import InputError
from defocus_cli.io import images
from defocus_cli.io.images import (atomic_write, load_map, read_image, save_json, save_npy, save_png16,
                                   write_image)


def _gradient(h=24, w=32) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([x / (w - 1), y / (h - 1), 1 - x / (w - 1)], axis=2)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif", ".webp", ".bmp"])
def test_roundtrip_8bit_formats(tmp_path, suffix):
    rgb = _gradient()
    path = write_image(tmp_path / f"a{suffix}", rgb)
    im = read_image(path)
    assert im.pixels.shape == (24, 32, 3) and im.pixels.dtype == np.float32
    assert im.bit_depth == 8
    tol = 0.03 if suffix in (".jpg", ".webp") else 0.5 / 255 + 1e-6
    assert np.abs(im.pixels - rgb).mean() < tol


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_keeps_precision(tmp_path, suffix):
    rgb = _gradient(40, 70)
    path = write_image(tmp_path / f"a{suffix}", rgb, bit_depth=16)
    im = read_image(path)
    assert im.bit_depth == 16
    assert np.abs(im.pixels - rgb).max() < 1 / 65535 + 1e-6  # far below one 8-bit step


def test_16bit_greyscale_png(tmp_path):
    data = (np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 500)
    cv2.imwrite(str(tmp_path / "g.png"), data)
    im = read_image(tmp_path / "g.png")
    assert im.bit_depth == 16 and im.pixels.shape == (12, 10, 3)
    assert np.allclose(im.pixels[..., 1], data / 65535, atol=1e-6)
    assert any("greyscale" in n for n in im.notes)


@pytest.mark.parametrize("mode,note", [("L", "greyscale"), ("RGBA", "alpha"), ("LA", "alpha"),
                                       ("CMYK", "CMYK"), ("P", None)])
def test_modes_become_rgb(tmp_path, mode, note):
    base = PILImage.fromarray((_gradient() * 255).astype(np.uint8))
    im = base.convert(mode)
    path = tmp_path / ("a.jpg" if mode == "CMYK" else "a.png")
    im.save(path)
    out = read_image(path)
    assert out.pixels.shape == (24, 32, 3)
    src = np.asarray(base, np.float32) / 255
    if mode in ("L", "LA"):  # grey in all three channels (opaque alpha changes nothing)
        expected = np.repeat(np.asarray(base.convert("L"), np.float32)[..., None] / 255, 3, axis=2)
        np.testing.assert_allclose(out.pixels, expected, atol=1e-6)
    elif mode == "RGBA":  # opaque alpha: the colours themselves
        np.testing.assert_allclose(out.pixels, src, atol=1e-6)
    elif mode == "P":  # the palette's colours, as PIL looks them up
        np.testing.assert_allclose(out.pixels, np.asarray(im.convert("RGB"), np.float32) / 255, atol=1e-6)
    else:  # CMYK JPEG back to RGB: the colours up to JPEG loss (measured mean 0.002)
        assert np.abs(out.pixels - src).mean() < 0.01
    if note:
        assert any(note in n for n in out.notes)


def test_exif_orientation_is_applied(tmp_path):
    rgb = np.zeros((20, 40, 3), np.uint8)
    rgb[:5, :10] = 255  # bright block at the top-left of the stored pixels
    im = PILImage.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "r.jpg"
    im.save(path, exif=exif, quality=100)
    out = read_image(path)
    assert out.pixels.shape == (40, 20, 3)
    # after a 90-degree clockwise rotation the block sits at the top-right
    assert out.pixels[:10, -5:].mean() > 0.8 and out.pixels[:10, :5].mean() < 0.2
    assert any("orientation 6" in n for n in out.notes)


def test_one_pixel_image(tmp_path):
    PILImage.new("RGB", (1, 1), (255, 0, 0)).save(tmp_path / "one.png")
    im = read_image(tmp_path / "one.png")
    assert im.pixels.shape == (1, 1, 3) and np.allclose(im.pixels[0, 0], [1, 0, 0])


def test_bad_files_raise_input_error_naming_the_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("this is not an image")
    write_image(tmp_path / "full.jpg", np.random.default_rng(0).random((300, 300, 3)).astype(np.float32))
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 3])
    cases = {"missing.jpg": "no such file", "empty.jpg": "empty", "text.png": "not an image",
             "trunc.jpg": "cannot decode"}
    for name, words in cases.items():
        with pytest.raises(InputError, match=words) as e:
            read_image(tmp_path / name)
        assert name in str(e.value)
    with pytest.raises(InputError, match="not a file"):
        read_image(tmp_path)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    write_image(tmp_path / "big.png", _gradient(100, 100))
    monkeypatch.setattr(images, "MAX_PIXELS", 5000)
    with pytest.raises(InputError, match="decompression bomb"):
        read_image(tmp_path / "big.png")


def test_maps_roundtrip_npy_and_png16(tmp_path):
    sigma = np.random.default_rng(1).uniform(0, 20, (17, 23)).astype(np.float32)
    save_npy(tmp_path / "m.npy", sigma)
    assert np.array_equal(load_map(tmp_path / "m.npy"), sigma)
    save_png16(tmp_path / "m.png", sigma)
    raw = cv2.imread(str(tmp_path / "m.png"), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16
    assert np.abs(load_map(tmp_path / "m.png") - sigma).max() <= 0.5e-3 + 1e-6
    with pytest.raises(InputError, match="16-bit"):
        write_image(tmp_path / "rgb.png", _gradient())
        load_map(tmp_path / "rgb.png")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.json"
    with pytest.raises(RuntimeError):
        with atomic_write(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    save_json(target, {"a": np.float32(1.5), "p": Path("/x")})
    assert json.loads(target.read_text()) == {"a": 1.5, "p": "/x"} and list(tmp_path.iterdir()) == [target]


def test_write_refuses_bad_shapes_and_formats(tmp_path):
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        write_image(tmp_path / "a.png", np.zeros((4, 4)))
    with pytest.raises(InputError, match="unsupported output format"):
        write_image(tmp_path / "a.gif", np.zeros((4, 4, 3)))


def test_preview_colours_follow_the_range(tmp_path):
    from defocus_cli.io.images import colorize, save_preview

    values = np.array([[-1.0, 0.0, 1.0, 2.0, 4.0]], np.float32)
    rgb = colorize(values, 0.0, 2.0)
    assert rgb.shape == (1, 5, 3) and rgb.dtype == np.float32
    assert np.array_equal(rgb[0, 0], rgb[0, 1])  # below vmin clamps to the darkest colour
    assert np.array_equal(rgb[0, 3], rgb[0, 4])  # above vmax saturates
    assert rgb[0, 1].sum() < rgb[0, 2].sum() < rgb[0, 3].sum()  # inferno brightens with value
    save_preview(tmp_path / "p.png", np.tile(values, (3, 1)), 0.0, 2.0)
    back = cv2.imread(str(tmp_path / "p.png"))[..., ::-1].astype(np.float32) / 255
    assert np.allclose(back[1], rgb[0], atol=1e-6)


def _png_row_filters(path: Path) -> set[int]:
    """The filter byte of every row of a non-interlaced PNG (0 None, 1 Sub, 2 Up, 3 Avg, 4 Paeth)."""
    import struct
    import zlib

    data = path.read_bytes()
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, colour = header[:4]
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    stride = 1 + width * channels * depth // 8
    raw = zlib.decompress(idat)
    assert len(raw) == stride * height
    return {raw[r * stride] for r in range(height)}


@pytest.mark.skipif(not hasattr(cv2, "IMWRITE_PNG_FILTER"), reason="this OpenCV cannot choose the PNG filter")
def test_map_pngs_use_the_up_filter_and_stay_exact(tmp_path):
    from defocus_cli.io.images import encode_png16, save_preview

    # a smooth map with texture: libpng's own per-row choice mixes filters on it
    y, x = np.mgrid[0:64, 0:80].astype(np.float32)
    sigma = 3 + 2 * np.sin(x / 7) * np.cos(y / 5) + np.random.default_rng(0).uniform(0, 0.3, (64, 80))
    sigma = sigma.astype(np.float32)
    save_png16(tmp_path / "m.png", sigma)
    save_preview(tmp_path / "p.png", sigma, 0.0, 6.0)
    assert _png_row_filters(tmp_path / "m.png") == {2}
    assert _png_row_filters(tmp_path / "p.png") == {2}
    assert np.array_equal(cv2.imread(str(tmp_path / "m.png"), cv2.IMREAD_UNCHANGED), encode_png16(sigma))
    cv2.imwrite(str(tmp_path / "adaptive.png"), encode_png16(sigma), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    assert len(_png_row_filters(tmp_path / "adaptive.png")) > 1  # the check can tell them apart
