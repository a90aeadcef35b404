import pytest
import torch

from defocus_cli.errors import WeightsError
from defocus_cli.io.torchfiles import load_torch_file, save_torch_file


def test_round_trip(tmp_path):
    obj = {"w": torch.arange(4.0), "step": 3, "config": "{}"}
    save_torch_file(obj, tmp_path / "sub" / "c.pt")
    back = load_torch_file(tmp_path / "sub" / "c.pt")
    assert back["step"] == 3 and torch.equal(back["w"], obj["w"])
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["c.pt"]  # no temp file left


class NotAllowed:
    """Any class outside torch's allow-list: a pickle holding one may run code when loaded."""


def test_refuses_pickled_code(tmp_path):
    torch.save({"x": NotAllowed()}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match="evil.pt: cannot read checkpoint"):
        load_torch_file(tmp_path / "evil.pt", "checkpoint")


def test_missing_and_damaged_files(tmp_path):
    with pytest.raises(WeightsError, match="weights file not found"):
        load_torch_file(tmp_path / "none.pt")
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(WeightsError, match="cut.pt: cannot read weights"):
        load_torch_file(tmp_path / "cut.pt")
