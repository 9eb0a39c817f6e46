"""Moving state between a live DeepSpeed engine and the checkpoint files: saving a tag (every rank) and committing
it, loading a tag (any world size, through the universal cache when it differs), and loading a single file into
ZeRO's partitions on any world size and stage, with the EMA partitions (``ds_deblur.zero.ema``) alongside. With
``ds_deblur.zero.partitions`` (which it writes through) the only code that writes into DeepSpeed's optimizer internals.
"""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.distributed as dist
from deepspeed.checkpoint import constants as ds_constants

from ds_deblur import distributed
from ds_deblur.ckpt import universal
from ds_deblur.ckpt.gather import ema_state_dict, open_tag, saved_group_settings
from ds_deblur.ckpt.rng import load_rng, save_rng
from ds_deblur.ckpt.state import FORMAT_VERSION
from ds_deblur.ckpt.tags import PARTIAL, commit, saved_world_size, swap_in, write_latest
from ds_deblur.errors import CheckpointError
from ds_deblur.testing import faults
from ds_deblur.zero import partitions
from ds_deblur.zero.ema import ShardedEMA

CLIENT_KEY = "ds_deblur"
# DeepSpeed's universal converter (another world size on resume) needs its info key in the client state.
_UNIVERSAL_INFO = {ds_constants.UNIVERSAL_CHECKPOINT_INFO: {
    ds_constants.UNIVERSAL_CHECKPOINT_VERSION_KEY: ds_constants.UNIVERSAL_CHECKPOINT_VERSION_VALUE}}


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


# --- tags -------------------------------------------------------------------------------------------------------

def save_tag(engine: Any, ckpt_dir: Path, tag: str, state: dict, ema: Optional[ShardedEMA] = None) -> None:
    """Save ``tag`` on every rank (all ranks must call) and commit it; ``latest`` then names it. A tag that exists
    already (``best``) is written beside it and swapped in once complete. ``ema``: each rank's EMA partitions go
    into the tag too (``ema_rank{r}.pt``)."""
    staging = f"{tag}{PARTIAL}" if (ckpt_dir / tag).exists() else tag
    if distributed.is_main() and (ckpt_dir / staging).exists():
        shutil.rmtree(ckpt_dir / staging)  # a leftover of an interrupted save: never complete
    distributed.barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=staging, client_state={CLIENT_KEY: state, **_UNIVERSAL_INFO},
                           save_latest=False)
    save_rng(ckpt_dir / staging, _rank())
    if ema is not None:
        ema.save(ckpt_dir / staging, _rank())
    faults.kill_point("save", tag, last_rank=True)
    distributed.barrier()
    if distributed.is_main():
        commit(ckpt_dir / staging, tag, state["step"], state["world_size"])
        if staging != tag:
            swap_in(ckpt_dir, staging, tag)
            universal.remove(ckpt_dir / tag)  # converted from the tag it replaced
        write_latest(ckpt_dir, tag)
    distributed.barrier()


def load_tag(engine: Any, tag_dir: Path, ema: Optional[ShardedEMA] = None) -> dict:
    """Load a complete tag into the engine (model, optimizer, LR schedule, loss scaler), this rank's RNG and, given
    ``ema``, the EMA weights; returns our saved state with ``rng_restored`` and ``ema_restored`` (False: the tag
    has no EMA).

    A tag saved on another world size loads from its universal cache, which needs an engine initialised with
    ``checkpoint.load_universal`` (CheckpointManager.prepare sets it); RNG streams are per rank and are then not
    restored, and the EMA is gathered from the tag's own per-rank files (DeepSpeed's converter does not know
    them)."""
    other_world = saved_world_size(tag_dir) != _world()
    if other_world and not engine.load_universal_checkpoint():
        raise CheckpointError(
            f"{tag_dir} was saved on {saved_world_size(tag_dir)} ranks and this run has {_world()}: that takes "
            f"DeepSpeed's universal checkpoint (ds_deblur.ckpt.universal.prepare, then an engine with "
            f'"checkpoint": {{"load_universal": true}}); the trainer does both by itself on --resume')
    load_dir = universal.cache_of(tag_dir) if other_world else tag_dir.parent
    path, client = engine.load_checkpoint(str(load_dir), tag=tag_dir.name, load_optimizer_states=True,
                                          load_lr_scheduler_states=True, load_module_strict=True)
    if path is None or client is None or CLIENT_KEY not in client:
        raise CheckpointError(f"{tag_dir} holds no ds_deblur state: not a checkpoint of this trainer")
    state = client[CLIENT_KEY]
    if state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{tag_dir} has checkpoint format {state.get('format')}, "
                              f"this ds_deblur reads format {FORMAT_VERSION}")
    if other_world:
        universal.restore_buffers(engine, tag_dir)
        _restore_group_settings(engine, tag_dir)
        return {**state, "rng_restored": False, "ema_restored": load_tag_ema(ema, tag_dir)}
    load_rng(tag_dir, _rank())
    return {**state, "rng_restored": True, "ema_restored": ema is not None and ema.load(tag_dir, _rank())}


