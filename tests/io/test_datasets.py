import json

import numpy as np
import pytest

from defocus_cli.errors import InputError
from defocus_cli.io.datasets import MANIFEST, read_jsonl, read_manifest, read_mask, write_manifest, write_mask


def test_manifest_round_trip_keeps_order(tmp_path):
    entries = [{"name": "b", "split": "train", "x": 1.5}, {"name": "a", "split": "test"}]
    write_manifest(tmp_path, entries)
    assert read_manifest(tmp_path) == entries
    assert (tmp_path / MANIFEST).read_text().count("\n") == 2


def test_manifest_errors_name_the_line(tmp_path):
    with pytest.raises(InputError, match="missing"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text('{"name": "a", "split": "train"}\n\n{not json\n')
    with pytest.raises(InputError, match=r"manifest.jsonl:3: not JSON"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text('{"name": "a"}\n')
    with pytest.raises(InputError, match="lacks 'split'"):
        read_manifest(tmp_path)
    assert read_manifest(tmp_path, require=("name",)) == [{"name": "a"}]
    (tmp_path / MANIFEST).write_text("[1, 2]\n")
    with pytest.raises(InputError, match="expected a JSON object"):
        read_jsonl(tmp_path / MANIFEST)


def test_jsonl_skips_blank_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps({"step": i}) for i in range(3)) + "\n\n")
    assert [r["step"] for r in read_jsonl(path)] == [0, 1, 2]


def test_mask_round_trip_and_errors(tmp_path):
    m = np.array([[0, 128, 255]], np.uint8)
    write_mask(tmp_path / "m.png", m)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), m)
    with pytest.raises(ValueError, match="uint8"):
        write_mask(tmp_path / "f.png", m.astype(np.float32))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"not an image \(expected a blur mask\)"):
        read_mask(tmp_path / "bad.png")


def test_a_log_skips_a_cut_short_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"st')
    assert [r["step"] for r in read_jsonl(path, log=True)] == [1, 2]
    with pytest.raises(InputError, match=":3: not JSON"):
        read_jsonl(path)  # not a log: every line counts
    path.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(InputError, match=":2: not JSON"):
        read_jsonl(path, log=True)  # damage in the middle is not a cut-short write
