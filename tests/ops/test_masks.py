import math

import numpy as np

from defocus_cli.ops.masks import MASK_BLURRED, MASK_SHARP, MASK_UNKNOWN, blur_mask, mask_labels


def test_blur_mask_values():
    s = np.array([[0.2, 1.0, 3.0, np.nan]], np.float32)
    np.testing.assert_array_equal(blur_mask(s, 1.0), [[0, 255, 255, 128]])
    assert blur_mask(s, 1.0).dtype == np.uint8


def test_constants_are_the_file_format():
    # the values are what the dataset PNGs hold; changing them breaks every dataset on disk
    assert (MASK_SHARP, MASK_UNKNOWN, MASK_BLURRED) == (0, 128, 255)


def test_mask_labels_uint8_and_float():
    lab = mask_labels(np.array([[255, 0, 128, 200, 1]], np.uint8))
    assert lab[0, 0] == 1 and lab[0, 1] == 0 and np.isnan(lab[0, 2:]).all()
    lab = mask_labels(np.array([1.0, 0.0, np.nan, 0.5]))
    assert lab[0] == 1 and lab[1] == 0 and np.isnan(lab[2:]).all()
    assert mask_labels(np.array([255], np.uint8), np.float32).dtype == np.float32


def test_labels_of_a_blur_mask_follow_the_threshold():
    sigma = np.array([0.0, 0.99, 1.0, 5.0, np.nan])
    lab = mask_labels(blur_mask(sigma, 1.0))
    assert list(lab[:4]) == [0, 0, 1, 1] and math.isnan(lab[4])
