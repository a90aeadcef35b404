"""The library stands without the command line, and its map policies live in it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from defocus_cli.errors import InputError
from defocus_cli.maps import check_map_source, deblur_margin, estimated_by, is_estimated, obtain_map
from defocus_cli.pipelines.deblur import ESTIMATED_MAP_MARGIN

REPO = Path(__file__).resolve().parents[1]


def test_importing_the_library_loads_no_cli():
    code = ("import sys, defocus_cli\n"
            "from defocus_cli import load_estimator, read_image, obtain_map\n"
            "import defocus_cli.photos, defocus_cli.maps, defocus_cli.estimator\n"
            "import defocus_cli.pipelines.deblur, defocus_cli.pipelines.depth, defocus_cli.pipelines.magnify\n"
            "import defocus_cli.pipelines.eval, defocus_cli.pipelines.synth, defocus_cli.pipelines.realdata\n"
            "print(sorted(m for m in ('typer', 'rich', 'click') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_cli_is_not_light_by_accident():
    # the same check sees typer when the CLI is imported: it can fail
    code = "import sys, defocus_cli.cli; print('typer' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_lazy_names_and_unknown_attribute():
    import defocus_cli

    assert defocus_cli.load_estimator.__module__ == "defocus_cli.estimator"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        defocus_cli.nope  # noqa: B018


def _photo(tmp_path: Path, w: int = 60, h: int = 40) -> tuple[Path, np.ndarray]:
    from defocus_cli.io.images import write_image

    rgb = np.random.default_rng(0).random((h, w, 3)).astype(np.float32)
    path = write_image(tmp_path / "p.png", rgb)
    return path, rgb


def test_obtain_map_resamples_a_given_map(tmp_path):
    photo, rgb = _photo(tmp_path)
    np.save(tmp_path / "half.npy", np.full((20, 30), 1.5, np.float32))
    sigma, origin = obtain_map(photo, rgb, tmp_path / "half.npy", None)
    assert sigma.shape == (40, 60)
    np.testing.assert_allclose(sigma, 3.0, rtol=1e-5)  # twice the size: twice the sigma
    assert origin == {"source": str(tmp_path / "half.npy")} and not is_estimated(origin)


def test_obtain_map_from_a_folder_and_its_sidecar(tmp_path):
    photo, rgb = _photo(tmp_path)
    maps = tmp_path / "maps"
    maps.mkdir()
    np.save(maps / "p.defocus.npy", np.ones((40, 60), np.float32))
    (maps / "p.defocus.json").write_text(json.dumps({"model": {"name": "dmenet-lite"}}))
    sigma, origin = obtain_map(photo, rgb, maps, None)
    assert origin["estimated_by"] == "dmenet-lite" and is_estimated(origin)
    assert estimated_by(maps / "p.defocus.npy") == "dmenet-lite"


def test_obtain_map_errors(tmp_path):
    photo, rgb = _photo(tmp_path)
    np.save(tmp_path / "square.npy", np.ones((40, 40), np.float32))
    with pytest.raises(InputError, match="aspect ratio"):
        obtain_map(photo, rgb, tmp_path / "square.npy", None)
    np.save(tmp_path / "neg.npy", -np.ones((40, 60), np.float32))
    with pytest.raises(InputError, match=">= 0"):
        obtain_map(photo, rgb, tmp_path / "neg.npy", None)
    with pytest.raises(InputError, match="no estimator"):
        obtain_map(photo, rgb, None, None)


def test_check_map_source(tmp_path):
    np.save(tmp_path / "m.npy", np.ones((2, 2), np.float32))
    check_map_source(tmp_path / "m.npy", [Path("a.jpg")])
    check_map_source(tmp_path, [Path("a.jpg"), Path("b.jpg")])
    with pytest.raises(InputError, match="one map file fits one photo"):
        check_map_source(tmp_path / "m.npy", [Path("a.jpg"), Path("b.jpg")])
    with pytest.raises(InputError, match="not found"):
        check_map_source(tmp_path / "none.npy", [Path("a.jpg")])


def test_deblur_margin_policy():
    assert deblur_margin({"source": "estimated"}) == ESTIMATED_MAP_MARGIN > 0
    assert deblur_margin({"source": "m.npy", "estimated_by": "x"}) == ESTIMATED_MAP_MARGIN
    # each estimator's own margin: network B's maps are biased up more than the fused ones
    assert deblur_margin({"source": "estimated", "model": {"name": "dmenet-lite"}}) == ESTIMATED_MAP_MARGIN
    assert deblur_margin({"source": "estimated", "model": {"name": "fused"}}) == 0.25
    assert deblur_margin({"source": "m.npy", "estimated_by": "edge"}) == 0.25
    assert deblur_margin({"source": "estimated", "model": {"name": "fused"}}, margin=0.1) == 0.1
    assert deblur_margin({"source": "m.npy"}) == 0.0
    assert deblur_margin({"source": "estimated"}, 0.25) == 0.25
    assert deblur_margin({"source": "m.npy"}, 0.0) == 0.0


def test_the_readme_library_example_runs(tmp_path, monkeypatch):
    import re
    import shutil

    from defocus_cli.io.images import load_map, read_image

    code = re.search(r"## Library.*?```python\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    shutil.copy(REPO / "examples" / "scene.jpg", tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["sigma"].shape == (800, 1200)
    np.testing.assert_allclose(load_map(tmp_path / "maps" / "photo.defocus.npy"), scope["sigma"], atol=1e-6)
    assert read_image(tmp_path / "sharp" / "photo.deblurred.jpg").pixels.shape == (800, 1200, 3)


def test_prefetcher_reads_ahead_in_order_and_reports_errors(tmp_path, monkeypatch):
    import defocus_cli.photos as photos
    from defocus_cli.io.images import read_image

    paths = []
    for i in range(3):
        p, _ = _photo(tmp_path, 30 + i, 20)
        paths.append(p.rename(tmp_path / f"p{i}.png"))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    reads: list[str] = []
    monkeypatch.setattr(photos, "read_image", lambda p: (reads.append(Path(p).name), read_image(p))[1])
    with photos.Prefetcher([paths[0], bad, paths[1]]) as reader:
        first = reader.get(paths[0])
        # the next photo is being read while the first is used; nothing further ahead
        assert isinstance(reader._pending[bad].exception(), InputError)
        assert reads == ["p0.png", "bad.png"]
        assert np.array_equal(first.pixels, read_image(paths[0]).pixels)
        with pytest.raises(InputError, match="bad.png"):
            reader.get(bad)
        assert reader.get(paths[1]).size == (31, 20)
        # a photo it was not given is read on the spot
        assert reader.get(paths[2]).size == (32, 20)
    assert reads == ["p0.png", "bad.png", "p1.png", "p2.png"]
