"""`defocus estimate` on collections: --table, --maps, lists of paths, resume, --engine ray.

The fast tests run the local engine; those that need pyarrow (the table) skip without it. The Ray
test starts a two-node Ray cluster on loopback, kills an estimator actor mid-run and checks that
the job still maps every photo once, as the local engine does (slow; skips without ray).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from defocus_cli.cli import app
from defocus_cli.io.images import write_image

runner = CliRunner()


def _run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def _photos(folder: Path, n: int, size=(48, 64), seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    return [write_image(folder / f"p{i:03d}.jpg", rng.random((*size, 3)).astype(np.float32)) for i in range(n)]


def _table(path: Path) -> list[dict]:
    pq = pytest.importorskip("pyarrow.parquet")
    return pq.read_table(path).to_pylist()


def _same_outputs(a: Path, b: Path, names: list[str]) -> None:
    """Bit-identical maps and sidecars equal in every field but the timings."""
    for stem in names:
        assert np.array_equal(np.load(a / f"{stem}.defocus.npy"), np.load(b / f"{stem}.defocus.npy")), stem
        assert (a / f"{stem}.defocus.png").read_bytes() == (b / f"{stem}.defocus.png").read_bytes(), stem
        ja, jb = (json.loads((d / f"{stem}.defocus.json").read_text()) for d in (a, b))
        ja.pop("timings_s"), jb.pop("timings_s")
        assert ja == jb, stem


def test_engine_ray_without_ray_says_what_to_install(tmp_path, tiny_weights, monkeypatch):
    _photos(tmp_path / "in", 1)
    monkeypatch.setitem(sys.modules, "ray", None)  # as after `pip install defocus` without the extra
    r = _run("estimate", tmp_path / "in", "--engine", "ray", "--weights", tiny_weights)
    assert r.exit_code == 2 and "pip install 'defocus[ray]'" in r.output


def test_table_without_pyarrow_says_what_to_install(tmp_path, tiny_weights, monkeypatch):
    _photos(tmp_path / "in", 1)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    r = _run("estimate", tmp_path / "in", "--table", tmp_path / "t.parquet", "--weights", tiny_weights)
    assert r.exit_code == 2 and "pip install 'defocus[ray]'" in r.output
    assert not list(tmp_path.glob("in/*.defocus.*"))


def test_bad_option_values_exit_2(tmp_path, tiny_weights):
    _photos(tmp_path / "in", 1)
    for args in (["--engine", "spark"], ["--maps", "tiff"],
                 ["--maps", "none", "--blur-threshold", "0.5", "--in-focus-threshold", "1"]):
        r = _run("estimate", tmp_path / "in", "--weights", tiny_weights, *args)
        assert r.exit_code == 2, (args, r.output)


def test_local_table_resume_and_bad_file_row(tmp_path, tiny_weights):
    pytest.importorskip("pyarrow")
    photos = _photos(tmp_path / "in", 3)
    bad = tmp_path / "in" / "bad.jpg"
    bad.write_bytes(b"not a photo")
    out, plain, table = tmp_path / "out", tmp_path / "plain", tmp_path / "t.parquet"
    r = _run("estimate", tmp_path / "in", "-o", out, "--table", table, "--weights", tiny_weights)
    assert r.exit_code == 2, r.output  # a bad input fails its photo (InputError: 2), not the job
    assert "3 done, 0 skipped, 1 failed" in r.output and "bad.jpg" in r.output
    rows = {Path(row["path"]).name: row for row in _table(table)}
    assert sorted(rows) == ["bad.jpg", "p000.jpg", "p001.jpg", "p002.jpg"]
    assert rows["bad.jpg"]["status"] == "failed" and "not an image" in rows["bad.jpg"]["error"]
    done = rows["p000.jpg"]
    assert done["status"] == "done" and done["error"] is None and (done["width"], done["height"]) == (64, 48)
    assert done["path"] == str(photos[0].resolve()) and done["engine"] == "local"
    assert done["model_name"] == "tiny" and len(done["model_sha256"]) == 64
    sigma = np.load(out / "p000.defocus.npy")
    assert done["sigma_p50"] == pytest.approx(float(np.percentile(sigma, 50)))
    assert done["blur_fraction"] == pytest.approx(float((sigma > 2.0).mean()))
    assert done["in_focus_fraction"] == pytest.approx(float((sigma <= 1.0).mean()))
    assert done["t_network_s"] > 0 and done["t_write_s"] > 0 and done["t_decode_s"] > 0
    # the same files as a plain run
    assert _run("estimate", tmp_path / "in", "-o", plain, "--weights", tiny_weights).exit_code == 2
    _same_outputs(out, plain, ["p000", "p001", "p002"])

    # a rerun skips what the table holds as done (the outputs are not touched) and retries the rest
    stamp = (out / "p000.defocus.npy").stat().st_mtime_ns
    write_image(bad, np.random.default_rng(9).random((20, 30, 3)).astype(np.float32))
    r = _run("estimate", tmp_path / "in", "-o", out, "--table", table, "--weights", tiny_weights)
    assert r.exit_code == 0, r.output
    assert "1 done, 0 skipped, 0 failed, 3 already done in the table" in r.output
    assert (out / "p000.defocus.npy").stat().st_mtime_ns == stamp
    rows = _table(table)
    assert len(rows) == 4 and {row["status"] for row in rows} == {"done"}  # one row per photo


def test_a_table_after_a_plain_run_reads_the_maps_it_left(tmp_path, tiny_weights):
    """A job stopped after writing a photo's files but before recording its row resumes
    without a gap: the row is made from the files (status skipped), the network is not run."""
    pytest.importorskip("pyarrow")
    _photos(tmp_path / "in", 2)
    out = tmp_path / "out"
    assert _run("estimate", tmp_path / "in", "-o", out, "--weights", tiny_weights).exit_code == 0
    stamp = (out / "p000.defocus.npy").stat().st_mtime_ns
    r = _run("estimate", tmp_path / "in", "-o", out, "--table", tmp_path / "t.parquet", "--weights", tiny_weights)
    assert r.exit_code == 0 and "0 done, 2 skipped" in r.output, r.output
    assert (out / "p000.defocus.npy").stat().st_mtime_ns == stamp
    rows = {Path(row["path"]).name: row for row in _table(tmp_path / "t.parquet")}
    sigma = np.load(out / "p000.defocus.npy")
    row = rows["p000.jpg"]
    assert row["status"] == "skipped" and (row["width"], row["height"]) == (64, 48)
    assert row["sigma_p95"] == pytest.approx(float(np.percentile(sigma, 95)))
    assert row["model_name"] == "tiny" and row["t_network_s"] is None


def test_maps_none_writes_only_the_table_and_lists_are_inputs(tmp_path, tiny_weights):
    pytest.importorskip("pyarrow")
    _photos(tmp_path / "in", 2)
    (tmp_path / "in" / "list.txt").write_text("p000.jpg\n# p001.jpg is left out\n")
    table = tmp_path / "t.parquet"
    r = _run("estimate", tmp_path / "in" / "list.txt", "--maps", "none", "--table", table,
             "--weights", tiny_weights)
    assert r.exit_code == 0, r.output
    assert not list((tmp_path / "in").glob("*.defocus.*"))
    assert [Path(row["path"]).name for row in _table(table)] == ["p000.jpg"]
    # a table is a list too (column path); npy maps + sidecars only
    r = _run("estimate", table, "--maps", "npy", "-o", tmp_path / "out", "--weights", tiny_weights)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p000.defocus.json", "p000.defocus.npy"]


# ---------------------------------------------------------------------------------------------
# Ray: a two-node cluster on loopback, an actor killed mid-run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process we can see."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        out[int(entry)] = (ppid, cmd.strip())
    return out


def _cluster_pids(temp_dir: str) -> set[int]:
    """The test cluster's processes: those naming its temp dir (GCS, raylets, monitors) and their
    descendants (workers, actors), never another Ray on the machine."""
    procs = _processes()
    pids = {p for p, (_, cmd) in procs.items() if temp_dir in cmd and p != os.getpid()}
    grew = True
    while grew:
        new = {p for p, (ppid, _) in procs.items() if ppid in pids} - pids
        pids |= new
        grew = bool(new)
    return pids


def _stop_cluster(temp_dir: str) -> None:
    """`ray stop --force` for this cluster only (ray stop stops every Ray on the machine)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _cluster_pids(temp_dir):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while _alive(_cluster_pids(temp_dir)) and time.monotonic() < deadline:
            time.sleep(0.2)


