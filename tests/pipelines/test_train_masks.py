"""D_B masks in training batches: 255 blurred, 0 sharp, anything else (dfd-real's 128) unknown -> NaN."""

from __future__ import annotations

import numpy as np
import torch

from defocus_cli.io.datasets import write_mask
from defocus_cli.io.images import write_image
from defocus_cli.pipelines.train_data import (
    BatchPlan,
    StepBatches,
    SynthSet,
    masked_photos,
    write_toy_dataset,
)


def test_unknown_mask_pixels_are_nan_in_the_batch_labels(tmp_path):
    synth = write_toy_dataset(tmp_path / "toy", n_train=2, n_val=0, size=32, seed=0)
    # bands of 10 sharp, 10 unknown and 12 blurred columns, and two near-white values that are
    # not 255 (a lossy mask): unknown too
    mask = np.zeros((32, 32), np.uint8)
    mask[:, 10:20] = 128
    mask[:, 20:] = 255
    mask[0, 20:22] = 254
    for sub in ("image", "mask"):
        (tmp_path / "db" / sub).mkdir(parents=True)
    write_image(tmp_path / "db" / "image" / "p.png", np.full((32, 32, 3), 0.5, np.float32))
    write_mask(tmp_path / "db" / "mask" / "p.png", mask)
    pairs = masked_photos(tmp_path / "db", None, set())
    batches = StepBatches(SynthSet.open(synth, "train"), [], pairs, BatchPlan(2, 32, 0, 0, 1, 7.0))
    labels = batches[0]["mask"]
    assert labels.shape == (2, 1, 32, 32) and labels.dtype == torch.float32
    # a 32 px crop of a 32 px image only flips and rotates: the counts survive
    for item in labels:
        assert int((item == 0).sum()) == 320
        assert int(torch.isnan(item).sum()) == 322
        assert int((item == 1).sum()) == 382
