"""Reading and writing torch files safely: the one place that calls torch.load / torch.save.

Loading always uses ``weights_only=True`` (no arbitrary pickled code runs) and maps to the CPU;
a damaged or foreign file is a WeightsError that names it. Saving is atomic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from defocus_cli.errors import WeightsError
from defocus_cli.io.images import atomic_write


def load_torch_file(path: str | Path, what: str = "weights") -> Any:
    """torch.load(path, weights_only=True) onto the CPU; WeightsError("PATH: cannot read WHAT ...")."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: {what} file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged pickle or zip; report all alike
        raise WeightsError(f"{path}: cannot read {what} ({type(e).__name__}: {e})") from None


def save_torch_file(obj: Any, path: str | Path) -> Path:
    """torch.save(obj) to ``path`` atomically: a crash mid-write leaves any previous file intact."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)
    return path
