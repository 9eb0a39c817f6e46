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


def original_scheduler(optim: torch.optim.Optimizer, cfg: dict, total_steps: int) -> LRScheduler:
    """The LR schedule exactly as the original trainer builds it (S-VRT @303619f, src/train.py lines 763-776),
    from its raw config dict: written from that source, not from ours, so our schedule is checked against it.
    Note what it has not: no eta_min (the cosine ends at 0) and no other schedule type."""
    warmup = int(cfg["TRAIN"].get("SCHED", {}).get("WARMUP_STEPS", 0))
    # Optional warmup: if warmup>0, use LinearLR -> CosineAnnealingLR, else only Cosine
    if warmup > 0 and warmup < total_steps:
        scheduler = SequentialLR(
            optim,
            schedulers=[
                LinearLR(optim, start_factor=1e-3, end_factor=1.0, total_iters=warmup),
                CosineAnnealingLR(optim, T_max=total_steps - warmup),
            ],
            milestones=[warmup],
        )
    else:
        scheduler = CosineAnnealingLR(optim, T_max=total_steps)
    return scheduler


def original_lrs(lr: float, warmup: int, total_steps: int) -> list[float]:
    """The LR of each optimizer step of a ``total_steps`` run under the original's schedule (``original_scheduler``
    on an AdamW of its own, as the original trainer makes it)."""
    optim = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = original_scheduler(optim, {"TRAIN": {"SCHED": {"WARMUP_STEPS": warmup}}}, total_steps)
    return lrs_of(optim, scheduler, total_steps)


def lrs_of(opt: torch.optim.Optimizer, sched: LRScheduler, steps: int) -> list[float]:
    """The LR of each of ``steps`` optimizer steps, stepping the schedule after each, as the trainer does."""
    seen = []
    for _ in range(steps):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return seen