def _alive(pids: set[int]) -> bool:
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                return True
        except OSError:
            continue
    return False


@pytest.fixture(scope="module")
def ray_cluster():
    """A head and a worker node, one CPU each, on 127.0.0.1; yields (address, env, temp dir)."""
    pytest.importorskip("ray")
    ray_cli = str(Path(sys.executable).with_name("ray"))
    # a short private temp dir: Ray's socket paths must fit in 107 bytes
    temp_dir = tempfile.mkdtemp(prefix="dfray", dir="/tmp")
    # no token authentication for a throwaway loopback cluster (Ray >= 2.5x enables it by default)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats"]
    try:
        subprocess.run([ray_cli, "start", "--head", "--port", str(port), "--include-dashboard=false",
                        "--dashboard-port", str(_free_port()), "--temp-dir", temp_dir, *common],
                       env=env, check=True, capture_output=True, timeout=120)
        subprocess.run([ray_cli, "start", "--address", address, *common],
                       env=env, check=True, capture_output=True, timeout=120)
        yield address, env, temp_dir
    finally:
        _stop_cluster(temp_dir)
        subprocess.run(["rm", "-rf", temp_dir], check=False)


def _estimator_actors(temp_dir: str) -> list[int]:
    procs = _processes()
    return sorted(p for p in _cluster_pids(temp_dir)
                  if p in procs and "MapBatches(_EstimateActor)" in procs[p][1])


