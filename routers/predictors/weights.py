"""Predictors' weight files: numpy `.npz` archives and torch `state_dict`s, never a pickle.

Every predictor saves and loads through these, so an artifact neither runs code when loaded
(`allow_pickle=False`, `weights_only=True`) nor depends on a library's internal classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def save_arrays(path: Path, arrays: Mapping[str, np.ndarray], *, compressed: bool = False) -> None:
    """One `.npz` holding `arrays` under their keys (zip-compressed if asked)."""
    (np.savez_compressed if compressed else np.savez)(path, **arrays)


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of an `.npz`, read at once (the file is closed on return)."""
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def save_state(path: Path, module: Any) -> None:
    """A torch module's `state_dict`: tensors only."""
    import torch

    torch.save(module.state_dict(), path)


def load_state(path: Path) -> dict[str, Any]:
    """A `state_dict` saved by `save_state`, onto the CPU, refusing anything but tensors."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)
