"""The single-file checkpoint (``last.pth``, ``best.pth``): the original trainer's format, readable without DeepSpeed.

Layout (docs/checkpoints.md), everything loadable with ``torch.load(path, weights_only=True)``::

    {'step', 'epoch', 'best_psnr',
     'state_dict': fp32 weights and buffers of the plain nn.Module (no 'module.' prefix),
     'optimizer':  torch.optim.AdamW state dict (params by index in model.parameters() order),
     'scheduler':  the torch LR scheduler's state dict,
     'scaler':     torch.amp.GradScaler state dict for fp16 runs, else None,
     'config':     the ds_deblur config dict (``load_config(ckpt['config'])``),
     'meta':       format, source tag and dir, world size, ZeRO stage, precision, versions, best_step,
                   data (sampler position), loss_scaler (DeepSpeed's own loss-scaler values, fp16 only),
                   ema_decay and ema_updates (EMA runs),
     'state_dict_ema': only in runs with TRAIN.EMA_DECAY > 0: the EMA weights, fp32, the keys of 'state_dict'}

With TRAIN.FIX_KEYS the optimizer has two parameter groups (``ds_deblur.zero.staged.param_groups`` builds them: the
others, then the fixed ones); frozen parameters (TRAIN.FREEZE) are in ``state_dict`` but in no group.

The original S-VRT trainer's own files read too (``from_original``): its ``best.pth``
(``step, epoch, best_psnr, state_dict, optimizer, scheduler, scaler``) and its ``last.pth`` (``step, state_dict``),
whose keys carry torch.compile's ``_orig_mod.`` when it compiled the model (taken off on reading, ``ckpt.keys``).

Reading only ever uses ``weights_only=True``: a file whose pickle would import or call code is refused before
anything runs.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any, Union

import torch

from ds_deblur.ckpt.gather import Gathered, Tag, gather, module_state_dict, open_tag, param_order
from ds_deblur.ckpt.keys import model_keys
from ds_deblur.ckpt.tags import SVRT_WEIGHTS
from ds_deblur.errors import CheckpointFormatError, CheckpointNotFoundError
from ds_deblur.zero.ema import ema_file, read_ema_file
from ds_deblur.zero.staged import matches

FORMAT = 1
# S-VRT's own weights files (KAIR's save_network): {iter}_G.pth, {iter}_E.pth (EMA), {iter}_G_merged.pth (LoRA folded).
KEYS = ("step", "epoch", "best_psnr", "state_dict", "optimizer", "scheduler", "scaler", "config", "meta")
PathLike = Union[str, Path]


# --- reading ------------------------------------------------------------------------------------------------

def read_weights_only(path: PathLike, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file and say what is wrong.

    ``mmap=True`` maps the tensors instead of reading them (for looking at a file without loading it)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise CheckpointFormatError(
            f"{path} was refused: it is not a plain torch checkpoint of tensors and containers "
            f"({_unpickler_reason(err)}). "
            f"ds_deblur reads .pth files with weights_only=True and never runs code from them; if this is a "
            f"DeepSpeed tag file, pass its tag directory instead") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointFormatError(f"{path} is truncated or not a torch checkpoint ({_first_line(err)}); "
                                    f"re-export it with ds-deblur convert") from None


def _unpickler_reason(err: BaseException) -> str:
    # torch's message is a page of advice; the line naming the refused global is the useful part.
    for line in str(err).splitlines():
        if "GLOBAL" in line or "Unsupported operand" in line:
            return line.replace("WeightsUnpickler error:", "").split(". Please use")[0].strip().rstrip(".")
    return _first_line(err)


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def is_single_file(obj: Any) -> bool:
    return isinstance(obj, dict) and all(key in obj for key in KEYS) and isinstance(obj["meta"], dict)


def is_original(obj: Any) -> bool:
    """A checkpoint of the original S-VRT trainer: a step and a state dict, none of our ``meta``."""
    return isinstance(obj, dict) and "step" in obj and isinstance(obj.get("state_dict"), dict) and "meta" not in obj


def from_original(ckpt: dict, source: object = "the original trainer's checkpoint") -> dict:
    """The original trainer's ``best.pth`` or ``last.pth`` (read from ``source``) in our layout: weights under
    the model's keys, ``config`` None (it stored none), ``meta`` with no data position and no world size, its
    GradScaler state as DeepSpeed loss-scaler values."""
    scaler = ckpt.get("scaler")
    return {"step": int(ckpt["step"]), "epoch": int(ckpt.get("epoch", 0)),
            "best_psnr": float(ckpt.get("best_psnr", float("-inf"))),
            "state_dict": model_keys(ckpt["state_dict"], source),
            "optimizer": ckpt.get("optimizer"), "scheduler": ckpt.get("scheduler"), "scaler": scaler,
            "config": None,
            "meta": {"format": "original", "world_size": None, "data": None,
                     "best_step": int(ckpt["step"]) if "best_psnr" in ckpt else 0,
                     "loss_scaler": loss_scaler_values_of(scaler) if scaler else None}}


def load_single_file(path: PathLike) -> dict:
    """Load and check a single-file checkpoint (ours, or the original trainer's in our layout); raises
    ``CheckpointFormatError`` naming the file if it is neither."""
    ckpt = read_weights_only(path)
    if is_original(ckpt):
        return from_original(ckpt, path)
    if is_svrt_weights(Path(path), ckpt):
        return from_svrt_weights(Path(path), ckpt)
    if not is_single_file(ckpt):
        found = sorted(map(str, ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointFormatError(
            f"{path} is not a ds_deblur single-file checkpoint: expected keys {list(KEYS)} (or the original "
            f"trainer's step and state_dict), found {found}. A weights-only export is loaded with --init-weights, "
            f"not --resume")
    if ckpt["meta"].get("format") != FORMAT:
        raise CheckpointFormatError(f"{path} has single-file format {ckpt['meta'].get('format')!r}; this ds_deblur "
                                    f"reads format {FORMAT}")
    return {**ckpt, "state_dict": model_keys(ckpt["state_dict"], path)}


def is_svrt_weights(path: Path, obj: Any) -> bool:
    """An S-VRT weights file: named ``{iter}_G.pth`` (``_E``, ``_G_merged``), a flat dict of tensors."""
    return bool(SVRT_WEIGHTS.match(path.name)) and isinstance(obj, dict) and bool(obj) \
        and all(torch.is_tensor(v) for v in obj.values())


def from_svrt_weights(path: Path, weights: dict) -> dict:
    """``--resume ITER_G.pth`` (or an S-VRT experiment's ``models/`` folder): S-VRT's weights at iteration ITER in
    our layout, with the ``ITER_E.pth`` beside it as the EMA weights and the Adam state of ``ITER_optimizerG.pth``
    (``torch.optim.Adam`` over all of the network's parameters, in order) when they are there. S-VRT saves no
    schedule: the schedule is stepped to ITER."""
    step = int(SVRT_WEIGHTS.match(path.name)["iter"])
    ema_path = path.with_name(f"{step}_E.pth")
    ema = model_keys(read_weights_only(ema_path), ema_path) if ema_path.is_file() and ema_path != path else None
    optimizer_path = path.with_name(f"{step}_optimizerG.pth")
    optimizer = svrt_optimizer(optimizer_path) if optimizer_path.is_file() and path.name == f"{step}_G.pth" else None
    return {"step": step, "epoch": 0, "best_psnr": float("-inf"), "state_dict": model_keys(weights, path),
            "optimizer": optimizer, "scheduler": None, "scaler": None, "config": None, "state_dict_ema": ema,
            "meta": {"format": "svrt", "world_size": None, "data": None, "best_step": 0, "loss_scaler": None,
                     "optimizer_file": str(optimizer_path) if optimizer else None}}


def svrt_optimizer(path: Path) -> dict:
    """S-VRT's ``{iter}_optimizerG.pth``: a torch optimizer state dict (Adam's moments by parameter index)."""
    saved = read_weights_only(path)
    state, groups = (saved.get("state"), saved.get("param_groups")) if isinstance(saved, dict) else (None, None)
    if not isinstance(state, dict) or not isinstance(groups, list) or \
            any(not {"exp_avg", "exp_avg_sq", "step"} <= set(s) for s in state.values()):
        raise CheckpointFormatError(f"{path} is not a torch Adam state dict (state with exp_avg, exp_avg_sq and "
                                    f"step per parameter, param_groups): move it away to start the Adam moments "
                                    f"afresh")
    return saved


def svrt_in_module_order(optimizer: dict, names: list[str], fix_keys: list[str], source: object) -> dict:
    """S-VRT's Adam state numbered in module order, as ``load_single`` reads it. With two groups (its fix_lr_mul
    split) S-VRT numbers the parameters not matching fix_keys first, then those matching, each in module order."""
    groups = optimizer["param_groups"]
    if len(groups) == 1:
        return optimizer
    fixed = [name for name in names if matches(name, fix_keys)]
    order = [name for name in names if not matches(name, fix_keys)] + fixed
    if len(groups) != 2 or len(groups[1]["params"]) != len(fixed):
        sizes = [len(g["params"]) for g in groups]
        raise CheckpointFormatError(f"{source} has {len(groups)} parameter groups of {sizes} parameters; S-VRT's "
                                    f"split by fix_keys {fix_keys} gives {len(fixed)} in the second: move it away to "
                                    f"start the Adam moments afresh")
    position = {name: i for i, name in enumerate(names)}
    saved = [index for group in groups for index in group["params"]]
    state = {position[order[k]]: optimizer["state"][index] for k, index in enumerate(saved)
             if index in optimizer["state"]}
    return {"state": state, "param_groups": groups}


def single_file_step(path: Path) -> Any:
    """The step a single file was exported at, or None when it is missing or damaged (then it is re-exported)."""
    try:
        return read_weights_only(path, mmap=True)["step"] if path.is_file() else None
    except (CheckpointFormatError, KeyError, TypeError):
        return None


# --- building one from a tag ----------------------------------------------------------------------------------

def single_file_dict(tag_dir: Path) -> dict:
    """The single-file checkpoint of a complete tag."""
    tag = open_tag(tag_dir)
    state = tag.state
    missing = [key for key in ("step", "epoch", "best_psnr", "config") if key not in state]
    if missing:
        raise CheckpointFormatError(f"{tag_dir}: the trainer's client state lacks {missing}; it was written by "
                                    f"another version of ds_deblur's trainer")
    gathered = gather(tag, with_moments=True, with_ema=True)
    meta = {
        "format": FORMAT, "source_tag": tag.dir.name, "source_dir": str(tag.dir.parent.resolve()),
        "world_size": tag.world_size, "zero_stage": tag.stage, "precision": tag.precision,
        "versions": state.get("versions", {}), "best_step": state.get("best_step"), "data": state.get("data"),
        "spike": state.get("spike"),
        "global_steps": tag.header.get("global_steps"), "skipped_steps": tag.header.get("skipped_steps"),
        "loss_scaler": gathered.loss_scaler,
    }
    ema = {} if gathered.ema is None else {"state_dict_ema": module_state_dict(tag, gathered.ema)}
    if ema:
        meta.update(_ema_meta(tag))
    return plain({
        "step": state["step"], "epoch": state["epoch"], "best_psnr": state["best_psnr"],
        "state_dict": module_state_dict(tag, gathered.weights),
        "optimizer": adamw_state_dict(gathered, param_order(tag, gathered.weights), tag.dir),
        "scheduler": tag.header.get("lr_scheduler"),
        "scaler": grad_scaler_state(gathered.loss_scaler) if gathered.loss_scaler else None,
        "config": state["config"],
        "meta": meta,
        **ema,
    })


def _ema_meta(tag: Tag) -> dict:
    saved = read_ema_file(ema_file(tag.dir, 0))
    return {"ema_decay": float(saved["decay"]), "ema_updates": int(saved.get("updates", 0))}


def adamw_state_dict(gathered: Gathered, order: list[str], source: Path) -> dict:
    """What ``torch.optim.AdamW(model.parameters()).state_dict()`` would hold after the same training; with several
    parameter groups (TRAIN.FIX_KEYS) what AdamW over ``ds_deblur.zero.staged.param_groups(model, cfg)`` would hold.
    Parameters are numbered in ``model.parameters()`` order (``order``), frozen ones included."""
    groups = gathered.param_groups
    if len(groups) == 1:
        members = [list(range(len(order)))]
    else:
        index = {name: i for i, name in enumerate(order)}
        members = [sorted(index[name] for name in names) for names in gathered.group_names]
    state = {}
    for index, name in enumerate(order):
        if name in gathered.steps:
            state[index] = {"step": torch.tensor(gathered.steps[name], dtype=torch.float32),
                            **{key: tensors[name] for key, tensors in gathered.moments.items()}}
    return {"state": state, "param_groups": [_adamw_group(settings, params)
                                             for settings, params in zip(groups, members)]}


def _adamw_group(settings: dict, params: list[int]) -> dict:
    template = torch.optim.AdamW([torch.zeros(1)]).state_dict()["param_groups"][0]
    group = {key: settings.get(key, default) for key, default in template.items() if key != "params"}
    group["betas"] = tuple(group["betas"])
    if "initial_lr" in settings:
        group["initial_lr"] = settings["initial_lr"]
    group["params"] = params
    return group


def plain(obj: Any, where: str = "checkpoint") -> Any:
    """``obj`` rebuilt from builtin types and tensors only, so ``weights_only=True`` can read it back.

    Subclasses are reduced to their base (``torch.__version__`` is a ``str`` subclass the weights-only
    unpickler refuses); anything else is an error naming where it sits."""
    if obj is None or isinstance(obj, (bool, torch.Tensor, torch.dtype, torch.Size)):
        return obj
    for kind in (int, float, str):
        if isinstance(obj, kind):
            return kind(obj)
    if isinstance(obj, dict):
        return {plain(k, where): plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return tuple(items) if isinstance(obj, tuple) else items
    raise CheckpointFormatError(f"{where} is a {type(obj).__name__}, which a weights_only checkpoint cannot hold; "
                                f"store builtin types (int, float, str, list, dict) or tensors there")


def grad_scaler_state(loss_scaler: dict) -> dict:
    """The ``torch.amp.GradScaler`` state nearest to DeepSpeed's loss scaler (values as in ``meta['loss_scaler']``).

    DeepSpeed grows the scale when the number of good steps before the current one since the last overflow is a
    positive multiple of ``scale_window``; GradScaler grows when its tracker reaches ``growth_interval``. The
    tracker below makes the next growth land on the same step (right after an overflow GradScaler also starts at
    0, so it grows one step earlier than DeepSpeed would). Hysteresis and the minimum scale have no GradScaler
    counterpart; the exact DeepSpeed values stay in ``meta['loss_scaler']``. A static scale never changes."""
    scale = float(loss_scaler["cur_scale"])
    if not loss_scaler.get("dynamic", False):
        return {"scale": scale, "growth_factor": 1.0, "backoff_factor": 1.0, "growth_interval": 1,
                "_growth_tracker": 0}
    window = int(loss_scaler["scale_window"])
    good_steps = int(loss_scaler["cur_iter"]) - int(loss_scaler["last_overflow_iter"]) - 1
    return {
        "scale": scale,
        "growth_factor": float(loss_scaler["scale_factor"]),
        "backoff_factor": 1.0 / float(loss_scaler["scale_factor"]),
        "growth_interval": window,
        "_growth_tracker": (good_steps - 1) % window if good_steps > 0 else 0,
    }


def loss_scaler_values_of(grad_scaler: dict) -> dict:
    """DeepSpeed loss-scaler values from a ``torch.amp.GradScaler`` state (the inverse of ``grad_scaler_state``):
    the same scale, and counters that make the next growth land where GradScaler's would (for a window equal to
    its growth interval)."""
    tracker = int(grad_scaler.get("_growth_tracker", 0))
    return {"cur_scale": float(grad_scaler["scale"]), "cur_iter": tracker + 1, "last_overflow_iter": -1}
