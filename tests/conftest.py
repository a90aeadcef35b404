"""Fixtures shared by the whole suite.

shared_data: ../shared/data beside the repository (or $DEFOCUS_SHARED_DATA); tests that need it
skip with a reason when it is absent.
tiny_weights: a tiny random-init network B saved like shipped weights, for tests that need a
model but not a trained one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    return Path(os.environ.get("DEFOCUS_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = _shared_data_dir()
    if not (path / "README.md").is_file():
        pytest.skip(f"shared data not found at {path} (set DEFOCUS_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A width-0.125 random-init BlurNet saved with save_weights; returns the .pt path."""
    import torch

    from defocus_cli.models.b import BlurNet, BlurNetConfig
    from defocus_cli.models.registry import save_weights

    torch.manual_seed(0)
    model = BlurNet(BlurNetConfig(width=0.125))
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_weights(model, path, {"training": {"note": "random init, for tests"}})
    return path


@pytest.fixture(scope="session")
def tiny_edge_weights(tmp_path_factory) -> Path:
    """Random-init small edge networks (architecture edge-nets) saved with save_weights."""
    import torch

    from defocus_cli.models.edge import EdgeNetConfig, EdgeNets
    from defocus_cli.models.registry import save_weights

    torch.manual_seed(0)
    model = EdgeNets(EdgeNetConfig(channels=4, hidden=16, features=8, classifier=(16, 8)))
    path = tmp_path_factory.mktemp("edge-weights") / "edge.pt"
    save_weights(model, path, {"training": {"note": "random init, for tests"},
                               "estimator": {"depth_threshold": 1.01, "min_points": 10}})
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def one_torch_thread():
    """Tiny training runs on one torch thread: on a busy 2-core machine two OpenMP threads stall
    for seconds waiting for each other, and one thread is as fast for these sizes."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
