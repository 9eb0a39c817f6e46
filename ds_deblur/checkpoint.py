"""Sharded checkpoints through the DeepSpeed engine, made crash-safe.

A tag ``CKPT_DIR/TAG`` is what ``engine.save_checkpoint`` writes on every rank, plus one RNG file per rank and
``COMMIT.json``, written by rank 0 only after every rank finished and its files were flushed to disk. Only a tag
with a valid commit marker (every listed file present with its recorded size) counts. ``latest`` is rewritten
after the marker, through a temporary file, fsync and rename, so it never names a tag that is not complete. A
tag being re-saved (``best``) is written under a temporary name and swapped in only once complete.

DeepSpeed tag files hold pickled Python objects and are read with full unpickling: load tags only from your own
run directories. Single-file checkpoints (``last.pth``) are read with ``weights_only=True`` (ds_deblur.convert).
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist

from ds_deblur import distributed, universal
from ds_deblur.errors import CheckpointError
from ds_deblur.single_file import fsync_path, write_atomic

COMMIT = "COMMIT.json"
LATEST = "latest"
BEST = "best"
STEP_TAG = re.compile(r"^step_(\d+)$")
FORMAT_VERSION = 1
# Fault injection for tests and the reliability suite: the tag at whose save the last rank SIGKILLs itself after
# writing its files, before the commit (a crash in the middle of a save). Never set in real runs.
KILL_IN_SAVE_ENV = "DS_DEBLUR_KILL_IN_SAVE"


@dataclass
class TrainState:
    """Counters that make a run continue exactly where it stopped (saved in ``client_state['ds_deblur']``)."""
    step: int = 0
    epoch: int = 0
    best_psnr: float = float("-inf")
    best_step: int = 0


def step_tag(step: int) -> str:
    return f"step_{step:06d}"


# --- saving ---------------------------------------------------------------------------------------------------

def save(engine: Any, ckpt_dir: Path, tag: str, client_state: dict) -> None:
    """Save ``tag`` on every rank (all ranks must call) and commit it; ``latest`` then names it."""
    ckpt_dir = Path(ckpt_dir)
    staging = f"{tag}.partial" if (ckpt_dir / tag).exists() else tag
    if distributed.is_main() and (ckpt_dir / staging).exists():
        shutil.rmtree(ckpt_dir / staging)  # a leftover of an interrupted save: never complete
    distributed.barrier()
    # DeepSpeed's universal converter (another world size on resume) needs its info key in the client state.
    from deepspeed.checkpoint import constants as c
    extra = {c.UNIVERSAL_CHECKPOINT_INFO: {c.UNIVERSAL_CHECKPOINT_VERSION_KEY: c.UNIVERSAL_CHECKPOINT_VERSION_VALUE}}
    engine.save_checkpoint(str(ckpt_dir), tag=staging, client_state={"ds_deblur": client_state, **extra},
                           save_latest=False)
    rank = dist.get_rank() if dist.is_initialized() else 0
    _save_rng(ckpt_dir / staging, rank)
    if os.environ.get(KILL_IN_SAVE_ENV) == tag and rank == client_state["world_size"] - 1:
        os.kill(os.getpid(), signal.SIGKILL)
    distributed.barrier()
    if distributed.is_main():
        _commit(ckpt_dir / staging, tag, client_state)
        if staging != tag:
            _swap_in(ckpt_dir, staging, tag)
        write_latest(ckpt_dir, tag)
    distributed.barrier()


def _commit(tag_dir: Path, tag: str, client_state: dict) -> None:
    files = {}
    for path in sorted(p for p in tag_dir.rglob("*") if p.is_file()):
        fsync_path(path)
        files[str(path.relative_to(tag_dir))] = path.stat().st_size
    marker = {"tag": tag, "step": client_state["step"], "world_size": client_state["world_size"],
              "saved_at": time.time(), "files": files}
    atomic_write_text(tag_dir / COMMIT, json.dumps(marker, indent=1))


def _swap_in(ckpt_dir: Path, staging: str, tag: str) -> None:
    # Until the final rename the old complete tag stays in place (or as TAG.old, still complete and loadable).
    old = ckpt_dir / f"{tag}.old"
    if old.exists():
        shutil.rmtree(old)
    os.replace(ckpt_dir / tag, old)
    os.replace(ckpt_dir / staging, ckpt_dir / tag)
    fsync_path(ckpt_dir)
    shutil.rmtree(old)
    universal.remove(ckpt_dir / tag)  # converted from the tag it replaced


def write_latest(ckpt_dir: Path, tag: str) -> None:
    atomic_write_text(Path(ckpt_dir) / LATEST, tag)


def atomic_write_text(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))


def retain(ckpt_dir: Path, keep_last: int) -> list[str]:
    """Remove step tags beyond the newest ``keep_last`` complete ones (rank 0 only, after a commit).

    Never removes the newest complete tag, ``best`` or anything not named ``step_N``; incomplete step tags older
    than the newest complete one are leftovers of crashed saves and go too. Returns the removed tags."""
    ckpt_dir = Path(ckpt_dir)
    steps = sorted((int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := STEP_TAG.match(p.name)) and p.is_dir())
    complete = [(s, p) for s, p in steps if tag_problem(p) is None]
    if not complete:
        return []
    keep = {p for _, p in complete[-keep_last:]}
    newest = complete[-1][0]
    doomed = [p for s, p in steps if p not in keep and s < newest]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
        universal.remove(path)
    return [p.name for p in doomed]


# --- finding and validating tags ------------------------------------------------------------------------------

def tag_problem(tag_dir: Path) -> Optional[str]:
    """None when the tag is complete; otherwise why it is not."""
    marker = tag_dir / COMMIT
    if not tag_dir.is_dir():
        return "does not exist"
    if not marker.is_file():
        return f"no {COMMIT} (the save did not finish)"
    try:
        files = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return f"{COMMIT} is corrupt or unreadable"
    for name, size in files.items():
        path = tag_dir / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} expected (truncated or overwritten)"
    return None


def newest_complete(ckpt_dir: Path) -> Optional[str]:
    """The complete tag with the highest step (a step tag before ``best`` at the same step), warning about every
    incomplete step tag it skips. Each tag is checked once."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    complete = []
    for path in sorted(p for p in ckpt_dir.iterdir() if p.is_dir()):
        problem = tag_problem(path)
        if problem is None:
            step = json.loads((path / COMMIT).read_text())["step"]
            complete.append((step, path.name != BEST, path.name))
        elif STEP_TAG.match(path.name):
            warnings.warn(f"skipping incomplete checkpoint {path}: {problem}", stacklevel=2)
    return max(complete)[2] if complete else None


