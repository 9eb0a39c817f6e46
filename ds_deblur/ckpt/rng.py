"""Each rank's random-number streams (python, numpy, torch, cuda), kept in a small file per rank inside a tag so
that random model ops continue exactly on resume. Saved as plain tensors and numbers (``weights_only`` loads)."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ds_deblur.errors import CheckpointError


def rng_file(tag_dir: Path, rank: int) -> Path:
    return Path(tag_dir) / f"rng_rank{rank}.pt"


def save_rng(tag_dir: Path, rank: int) -> None:
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    rng = {
        "python": torch.tensor(py_internal, dtype=torch.int64), "python_version": py_version,
        "python_gauss": py_gauss,
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)), "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]), "numpy_gauss": float(np_state[4]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }
    torch.save(rng, rng_file(tag_dir, rank))


def load_rng(tag_dir: Path, rank: int) -> None:
    path = rng_file(tag_dir, rank)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the tag was saved without this rank's RNG state")
    rng = torch.load(path, weights_only=True)
    random.setstate((rng["python_version"], tuple(rng["python"].tolist()), rng["python_gauss"]))
    np.random.set_state(("MT19937", rng["numpy"].numpy().astype(np.uint32), rng["numpy_pos"],
                         rng["numpy_has_gauss"], rng["numpy_gauss"]))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
