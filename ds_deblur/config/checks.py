"""Validation of a built config: one loop over every limit the schema declares, then the rules between keys.
Every error is a ``ConfigError`` that starts with the key to change."""
from __future__ import annotations

from typing import Any, Callable

from ds_deblur.config.schema import TOTAL_WORKERS_FORMAT, Config, is_list, value_of, walk
from ds_deblur.errors import ConfigError

# (what a limit asks, completing "KEY ...", as errors and docs/config.md say it; the test of the value)
Requirement = tuple[str, Callable[[Any], bool]]

_BOUNDS = {"ge": (">=", "[", lambda v, b: v >= b), "gt": (">", "(", lambda v, b: v > b),
           "le": ("<=", "]", lambda v, b: v <= b), "lt": ("<", ")", lambda v, b: v < b)}


def requirements(hint: Any, limits: dict) -> list[Requirement]:
    """The declared ``limits`` of a key of type ``hint``: on a list, ``length`` counts it, the others test each
    entry."""
    listed = is_list(hint)
    entries = "entries " if listed else ""
    out: list[Requirement] = []
    if "length" in limits:
        n = limits["length"]
        out.append((f"must be {n} value{'s' * (n != 1)}", lambda value: len(value) == n))
    for text, test in _entry_requirements(limits):
        out.append((entries + text, (lambda value, t=test: all(map(t, value))) if listed else test))
    if limits.get("nonempty"):
        out.append(("must not hold an empty string", all) if listed else ("must not be empty", bool))
    return out


def _entry_requirements(limits: dict) -> list[Requirement]:
    out: list[Requirement] = []
    bounds = [(name, limits[name]) for name in _BOUNDS if name in limits]
    if bounds:
        out.append((f"must be {_bounds_text(bounds)}",
                    lambda v: all(_BOUNDS[name][2](v, bound) for name, bound in bounds)))
    if "choices" in limits:
        choices, fold = limits["choices"], limits.get("ignore_case", False)
        text = f"one of {', '.join(map(str, choices))}" if len(choices) > 1 else str(choices[0])
        out.append((f"must be {text}", lambda v: (v.lower() if fold else v) in choices))
    if "multiple_of" in limits:
        m = limits["multiple_of"]
        out.append((f"must be a positive multiple of {m}", lambda v: v > 0 and v % m == 0))
    return out


def _bounds_text(bounds: list[tuple[str, Any]]) -> str:
    if len(bounds) == 1:
        (name, bound), = bounds
        return f"{_BOUNDS[name][0]} {bound}"
    (low, a), (high, b) = bounds
    return f"in {_BOUNDS[low][1]}{a}, {b}{_BOUNDS[high][1]}"


def validate(cfg: Config) -> None:
    """Check every declared limit, then the rules between keys."""
    for name, f, hint in walk():
        check_limits(name, value_of(cfg, name), hint, f.metadata["limits"])
    check_rules(cfg)


def check_limits(name: str, value: Any, hint: Any, limits: dict) -> None:
    if limits.get("required") and value in (None, "", []):
        raise ConfigError(f"{name} is missing: set it in the YAML or with --set {name}=VALUE")
    if value is None:
        return
    why = f" ({limits['why']})" if "why" in limits else ""
    for text, holds in requirements(hint, limits):
        if not holds(value):
            raise ConfigError(f"{name} {text}, got {value!r}{why}")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def check_rules(cfg: Config) -> None:
    """The rules that involve more than one key, or a format the limits cannot say."""
    data, loader, train, log = cfg.DATA, cfg.DATALOADER, cfg.TRAIN, cfg.LOG
    _check_data_roots(data)
    _require(data.SPIKE_DIR != data.VOXEL_CACHE_DIRNAME, f"DATA.SPIKE_DIR must be a folder name other than "
                                                         f"DATA.VOXEL_CACHE_DIRNAME, got {data.SPIKE_DIR!r}")
    _require(bool(data.IMAGE_EXTS) and all(e.startswith(".") for e in data.IMAGE_EXTS),
             f"DATA.IMAGE_EXTS must list extensions with their dot, e.g. ['.png'], got {data.IMAGE_EXTS}")
    _check_crop("DATA.CROP_SIZE", data.CROP_SIZE)
    _require(data.RAW_WINDOW_LENGTH % 2 == 1, f"DATA.RAW_WINDOW_LENGTH must be odd (a window centred in the exposure),"
                                              f" got {data.RAW_WINDOW_LENGTH}")
    _require(bool(cfg.LOSS.VGG_PERCEPTUAL.LAYERS), "LOSS.VGG_PERCEPTUAL.LAYERS must list at least one VGG16 layer, "
                                                   "e.g. [relu3_3]")
    _require(loader.NUM_WORKERS is None or loader.TOTAL_WORKERS is None,
             f"DATALOADER.NUM_WORKERS = {loader.NUM_WORKERS} and DATALOADER.TOTAL_WORKERS = {loader.TOTAL_WORKERS!r} "
             f"both set the loader workers: give one of them (set the other to null)")
    _check_total_workers(loader.TOTAL_WORKERS)
    _require(train.SCHED.MIN_LR <= train.OPTIM.LR, f"TRAIN.SCHED.MIN_LR must be in [0, TRAIN.OPTIM.LR="
                                                   f"{train.OPTIM.LR}], got {train.SCHED.MIN_LR}")
    _require(train.TOTAL_STEPS is not None or train.EPOCHS is not None,
             "TRAIN.TOTAL_STEPS and TRAIN.EPOCHS are both null: set one to say how long to train")
    _require(train.VAL_TILE_SIZE is None or train.VAL_TILE_OVERLAP < train.VAL_TILE_SIZE,
             f"TRAIN.VAL_TILE_OVERLAP must be in [0, TRAIN.VAL_TILE_SIZE={train.VAL_TILE_SIZE}), got "
             f"{train.VAL_TILE_OVERLAP}")
    _require(train.FIX_ITER == 0 or bool(train.FIX_KEYS) or train.FUSION_FIRST,
             f"TRAIN.FIX_ITER = {train.FIX_ITER} fixes nothing: TRAIN.FIX_KEYS is empty (give the name substrings of "
             f"the parameters to fix, e.g. [spynet, deform]) and TRAIN.FUSION_FIRST is off")
    _check_phases(cfg)
    _require(not log.VAL_USE_EMA or train.EMA_DECAY > 0, "LOG.VAL_USE_EMA is true but TRAIN.EMA_DECAY is 0: there "
                                                         "are no EMA weights (set TRAIN.EMA_DECAY, e.g. 0.999)")


