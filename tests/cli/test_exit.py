"""How the `defocus` process ends: `cli.exit_now` skips the interpreter's teardown only when
that is safe, and never loses output, atexit handlers or the exit status."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np

from defocus_cli.io.images import write_image

# an object whose finaliser writes a marker when the interpreter tears __main__ down; os._exit
# skips that, sys.exit does not
PROBE = """
import atexit, sys
class Probe:
    def __del__(self):
        sys.__stdout__.write(" torn-down")
        sys.__stdout__.flush()
probe = Probe()
atexit.register(lambda: print(" atexit", end=""))
print("unflushed", end="")
"""


def _run(body: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent(PROBE) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_after_torch_skips_teardown_keeps_output_atexit_and_code():
    out = _run("import torch\nfrom defocus_cli.cli import exit_now\nexit_now(3)\n")
    assert out.returncode == 3, out.stderr
    assert out.stdout == "unflushed atexit"  # buffered output flushed, handler ran, no teardown


def test_without_torch_exits_as_usual():
    out = _run("from defocus_cli.cli import exit_now\nexit_now(3)\n")
    assert out.returncode == 3, out.stderr
    assert out.stdout == "unflushed atexit torn-down"


def test_a_live_thread_keeps_the_usual_exit():
    out = _run("""
        import threading, torch
        from defocus_cli.cli import exit_now
        threading.Thread(target=lambda: __import__("time").sleep(0.5)).start()
        exit_now(0)
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "unflushed atexit torn-down"


def test_a_message_code_prints_it_and_exits_1():
    out = _run("import torch\nfrom defocus_cli.cli import exit_now\nexit_now('no photos found')\n")
    assert out.returncode == 1
    assert out.stderr.strip() == "no photos found"
    assert out.stdout.startswith("unflushed atexit")


def test_console_entry_point_end_to_end(tmp_path, tiny_weights):
    write_image(tmp_path / "a.png", np.random.default_rng(0).random((40, 60, 3)).astype(np.float32))
    cmd = [sys.executable, "-m", "defocus_cli", "estimate", str(tmp_path / "a.png"), "-o",
           str(tmp_path / "out"), "--weights", str(tiny_weights), "--device", "cpu"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "1 done, 0 skipped, 0 failed" in out.stderr  # the summary (stderr) reached the pipe
    assert np.load(tmp_path / "out" / "a.defocus.npy").shape == (40, 60)
    missing = subprocess.run(cmd[:4] + [str(tmp_path / "none.png")] + cmd[5:], capture_output=True,
                             text=True, timeout=300)
    assert missing.returncode != 0
    assert "none.png" in missing.stdout + missing.stderr
    assert "Traceback" not in missing.stdout + missing.stderr
