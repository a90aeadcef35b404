import numpy as np
import pytest

from defocus_cli.ops.maps import resample_map


def test_resample_rescales_sigma_with_the_size():
    small = np.full((50, 75), 2.0, np.float32)
    big = resample_map(small, (100, 150))
    assert big.shape == (100, 150) and big.dtype == np.float32
    np.testing.assert_allclose(big, 4.0, rtol=1e-5)
    np.testing.assert_allclose(resample_map(big, (25, 37)), 4.0 * np.sqrt(25 / 100 * 37 / 150), rtol=1e-5)


def test_resample_same_size_is_identity():
    m = np.random.default_rng(0).random((7, 9)).astype(np.float32)
    assert resample_map(m, (7, 9)) is m


def test_resample_small_aspect_difference_uses_the_geometric_mean():
    # 3000x2000 photo, map of 768x511 (rounding): within 2 %, scaled by sqrt(fx * fy)
    m = np.ones((511, 768), np.float32)
    out = resample_map(m, (2000, 3000))
    assert out.shape == (2000, 3000)
    np.testing.assert_allclose(out, np.sqrt(2000 / 511 * 3000 / 768), rtol=1e-5)


def test_resample_refuses_another_aspect_ratio():
    with pytest.raises(ValueError, match="aspect ratio"):
        resample_map(np.ones((50, 75), np.float32), (100, 100))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        resample_map(np.ones((5, 5, 3), np.float32), (10, 10))
