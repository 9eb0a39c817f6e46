"""Model weights from any kind of checkpoint (for ``--init-weights`` and inference) and fp32 weights exports.

Kinds read: a single file (``last.pth``/``best.pth``, or any dict with a ``state_dict``), a complete tag or
checkpoint directory, a weights export (``.pth`` dict of tensors or ``.safetensors``; ours carry the run's config
and spike input as metadata), and an official VRT release file keyed ``params`` (weights of ``model.vrt``).

EMA weights (TRAIN.EMA_DECAY): a single file's ``state_dict_ema`` or a tag's ``ema_rank{r}.pt`` files.
``read_weights(path, ema=None)`` takes them when the run validated with them (its LOG.VAL_USE_EMA), ``ema=True``
always (an error when there are none), ``ema=False`` never.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Optional, Union

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ds_deblur.ckpt.atomic import save_atomic, write_atomic
from ds_deblur.ckpt.gather import ema_state_dict, fp32_state_dict, gather, has_ema, module_state_dict, open_tag
from ds_deblur.ckpt.keys import model_keys
from ds_deblur.ckpt.single_file import read_weights_only
from ds_deblur.ckpt.tags import Location, resolve
from ds_deblur.errors import CheckpointFormatError
from ds_deblur.models.lora import as_base_weights, fold

PathLike = Union[str, Path]


@dataclass
class Weights:
    """A state dict plus what rebuilds its model: the run's config and spike input (None when not recorded)."""
    state_dict: dict[str, torch.Tensor]
    config: Optional[dict]
    spike: Optional[dict]
    what: str
    backbone_only: bool = False  # an official VRT release: the weights of ``model.vrt``


def read_weights(path: PathLike, ema: Optional[bool] = False) -> Weights:
    """The weights held by any checkpoint kind at ``path`` (a missing path is 'Checkpoint not found'), keyed as this
    model names them (``ckpt.keys.model_keys``); ``ema``: its EMA weights (True), its weights (False), or whichever
    the run validated with (None)."""
    location = resolve(path)
    weights = _read(location, ema)
    return replace(weights, state_dict=model_keys(weights.state_dict, location.path))


def _read(location: Location, ema: Optional[bool]) -> Weights:
    path = location.path
    if location.kind == "tag":
        tag = open_tag(path)
        state = tag.state
        if _wants_ema(ema, state.get("config"), has_ema(tag), path):
            return Weights(ema_state_dict(path), state.get("config"), state.get("spike"),
                           f"tag {path.name}, EMA weights")
        return Weights(fp32_state_dict(path), state.get("config"), state.get("spike"), f"tag {path.name}")
    if path.suffix == ".safetensors":
        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata() or {}
        if ema and meta.get("weights") != "ema":
            raise CheckpointFormatError(f"{path} is an export of the trained weights, not of the EMA weights "
                                        f"(export those with ds-deblur convert ... --weights-only --ema)")
        return Weights(load_file(str(path)), json.loads(meta.get("config", "null")),
                       json.loads(meta.get("spike", "null")), "weights export")
    obj = read_weights_only(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
        if _wants_ema(ema, obj.get("config"), isinstance(obj.get("state_dict_ema"), dict), path):
            return Weights(obj["state_dict_ema"], obj.get("config"), meta.get("spike"),
                           f"single file (step {obj.get('step')}), EMA weights")
        return Weights(obj["state_dict"], obj.get("config"), meta.get("spike"),
                       f"single file (step {obj.get('step')})")
    if ema:
        raise CheckpointFormatError(f"{path} holds one set of weights, no EMA weights beside them: only a tag or "
                                    f"last.pth/best.pth of a run with TRAIN.EMA_DECAY > 0 does (a --weights-only "
                                    f"--ema export loads as it is, without asking for EMA weights)")
    if isinstance(obj, dict) and isinstance(obj.get("params"), dict):
        return Weights(obj["params"], None, None, "official VRT weights (backbone)", backbone_only=True)
    if isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
        return Weights(obj, None, None, "weights export")
    kind = f"a dict with keys {sorted(map(str, obj))[:6]}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
    raise CheckpointFormatError(f"{path} holds {kind}: neither a ds_deblur checkpoint nor model weights")


def _wants_ema(ema: Optional[bool], config: Optional[dict], available: bool, path: Path) -> bool:
    if ema is None:  # what the run validated and picked its best with
        return available and bool(((config or {}).get("LOG") or {}).get("VAL_USE_EMA"))
    if ema and not available:
        raise CheckpointFormatError(f"{path} has no EMA weights: the run trained with TRAIN.EMA_DECAY 0")
    return ema


def load_into(model: torch.nn.Module, weights: Weights, path: PathLike, partial: bool = False) -> Optional[str]:
    """Load strictly: every key of the model (of its VRT backbone for an official VRT file: ``model.vrt``, or
    S-VRT's network's own backbone keys) must be in the weights. Plain weights fill the base layers of a model with
    LoRA adapters (the adapters stay as initialised). ``partial``: load the tensors whose names and shapes match,
    leave the rest as initialised, and return the report of :func:`load_matching`."""
    source = f"{path} ({weights.what})"
    svrt_backbone = weights.backbone_only and hasattr(model, "with_backbone")
    target = getattr(model, "vrt", model) if weights.backbone_only and not svrt_backbone else model
    state = as_base_weights(target, weights.state_dict)
    if partial:
        return load_matching(target, state, source)
    if svrt_backbone:
        try:
            state = model.with_backbone(state)
        except ValueError as err:
            raise CheckpointFormatError(f"{source}: {err}") from None
    load_state_dict_strict(target, state, source)
    return None


def load_matching(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: object) -> str:
    """Copy into ``module`` the tensors of ``state_dict`` whose names and shapes match (S-VRT's partial load, by
    name rather than KAIR's by position); returns the report: loaded, skipped for shape, missing, unexpected."""
    own = module.state_dict()
    loaded = {k: v for k, v in state_dict.items() if k in own and own[k].shape == v.shape}
    if not loaded:
        raise CheckpointFormatError(f"{source} shares no tensor of the same name and shape with this model: "
                                    f"nothing to load partially (check the file and MODEL.NETG / MODEL.PRESET)")
    module.load_state_dict(loaded, strict=False)
    misshapen = [f"{k} file {tuple(v.shape)} model {tuple(own[k].shape)}" for k, v in state_dict.items()
                 if k in own and k not in loaded]
    rows = [("loaded", list(loaded), False), ("skipped for shape", misshapen, True),
            ("missing (as initialised)", [k for k in own if k not in state_dict], True),
            ("unexpected (ignored)", [k for k in state_dict if k not in own], True)]
    lines = [f"partial load of {source}:"]
    for label, keys, listed in rows:
        names = f"  {', '.join(keys[:6])}{', ...' if len(keys) > 6 else ''}" if listed and keys else ""
        lines.append(f"  {label:<26}{len(keys):>7}{names}")
    return "\n".join(lines)


def load_state_dict_strict(module: torch.nn.Module, state_dict: dict, source: object) -> None:
    """``module.load_state_dict(state_dict)`` with every key required, and an error naming ``source`` and the
    misfit keys and shapes, not a traceback."""
    try:
        result = module.load_state_dict(state_dict, strict=False)
    except RuntimeError as err:  # shapes that differ
        shapes = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]
        raise CheckpointFormatError(f"{source} does not fit this model: {len(shapes)} tensors of another shape, e.g. "
                                    f"{shapes[:2]}. Check MODEL.PRESET and the other MODEL keys") from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointFormatError(
            f"{source} does not fit this model: missing {_few(result.missing_keys)}, unexpected "
            f"{_few(result.unexpected_keys)}. Check MODEL.PRESET and the other MODEL keys")


