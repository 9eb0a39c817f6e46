"""The single-file checkpoint (``last.pth``, ``best.pth``): the original trainer's format, readable without DeepSpeed.

Layout (DESIGN §6), everything loadable with ``torch.load(path, weights_only=True)``::

    {'step', 'epoch', 'best_psnr',
     'state_dict': fp32 weights and buffers of the plain nn.Module (no 'module.' prefix),
     'optimizer':  torch.optim.AdamW state dict (params by index in model.parameters() order),
     'scheduler':  torch LR scheduler state dict (LambdaLR),
     'scaler':     torch.amp.GradScaler state dict for fp16 runs, else None,
     'config':     the ds_deblur config dict (``load_config(ckpt['config'])``),
     'meta':       format, source tag and dir, world size, ZeRO stage, precision, versions, best_step,
                   data (sampler position), loss_scaler (DeepSpeed's own loss-scaler values, fp16 only)}

Reading only ever uses ``weights_only=True``: a file whose pickle would import or call code is refused before
anything runs.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable, Union

import torch

from ds_deblur.errors import CheckpointFormatError, CheckpointNotFoundError

FORMAT = 1
KEYS = ("step", "epoch", "best_psnr", "state_dict", "optimizer", "scheduler", "scaler", "config", "meta")


def checkpoint_not_found(path: Union[str, Path]) -> CheckpointNotFoundError:
    return CheckpointNotFoundError(path)


def save_atomic(obj: Any, path: Union[str, Path]) -> Path:
    """``torch.save`` that never leaves a half-written ``path`` (see ``write_atomic``)."""
    return write_atomic(path, lambda tmp: torch.save(obj, tmp))


def write_atomic(path: Union[str, Path], write: Callable[[Path], None]) -> Path:
    """Run ``write`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    A crash at any moment leaves either the previous file or the new one, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    # The rename itself is only durable once the directory entry is on disk.
    fsync_path(path.parent)
    return path


def fsync_path(path: Path) -> None:
    """Flush a file, or a directory's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_weights_only(path: Union[str, Path], mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file and say what is wrong.

    ``mmap=True`` maps the tensors instead of reading them (for looking at a file without loading it)."""
    path = Path(path)
    if not path.is_file():
        raise checkpoint_not_found(path)
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
                                    f"re-export it with python -m ds_deblur.convert") from None


def _unpickler_reason(err: BaseException) -> str:
    # torch's message is a page of advice; the line naming the refused global is the useful part.
    for line in str(err).splitlines():
        if "GLOBAL" in line or "Unsupported operand" in line:
            return line.replace("WeightsUnpickler error:", "").split(". Please use")[0].strip().rstrip(".")
    return _first_line(err)


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def load_single_file(path: Union[str, Path]) -> dict:
    """Load and check a single-file checkpoint; raises ``CheckpointFormatError`` naming the file if it is not ours."""
    ckpt = read_weights_only(path)
    if not is_single_file(ckpt):
        found = sorted(map(str, ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointFormatError(
            f"{path} is not a ds_deblur single-file checkpoint: expected keys {list(KEYS)}, found {found}. "
            f"A weights-only export is loaded with --init-weights, not --resume")
    if ckpt["meta"].get("format") != FORMAT:
        raise CheckpointFormatError(f"{path} has single-file format {ckpt['meta'].get('format')!r}; this ds_deblur "
                                    f"reads format {FORMAT}")
    return ckpt


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


def is_single_file(obj: Any) -> bool:
    return isinstance(obj, dict) and all(key in obj for key in KEYS) and isinstance(obj["meta"], dict)


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


def load_weights(model: torch.nn.Module, path: Union[str, Path]) -> str:
    """Load model weights for ``--init-weights``: a single file (``state_dict``), a weights export (.pth or
    .safetensors) or an official VRT release file keyed ``params`` (loaded into ``model.vrt``). Strict: every
    key must fit. Never unpickles code. Returns what was loaded, in words."""
    path = Path(path)
    if not path.is_file():
        raise checkpoint_not_found(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        weights, target, what = load_file(str(path)), model, "weights export"
    else:
        obj = read_weights_only(path)
        if not isinstance(obj, dict):
            raise CheckpointFormatError(f"{path} holds a {type(obj).__name__}, not model weights")
        if "state_dict" in obj:
            weights, target, what = obj["state_dict"], model, f"single file (step {obj.get('step')})"
        elif "params" in obj:
            weights, target, what = obj["params"], getattr(model, "vrt", model), "official VRT weights (backbone)"
        else:
            weights, target, what = obj, model, "weights export"
    result = target.load_state_dict(weights, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointFormatError(
            f"{path} ({what}) does not fit this model: missing {_few(result.missing_keys)}, unexpected "
            f"{_few(result.unexpected_keys)}. Check MODEL.PRESET and the other MODEL keys")
    return what


def _few(keys: list) -> str:
    return f"{len(keys)} keys" + (f" ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})" if keys else "")
