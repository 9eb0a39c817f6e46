"""Inputs in other spellings than the schema's, turned into the schema's before anything is checked.

Two kinds, each with its own entry point:

* The original trainer's YAML files (S-VRT @303619f): its second names of a setting (``SPELLINGS``) and the keys
  that mean nothing under DeepSpeed (``IGNORED_KEYS``, read with a warning saying why). ``translate`` rewrites a
  raw file, ``translate_override`` one ``--set`` item. Other input formats (S-VRT's current KAIR-style JSON option
  files) belong here too, as a reader that returns a raw dict and then goes through ``translate``.
* Configs stored in checkpoints that ds_deblur wrote with its earlier key names (``EARLIER_KEYS``):
  ``from_stored`` renames them, so those checkpoints still resume and infer. YAML files and ``--set`` do not accept
  these names; an unknown-key error suggests the key they became.
"""
from __future__ import annotations

import warnings
from typing import Any, NamedTuple, Optional

from ds_deblur.config.raw import deep_copy, get_path, pop_path, set_path
from ds_deblur.errors import ConfigError


class Spelling(NamedTuple):
    key: str  # the canonical key
    warn: bool = False  # read with a warning naming the canonical key


# The original trainer's other spelling -> the canonical key. Both given with different values is an error naming
# both.
SPELLINGS = {
    "DATA.NUM_VOXEL_BINS": Spelling("DATA.K"),  # its files give both names
    "MODEL.SPIKE_TSA.MAX_BATCH_TOKENS": Spelling("MODEL.SPIKE_TSA.CHUNK_PIXELS"),
    "MODEL.FUSE.MAX_BATCH_TOKENS": Spelling("MODEL.FUSE.CHUNK_PIXELS"),
    "TRAIN.ACCUMULATE_GRAD": Spelling("TRAIN.GRADIENT_ACCUMULATION_STEPS", warn=True),
}

_PRECISION = "precision is set by the DeepSpeed JSON (fp16/bf16 sections; without --deepspeed_config: fp16 on CUDA)"
_CHUNKS = "attention is chunked by pixel count: {0}.CHUNK_PIXELS (the original's {0}.MAX_BATCH_TOKENS) sets its size"
_TIMING = ("the perf/step_time_ms, perf/data_time_ms and perf/samples_per_sec TensorBoard tags (every "
           "LOG.LOG_EVERY_STEPS) replace the original's timing log")
# The original trainer's keys that mean nothing under DeepSpeed: accepted with a warning that says why.
IGNORED_KEYS = {
    "TRAIN.AMP_ENABLED": _PRECISION,
    "TRAIN.AMP_OPT_LEVEL": _PRECISION,
    "TRAIN.MIXED_PRECISION": _PRECISION,
    "TRAIN.COMPILE_MODEL": "torch.compile is not applied under the DeepSpeed engine",
    "TRAIN.DISTRIBUTED": "the launcher (deepspeed/torchrun) decides the world size",
    "TRAIN.NUM_GPUS": "the launcher (deepspeed --num_gpus / torchrun --nproc_per_node) decides the world size",
    "DATA.USE_RAM_CACHE": "per-worker RAM caches multiplied host memory; use DATA.USE_PRECOMPUTED_VOXELS",
    "DATA.CACHE_SIZE_GB": "per-worker RAM caches multiplied host memory; use DATA.USE_PRECOMPUTED_VOXELS",
    "DATA.ALIGN_LOG_PATHS": "the original's alignment logs are not read; frames pair by file name",
    **{f"MODEL.{part}.{key}": _CHUNKS.format(f"MODEL.{part}") for part in ("SPIKE_TSA", "FUSE")
       for key in ("ADAPTIVE_CHUNK", "CHUNK_SIZE", "CHUNK_SHAPE")},
    **{f"LOG.{key}": _TIMING for key in ("ENABLE_TIMING_LOG", "TIMING_CONSOLE", "TIMING_FILE",
                                         "TIMING_CONSOLE_INTERVAL", "TIMING_FILE_INTERVAL")},
}