def load_tag_ema(ema: Optional[ShardedEMA], tag_dir: Path) -> bool:
    """A tag's EMA weights into ``ema`` on any world size (gathered whole from its ``ema_rank{r}.pt`` files, then cut
    into this rank's partitions); False when either has none."""
    weights = ema_state_dict(tag_dir) if ema is not None else None
    if weights is not None:
        ema.load_full(weights)
    return weights is not None


def _restore_group_settings(engine: Any, tag_dir: Path) -> None:
    """Each optimizer group's hyperparameters and Adam step as the tag saved them. DeepSpeed 0.19's ZeRO-3 universal
    load gives every group the first group's (LR, weight decay, step): wrong for TRAIN.FIX_KEYS's second group."""
    if engine.zero_optimization_stage() != 3:
        return  # ZeRO 1/2 universal loading restores them per group
    saved = saved_group_settings(open_tag(tag_dir))
    base = partitions.base_optimizer(engine)
    for group, (settings, _) in zip(base.param_groups, saved):
        group.update({key: value for key, value in settings.items() if key != "params"})
    for flats, (_, step) in zip(partitions.group_flats(engine), saved):
        for flat in flats:
            if step is not None and "step" in base.state.get(flat, {}):
                base.state[flat]["step"] = torch.full_like(torch.as_tensor(base.state[flat]["step"]), step)


# --- single files -------------------------------------------------------------------------------------------

def load_single(engine: Any, ckpt: dict, load_optimizer: bool = True, ema: Optional[ShardedEMA] = None) -> dict:
    """Restore a single-file checkpoint into an initialised engine, whatever its world size and ZeRO stage.

    The module must already hold ``ckpt['state_dict']`` (load it before ``deepspeed.initialize``, so every
    stage's low-precision copies and ZeRO-3 partitions start from it); this sets the fp32 masters exactly, the
    Adam moments and step (when the file has them: the original trainer's last.pth has not), the LR schedule
    (its saved state when it fits this run's scheduler, else the schedule stepped to the file's step), the loss
    scaler (fp16 runs), the engine's counters and, given ``ema``, the EMA weights (``state_dict_ema``). Frozen
    parameters (TRAIN.FREEZE) have no masters: they are what the module was loaded with. Returns our state, with
    what was ``restored`` and ``ema_restored``."""
    weights = ckpt["state_dict"]
    params = list(engine.module.named_parameters())
    for name, param in params:
        if param.requires_grad:
            partitions.set_full(param, weights[name])
    meta = ckpt["meta"]
    restored = {"optimizer": False, "scheduler": None, "loss_scaler": False}
    if load_optimizer:
        if ckpt["optimizer"] is not None:
            moments = ckpt["optimizer"]["state"]
            _prepare_adam_state(engine, _group_steps(engine, params, moments))
            for index, (_, param) in enumerate(params):
                # A parameter without saved moments (S-VRT's Adam holds none for one that never had a gradient)
                # keeps fresh zeros.
                for key in ("exp_avg", "exp_avg_sq") if param.requires_grad and index in moments else ():
                    partitions.set_full(param, moments[index][key], key)
            restored["optimizer"] = True
        restored["scheduler"] = _restore_schedule(engine.lr_scheduler, ckpt["scheduler"], ckpt["step"])
        for group, lr in zip(engine.optimizer.param_groups, engine.lr_scheduler.get_last_lr()):
            group["lr"] = lr  # load_state_dict restores the schedule's position, not the optimizer's LR
        restored["loss_scaler"] = _set_loss_scaler(engine, meta.get("loss_scaler"))
        engine.global_steps = int(meta.get("global_steps") or ckpt["step"])
        engine.skipped_steps = int(meta.get("skipped_steps") or 0)
    ema_weights = ckpt.get("state_dict_ema") if ema is not None else None
    if ema_weights is not None:
        ema.load_full(ema_weights, int(meta.get("ema_updates") or 0))
    return {"step": ckpt["step"], "epoch": ckpt["epoch"], "best_psnr": ckpt["best_psnr"],
            "best_step": meta.get("best_step") or 0, "data": meta["data"], "config": ckpt["config"],
            "world_size": meta["world_size"], "rng_restored": False, "restored": restored,
            "ema_restored": ema_weights is not None}


