"""Device and precision choice."""

from __future__ import annotations

import pytest
import torch

from defocus_cli import device as dev
from defocus_cli.errors import DeviceError, InputError


def test_auto_and_cpu():
    assert dev.resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert dev.resolve_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_absent_cuda_is_a_clear_error(spec):
    with pytest.raises(DeviceError, match="CUDA is not available.*--device cpu"):
        dev.resolve_device(spec)


def test_unknown_names_are_input_errors():
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        dev.resolve_device("tpu")
    with pytest.raises(InputError, match="unknown precision 'fp8'"):
        dev.resolve_precision("fp8", torch.device("cpu"))


def test_auto_precision_uses_bf16_only_with_cpu_matrix_units(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(dev, "cpu_has_fast_bf16", lambda: False)
    assert dev.resolve_precision("auto", cpu) is None
    monkeypatch.setattr(dev, "cpu_has_fast_bf16", lambda: True)
    assert dev.resolve_precision("auto", cpu) is torch.bfloat16
    assert dev.resolve_precision("fp32", cpu) is None
    assert dev.precision_name(dev.resolve_precision("bf16", cpu)) == "bf16"


def test_autocast_context():
    x = torch.rand(4, 4)
    with dev.autocast(torch.device("cpu"), torch.bfloat16):
        assert (x @ x).dtype == torch.bfloat16
    with dev.autocast(torch.device("cpu"), None):
        assert (x @ x).dtype == torch.float32
