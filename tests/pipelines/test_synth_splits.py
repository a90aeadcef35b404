"""Renders of the real DFD indoor scenes follow the real dataset's split (no evaluation leak)."""

from __future__ import annotations

from defocus_cli.pipelines.realdata import dfd_indoor_split
from defocus_cli.pipelines.synth import split_of


def test_dfd_scenes_take_the_real_split():
    for i in range(1, 82):
        scene = f"indoor_{i:03d}"
        assert split_of(f"dfd-indoor/{scene}", 0.1, 0.1) == dfd_indoor_split(scene)
    held_out = [i for i in range(1, 82) if split_of(f"dfd-indoor/indoor_{i:03d}", 0.5, 0.5) != "train"]
    assert len(held_out) == 24  # 16 test + 8 val scenes, whatever the synthetic fractions


def test_other_scenes_split_by_hash_and_fractions():
    splits = [split_of(f"procedural/{i:06d}", 0.1, 0.1) for i in range(2000)]
    assert 0.07 < splits.count("test") / 2000 < 0.13 and 0.07 < splits.count("val") / 2000 < 0.13
    assert split_of("procedural/000001", 0.0, 0.0) == "train"