def _group_steps(engine: Any, params: list[tuple[str, torch.nn.Parameter]], moments: dict) -> list[float]:
    """The Adam step count of each of the engine's parameter groups: the saved step of a member that has state
    (``moments`` numbers the module's parameters in order; a group's members started together), else 0 (a group
    that has not trained yet starts afresh, as S-VRT's Adam holds no state for a parameter without gradients)."""
    index = {id(param): i for i, (_, param) in enumerate(params)}
    return [next((float(moments[index[id(p)]]["step"]) for p in members if index[id(p)] in moments), 0.0)
            for members in partitions.group_params(engine)]


def _restore_schedule(scheduler: Any, saved: Optional[dict], step: int) -> str:
    """Load the saved schedule state when it is one of this run's kind ("loaded"), else step this run's schedule to
    ``step`` ("positioned": the original trainer's last.pth has none, older files a scheduler of another kind)."""
    if saved is not None and _same_shape(saved, scheduler.state_dict()) and \
            len(saved.get("base_lrs", ())) == len(scheduler.state_dict().get("base_lrs", ())):
        scheduler.load_state_dict(saved)
        return "loaded"
    with warnings.catch_warnings():  # torch warns of a schedule stepped before its optimizer: that is the point
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(scheduler.last_epoch, step):
            scheduler.step()
    return "positioned"


def _same_shape(a: dict, b: dict) -> bool:
    """Two scheduler state dicts of the same kind: the same keys, and as many chained schedulers of that kind."""
    if set(a) != set(b):
        return False
    subs_a, subs_b = a.get("_schedulers") or [], b.get("_schedulers") or []
    return len(subs_a) == len(subs_b) and all(set(x) == set(y) for x, y in zip(subs_a, subs_b))


def _prepare_adam_state(engine: Any, step: Union[float, list[float]]) -> None:
    """Create AdamW's state on ZeRO's flat fp32 partitions as torch would at its first step (it is lazy), with
    the saved step count (one, or one per parameter group), and link it to the parameters, so the moments can be
    written before training."""
    base = partitions.base_optimizer(engine)
    groups = partitions.group_flats(engine)
    steps = step if isinstance(step, list) else [step] * len(groups)
    for flats, group_step in zip(groups, steps):
        for flat in flats:
            state = base.state[flat]
            state.setdefault("exp_avg", torch.zeros_like(flat))
            state.setdefault("exp_avg_sq", torch.zeros_like(flat))
            state["step"] = torch.tensor(group_step, dtype=torch.float32)
    if hasattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state"):  # ZeRO 1/2: DeepSpeed links after step 1
        engine.optimizer._hp_optimizer_states_linked = False
        engine.optimizer._lazy_init_hp_params_optimizer_state()


def _set_loss_scaler(engine: Any, values: Optional[dict]) -> bool:
    """Set DeepSpeed's fp16 loss scaler from saved values; False when there is none to set (not fp16, or none saved)."""
    scaler = getattr(engine.optimizer, "loss_scaler", None)
    if values is None or scaler is None or not engine.fp16_enabled():
        return False
    for key in ("cur_scale", "cur_iter", "last_overflow_iter", "cur_hysteresis"):
        if key in values and hasattr(scaler, key):
            setattr(scaler, key, values[key])
    return True
