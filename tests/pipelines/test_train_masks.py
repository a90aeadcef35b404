"""D_B masks: 255 blurred, 0 sharp, anything in between (dfd-real's 128) unknown -> NaN."""

from __future__ import annotations

import cv2
import numpy as np

from defocus_cli.pipelines.train_data import _read_mask


def test_unknown_mask_pixels_are_nan(tmp_path):
    m = np.array([[0, 128, 255]], np.uint8).repeat(4, 0)
    cv2.imwrite(str(tmp_path / "m.png"), m)
    out = _read_mask(tmp_path / "m.png")
    assert out.dtype == np.float32 and out.shape == (4, 3)
    assert np.all(out[:, 0] == 0) and np.all(np.isnan(out[:, 1])) and np.all(out[:, 2] == 1)
