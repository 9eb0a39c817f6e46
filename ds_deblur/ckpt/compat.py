"""Which config changes a resumed run accepts: a key that shapes the model or its inputs must stay (the weights
would not fit), any other change is allowed and said, with what it means for the resumed run."""
from __future__ import annotations

from typing import Any

from ds_deblur.config.schema import fixed_on_resume, walk
from ds_deblur.errors import CheckpointError

# Keys that shape the model, its inputs or the optimizer's parameter groups: a resumed run must keep them (the
# weights and the saved optimizer state would not fit otherwise). The schema declares them (fixed_on_resume).
FIXED_KEYS = fixed_on_resume()
KEYS = {name for name, _, _ in walk()}  # a key whose value is a mapping (MODEL.NETG) compares as one value
# What a change of these means for the resumed run.
CHANGE_NOTES = {
    "TRAIN.BATCH_SIZE": "the remaining samples of the epoch are grouped into different batches",
    "TRAIN.GRADIENT_ACCUMULATION_STEPS": "each optimizer step now sees a different number of samples",
    "TRAIN.OPTIM.LR": "the restored schedule keeps its own LR (it scales the saved base LR); use --reset-optimizer "
                      "to start a schedule at the new LR",
    "TRAIN.TOTAL_STEPS": "the cosine decay keeps its saved length; use --reset-optimizer for a new one",
    "TRAIN.EPOCHS": "the cosine decay keeps its saved length; use --reset-optimizer for a new one",
    "SEED": "the data order of later epochs changes",
    "DATA.CROP_SIZE": "augmentation changes from here on",
    "TRAIN.FIX_LR_MUL": "the restored schedule keeps the fixed group's own LR; use --reset-optimizer for the new one",
    "TRAIN.EMA_DECAY": "the EMA continues from its saved weights with the new decay (from 0: it starts at the "
                       "restored weights)",
}


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and f"{prefix}{key}" not in KEYS:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_config_change(old: dict, new: dict, old_world: int, new_world: int, warn: Any = print) -> None:
    """Raise on a changed model/data-shape key (listing old and new values); warn about other changes."""
    before, after = _flatten(old), _flatten(new)
    fatal = [f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in FIXED_KEYS if before.get(k) != after.get(k)]
    if fatal:
        raise CheckpointError("the checkpoint was trained with a different model, data shape or set of trained "
                              "parameters:\n  " + "\n  ".join(fatal) + "\nrestore these values (or start a new run "
                              "with --init-weights if the weights still fit: a new stage of fine-tuning)")
    changed = [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    for key in changed:
        note = CHANGE_NOTES.get(key, "takes effect from the resumed step")
        warn(f"[train] config changed since the checkpoint: {key}: {before.get(key)!r} -> {after.get(key)!r} "
             f"({note})")
    if old_world != new_world:
        warn(f"[train] world size changed {old_world} -> {new_world}: the data order continues unchanged, "
             f"split over {new_world} ranks")
