"""S-VRT's two-run training (``train.two_run.enable`` in an S-VRT option file) as one command: its phase 1 and
phase 2 are two runs, under LOG.SAVE_DIR/phase1 and LOG.SAVE_DIR/phase2. The second starts from the first's final
weights (its EMA from the first's EMA) with a fresh optimizer and schedule, as S-VRT's utils_two_run hands over.

LOG.SAVE_DIR/two_run_state.json (the manifest) says where each run is: ``pending``, ``running`` or ``done``, with
the first run's final checkpoint once it is done. The same command run again continues where it stopped: each run
resumes its newest complete checkpoint (``--resume auto``), a finished first run is not trained again. As in
S-VRT, ``--stop-at-step`` counts the steps of both runs (its global step).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ds_deblur import distributed
from ds_deblur.ckpt import CheckpointOptions
from ds_deblur.ckpt.atomic import write_text_atomic
from ds_deblur.ckpt.tags import step_tag
from ds_deblur.config import Config, load_two_run
from ds_deblur.config.kair import RUN_NAMES
from ds_deblur.errors import ConfigError

MANIFEST = "two_run_state.json"
# Trains one run of ``cfg`` with these arguments: (exit code, whether it reached its last step).
TrainOne = Callable[[argparse.Namespace, Config], tuple[int, bool]]


@dataclass
class Run:
    name: str
    cfg: Config

    @property
    def final_tag(self) -> Path:
        return CheckpointOptions.from_config(self.cfg).ckpt_dir / step_tag(self.cfg.TRAIN.TOTAL_STEPS)


def plan(args: argparse.Namespace) -> Optional[list[Run]]:
    """The two runs of a two-run option file (each under LOG.SAVE_DIR/<phase>), or None for any other config."""
    configs = load_two_run(args.config, args.set)
    if configs is None:
        return None
    if args.resume not in (None, "auto"):
        raise ConfigError(f"--resume {args.resume}: a two-run training continues where {MANIFEST} says (--resume "
                          f"auto, or nothing); resume one of its runs with that run's own option file")
    root = Path(configs[0].LOG.SAVE_DIR)
    for name, cfg in zip(RUN_NAMES, configs):
        cfg.LOG.SAVE_DIR = str(root / name)
    return [Run(name, cfg) for name, cfg in zip(RUN_NAMES, configs)]


def train(args: argparse.Namespace, runs: list[Run], train_one: TrainOne, say: Callable[[str], None]) -> int:
    """Train the runs one after the other from where the manifest says; returns the exit code."""
    manifest = Manifest(Path(runs[0].cfg.LOG.SAVE_DIR).parent, runs)
    first, second = runs
    done_before = 0
    for run in runs:
        total = run.cfg.TRAIN.TOTAL_STEPS
        if manifest.state(run.name) == "done":
            say(f"[two-run] {run.name} is done ({manifest.path}): skipped")
            done_before += total
            continue
        stop = None if args.stop_at_step is None else args.stop_at_step - done_before
        if stop is not None and stop <= 0:
            return 0
        if run is second:  # S-VRT's handover: pretrained_netG / netE = the first run's last G / E, a new optimizer
            run.cfg.MODEL.INIT_WEIGHTS = run.cfg.MODEL.INIT_EMA_WEIGHTS = str(first.final_tag)
            run.cfg.MODEL.INIT_PARTIAL = False
        run_args = argparse.Namespace(**{**vars(args), "resume": "auto", "reset_optimizer": False,
                                         "init_weights": args.init_weights if run is first else None,
                                         "stop_at_step": stop if stop is not None and stop < total else None})
        say(f"[two-run] {run.name}: {total} steps in {run.cfg.LOG.SAVE_DIR}")
        manifest.update(run.name, "running")
        code, finished = train_one(run_args, run.cfg)
        if code or not finished:
            return code
        manifest.update(run.name, "done", final=str(run.final_tag))
        done_before += total
    return 0


class Manifest:
    """LOG.SAVE_DIR/two_run_state.json, written by rank 0 (atomically) and read by every rank."""

    def __init__(self, root: Path, runs: list[Run]) -> None:
        self.path = root / MANIFEST
        fresh = {"runs": {run.name: {"state": "pending", "dir": run.cfg.LOG.SAVE_DIR,
                                     "total_steps": run.cfg.TRAIN.TOTAL_STEPS} for run in runs}}
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else fresh
        if set(self.data.get("runs", {})) != set(fresh["runs"]):
            raise ConfigError(f"{self.path} is not a two-run manifest of this training (its runs: "
                              f"{sorted(self.data.get('runs', {}))}); give the run another LOG.SAVE_DIR")

    def state(self, name: str) -> str:
        return self.data["runs"][name]["state"]

    def update(self, name: str, state: str, final: Optional[str] = None) -> None:
        entry = self.data["runs"][name]
        entry["state"] = state
        if final is not None:
            entry["final_checkpoint"] = final
        self.data["current"] = name
        if distributed.is_main():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.path, json.dumps(self.data, indent=1))
        distributed.barrier()
