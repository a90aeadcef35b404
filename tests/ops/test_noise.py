import cv2
import numpy as np
import pytest

from defocus_cli.ops.noise import blockiness, estimate_noise


def _scene(rng, h=192, w=256):
    """A smooth photo-like scene: blurred random shapes, values in [0.1, 0.9]."""
    small = rng.uniform(0.1, 0.9, (h // 16, w // 16, 3)).astype(np.float32)
    return cv2.GaussianBlur(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), (0, 0), 2.0)


@pytest.mark.parametrize("noise", [0.003, 0.01, 0.03])
def test_white_noise_is_measured_within_10_percent(noise):
    rng = np.random.default_rng(0)
    luma = np.array([0.299, 0.587, 0.114])
    x = _scene(rng) + rng.normal(0, noise, (192, 256, 3)).astype(np.float32)
    # luma of independent RGB noise of std n has std n * |luma weights|
    assert estimate_noise(x) == pytest.approx(noise * np.linalg.norm(luma), rel=0.1)
    assert estimate_noise(x[..., 0]) == pytest.approx(noise, rel=0.1)


def test_texture_and_edges_are_not_noise():
    rng = np.random.default_rng(1)
    x = _scene(rng)
    x[:, 128:] += 0.3 * (np.indices((192, 128)).sum(0) % 2)[..., None]  # a checkerboard half
    x[96:] += 0.2  # a step edge
    assert estimate_noise(x) < 0.002


def test_noise_estimate_contract():
    assert estimate_noise(np.zeros((5, 5))) == 0.0
    with pytest.raises(ValueError, match=r"\(H, W\) or \(H, W, 3\)"):
        estimate_noise(np.zeros((8, 8, 4)))
    with pytest.raises(ValueError, match="flat_fraction"):
        estimate_noise(np.zeros((8, 8)), flat_fraction=0)


def test_blockiness_tells_jpeg_from_png():
    rng = np.random.default_rng(2)
    x = (_scene(rng) * 255).round().astype(np.uint8)
    assert blockiness(x.astype(np.float32) / 255) == pytest.approx(1.0, abs=0.03)
    ok, enc = cv2.imencode(".jpg", x, [cv2.IMWRITE_JPEG_QUALITY, 75])
    y = cv2.imdecode(enc, cv2.IMREAD_COLOR).astype(np.float32) / 255
    assert blockiness(y) > 1.1
    # off the 8 px grid the blocks are not seen
    assert blockiness(y[3:, 5:]) < blockiness(y)
