"""What a run is at (``TrainState``) and what a tag's client state holds: everything exact resume, the
converter and inference need, under ``client_state['ds_deblur']``."""
from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Optional

import deepspeed
import torch

FORMAT_VERSION = 1


@dataclass
class TrainState:
    """Counters that make a run continue exactly where it stopped."""
    step: int = 0
    epoch: int = 0
    best_psnr: float = float("-inf")
    best_step: int = 0


def client_state(state: TrainState, data_state: dict, config: dict, engine: Any, precision: str, world_size: int,
                 spike: Optional[dict] = None) -> dict:
    """``client_state['ds_deblur']`` of a tag (``spike``: the spike input the model was trained on, {size, k, mean,
    std} as resolved from the data)."""
    return {
        "format": FORMAT_VERSION, **asdict(state), "data": data_state, "config": config, "spike": spike,
        "world_size": world_size, "zero_stage": engine.zero_optimization_stage(), "precision": precision,
        "versions": versions(),
    }


def versions() -> dict:
    """Versions a run and its checkpoints record."""
    try:
        ours = version("ds_deblur")
    except PackageNotFoundError:
        ours = "dev"
    return {"torch": str(torch.__version__), "deepspeed": deepspeed.__version__, "ds_deblur": ours,
            "python": platform.python_version(), "cuda": torch.version.cuda}