def is_tag_dir(path: Path) -> bool:
    """A DeepSpeed tag directory (complete or not)."""
    return path.is_dir() and ((path / COMMIT).is_file() or any(path.glob("*model_states.pt")))


def read_latest(ckpt_dir: Path) -> Optional[str]:
    latest = Path(ckpt_dir) / LATEST
    return latest.read_text().strip() if latest.is_file() else None


def resolve_resume(resume: str, save_dir: Path) -> Optional[tuple[Path, str]]:
    """``--resume`` -> (ckpt_dir, tag), or None for a fresh start (``auto`` with nothing saved).

    ``auto``: newest complete tag under SAVE_DIR/ckpts; a directory with ``latest``: its tag; a tag directory:
    that tag. A missing path or an incomplete tag is an error naming it, never a silent fresh start."""
    if resume == "auto":
        ckpt_dir = Path(save_dir) / "ckpts"
        tag = newest_complete(ckpt_dir)
        return (ckpt_dir, tag) if tag else None
    path = Path(resume)
    if not path.exists():
        raise CheckpointError(f"Checkpoint not found: {path}")
    tag = read_latest(path)
    if tag is not None:
        return _checked(path, tag)
    if is_tag_dir(path):
        return _checked(path.parent, path.name)
    raise CheckpointError(f"{path} is neither a checkpoint directory (with a '{LATEST}' file) nor a tag "
                          f"(with {COMMIT}); pass SAVE_DIR/ckpts, SAVE_DIR/ckpts/step_NNNNNN or 'auto'")