def _check_crop(name: str, size: Any) -> None:
    crop = [size] if isinstance(size, int) else size
    _require(len(crop) in (1, 2) and all(c > 0 and c % 8 == 0 for c in crop),
             f"{name} must be a positive multiple of 8 or [H, W] of them, got {size} (the model's window)")


def _check_phases(cfg: Config) -> None:
    train, fusion = cfg.TRAIN, cfg.LOSS.FUSION
    if train.FUSION_FIRST:
        _require(train.FIX_ITER > 0, "TRAIN.FUSION_FIRST needs TRAIN.FIX_ITER > 0: the number of phase-1 steps")
        _require(cfg.MODEL.NETG is not None, "TRAIN.FUSION_FIRST needs S-VRT's network (MODEL.NETG, from an S-VRT "
                                             "option file): phase 1 trains its fusion module")
        _require(any((fusion.PHASE1_WEIGHT, fusion.PASSTHROUGH_START, fusion.PASSTHROUGH_END, fusion.UPDATE_PENALTY)),
                 "TRAIN.FUSION_FIRST: phase 1 would have no loss: LOSS.FUSION.PHASE1_WEIGHT, PASSTHROUGH_START, "
                 "PASSTHROUGH_END and UPDATE_PENALTY are all 0 (S-VRT's files set phase1_fusion_aux_loss_weight 1)")
    for name in ("HEAD_ONLY_STEPS", "PHASE1_BATCH_SIZE"):
        _require(not getattr(train, name) or train.FUSION_FIRST or name == "PHASE1_BATCH_SIZE" and train.FIX_ITER,
                 f"TRAIN.{name} = {getattr(train, name)} has no effect without "
                 + ("TRAIN.FUSION_FIRST" if name == "HEAD_ONLY_STEPS" else "TRAIN.FIX_ITER > 0 (phase 1)"))
    if cfg.DATA.PHASE1_CROP_SIZE is not None:
        _require(train.FIX_ITER > 0, "DATA.PHASE1_CROP_SIZE has no effect without TRAIN.FIX_ITER > 0 (phase 1)")
        _check_crop("DATA.PHASE1_CROP_SIZE", cfg.DATA.PHASE1_CROP_SIZE)


def _check_data_roots(data: Any) -> None:
    """DATA.ROOT, or S-VRT's separate roots: GT_ROOT and LQ_ROOT together, with SPIKE_ROOT when ROOT is empty; one
    folder each cannot serve two splits (validation would read the training frames) unless {split} names them."""
    _require(bool(data.ROOT) or bool(data.GT_ROOT and data.LQ_ROOT and data.SPIKE_ROOT),
             "DATA.ROOT is missing: set it in the YAML or with --set DATA.ROOT=VALUE (or give DATA.GT_ROOT, "
             "DATA.LQ_ROOT and DATA.SPIKE_ROOT instead)")
    _require(bool(data.GT_ROOT) == bool(data.LQ_ROOT), f"DATA.GT_ROOT and DATA.LQ_ROOT name the sharp and the blurry "
                                                       f"frames together: give both or neither, got GT_ROOT = "
                                                       f"{data.GT_ROOT!r}, LQ_ROOT = {data.LQ_ROOT!r}")
    if data.GT_ROOT and data.TRAIN_SPLIT != data.VAL_SPLIT:
        for name in ("GT_ROOT", "LQ_ROOT"):
            _require("{split}" in getattr(data, name),
                     f"DATA.{name} = {getattr(data, name)!r} names one folder for DATA.TRAIN_SPLIT and DATA.VAL_SPLIT: "
                     f"write {{split}} where the split's name goes, e.g. /data/GOPRO_Large/{{split}}_GT")


def _check_total_workers(value: Any) -> None:
    """A number >= 0, 'auto' or 'cpu*F' (``ds_deblur.data.loader`` turns it into workers per rank)."""
    if value is None:
        return
    if isinstance(value, int):
        _require(value >= 0, f"DATALOADER.TOTAL_WORKERS must be >= 0, got {value}")
        return
    _require(TOTAL_WORKERS_FORMAT.fullmatch(value.strip().lower()) is not None,
             f"DATALOADER.TOTAL_WORKERS must be a number, 'auto' (80% of the CPU cores) or 'cpu*F' (e.g. 'cpu*0.9'), "
             f"got {value!r}")
