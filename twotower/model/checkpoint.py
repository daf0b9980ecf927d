"""The one place that reads and writes twotower checkpoints, without ever running code from the file.

`torch.load(weights_only=True)` unpickles only tensors, containers and primitive types, so a crafted
`model.ckpt` (a bundle from elsewhere, a reload target) cannot execute anything while it is read. No type
needs allow-listing: a real twotower Lightning checkpoint (best and last, Lightning 2.6) holds only tensors,
dicts, lists and primitives (its hyper_parameters are saved as a plain dict), checked by loading one.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint file cannot be read safely (not a checkpoint, or it asks to run code)."""


def read_checkpoint(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """The checkpoint dict at `path`, read with `weights_only=True` (tensors and plain data only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL (\S+) was not an allowed global", str(error))
        if found:  # weights_only refused to import a class or function: the file asks to run code
            raise CheckpointError(
                f"refusing to load {path.name}: it references {found.group(1)}, not only tensors and plain "
                "data (a checkpoint that could run code is never loaded); use a checkpoint written by "
                "`python -m twotower.train`"
            ) from None
        raise CheckpointError(
            f"{path.name} is not a readable checkpoint (the safe loader refused it: "
            f"{str(error).split('WeightsUnpickler error:')[-1].split('Check the documentation')[0].strip()[:200]})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(f"{path.name} is not a readable checkpoint: {str(error)[:300]}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path.name} is not a twotower checkpoint (no state_dict)")
    return checkpoint


def write_checkpoint(
    path: str | Path,
    state_dict: dict[str, torch.Tensor],
    hyper_parameters: dict[str, Any],
    **extra: Any,
) -> Path:
    """Write a checkpoint in the layout Lightning uses (`state_dict`, `hyper_parameters`), readable by
    `read_checkpoint`; for tests and benchmarks that need a buyer-tower checkpoint without training."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": dict(state_dict), "hyper_parameters": dict(hyper_parameters), **extra}, path)
    return path