# ds_deblur's earlier key names -> the canonical key, for the configs its checkpoints stored with them.
EARLIER_KEYS = {
    "TRAIN.LR": "TRAIN.OPTIM.LR",
    "TRAIN.BETAS": "TRAIN.OPTIM.BETAS",
    "TRAIN.WEIGHT_DECAY": "TRAIN.OPTIM.WEIGHT_DECAY",
    "TRAIN.WARMUP_STEPS": "TRAIN.SCHED.WARMUP_STEPS",
    "TRAIN.MIN_LR": "TRAIN.SCHED.MIN_LR",
    "TRAIN.CLIP_GRAD_NORM": "TRAIN.MAX_GRAD_NORM",
    "TRAIN.VAL_EVERY_STEPS": "LOG.VAL_EVERY_STEPS",
    "LOSS.CHARBONNIER_DELTA": "LOSS.CHARBONNIER.DELTA",
    "LOSS.VGG_WEIGHT": "LOSS.VGG_PERCEPTUAL.WEIGHT",
    "LOSS.VGG_LAYER": "LOSS.VGG_PERCEPTUAL.LAYERS",
    "DATA.SPIKE_MEAN": "DATA.NORM.MEAN",
    "DATA.SPIKE_STD": "DATA.NORM.STD",
}


# --- the original trainer's YAML ---------------------------------------------------------------------------------

def translate(raw: dict) -> dict[str, str]:
    """Rewrite a raw config in place into the schema's spelling: warn about and drop ignored keys, move other
    spellings to their canonical keys (an error when both are given with different values). Returns canonical
    key -> the spelling the file used, for errors that name the key as the user wrote it."""
    warn_ignored([key for key in IGNORED_KEYS if pop_path(raw, key)[0]])
    spelled = {}
    for old, spelling in SPELLINGS.items():
        found, value = pop_path(raw, old)
        if not found:
            continue
        given, current = get_path(raw, spelling.key)
        if given and comparable(current) != comparable(value):
            raise conflict(old, value, spelling.key, current, spelling.key)
        _warn_renamed(old, spelling, value)
        set_path(raw, spelling.key, value)
        if not given:
            spelled[spelling.key] = old
    return spelled


def translate_override(key: str, value: Any) -> tuple[Optional[str], Any]:
    """The canonical key of a ``--set`` key (None for an ignored key, after its warning) and its value."""
    if key in IGNORED_KEYS:
        warn_ignored([key])
        return None, value
    spelling = SPELLINGS.get(key)
    if spelling is None:
        return key, value
    _warn_renamed(key, spelling, value)
    return spelling.key, value


def _warn_renamed(old: str, spelling: Spelling, value: Any) -> None:
    if spelling.warn:
        warnings.warn(f"config key {old} is renamed {spelling.key}; using its value {value!r}", UserWarning,
                      stacklevel=5)


def warn_ignored(keys: list[str]) -> None:
    """One warning per reason, naming every key it covers."""
    by_reason: dict[str, list[str]] = {}
    for key in keys:
        by_reason.setdefault(IGNORED_KEYS[key], []).append(key)
    for why, names in by_reason.items():
        what = f"config key {names[0]} is" if len(names) == 1 else f"config keys {', '.join(names)} are"
        warnings.warn(f"{what} ignored under DeepSpeed: {why}", UserWarning, stacklevel=5)


def comparable(value: Any) -> Any:
    """A raw YAML value made comparable across spellings: numeric text is a number (PyYAML reads 1e-4 as text)."""
    if isinstance(value, (list, tuple)):
        return [comparable(v) for v in value]
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def conflict(first: str, first_value: Any, second: str, second_value: Any, canonical: str) -> ConfigError:
    alias = second if first == canonical else first
    return ConfigError(f"{first} = {comparable(first_value)!r} and {second} = {comparable(second_value)!r} are the "
                       f"same setting ({alias} is read as {canonical}) with different values: give only one of them")


# --- configs stored in checkpoints -------------------------------------------------------------------------------

def from_stored(config: dict) -> dict:
    """A checkpoint's stored config with ds_deblur's earlier key names renamed (a copy; canonical ones win)."""
    raw = deep_copy(config)
    for old, canonical in EARLIER_KEYS.items():
        found, value = pop_path(raw, old)
        if found and not get_path(raw, canonical)[0]:
            set_path(raw, canonical, [value] if old == "LOSS.VGG_LAYER" else value)  # one name; LAYERS lists it
    return raw