def _checked(ckpt_dir: Path, tag: str) -> tuple[Path, str]:
    problem = tag_problem(ckpt_dir / tag)
    if problem:
        raise CheckpointError(f"Checkpoint {ckpt_dir / tag} is incomplete or damaged: {problem}. "
                              f"Use --resume auto to fall back to the newest complete tag")
    return ckpt_dir, tag


# --- loading --------------------------------------------------------------------------------------------------

def saved_world_size(tag_dir: Path) -> int:
    return json.loads((Path(tag_dir) / COMMIT).read_text())["world_size"]


def load(engine: Any, ckpt_dir: Path, tag: str) -> dict:
    """Load a tag into the engine (model, optimizer, LR schedule, loss scaler) and this rank's RNG; returns our
    saved state (``client_state['ds_deblur']``).

    A tag saved on another world size loads from its universal cache (ds_deblur.universal), which needs an
    engine initialised with ``checkpoint.load_universal`` (the trainer sets it); RNG streams are per rank and
    are then not restored."""
    tag_dir = Path(ckpt_dir) / tag
    world = dist.get_world_size() if dist.is_initialized() else 1
    other_world = saved_world_size(tag_dir) != world
    if other_world and not engine.load_universal_checkpoint():
        raise CheckpointError(
            f"{tag_dir} was saved on {saved_world_size(tag_dir)} ranks and this run has {world}: that takes "
            f"DeepSpeed's universal checkpoint (ds_deblur.universal.prepare, then an engine with "
            f'"checkpoint": {{"load_universal": true}}); the trainer does both by itself on --resume')
    load_dir = universal.cache_of(tag_dir) if other_world else Path(ckpt_dir)
    path, client = engine.load_checkpoint(str(load_dir), tag=tag, load_optimizer_states=True,
                                          load_lr_scheduler_states=True, load_module_strict=True)
    if path is None or client is None or "ds_deblur" not in client:
        raise CheckpointError(f"{tag_dir} holds no ds_deblur state: not a checkpoint of this trainer")
    state = client["ds_deblur"]
    if state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{tag_dir} has checkpoint format {state.get('format')}, "
                              f"this ds_deblur reads format {FORMAT_VERSION}")
    if other_world:
        universal.restore_buffers(engine, tag_dir)
        return {**state, "rng_restored": False}
    rank = dist.get_rank() if dist.is_initialized() else 0
    _load_rng(tag_dir / f"rng_rank{rank}.pt")
    return {**state, "rng_restored": True}


def _save_rng(tag_dir: Path, rank: int) -> None:
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
    torch.save(rng, tag_dir / f"rng_rank{rank}.pt")


def _load_rng(path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the tag was saved without this rank's RNG state")
    rng = torch.load(path, weights_only=True)
    random.setstate((rng["python_version"], tuple(rng["python"].tolist()), rng["python_gauss"]))
    np.random.set_state(("MT19937", rng["numpy"].numpy().astype(np.uint32), rng["numpy_pos"],
                         rng["numpy_has_gauss"], rng["numpy_gauss"]))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])


def client_state(state: TrainState, data_state: dict, config: dict, engine: Any, precision: str,
                 spike: Optional[dict] = None) -> dict:
    """What goes into ``client_state['ds_deblur']`` (everything exact resume, the converter and inference need;
    ``spike``: the spike input the model was trained on, {size, k, mean, std} as resolved from the data)."""
    return {
        "format": FORMAT_VERSION, **asdict(state), "data": data_state, "config": config, "spike": spike,
        "world_size": dist.get_world_size() if dist.is_initialized() else 1,
        "zero_stage": engine.zero_optimization_stage(), "precision": precision,
        "versions": versions(),
    }


