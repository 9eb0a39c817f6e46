"""State-dict keys of a checkpoint file as this model names them: the only place wrapper prefixes are taken off.

The original trainer compiles the model by default (TRAIN.COMPILE_MODEL) and saves the compiled module's
``state_dict()``, so every key of its last.pth/best.pth may start with torch.compile's ``_orig_mod.``; a module
saved inside DistributedDataParallel or DataParallel starts with ``module.``; both can be stacked in either
order. Optimizer states are numbered by position in ``parameters()``, which the wrappers do not change, so only
the model's keys need this.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from ds_deblur import distributed
from ds_deblur.errors import CheckpointFormatError
from ds_deblur.models import rename_legacy_keys

Say = Callable[[str], None]

# Leading key prefix -> the wrapper that adds it.
WRAPPER_PREFIXES = {"_orig_mod.": "torch.compile's", "module.": "DistributedDataParallel's"}


def _say_on_main(text: str) -> None:
    if distributed.is_main():
        print(text, flush=True)


def _unwrapped(key: str) -> tuple[str, tuple[str, ...]]:
    """``key`` without its leading wrapper prefixes, and the prefixes taken off (outermost first)."""
    removed = []
    while True:
        prefix = next((p for p in WRAPPER_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            return key, tuple(removed)
        key = key[len(prefix):]
        removed.append(prefix)


def strip_wrapper_prefixes(state_dict: Mapping[str, Any], source: object, say: Say = _say_on_main) -> dict[str, Any]:
    """``state_dict`` with leading ``_orig_mod.`` / ``module.`` taken off its keys, in the same order; when any
    were, ``say`` (default: print on rank 0) gets one line naming ``source`` and what was stripped."""
    stripped: dict[str, Any] = {}
    seen: dict[str, int] = {}
    for key, value in state_dict.items():
        bare, removed = _unwrapped(key)
        if bare in stripped:  # one of the two would be dropped without a word
            raise CheckpointFormatError(f"{source} holds both {bare!r} and a wrapped copy of it ({key!r})")
        stripped[bare] = value
        for prefix in dict.fromkeys(removed):
            seen[prefix] = seen.get(prefix, 0) + 1
    if seen:
        carried = " and ".join(f"{WRAPPER_PREFIXES[p]} '{p}' prefix ({n} keys)" for p, n in seen.items())
        say(f"[ckpt] {source}: keys carried {carried}; stripped")
    return stripped


def model_keys(state_dict: Mapping[str, Any], source: object, say: Say = _say_on_main) -> dict[str, Any]:
    """The model state dict read from ``source`` under the model's names: wrapper prefixes stripped, then legacy
    ds_deblur parameter names mapped (``ds_deblur.models.rename_legacy_keys``)."""
    return rename_legacy_keys(strip_wrapper_prefixes(state_dict, source, say))
