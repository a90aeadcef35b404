"""defocus_cli.collections: lists of paths, planning, the row's numbers, map selection, the table.

Tests that need the table's pyarrow skip without it (it comes with ``pip install 'defocus[ray]'``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from defocus_cli import collections as col
from defocus_cli.errors import InputError


def test_importing_collections_loads_no_cli_and_no_optional_module():
    code = ("import sys, defocus_cli.collections\n"
            "print(sorted(m for m in ('typer', 'rich', 'ray', 'pyarrow', 'torch') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_require_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what an install without the extra looks like
    with pytest.raises(InputError, match=r"--engine ray needs ray.*pip install 'defocus\[ray\]'"):
        col.require("ray", "--engine ray")


def test_text_list_relative_to_its_folder_with_comments(tmp_path):
    (tmp_path / "sub").mkdir()
    lst = tmp_path / "sub" / "photos.txt"
    lst.write_text("# holiday\na.jpg\n\n  /abs/b.png  \nnested/c.jpg\n")
    assert col.read_path_list(lst) == [tmp_path / "sub" / "a.jpg", Path("/abs/b.png"),
                                       tmp_path / "sub" / "nested" / "c.jpg"]
    assert col.is_path_list("x.TXT") and col.is_path_list("t.parquet") and not col.is_path_list("a.jpg")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(InputError, match="names no photo"):
        col.read_path_list(tmp_path / "empty.txt")
    with pytest.raises(InputError, match="no such list"):
        col.read_path_list(tmp_path / "missing.txt")


def test_parquet_list_reads_the_path_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"path": ["a.jpg", "/x/b.jpg"], "other": [1, 2]}), tmp_path / "l.parquet")
    assert col.read_path_list(tmp_path / "l.parquet") == [tmp_path / "a.jpg", Path("/x/b.jpg")]
    pq.write_table(pa.table({"file": ["a.jpg"]}), tmp_path / "bad.parquet")
    with pytest.raises(InputError, match="column 'path'"):
        col.read_path_list(tmp_path / "bad.parquet")


def test_sigma_summary_percentiles_and_thresholds():
    # a map with known quantiles: 0..99 px, each value 100 times
    sigma = np.repeat(np.arange(100, dtype=np.float32), 100).reshape(100, 100)
    s = col.sigma_summary(sigma, blur_threshold=2.0, in_focus_threshold=1.0)
    assert s["sigma_p50"] == pytest.approx(np.percentile(sigma, 50))
    assert s["sigma_p5"] < s["sigma_p50"] < s["sigma_p95"] < s["sigma_p99"] <= 99
    # sigma > 2: values 3..99 (97 of 100); sigma <= 1: values 0 and 1 (2 of 100); the band between
    # the thresholds (sigma = 2) is neither
    assert s["blur_fraction"] == pytest.approx(0.97) and s["in_focus_fraction"] == pytest.approx(0.02)
    const = col.sigma_summary(np.full((8, 8), 1.5, np.float32), 2.0, 1.0)
    assert const["sigma_p5"] == const["sigma_p99"] == pytest.approx(1.5)
    assert const["blur_fraction"] == const["in_focus_fraction"] == 0.0


def test_thresholds_must_be_ordered():
    with pytest.raises(InputError, match="in-focus threshold"):
        col.CollectionConfig(blur_threshold=1.0, in_focus_threshold=2.0)
    with pytest.raises(InputError, match="unknown --maps"):
        col.CollectionConfig(maps="tiff")


def _fake_outputs(folder: Path, stem: str, maps: str, sigma: np.ndarray | None = None) -> None:
    """Files as ``maps`` writes them: a real map, a sidecar with the fields a row reads."""
    from defocus_cli.io.images import save_png16

    for suffix in col.map_suffixes(maps):
        path = folder / f"{stem}.{suffix}"
        if sigma is None:
            path.write_text("x")  # unreadable: the photo is mapped again
        elif suffix == "defocus.npy":
            np.save(path, sigma)
        elif suffix == "defocus.png":
            save_png16(path, sigma)
        elif suffix == "defocus.json":
            path.write_text(json.dumps({"input": {"width": sigma.shape[1], "height": sigma.shape[0]},
                                        "model": {"name": "m", "sha256": "s0"}}))


def test_plan_resumes_skips_and_refuses_clashes(tmp_path):
    a, b, c = tmp_path / "a.jpg", tmp_path / "b.jpg", tmp_path / "sub" / "a.jpg"
    out = tmp_path / "out"
    out.mkdir()
    config = col.CollectionConfig(output=out, maps="npy")
    done = {col.photo_key(a): {"status": "done", "model_sha256": "s1"}}
    sigma = np.linspace(0, 3, 12, dtype=np.float32).reshape(3, 4)
    _fake_outputs(out, "b", "npy", sigma)
    jobs, rows, resumed = col.plan_collection([a, b, c, a], config, done, "s1")
    assert resumed == 1  # a is done with this model (and listed twice)
    assert [j.key for j in jobs] == [col.photo_key(c)]
    # b's files exist: skipped, its row made from them (the files' model, no timings)
    (row,) = rows
    assert row["path"] == col.photo_key(b) and row["status"] == "skipped"
    assert (row["width"], row["height"], row["model_sha256"]) == (4, 3, "s0") and row["t_network_s"] is None
    assert row == {**row, **col.sigma_summary(sigma, 2.0, 1.0)}
    # another model: a is redone; its outputs would clash with sub/a.jpg's in one folder
    jobs, rows, resumed = col.plan_collection([a, b, c], config, done, "s2")
    assert resumed == 0 and [j.key for j in jobs] == [col.photo_key(a)]
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and "same name in one --output folder" in failed[0]["error"]
    assert failed[0][col.EXIT_CODE] == 2
    # --overwrite redoes everything; --maps none never finds outputs to skip by
    jobs, _, _ = col.plan_collection([a, b], config, done, "s1", overwrite=True)
    assert len(jobs) == 2
    jobs, rows, _ = col.plan_collection([b], col.CollectionConfig(output=out, maps="none"))
    assert len(jobs) == 1 and not rows


def test_plan_reads_png16_maps_and_redoes_unreadable_outputs(tmp_path):
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    config = col.CollectionConfig(maps="png16")
    sigma = np.full((5, 6), 1.2345, np.float32)
    _fake_outputs(tmp_path, "a", "png16", sigma)
    _fake_outputs(tmp_path, "b", "png16", None)
    jobs, rows, _ = col.plan_collection([a, b], config)
    assert [j.key for j in jobs] == [col.photo_key(b)]
    assert rows[0]["sigma_p50"] == pytest.approx(1.2345, abs=0.0006)  # 0.001 px PNG steps


@pytest.fixture(scope="module")
def tiny_estimator(tiny_weights):
    from defocus_cli.estimator import load_estimator

    return load_estimator(weights=tiny_weights, device="cpu", precision="fp32")


def _photo(folder: Path, name: str, seed: int = 0) -> Path:
    from defocus_cli.io.images import write_image

    folder.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).random((24, 32, 3)).astype(np.float32)
    return write_image(folder / name, rgb)


@pytest.mark.parametrize("maps", ["npy", "png16", "none"])
def test_write_maps_selects_files_and_keeps_the_sidecar(tmp_path, tiny_estimator, maps):
    photo = _photo(tmp_path / "in", "p.jpg")
    full = col.CollectionConfig(output=tmp_path / "all")
    chosen = col.CollectionConfig(output=tmp_path / "some", maps=maps)
    (tmp_path / "all").mkdir()
    (tmp_path / "some").mkdir()
    job = col.Job(str(photo), col.photo_key(photo))
    row_all = col.estimate_row(job, col.decode(job), tiny_estimator, full)
    row = col.estimate_row(job, col.decode(job), tiny_estimator, chosen)
    written = sorted(p.name for p in (tmp_path / "some").iterdir())  # no scratch folder left
    assert written == sorted(f"p.{s}" for s in col.map_suffixes(maps))
    if maps != "none":
        a = json.loads((tmp_path / "all" / "p.defocus.json").read_text())
        b = json.loads((tmp_path / "some" / "p.defocus.json").read_text())
        a.pop("timings_s"), b.pop("timings_s")
        # only the chosen map is encoded, and the sidecar lists what was written
        assert b.pop("files") == [f"p.{s}" for s in col.map_suffixes(maps) if s != "defocus.json"]
        assert a.pop("files") == ["p.defocus.npy", "p.defocus.png", "p.defocus.preview.png"]
        assert a == b
    name = "p.defocus.npy" if maps == "npy" else None
    if name:
        assert np.array_equal(np.load(tmp_path / "all" / name), np.load(tmp_path / "some" / name))
    # the row describes the same map whatever is written; p50 / p99 are the sidecar's median / p99
    for key in ("sigma_p5", "sigma_p50", "sigma_p95", "sigma_p99", "blur_fraction", "in_focus_fraction"):
        assert row[key] == row_all[key]
    side = json.loads((tmp_path / "all" / "p.defocus.json").read_text())["stats_px"]
    assert row["sigma_p50"] == pytest.approx(side["median"]) and row["sigma_p99"] == pytest.approx(side["p99"])
    assert row["status"] == "done" and (row["width"], row["height"]) == (32, 24)
    assert row["model_sha256"] == tiny_estimator.describe()["sha256"]
    assert all(row[t] >= 0 for t in ("t_decode_s", "t_resize_s", "t_network_s", "t_upsample_s", "t_write_s"))


def test_run_local_turns_a_bad_file_into_a_row(tmp_path, tiny_estimator):
    good = _photo(tmp_path, "good.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    config = col.CollectionConfig(maps="none")
    jobs = [col.Job(str(p), col.photo_key(p)) for p in (bad, good)]
    rows = list(col.run_local(jobs, tiny_estimator, config))
    assert [r["status"] for r in rows] == ["failed", "done"]
    assert "bad.jpg" in rows[0]["error"] and rows[0][col.EXIT_CODE] == 2
    assert rows[0]["model_name"] == tiny_estimator.describe()["name"]


def _row(path: str, status: str = "done", p50: float = 1.0) -> dict:
    row = col.empty_row(path, col.CollectionConfig())
    row.update(status=status, sigma_p50=p50)
    return row


def test_table_keeps_one_row_per_path_and_survives_a_stopped_run(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "t.parquet"
    t = col.ResultTable(path, flush_rows=2)
    t.add(_row("/a", "failed"))
    t.add(_row("/b"))  # flushed: a part file
    t.add(_row("/a", p50=2.0))  # a retry of /a: the later row wins
    assert len(list(t.parts.glob("*.parquet"))) == 1 and not path.exists()
    # a run stopped here keeps its first part; a new run sees it
    t2 = col.ResultTable(path)
    assert set(t2.load()) == {"/a", "/b"} and t2.load()["/a"]["status"] == "failed"
    assert t.close() == 2
    rows = col.ResultTable(path).load()
    assert rows["/a"]["status"] == "done" and rows["/a"]["sigma_p50"] == 2.0
    assert not t.parts.exists()
    # the stopped run's view closes too: nothing lost, nothing doubled
    t2.add(_row("/c"))
    assert t2.close() == 3
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(path)
    assert table.num_rows == 3 and sorted(table.column("path").to_pylist()) == ["/a", "/b", "/c"]
    assert table.column_names == list(col.TABLE_COLUMNS)


def test_table_path_is_checked(tmp_path):
    pytest.importorskip("pyarrow")
    with pytest.raises(InputError, match="must be a .parquet file"):
        col.ResultTable(tmp_path / "t.csv")
    with pytest.raises(InputError, match="folder does not exist"):
        col.ResultTable(tmp_path / "missing" / "t.parquet")
