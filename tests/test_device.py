"""Device and precision choice."""

from __future__ import annotations

import pytest
import torch

from defocus_cli import device as dev
from defocus_cli.errors import DeviceError, InputError


def test_auto_and_cpu(monkeypatch):
    # Pin CUDA's presence both ways, so the test checks the choice rather than the machine.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dev.resolve_device("cpu") == torch.device("cpu")
    assert dev.resolve_device("auto") == torch.device("cpu")
    assert dev.resolve_device(" AUTO ") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dev.resolve_device("auto") == torch.device("cuda")
    assert dev.resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_absent_cuda_is_a_clear_error(monkeypatch, spec):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="CUDA is not available.*--device cpu"):
        dev.resolve_device(spec)


def test_cuda_index_is_checked_against_the_device_count(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert dev.resolve_device("cuda") == torch.device("cuda", 0)
    assert dev.resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match=r"has 2 CUDA device\(s\): use cuda:0..cuda:1"):
        dev.resolve_device("cuda:2")


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


def test_auto_precision_on_cuda_follows_bf16_support(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(dev, "cpu_has_fast_bf16", lambda: False)  # the CPU must not matter here
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert dev.resolve_precision("auto", cuda) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert dev.resolve_precision("auto", cuda) is torch.float16
    assert dev.resolve_precision("fp32", cuda) is None


def test_autocast_context():
    x = torch.rand(4, 4)
    with dev.autocast(torch.device("cpu"), torch.bfloat16):
        assert (x @ x).dtype == torch.bfloat16
    with dev.autocast(torch.device("cpu"), None):
        assert (x @ x).dtype == torch.float32