def versions() -> dict:
    """Versions a run and its checkpoints record."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import deepspeed
    try:
        ours = version("ds_deblur")
    except PackageNotFoundError:
        ours = "dev"
    return {"torch": str(torch.__version__), "deepspeed": deepspeed.__version__, "ds_deblur": ours,
            "python": platform.python_version(), "cuda": torch.version.cuda}


# Keys that shape the model or its inputs: a resumed run must keep them (the weights would not fit otherwise).
FIXED_KEYS = ("MODEL.PRESET", "MODEL.USE_SPIKE", "MODEL.CHANNELS_PER_SCALE", "MODEL.VRT.EMBED_DIMS", "MODEL.VRT.DEPTHS",
              "MODEL.VRT.NUM_HEADS", "MODEL.VRT.WINDOW_SIZE", "MODEL.VRT.PA_FRAMES", "MODEL.VRT.DEFORMABLE_GROUPS",
              "MODEL.VRT.INDEP_RECONSTS", "MODEL.VRT.MLP_RATIO", "MODEL.SPIKE_TSA.HEADS",
              "MODEL.SPIKE_TSA.MLP_RATIO", "MODEL.FUSE.HEADS", "MODEL.FUSE.MLP_RATIO", "DATA.CLIP_LEN", "DATA.K",
              "DATA.SPIKE_SIZE")
# What a change of these means for the resumed run.
CHANGE_NOTES = {
    "TRAIN.BATCH_SIZE": "the remaining samples of the epoch are grouped into different batches",
    "TRAIN.GRADIENT_ACCUMULATION_STEPS": "each optimizer step now sees a different number of samples",
    "TRAIN.LR": "the restored schedule keeps its own LR (it scales the saved base LR); use --reset-optimizer "
                "to start a schedule at the new LR",
    "TRAIN.TOTAL_STEPS": "the cosine decay keeps its saved length; use --reset-optimizer for a new one",
    "SEED": "the data order of later epochs changes",
    "DATA.CROP_SIZE": "augmentation changes from here on",
}


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_config_change(old: dict, new: dict, old_world: int, new_world: int, warn: Any = print) -> None:
    """Raise on a changed model/data-shape key (listing old and new values); warn about other changes."""
    before, after = _flatten(old), _flatten(new)
    fatal = [f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in FIXED_KEYS if before.get(k) != after.get(k)]
    if fatal:
        raise CheckpointError("the checkpoint was trained with a different model or data shape:\n  "
                              + "\n  ".join(fatal) + "\nrestore these values (or start a new run with "
                              "--init-weights if the weights still fit)")
    changed = [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    for key in changed:
        note = CHANGE_NOTES.get(key, "takes effect from the resumed step")
        warn(f"[train] config changed since the checkpoint: {key}: {before.get(key)!r} -> {after.get(key)!r} "
             f"({note})")
    if old_world != new_world:
        warn(f"[train] world size changed {old_world} -> {new_world}: the data order continues unchanged, "
             f"split over {new_world} ranks")


# --- resuming from a single file (any world size, any ZeRO stage) ----------------------------------------------

def is_single_file_path(resume: str) -> bool:
    return Path(resume).suffix == ".pth"


def read_single(path: Path) -> dict:
    """A last.pth/best.pth for ``--resume`` (weights-only unpickling); a missing file is 'Checkpoint not found'."""
    from ds_deblur.single_file import load_single_file
    if not Path(path).is_file():
        raise CheckpointError(f"Checkpoint not found: {path}")
    return load_single_file(path)


def load_single(engine: Any, ckpt: dict, load_optimizer: bool = True) -> dict:
    """Restore a single-file checkpoint into an initialised engine, whatever its world size and ZeRO stage.

    The module must already hold ``ckpt['state_dict']`` (load it before ``deepspeed.initialize``, so every
    stage's low-precision copies and ZeRO-3 partitions start from it); this sets the fp32 masters exactly, the
    Adam moments and step, the LR schedule, the loss scaler and the engine's counters. Returns our state."""
    weights = ckpt["state_dict"]
    params = list(engine.module.named_parameters())
    for name, param in params:
        _set_full(param, weights[name])
    meta = ckpt["meta"]
    if load_optimizer:
        moments = ckpt["optimizer"]["state"]
        _prepare_adam_state(engine, max(float(s["step"]) for s in moments.values()))
        for index, (_, param) in enumerate(params):
            for key in ("exp_avg", "exp_avg_sq"):
                _set_full(param, moments[index][key], key)
        engine.lr_scheduler.load_state_dict(ckpt["scheduler"])
        for group, lr in zip(engine.optimizer.param_groups, engine.lr_scheduler.get_last_lr()):
            group["lr"] = lr  # load_state_dict restores the schedule's position, not the optimizer's LR
        _set_loss_scaler(engine, meta.get("loss_scaler"))
        engine.global_steps = int(meta.get("global_steps") or ckpt["step"])
        engine.skipped_steps = int(meta.get("skipped_steps") or 0)
    return {"step": ckpt["step"], "epoch": ckpt["epoch"], "best_psnr": ckpt["best_psnr"],
            "best_step": meta.get("best_step") or 0, "data": meta["data"], "config": ckpt["config"],
            "world_size": meta["world_size"], "rng_restored": False}


def _set_full(param: torch.nn.Parameter, value: torch.Tensor, key: Optional[str] = None) -> None:
    """Write a whole fp32 tensor (the weights, or optimizer state ``key``) into ZeRO's partitions of ``param``."""
    from deepspeed.utils import (safe_set_full_fp32_param, safe_set_full_optimizer_state,
                                 safe_set_local_fp32_param, safe_set_local_optimizer_state)
    value = value.float()
    if not hasattr(param, "ds_id"):  # ZeRO 1/2
        safe_set_full_fp32_param(param, value) if key is None else safe_set_full_optimizer_state(param, value, key)
        return
    # ZeRO-3: DeepSpeed's full setter does not pad the last rank's share, so cut this rank's share ourselves.
    share = param.ds_tensor.ds_numel
    piece = value.flatten()[dist.get_rank() * share:(dist.get_rank() + 1) * share]
    piece = torch.nn.functional.pad(piece, (0, share - piece.numel()))
    safe_set_local_fp32_param(param, piece) if key is None else safe_set_local_optimizer_state(param, piece, key)


def _prepare_adam_state(engine: Any, step: float) -> None:
    """Create AdamW's state on ZeRO's flat fp32 partitions as torch would at its first step (it is lazy), with
    the saved step count, and link it to the parameters, so the moments can be written before training."""
    base = getattr(engine.optimizer, "optimizer", engine.optimizer)
    flats = getattr(engine.optimizer, "fp32_partitioned_groups_flat", None)  # ZeRO-3 keys its state by these
    if flats is None:
        flats = [flat for group in base.param_groups for flat in group["params"]]
    for flat in flats:
        state = base.state[flat]
        state.setdefault("exp_avg", torch.zeros_like(flat))
        state.setdefault("exp_avg_sq", torch.zeros_like(flat))
        state["step"] = torch.tensor(step, dtype=torch.float32)
    if hasattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state"):  # ZeRO 1/2: DeepSpeed links after step 1
        engine.optimizer._hp_optimizer_states_linked = False
        engine.optimizer._lazy_init_hp_params_optimizer_state()


def _set_loss_scaler(engine: Any, values: Optional[dict]) -> None:
    scaler = getattr(engine.optimizer, "loss_scaler", None)
    if values is None or scaler is None or not engine.fp16_enabled():
        return
    for key in ("cur_scale", "cur_iter", "last_overflow_iter", "cur_hysteresis"):
        if key in values and hasattr(scaler, key):
            setattr(scaler, key, values[key])