@pytest.mark.slow
def test_ray_two_nodes_survive_a_killed_actor_and_match_local(tmp_path, tiny_weights, ray_cluster):
    address, env, temp_dir = ray_cluster
    n = 200
    _photos(tmp_path / "in", n)
    (tmp_path / "in" / "zz-bad.jpg").write_bytes(b"not a photo")
    local, out, table = tmp_path / "local", tmp_path / "ray", tmp_path / "t.parquet"
    common = [str(tmp_path / "in"), "--weights", str(tiny_weights), "--device", "cpu", "--precision", "fp32"]
    defocus = str(Path(sys.executable).with_name("defocus"))
    ref = subprocess.run([defocus, "estimate", *common, "-o", str(local)], env=env, capture_output=True,
                         text=True, timeout=300, check=False)
    assert ref.returncode == 2, ref.stderr  # the bad file

    job = subprocess.Popen([defocus, "estimate", *common, "-o", str(out), "--table", str(table),
                            "--engine", "ray", "--address", address, "--actors", "2", "--batch-size", "2"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # wait until the actors are writing, then kill one of them (no fixed sleep)
        deadline = time.monotonic() + 240
        while len(list(out.glob("*.defocus.json"))) < 10:
            assert job.poll() is None, job.stdout.read()
            assert time.monotonic() < deadline, "no outputs after 240 s"
            time.sleep(0.05)
        victims = _estimator_actors(temp_dir)
        assert victims, "no estimator actor process found"
        written_at_kill = len(list(out.glob("*.defocus.json")))
        os.kill(victims[0], signal.SIGKILL)
        output, _ = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            job.kill()
    assert written_at_kill < n, "the job finished before the kill: nothing was tested"
    assert job.returncode == 2, output  # the bad file only
    assert f"{n} done, 0 skipped, 1 failed" in output, output

    rows = _table(table)
    paths = [row["path"] for row in rows]
    assert len(paths) == len(set(paths)) == n + 1  # every photo present, none twice
    statuses = {Path(row["path"]).name: row["status"] for row in rows}
    assert statuses.pop("zz-bad.jpg") == "failed" and set(statuses.values()) == {"done"}
    assert {row["engine"] for row in rows} == {"ray"}
    _same_outputs(out, local, [f"p{i:03d}" for i in range(n)])