def load_weights(model: torch.nn.Module, path: PathLike, partial: bool = False) -> tuple[str, Optional[str]]:
    """``--init-weights``: load the weights of ``path`` into ``model``; returns what was loaded, in words, and with
    ``partial`` the report of :func:`load_matching`."""
    weights = read_weights(path)
    return weights.what, load_into(model, weights, path, partial)


def lora_scaling(config: Optional[dict], source: object) -> float:
    """alpha / rank of the LoRA adapters of a run with ``config`` (its saved config); an error when it has none."""
    model = (config or {}).get("MODEL") or {}
    if not model.get("LORA_RANK"):
        raise CheckpointFormatError(f"{source} was trained without LoRA adapters (MODEL.LORA_RANK 0): there is "
                                    f"nothing to merge; leave out --merge-lora")
    return float(model["LORA_ALPHA"]) / int(model["LORA_RANK"])


def _few(keys: list) -> str:
    return f"{len(keys)} keys" + (f" ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})" if keys else "")


def export_weights(tag_dir: Path, out_path: PathLike, ema: bool = False, merge_lora: bool = False) -> Path:
    """Write a complete tag's fp32 weights (``ema``: its EMA weights) and buffers: safetensors for
    ``*.safetensors``, else ``torch.save``; ``merge_lora``: with the LoRA adapters folded in (S-VRT's
    ``_G_merged.pth`` keys), which a run without adapters loads."""
    tag = open_tag(tag_dir)
    if ema and not has_ema(tag):
        raise CheckpointFormatError(f"{tag_dir} has no EMA weights (no ema_rank*.pt: the run trained with "
                                    f"TRAIN.EMA_DECAY 0); leave out --ema")
    gathered = gather(tag, with_moments=False, with_ema=ema)
    weights = module_state_dict(tag, gathered.ema if ema else gathered.weights)
    if merge_lora:
        weights = fold(weights, lora_scaling(tag.state.get("config"), tag_dir))
    if Path(out_path).suffix != ".safetensors":
        return save_atomic(weights, out_path)
    seen: set[int] = set()
    tensors = {}
    for key, value in weights.items():  # safetensors refuses shared storage: tied weights get their own copy
        tensors[key] = value.contiguous() if id(value) not in seen else value.clone()
        seen.add(id(value))
    # The run's config and spike input ride along as metadata, so that inference can rebuild the model.
    metadata = {"format": "pt", "tag": tag.dir.name, "config": json.dumps(tag.state.get("config")),
                "spike": json.dumps(tag.state.get("spike")), "weights": "ema" if ema else "trained"}
    return write_atomic(out_path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
