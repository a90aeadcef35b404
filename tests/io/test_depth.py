"""Depth readers: synthetic files of every format, plus the shared samples where present."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from defocus_cli.errors import InputError
from defocus_cli.io.depth import (
    SINTEL_TAG,
    detect_encoding,
    match_rgbd,
    read_depth,
    read_pfm,
)

def _write_pfm(path: Path, a: np.ndarray) -> None:
    h, w = a.shape
    with open(path, "wb") as f:
        f.write(b"Pf\n%d %d\n-1.0\n" % (w, h))
        f.write(np.ascontiguousarray(a[::-1]).astype("<f4").tobytes())


def _write_dpt(path: Path, a: np.ndarray, tag: float = SINTEL_TAG) -> None:
    h, w = a.shape
    path.write_bytes(
        np.array([tag], "<f4").tobytes() + np.array([w, h], "<i4").tobytes() + a.astype("<f4").tobytes()
    )


def test_png_mm(tmp_path):
    raw = np.array([[0, 1000], [2500, 65535]], np.uint16)
    cv2.imwrite(str(tmp_path / "d.png"), raw)
    m = read_depth(tmp_path / "d.png")
    assert m.encoding == "png-mm" and m.unit == "m"
    assert np.isnan(m.depth[0, 0])
    np.testing.assert_allclose(m.depth[0, 1:], [1.0])
    np.testing.assert_allclose(m.depth[1], [2.5, 65.535])
    assert m.depth.dtype == np.float32


def test_synthia_first_channel_in_cm(tmp_path):
    bgr = np.zeros((2, 3, 3), np.uint16)
    bgr[..., 2] = [[175, 624, 65535], [0, 300, 1000]]  # R channel, as OpenCV orders it
    bgr[..., 0] = 7  # other channels are ignored
    cv2.imwrite(str(tmp_path / "000000.png"), bgr)
    m = read_depth(tmp_path / "000000.png")
    assert m.encoding == "synthia"
    np.testing.assert_allclose(m.depth[0], [1.75, 6.24, 655.35], rtol=1e-6)
    assert np.isnan(m.depth[1, 0])
    assert any("655.35" in n for n in m.notes)


def test_syndof_disp_png_is_depth_in_cm(tmp_path):
    raw = np.full((4, 4, 3), 162, np.uint16)
    raw[2:] = 307
    cv2.imwrite(str(tmp_path / "disp0.png"), raw)
    m = read_depth(tmp_path / "disp0.png")
    assert m.encoding == "syndof-cm" and m.unit == "m"
    assert m.depth[0, 0] == pytest.approx(1.62) and m.depth[3, 0] == pytest.approx(3.07)
    # the explicit encoding reads the same file as disparity instead: larger value = nearer
    d = read_depth(tmp_path / "disp0.png", encoding="middlebury-disparity")
    assert d.unit == "relative"
    np.testing.assert_allclose(d.depth[[0, 3], 0], [1 / 162, 1 / 307], rtol=1e-6)  # 1 / disparity


def test_middlebury_pfm_with_and_without_calib(tmp_path):
    disp = np.array([[10.0, np.inf], [50.0, 100.0]], np.float32)
    _write_pfm(tmp_path / "disp0.pfm", disp)
    np.testing.assert_array_equal(read_pfm(tmp_path / "disp0.pfm"), disp)
    m = read_depth(tmp_path / "disp0.pfm")
    assert m.encoding == "middlebury-disparity" and m.unit == "relative"
    np.testing.assert_allclose(m.depth[0, 0], 0.1)
    assert np.isnan(m.depth[0, 1])
    assert any("calib.txt" in n for n in m.notes)

    # calibration for a 4x wider original: the map's disparities are scaled by 4 first
    (tmp_path / "calib.txt").write_text(
        "cam0=[4000.0 0 100; 0 4000.0 80; 0 0 1]\ncam1=[4000.0 0 120; 0 4000.0 80; 0 0 1]\n"
        "doffs=200.0\nbaseline=175.0\nwidth=8\nheight=8\nndisp=290\n"
    )
    m = read_depth(tmp_path / "disp0.pfm")
    assert m.unit == "m"
    expected = 175.0 * 4000.0 / (disp * 4 + 200.0) / 1000.0
    np.testing.assert_allclose(m.depth[1], expected[1], rtol=1e-5)
    assert m.depth[1, 1] < m.depth[1, 0]  # larger disparity = nearer


def test_middlebury_8bit_disparity_png(tmp_path):
    cv2.imwrite(str(tmp_path / "disp1.png"), np.array([[0, 40], [80, 160]], np.uint8))
    m = read_depth(tmp_path / "disp1.png")
    assert m.encoding == "middlebury-disparity" and m.unit == "relative"
    assert np.isnan(m.depth[0, 0])  # 0 = unknown
    np.testing.assert_allclose([m.depth[0, 1], m.depth[1, 0], m.depth[1, 1]], [1 / 40, 1 / 80, 1 / 160],
                               rtol=1e-6)  # 1 / disparity, relative


def test_sintel_dpt(tmp_path):
    a = np.array([[1.5, 2.0, 1e10], [3.0, 0.0, 7.25]], np.float32)
    _write_dpt(tmp_path / "frame_0001.dpt", a)
    m = read_depth(tmp_path / "frame_0001.dpt")
    assert m.encoding == "sintel" and m.unit == "m"
    np.testing.assert_allclose(m.depth[0], a[0])
    assert np.isnan(m.depth[1, 1])
    _write_dpt(tmp_path / "bad.dpt", a, tag=1.0)
    with pytest.raises(InputError, match="bad.dpt.*tag"):
        read_depth(tmp_path / "bad.dpt")
    raw = (tmp_path / "frame_0001.dpt").read_bytes()
    (tmp_path / "short.dpt").write_bytes(raw[:-8])
    with pytest.raises(InputError, match="short.dpt.*truncated"):
        read_depth(tmp_path / "short.dpt")


def test_npy(tmp_path):
    np.save(tmp_path / "d.npy", np.array([[[1.0, -1.0], [np.inf, 4.0]]]))
    m = read_depth(tmp_path / "d.npy")
    assert m.encoding == "npy" and m.unit == "relative" and m.depth.shape == (2, 2)
    assert np.isnan(m.depth[0, 1]) and np.isnan(m.depth[1, 0])
    np.save(tmp_path / "cube.npy", np.ones((2, 3, 4)))
    with pytest.raises(InputError, match=r"cube.npy.*\(H, W\)"):
        read_depth(tmp_path / "cube.npy")


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("d.txt", b"1 2 3", "unsupported depth file type"),
        ("empty.png", b"", "empty file"),
        ("junk.png", b"not a png at all", "not an image"),
        ("junk.pfm", b"P6\n1 1\n255\n", "not a PFM"),
    ],
)
def test_clear_errors(tmp_path, name, content, match):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError, match=match) as info:
        read_depth(tmp_path / name)
    assert name in str(info.value)


def test_8bit_photo_is_not_depth(tmp_path):
    cv2.imwrite(str(tmp_path / "photo.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(InputError, match="photo.png.*npy"):
        read_depth(tmp_path / "photo.png")


def test_all_invalid_and_missing(tmp_path):
    cv2.imwrite(str(tmp_path / "zeros.png"), np.zeros((4, 4), np.uint16))
    with pytest.raises(InputError, match="zeros.png.*no valid depth"):
        read_depth(tmp_path / "zeros.png")
    with pytest.raises(InputError, match="not found"):
        read_depth(tmp_path / "nope.png")
    with pytest.raises(InputError, match="unknown depth encoding"):
        read_depth(tmp_path / "zeros.png", encoding="exr")


def test_match_rgbd(tmp_path):
    rgb, dep = tmp_path / "rgb", tmp_path / "depth"
    for p in ("a/x.jpg", "a/y.png", "mb/im0.png", "only_rgb.jpg"):
        (rgb / p).parent.mkdir(parents=True, exist_ok=True)
        (rgb / p).write_bytes(b"x")
    for p in ("a/x.png", "a/y.dpt", "mb/disp0.png", "only_depth.npy", "a/notes.txt"):
        (dep / p).parent.mkdir(parents=True, exist_ok=True)
        (dep / p).write_bytes(b"x")
    pairs, lone_rgb, lone_depth = match_rgbd(rgb, dep, (".jpg", ".png"))
    assert [(i.relative_to(rgb).as_posix(), d.relative_to(dep).as_posix()) for i, d in pairs] == [
        ("a/x.jpg", "a/x.png"),
        ("a/y.png", "a/y.dpt"),
        ("mb/im0.png", "mb/disp0.png"),
    ]
    assert [p.name for p in lone_rgb] == ["only_rgb.jpg"]
    assert [p.name for p in lone_depth] == ["only_depth.npy"]
    with pytest.raises(InputError, match="--depth folder not found"):
        match_rgbd(rgb, tmp_path / "missing", (".jpg",))


def test_match_rgbd_one_middlebury_folder_with_both(tmp_path):
    """The 2005/2006 layout: viewN.png beside dispN.png in each scene folder, given as both
    --rgb and --depth; a disparity map is never taken for a photo, nor a photo for its depth."""
    for scene in ("2005-Art", "2006-Aloe"):
        for f in ("view1.png", "view5.png", "disp1.png", "disp5.png"):
            (tmp_path / scene).mkdir(exist_ok=True)
            (tmp_path / scene / f).write_bytes(b"x")
    pairs, lone_rgb, lone_depth = match_rgbd(tmp_path, tmp_path, (".png",))
    assert [(i.relative_to(tmp_path).as_posix(), d.name) for i, d in pairs] == [
        ("2005-Art/view1.png", "disp1.png"), ("2005-Art/view5.png", "disp5.png"),
        ("2006-Aloe/view1.png", "disp1.png"), ("2006-Aloe/view5.png", "disp5.png")]
    assert lone_rgb == [] and lone_depth == []


def test_shared_samples(shared_data):
    base = shared_data / "rgbd" / "syndof-samples"
    sintel = read_depth(base / "depth/MPI/market_2/frame_0001.dpt")
    assert sintel.encoding == "sintel" and sintel.depth.shape == (436, 1024)
    assert 6 < np.nanmin(sintel.depth) < 7
    synthia = read_depth(base / "depth/SYNTHIA/SYNTHIA-SEQS-01-NIGHT/Stereo_Right/Omni_F/000000.png")
    assert synthia.encoding == "synthia" and synthia.depth.shape == (760, 1280)
    assert np.nanmin(synthia.depth) == pytest.approx(1.75)
    mb = read_depth(base / "depth/middleburry/2014/Adirondack-perfect/disp0.png")
    assert mb.encoding == "syndof-cm" and mb.depth.shape == (497, 720)
    # the wall (top left) is behind the chair's near arm (centre right)
    assert np.nanmedian(mb.depth[:60, :120]) > np.nanmedian(mb.depth[240:260, 380:420]) + 1.0
    pairs, lone_rgb, lone_depth = match_rgbd(base / "image", base / "depth", (".png",))
    assert len(pairs) == 3 and not lone_rgb and not lone_depth

    dfd = read_depth(shared_data / "rgbd/dfd-indoor/depth/indoor_001.png")
    assert dfd.encoding == "png-mm" and dfd.depth.shape == (432, 645)
    assert 0.3 < np.nanmin(dfd.depth) < np.nanmax(dfd.depth) < 10.0


def test_detect_encoding_by_suffix(tmp_path):
    for name, enc in (("a.dpt", "sintel"), ("a.npy", "npy"), ("disp0.pfm", "middlebury-disparity")):
        (tmp_path / name).write_bytes(b"x")
        assert detect_encoding(tmp_path / name) == enc
