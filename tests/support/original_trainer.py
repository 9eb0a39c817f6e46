"""The original S-VRT trainer's files, as tests use them: its shipped baseline config (verbatim copy) and the
state-dict listing of its model."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Iterable

import torch
import yaml
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

from ds_deblur.config import Config, load_config

HERE = Path(__file__).resolve().parent
REFERENCE_CONFIG = HERE / "svrt_vrt_spike_baseline.yaml"  # the original's configs/deblur/vrt_spike_baseline.yaml
REFERENCE_STATE_DICT = HERE.parent / "models" / "svrt_base_state_dict.json"  # its model's state_dict for that config


def reference_raw(path: Path = REFERENCE_CONFIG) -> dict:
    """A config file of the original's, as a dict."""
    return yaml.safe_load(Path(path).read_text())


def write_reference_copy(dest: Path) -> Path:
    """The reference config as a file of its own (what a user passes with --config)."""
    dest.write_text(yaml.safe_dump(reference_raw(), sort_keys=False))
    return dest


def loaded_with_warnings(source: Any, overrides: Iterable[str] = ()) -> tuple[Config, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load_config(source, overrides)
    return cfg, [str(w.message) for w in caught]


def torch_schedule(lr: float, warmup: int, total: int, eta_min: float = 0.0) -> tuple[torch.optim.Optimizer,
                                                                                      LRScheduler]:
    """The original trainer's LR schedule written out with torch's own schedulers, on an optimizer of its own."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    if 0 < warmup < total:
        sched = SequentialLR(opt, [LinearLR(opt, start_factor=1e-3, end_factor=1.0, total_iters=warmup),
                                   CosineAnnealingLR(opt, T_max=total - warmup, eta_min=eta_min)],
                             milestones=[warmup])
    else:
        sched = CosineAnnealingLR(opt, T_max=total, eta_min=eta_min)
    return opt, sched


def lrs_of(opt: torch.optim.Optimizer, sched: LRScheduler, steps: int) -> list[float]:
    """The LR of each of ``steps`` optimizer steps, stepping the schedule after each, as the trainer does."""
    seen = []
    for _ in range(steps):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return seen
