"""S-VRT's option files (KAIR-style JSON, its ``options/*.json``) read as ds_deblur configs.

S-VRT configures a run with one JSON file with ``//`` comments: the sections ``netG``, ``datasets`` (``train``,
``test``), ``train``, ``path``, ``val``, ``logging`` and top-level keys (``task``, ``gpu_ids``, ``dist``, ...), as
its ``utils/utils_option.parse`` reads them. ``read_option_file`` reads such a file (``//`` and ``/* */`` comments
outside strings) and ``to_config`` maps it onto the schema with S-VRT's meanings and, where S-VRT has them, its
defaults: ``netG`` is carried verbatim as MODEL.NETG; the dataset, optimizer, schedule, EMA, checkpoint and path
options become DATA, DATALOADER, TRAIN, LOSS, LOG and MODEL keys; what has no meaning here is listed (one warning).
What S-VRT does and ds_deblur cannot do exactly (its LoRA and phase recipe, other schedulers, losses or
optimizers, per-phase sizes) is a ``ConfigError`` naming the option. Credentials (API keys, tokens, passwords,
secrets) are dropped before anything else, so no config, log or error holds them.
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Optional, Union

from ds_deblur.config.legacy import comparable
from ds_deblur.config.raw import get_path, set_path
from ds_deblur.errors import ConfigError

NETWORK = "netG"  # the section that makes a dict an S-VRT option set
SECTIONS = ("train", "path", "val", "logging")  # sections whose keys are mapped (and listed) one by one
PHASES = ("train", "test")  # the datasets sections that are mapped
TOP_LEVEL = (NETWORK, "datasets", *SECTIONS, "task", "model", "gpu_ids", "dist", "scale", "n_channels",
             "find_unused_parameters", "use_static_graph", "runtime")
TRAIN_SET, TEST_SET = "datasets.train", "datasets.test"
SPIKE_DATASET = "traindatasetrgbspike"  # S-VRT's RGB + spike dataset, lower-cased as its define_Dataset compares

# Strings (kept), // comments, /* */ comments (an unclosed one runs to the end of the text).
_TOKENS = re.compile(r'"(?:[^"\\\n]|\\.)*"|//[^\n]*|/\*(?:.*?\*/|.*)', re.S)
_SECRET_WORDS = {"password", "passwd", "secret", "secrets", "credential", "credentials"}
_SECRET_ENDINGS = ("api_key", "apikey", "access_key", "private_key", "token")

TWO_RUN = "train.two_run"  # S-VRT's two-run training: two configs, which ds_deblur/train.py runs one after the other
RUN_NAMES = ("phase1", "phase2")
LORA_DEFAULTS = {"lora_rank": 8, "lora_alpha": 16, "lora_target_modules": ["qkv", "proj"]}  # S-VRT's
# S-VRT's fusion losses: option -> our key (fusion_passthrough_loss_weight is the default of both pass-through ends).
FUSION_LOSSES = {"train.phase1_fusion_aux_loss_weight": "LOSS.FUSION.PHASE1_WEIGHT",
                 "train.fusion_warmup.passthrough_weight_start": "LOSS.FUSION.PASSTHROUGH_START",
                 "train.fusion_warmup.passthrough_weight_end": "LOSS.FUSION.PASSTHROUGH_END",
                 "train.fusion_warmup.update_penalty_weight": "LOSS.FUSION.UPDATE_PENALTY",
                 "train.phase2_fusion_aux_loss_weight": "LOSS.FUSION.PHASE2_WEIGHT"}

# Options whose other values ds_deblur does not do: option -> (the values it does, why). A "*" stands for train
# and test; an absent option has S-VRT's default, which is one of the values.
SUPPORTED_VALUES = {
    "scale": ((1,), "deblurring keeps the frame size"),
    "n_channels": ((3,), "frames are RGB"),
    "datasets.*.scale": ((1,), "deblurring keeps the frame size"),
    "datasets.*.spike_flipud": ((True,), "ds_deblur reads each .dat frame upside down, as S-VRT's spike_flipud true"),
    "datasets.*.rgb_normalize": ((None,), "the model takes RGB frames in [0, 1]"),
    "datasets.*.spike.precomputed.root": (("auto",), "precomputed spike inputs are read beside each clip's spike "
                                                    "folder"),
    "datasets.*.spike_flow.root": (("auto",), "encoding25 windows are read beside each clip's spike folder"),
    "datasets.train.interval_list": (([1],), "training clips are consecutive frames"),
    "datasets.train.dataloader_shuffle": ((True,), "the training order is shuffled by (SEED, epoch)"),
    "train.G_regularizer_orthstep": ((None, 0), "ds_deblur has no weight regularizers"),
    "train.G_regularizer_clipstep": ((None, 0), "ds_deblur has no weight regularizers"),
}

# Options that become one of our keys as they are: option -> our key.
DIRECT = {
    "train.E_decay": "TRAIN.EMA_DECAY",
    "train.fix_lr_mul": "TRAIN.FIX_LR_MUL",
    "train.fix_keys": "TRAIN.FIX_KEYS",
    "train.total_iter": "TRAIN.TOTAL_STEPS",
    "train.checkpoint_save": "LOG.SAVE_EVERY_STEPS",
    "train.checkpoint_print": "LOG.LOG_EVERY_STEPS",
    "train.G_optimizer_lr": "TRAIN.OPTIM.LR",
    "train.G_lossfn_weight": "LOSS.CHARBONNIER.WEIGHT",
    "train.partial_load": "MODEL.INIT_PARTIAL",
    "val.size_patch_overlapping": "TRAIN.VAL_TILE_OVERLAP",
    "logging.use_tensorboard": "LOG.TENSORBOARD",
    f"{TRAIN_SET}.num_frame": "DATA.CLIP_LEN",
    f"{TRAIN_SET}.use_hflip": "DATA.HFLIP",
    f"{TRAIN_SET}.use_rot": "DATA.ROTATE",
    f"{TRAIN_SET}.random_reverse": "DATA.RANDOM_REVERSE",
    f"{TRAIN_SET}.dataloader_prefetch_factor": "DATALOADER.TRAIN_PREFETCH_FACTOR",
    f"{TRAIN_SET}.dataloader_persistent_workers": "DATALOADER.PERSISTENT_WORKERS",
    f"{TEST_SET}.dataloader_prefetch_factor": "DATALOADER.VAL_PREFETCH_FACTOR",
    # S-VRT gives each DDP rank dataloader_num_workers // num_gpu workers: a total, as DATALOADER.TOTAL_WORKERS is
    # (which splits the workers of one node over its ranks: the same on one node).
    f"{TRAIN_SET}.dataloader_num_workers": "DATALOADER.TOTAL_WORKERS",
}

# S-VRT's names of spike_flow.collapse_policy -> DATA.FLOW_SPIKE_POLICY.
COLLAPSE_POLICIES = {"mean": "mean_windows", "mean_window": "mean_windows", "mean_windows": "mean_windows",
                     "compose": "compose_subframes", "compose_subframes": "compose_subframes"}

# Frame and spike roots of the two splits: option (in datasets.train / datasets.test) -> our key.
ROOTS = {"dataroot_gt": "DATA.GT_ROOT", "dataroot_lq": "DATA.LQ_ROOT", "dataroot_spike": "DATA.SPIKE_ROOT"}


class Mapped(NamedTuple):
    raw: dict  # the config in the schema's spelling, for ``load_config``
    ignored: list[str]  # the options that mean nothing here
    spelled: dict[str, str]  # our key -> the option it came from, so that errors name the option


# --- reading ------------------------------------------------------------------------------------------------------

def is_option_source(source: Any) -> bool:
    """Whether ``source`` (a path or a dict) is meant as an S-VRT option file: a ``.json`` path or a dict with
    ``netG``."""
    if isinstance(source, (str, Path)):
        return Path(source).suffix.lower() == ".json"
    return isinstance(source, dict) and NETWORK in source


def read_option_file(path: Path) -> dict:
    """The options of an S-VRT option file; errors name the file and the line."""
    if not path.is_file():
        raise ConfigError(f"Config file not found: {path}")
    try:
        data = json.loads(strip_comments(path.read_text(encoding="utf-8"), str(path)))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err})") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}:{err.lineno}:{err.colno}: not valid JSON ({err.msg}; comments are // and "
                          f"/* */)") from None
    if not isinstance(data, dict) or NETWORK not in data:
        found = f"keys {', '.join(map(str, data)) or '(none)'}" if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f"{path}: expected an S-VRT option file (KAIR-style JSON with a {NETWORK} section, as "
                          f"S-VRT's options/*.json), got {found}; ds_deblur's own configs are YAML")
    return data


def strip_comments(text: str, origin: str) -> str:
    """``text`` with its ``//`` and ``/* */`` comments blanked out; strings (``"http://..."``) are kept and so are
    line breaks, so that JSON errors name the right line."""
    def blank(match: re.Match) -> str:
        token = match.group()
        if token.startswith('"'):
            return token
        if token.startswith("/*") and not token.endswith("*/"):
            line = text.count("\n", 0, match.start()) + 1
            raise ConfigError(f"{origin}:{line}: the /* comment that starts here is not closed with */")
        return re.sub(r"[^\n]", " ", token)
    return _TOKENS.sub(blank, text)


def is_option_key(key: str, options: dict) -> bool:
    """Whether a ``--set`` key names an S-VRT option (``netG.fusion.operator``, ``train.total_iter``) rather than
    one of ours (whose sections are upper-case)."""
    first = key.split(".", 1)[0]
    return first in TOP_LEVEL or first in options


def apply_overrides(options: dict, items: Iterable[tuple[str, Any]]) -> None:
    """Set each (dotted option, value) in the options, before they are mapped."""
    for key, value in items:
        set_path(options, key, value)


def world_size() -> int:
    """The launcher's world size (WORLD_SIZE, as S-VRT's parse reads it); 1 without a launcher."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def without_credentials(value: Any) -> Any:
    """A copy of ``value`` without any key that holds a credential, at any depth."""
    if isinstance(value, dict):
        return {k: without_credentials(v) for k, v in value.items() if not is_credential(str(k))}
    if isinstance(value, list):
        return [without_credentials(v) for v in value]
    return value


def is_credential(name: str) -> bool:
    """``wandb_api_key``, ``logfire_token``, ``*password*``, ``*secret*``; not ``token_dim`` (a model width)."""
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    return bool(_SECRET_WORDS & set(words)) or "_".join(words).endswith(_SECRET_ENDINGS)


def warn_ignored(origin: str, keys: list[str]) -> None:
    """One warning naming every option that means nothing here."""
    if not keys:
        return
    what = f"option {keys[0]} is" if len(keys) == 1 else f"options {', '.join(keys)} are"
    warnings.warn(f"{origin}: S-VRT {what} ignored under DeepSpeed: the launcher sets the devices and world size, "
                  f"the DeepSpeed JSON the precision, and ds_deblur has no counterpart of the others", UserWarning,
                  stacklevel=4)  # the caller of load_config


# --- mapping ------------------------------------------------------------------------------------------------------

class _Mapping:
    """The options being mapped, the config being built, and which options were read."""

    def __init__(self, options: dict, origin: str, given: Iterable[str]) -> None:
        self.options, self.origin, self.given = options, origin, tuple(given)
        self.raw: dict = {}
        self.spelled: dict[str, str] = {}
        self.read: set[str] = set()

    def has(self, source: str) -> bool:
        return get_path(self.options, source)[0]

    def get(self, source: str, default: Any = None) -> Any:
        """The option at ``source`` (``default`` when absent); it counts as read."""
        self.read.add(_unit(source))
        found, value = get_path(self.options, source)
        return value if found else default

    def wanted(self, *targets: str) -> bool:
        """None of our ``targets`` is given with --set (ours win over the options)."""
        return not any(t == g or t.startswith(g + ".") for t in targets for g in self.given)

    def put(self, target: str, value: Any, source: Optional[str] = None) -> None:
        set_path(self.raw, target, value)
        if source is not None:
            self.spelled[target] = source

    def copy(self, source: str, target: str) -> None:
        value = self.get(source)
        if self.has(source) and self.wanted(target):
            self.put(target, value, source)

    def error(self, source: str, text: str) -> ConfigError:
        return ConfigError(f"{self.origin}: {source} {text}")

    def ignored(self) -> list[str]:
        return [unit for unit in _units(self.options) if unit not in self.read]


def to_config(options: dict, origin: str = "S-VRT options", given: Iterable[str] = (),
              world: Optional[int] = None) -> Mapped:
    """Map S-VRT ``options`` onto the schema. ``given``: our keys set with --set (they win: the options that would
    set them are not mapped); ``world``: the number of ranks (default: the launcher's WORLD_SIZE)."""
    options = without_credentials(options)
    _check_recipe(options, origin)
    m = _Mapping(options, origin, given)
    m.copy(NETWORK, "MODEL.NETG")
    for source, target in DIRECT.items():
        m.copy(source, target)
    _check_supported_values(m)
    _map_datasets(m, world_size() if world is None else world)
    _map_train(m)
    _map_paths(m)
    _map_tiles(m)
    return Mapped(m.raw, m.ignored(), m.spelled)


def _unit(source: str) -> str:
    """What the ignored-options list names for ``source``: a key of a mapped section, else a top-level key."""
    parts = source.split(".")
    depth = 3 if parts[0] == "datasets" else 2 if parts[0] in SECTIONS else 1
    return ".".join(parts[:depth])


def _units(options: dict) -> list[str]:
    """Every unit the options hold, in file order."""
    units = []
    for name, value in options.items():
        if name == "datasets" and isinstance(value, dict):
            for phase, section in value.items():
                prefix = f"datasets.{phase}"
                units += [f"{prefix}.{k}" for k in section] if isinstance(section, dict) else [prefix]
        elif name in SECTIONS and isinstance(value, dict):
            units += [f"{name}.{k}" for k in value]
        else:
            units.append(name)
    return units


def _on(value: Any) -> bool:
    """Whether an option turns its feature on: true, non-zero, non-empty, or a section that is enabled (without
    ``enable``: any of its entries on)."""
    if isinstance(value, dict):
        return _on(value["enable"]) if "enable" in value else any(_on(v) for v in value.values())
    return bool(value)


def _check_recipe(options: dict, origin: str) -> None:
    """A two-run file is two configs (``two_run_options``): as one it is an error that says how to read it."""
    found, value = get_path(options, TWO_RUN)
    if found and _on(value):
        raise ConfigError(f"{origin}: {TWO_RUN}.enable is on: S-VRT's two-run training is two runs, which "
                          f"ds_deblur/train.py trains one after the other (docs/svrt.md); to read the file as one "
                          f"run, --set {_off_setting(TWO_RUN, value)}")


def two_run_options(options: dict, origin: str) -> Optional[tuple[dict, dict]]:
    """The option sets of S-VRT's two runs (``train.two_run.enable``), or None when it is off: the file's options
    with ``train.two_run.phase1`` (``phase2``) merged into ``train`` (its ``path`` into ``path``) and two_run off,
    as S-VRT's utils_two_run resolves them. A first run whose fix_iter equals its total_iter is phase 1 throughout
    (S-VRT raises it to total_iter + 1)."""
    found, section = get_path(options, TWO_RUN)
    if not found or not _on(section):
        return None
    runs = []
    for name in RUN_NAMES:
        override = section.get(name) if isinstance(section, dict) else None
        total = override.get("total_iter") if isinstance(override, dict) else None
        if not isinstance(total, int) or isinstance(total, bool) or total < 1:
            raise ConfigError(f"{origin}: {TWO_RUN}.{name}.total_iter must be an int >= 1 (S-VRT's two-run "
                              f"training needs both runs' lengths), got {total!r}")
        run = _merged(options, {"train": {k: v for k, v in override.items() if k != "path"},
                                "path": override.get("path") or {}})
        set_path(run, f"{TWO_RUN}.enable", False)
        runs.append(run)
    first, second = (run["train"] for run in runs)
    if first.get("fix_iter") == first["total_iter"]:
        first["fix_iter"] = first["total_iter"] + 1
    if _on(second.get("G_optimizer_reuse")) or (runs[1]["path"] or {}).get("pretrained_optimizerG"):
        raise ConfigError(f"{origin}: {TWO_RUN}.phase2 must not reuse the first run's optimizer (G_optimizer_reuse, "
                          f"path.pretrained_optimizerG): the second run starts with a fresh one, as in S-VRT")
    return runs[0], runs[1]


def _merged(base: dict, override: dict) -> dict:
    """``base`` with ``override``'s entries, dictionaries merged key by key (S-VRT's deep_merge_dict)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        both = isinstance(out.get(key), dict) and isinstance(value, dict)
        out[key] = _merged(out[key], value) if both else copy.deepcopy(value)
    return out


def _off_setting(name: str, value: Any) -> str:
    """The ``--set`` item that turns option ``name`` off."""
    if isinstance(value, dict):
        return f"{name}.enable=false" if "enable" in value else f"{name}={{}}"
    if isinstance(value, bool):
        return f"{name}=false"
    return f"{name}={'[]' if isinstance(value, list) else 0}"


def _early_fusion(network: Any) -> bool:
    """netG fuses spikes before the backbone (S-VRT's input strategy fusion, placement early or hybrid)."""
    if not isinstance(network, dict):
        return False
    fusion = network.get("fusion") if isinstance(network.get("fusion"), dict) else {}
    inputs = network.get("input") if isinstance(network.get("input"), dict) else {}
    strategy = str(inputs.get("strategy", "fusion" if fusion.get("enable") else "concat")).lower()
    return strategy == "fusion" and str(fusion.get("placement", "early")).lower() in ("early", "hybrid")


def _check_supported_values(m: _Mapping) -> None:
    for pattern, (values, why) in SUPPORTED_VALUES.items():
        for source in [pattern.replace("*", phase) for phase in PHASES] if "*" in pattern else [pattern]:
            value = m.get(source, values[0])
            if value not in values:
                shown = " or ".join(_shown(v) for v in values)
                raise m.error(source, f"= {_shown(value)} is not supported: {why} (supported: {shown})")


# --- datasets -----------------------------------------------------------------------------------------------------

def _map_datasets(m: _Mapping, world: int) -> None:
    dataset_type = m.get(f"{TRAIN_SET}.dataset_type")
    if dataset_type is not None and str(dataset_type).lower() != SPIKE_DATASET:
        raise m.error(f"{TRAIN_SET}.dataset_type", f"{dataset_type!r} is not supported: ds_deblur trains on RGB "
                                                   f"and spike streams (TrainDatasetRGBSpike)")
    _map_roots(m)
    train = _spike_options(m, TRAIN_SET, defaults=m.has(TRAIN_SET))
    for target, (value, source) in train.items():
        if m.wanted(target):
            m.put(target, value, source)
    for target, (value, source) in _spike_options(m, TEST_SET, defaults=False).items():
        if target in train and value != train[target][0] and m.wanted(target):
            raise m.error(source, f"= {_shown(value)} differs from {train[target][1]} = "
                                  f"{_shown(train[target][0])}: ds_deblur reads both splits with one {target}")
    _map_phase_value(m, f"{TRAIN_SET}.gt_size", "DATA.CROP_SIZE", "DATA.PHASE1_CROP_SIZE")
    _map_batch_size(m, world)


def _map_roots(m: _Mapping) -> None:
    """S-VRT's roots of the two splits as our roots, ``{split}`` standing for the part in which they differ
    (``.../GOPRO_Large/{split}_GT`` with the splits train and test). --set DATA.ROOT instead reads ROOT's layout."""
    names: dict[tuple[str, str], str] = {}
    for option, target in [*ROOTS.items(), ("meta_info_file", "DATA.META_INFO_FILE")]:
        train, test = m.get(f"{TRAIN_SET}.{option}"), m.get(f"{TEST_SET}.{option}")
        if train is None or not m.wanted(target) or (option in ROOTS and not m.wanted("DATA.ROOT")):
            continue
        template, pair = str(train), None
        if test is not None and str(test) != template:
            template, *pair = _split_template(m, option, str(train), str(test))
            names.setdefault(tuple(pair), option)
        m.put(target, template, None if pair else f"{TRAIN_SET}.{option}")
    if len(names) > 1:
        (first, one), (second, other) = list(names.items())[:2]
        raise m.error(f"{TRAIN_SET}.{one}", f"and {TRAIN_SET}.{other} name the splits differently ({first[0]}/"
                                            f"{first[1]} and {second[0]}/{second[1]}): ds_deblur names both "
                                            f"splits' folders with one {{split}}")
    if names and m.wanted("DATA.ROOT", "DATA.TRAIN_SPLIT", "DATA.VAL_SPLIT"):
        (train_name, test_name), = names
        m.put("DATA.TRAIN_SPLIT", train_name)
        m.put("DATA.VAL_SPLIT", test_name)


def _split_template(m: _Mapping, option: str, train: str, test: str) -> tuple[str, str, str]:
    """(template with {split}, train's name, test's name) of two paths that differ in one name's part:
    ``/d/train_GT`` and ``/d/test_GT`` -> ``/d/{split}_GT``, train, test."""
    start = len(os.path.commonprefix([train, test]))
    end = len(os.path.commonprefix([train[start:][::-1], test[start:][::-1]]))
    # The differing part starts and ends at a separator, so that "train" and "test" are not read as "rain" and "est".
    while start and train[start - 1] not in "/_-.":
        start -= 1
    while end and train[len(train) - end] not in "/_-.":
        end -= 1
    one, other = train[start:len(train) - end], test[start:len(test) - end]
    if not one or not other or "/" in one + other:
        raise m.error(f"{TEST_SET}.{option}", f"= {test!r} and {TRAIN_SET}.{option} = {train!r} differ in more than "
                                              f"the split's name: ds_deblur names both splits' folders with one "
                                              f"path holding {{split}}")
    return train[:start] + "{split}" + train[len(train) - end:], one, other


def _spike_options(m: _Mapping, section: str, defaults: bool) -> dict[str, tuple[Any, str]]:
    """The options one DATA key holds for both splits: our key -> (value, option), with S-VRT's defaults when
    ``defaults``, else only those the section gives."""
    out: dict[str, tuple[Any, str]] = {}

    def take(option: str, target: str, default: Any = None, convert: Any = None) -> None:
        source = f"{section}.{option}"
        if m.has(source):
            value = m.get(source)
            out[target] = (convert(value) if convert else value, source)
        elif defaults and default is not None:
            out[target] = (default, source)

    take("io_backend.type", "DATA.IO_BACKEND")
    take("spike_folder_name", "DATA.SPIKE_DIR", "spike")
    take("filename_ext", "DATA.IMAGE_EXTS", [".png"], lambda ext: ["." + str(ext).lstrip(".")])
    take("spike.representation", "DATA.SPIKE_REPR", "tfp", lambda text: str(text).strip().lower())
    take("tfp_half_win_length", "DATA.TFP_HALF_WIN_LENGTH", 20)
    take("spike.raw_window_length", "DATA.RAW_WINDOW_LENGTH")
    take("spike_flow.representation", "DATA.FLOW_SPIKE", convert=lambda text: str(text).strip().lower() or None)
    take("spike_flow.dt", "DATA.FLOW_SPIKE_DT", 10)
    take("spike_flow.subframes", "DATA.FLOW_SPIKE_SUBFRAMES", 1)
    take("spike_flow.collapse_policy", "DATA.FLOW_SPIKE_POLICY", "mean_windows",
         lambda text: COLLAPSE_POLICIES.get(str(text).strip().lower(), text))
    _check_reconstruction(m, section)
    _take_bins(m, section, out, defaults)
    _take_spike_size(m, section, out)
    _take_normalisation(m, section, out)
    return out


def _check_reconstruction(m: _Mapping, section: str) -> None:
    """S-VRT's TFP is SpikeCV's (spikecv_tfp); its middle_tfp and snn reconstructions are not ds_deblur's."""
    for option in ("spike.reconstruction.type", "spike_reconstruction"):
        value = m.get(f"{section}.{option}")
        kind = value.get("type", "spikecv_tfp") if isinstance(value, dict) else value
        if kind is not None and str(kind).strip().lower() != "spikecv_tfp":
            raise m.error(f"{section}.{option}", f"{kind!r} is not supported: ds_deblur computes S-VRT's TFP "
                                                 f"(spikecv_tfp) or raw windows (spike.representation raw_window)")


def _take_bins(m: _Mapping, section: str, out: dict, defaults: bool) -> None:
    """DATA.K from spike_channels or spike.reconstruction.num_bins (S-VRT's default 4; both must agree). With
    raw_window the width is the window's: spike_channels must say the same, as S-VRT checks."""
    channels, bins = f"{section}.spike_channels", f"{section}.spike.reconstruction.num_bins"
    width, num_bins = m.get(channels), m.get(bins)
    if out.get("DATA.SPIKE_REPR", ("tfp",))[0] == "raw_window":
        window = out.get("DATA.RAW_WINDOW_LENGTH", (2 * out.get("DATA.TFP_HALF_WIN_LENGTH", (20,))[0] + 1,))[0]
        if width is not None and width != window:
            raise m.error(channels, f"= {width} differs from the raw window's length {window}: with "
                                    f"spike.representation raw_window the spike width is the window's")
    elif width is not None and num_bins is not None and width != num_bins:
        raise m.error(channels, f"= {width} and {bins} = {num_bins} differ: give one spike width")
    elif width is not None or num_bins is not None:
        out["DATA.K"] = (width, channels) if width is not None else (num_bins, bins)
    elif defaults:
        out["DATA.K"] = 4, bins


def _take_spike_size(m: _Mapping, section: str, out: dict) -> None:
    """DATA.SPIKE_SIZE from spike_h and spike_w (S-VRT's defaults 360 and 640 for the one not given); neither given:
    null, the size the dataset records."""
    height, width = f"{section}.spike_h", f"{section}.spike_w"
    if m.has(height) or m.has(width):
        out["DATA.SPIKE_SIZE"] = [m.get(height, 360), m.get(width, 640)], height


def _take_normalisation(m: _Mapping, section: str, out: dict) -> None:
    """DATA.NORM from spike_normalize: one mean and std for every channel, as DATA.NORM holds them."""
    source = f"{section}.spike_normalize"
    norm = m.get(source)
    if not isinstance(norm, dict):
        return
    for name, target in (("mean", "DATA.NORM.MEAN"), ("std", "DATA.NORM.STD")):
        value = norm.get(name)
        values = value if isinstance(value, list) else [value]
        if value is None or len({comparable(v) for v in values}) != 1:
            raise m.error(f"{source}.{name}", f"= {_shown(value)} is not supported: ds_deblur normalises "
                                              f"every spike channel with one mean and one std")
        out[target] = values[0], f"{source}.{name}"


def _map_phase_value(m: _Mapping, source: str, target: str, phase1_target: str) -> tuple[Any, Any]:
    """An option that may hold S-VRT's [phase 1, phase 2] values: phase 2's (all steps' without fix_iter) to
    ``target``, phase 1's to ``phase1_target`` when there is a phase 1. Returns (phase 1's, phase 2's) as given."""
    value = m.get(source)
    if not m.has(source) or not m.wanted(target):
        return None, None
    first = second = value
    if isinstance(value, list):
        if len(value) != 2:
            raise m.error(source, f"= {_shown(value)} must be one value or [phase 1, phase 2]")
        first, second = value
        if _has_phase1(m) and first != second and m.wanted(phase1_target):
            m.put(phase1_target, first, source)
    m.put(target, second, source)
    return first, second


def _map_batch_size(m: _Mapping, world: int) -> None:
    """S-VRT's dataloader_batch_size is the batch of all ranks: main_train_vrt.py gives each DDP rank
    dataloader_batch_size // num_gpu (an error when it does not divide), and one process without DDP all of it.
    TRAIN.BATCH_SIZE (and TRAIN.PHASE1_BATCH_SIZE) is one rank's micro-batch: the batch divided by the launcher's
    world size."""
    source = f"{TRAIN_SET}.dataloader_batch_size"
    batches = _map_phase_value(m, source, "TRAIN.BATCH_SIZE", "TRAIN.PHASE1_BATCH_SIZE")
    if world == 1:
        return
    for target, batch in zip(("TRAIN.PHASE1_BATCH_SIZE", "TRAIN.BATCH_SIZE"), batches):
        if get_path(m.raw, target)[0] and isinstance(batch, int) and not isinstance(batch, bool):
            if batch % world:
                raise m.error(source, f"= {_shown(m.get(source))} is the batch of all ranks (S-VRT gives each rank "
                                      f"dataloader_batch_size // num_gpu) and {batch} does not divide by the world "
                                      f"size {world}: give multiples of {world}, or {target} (per rank)")
            m.put(target, batch // world)
            m.spelled.pop(target, None)  # the value is no longer the option's


# --- train, path, val ---------------------------------------------------------------------------------------------

def _map_train(m: _Mapping) -> None:
    _map_loss(m)
    _map_optimizer(m)
    _map_schedule(m)
    _map_validation_steps(m)
    clip = m.get("train.G_optimizer_clipgrad")
    if m.has("train.G_optimizer_clipgrad") and m.wanted("TRAIN.MAX_GRAD_NORM"):
        m.put("TRAIN.MAX_GRAD_NORM", clip or 0, "train.G_optimizer_clipgrad")  # null or 0: S-VRT does not clip
    seed = m.get("train.manual_seed")
    if seed is not None and m.wanted("SEED"):  # null: S-VRT draws a seed; ours stays
        m.put("SEED", seed, "train.manual_seed")
    _map_lora(m)
    _map_phases(m)


def _map_lora(m: _Mapping) -> None:
    """use_lora and its options, and what S-VRT's freeze_backbone keeps frozen: everything but the fusion module
    and the adapters for the whole run without fix_iter; with fix_iter only until phase 2, which then trains
    everything (or with phase2_lora_mode and LoRA, the adapters and fix_keys only)."""
    lora = _on(m.get("train.use_lora"))
    phase2_lora = lora and _on(m.get("train.phase2_lora_mode"))
    frozen = _on(m.get("train.freeze_backbone")) and (not _on(m.get("train.fix_iter")) or phase2_lora)
    if m.has("train.freeze_backbone") and m.wanted("TRAIN.FREEZE_BACKBONE"):
        m.put("TRAIN.FREEZE_BACKBONE", frozen, "train.freeze_backbone")
        if frozen and not _on(m.get("train.fix_iter")) and m.wanted("TRAIN.FIX_KEYS"):
            m.put("TRAIN.FIX_KEYS", [], "train.fix_keys")  # never released: frozen with the backbone, as in S-VRT
    if not lora:
        return  # its options stay unread: listed as ignored
    settings = {k: m.get(f"train.{k}", default) for k, default in LORA_DEFAULTS.items()}
    for option, target in (("lora_rank", "MODEL.LORA_RANK"), ("lora_alpha", "MODEL.LORA_ALPHA"),
                           ("lora_target_modules", "MODEL.LORA_TARGETS")):
        if m.wanted(target):
            m.put(target, settings[option], f"train.{option}")
    if m.wanted("MODEL.LORA_FREEZE_BASE"):
        m.put("MODEL.LORA_FREEZE_BASE", frozen, "train.freeze_backbone")


def _has_phase1(m: _Mapping) -> bool:
    """Whether S-VRT has a phase 1: its iterations 1 to fix_iter - 1 (it counts from 1)."""
    return _number(m, "train.fix_iter", m.get("train.fix_iter") or 0) > 1


def _map_phases(m: _Mapping) -> None:
    """fix_iter, and S-VRT's phase 1 (its iterations before fix_iter train the fusion module alone, on its fused
    frames) when netG fuses early (or hybrid), with its losses and warm-up. S-VRT counts iterations from 1 and
    releases at iteration fix_iter, so fix_iter - 1 steps are fixed (and head_only_iters - 1 are head-only):
    TRAIN.FIX_ITER and TRAIN.HEAD_ONLY_STEPS count those steps."""
    fix_iter = m.get("train.fix_iter", 0)
    if m.has("train.fix_iter") and m.wanted("TRAIN.FIX_ITER"):
        m.put("TRAIN.FIX_ITER", max(int(_number(m, "train.fix_iter", fix_iter)) - 1, 0), "train.fix_iter")
    if not _early_fusion(m.get(NETWORK)):
        return  # the phase options stay unread: listed as ignored (S-VRT computes no fusion loss then)
    fusion_first = _has_phase1(m)
    if m.wanted("TRAIN.FUSION_FIRST"):
        m.put("TRAIN.FUSION_FIRST", fusion_first, "train.fix_iter")
    passthrough = m.get("train.fusion_passthrough_loss_weight", 0.0)
    for source, target in FUSION_LOSSES.items():
        default = passthrough if "passthrough" in source else 0.0
        if m.wanted(target):
            m.put(target, _number(m, source, m.get(source, default)), source)
    head_only = int(_number(m, "train.fusion_warmup.head_only_iters", m.get("train.fusion_warmup.head_only_iters", 0)))
    if fusion_first and head_only > 1 and m.wanted("TRAIN.HEAD_ONLY_STEPS"):
        m.put("TRAIN.HEAD_ONLY_STEPS", head_only - 1, "train.fusion_warmup.head_only_iters")


def _map_loss(m: _Mapping) -> None:
    kind = m.get("train.G_lossfn_type", "charbonnier")
    if str(kind).lower() != "charbonnier":
        raise m.error("train.G_lossfn_type", f"{kind!r} is not supported: ds_deblur trains with the Charbonnier "
                                             f"loss (charbonnier)")
    eps = m.get("train.G_charbonnier_eps")
    if eps is not None and m.wanted("LOSS.CHARBONNIER.DELTA"):
        # S-VRT's loss is sqrt(d^2 + eps), ours sqrt(d^2 + DELTA^2).
        m.put("LOSS.CHARBONNIER.DELTA", math.sqrt(_number(m, "train.G_charbonnier_eps", eps)))


def _map_optimizer(m: _Mapping) -> None:
    """Adam or AdamW as our AdamW. Adam's weight decay is an L2 penalty in the gradient, which AdamW's decoupled
    decay does not reproduce: Adam only without it (S-VRT's files use 0)."""
    kind = str(m.get("train.G_optimizer_type", "adam")).lower()
    decay = m.get("train.G_optimizer_wd", 0)  # S-VRT's defaults: adam, no weight decay, betas (0.9, 0.999)
    if m.wanted("TRAIN.OPTIM.TYPE", "TRAIN.OPTIM.WEIGHT_DECAY"):
        if kind not in ("adam", "adamw"):
            raise m.error("train.G_optimizer_type", f"{kind!r} is not supported: use adam or adamw (ds_deblur "
                                                    f"trains with AdamW)")
        if kind == "adam" and comparable(decay) not in (0, None):
            raise m.error("train.G_optimizer_wd", f"= {decay} with G_optimizer_type adam is Adam's L2 penalty, "
                                                  f"which ds_deblur's AdamW (decoupled weight decay) does not "
                                                  f"reproduce: set it to 0, or train.G_optimizer_type to adamw")
        m.put("TRAIN.OPTIM.TYPE", "adamw")
    if m.wanted("TRAIN.OPTIM.WEIGHT_DECAY"):
        m.put("TRAIN.OPTIM.WEIGHT_DECAY", decay or 0, "train.G_optimizer_wd")
    if m.wanted("TRAIN.OPTIM.BETAS"):
        m.put("TRAIN.OPTIM.BETAS", m.get("train.G_optimizer_betas", [0.9, 0.999]), "train.G_optimizer_betas")


def _map_schedule(m: _Mapping) -> None:
    """S-VRT's CosineAnnealingWarmRestarts with one period over the run is our cosine without warm-up, down to
    eta_min (S-VRT steps its scheduler before each iteration: its LRs lead ours by one step, and its last iteration
    is back at the peak). Restarts, other periods and other schedulers have no counterpart."""
    kind = m.get("train.G_scheduler_type")
    periods, total = m.get("train.G_scheduler_periods"), m.get("train.total_iter")
    floor = m.get("train.G_scheduler_eta_min", 0)
    m.get("train.G_scheduler_restart_weights")  # T_mult: no restart happens within one period
    targets = ("TRAIN.SCHED.TYPE", "TRAIN.SCHED.WARMUP_STEPS", "TRAIN.SCHED.MIN_LR")
    if kind is None or not m.wanted(*targets):
        return
    ours = "or give TRAIN.SCHED.WARMUP_STEPS and TRAIN.SCHED.MIN_LR with --set for ds_deblur's cosine schedule"
    if kind != "CosineAnnealingWarmRestarts":
        raise m.error("train.G_scheduler_type", f"{kind!r} is not supported: use CosineAnnealingWarmRestarts with "
                                                f"G_scheduler_periods = total_iter (one cosine decay to "
                                                f"G_scheduler_eta_min, TRAIN.SCHED cosine without warm-up), {ours}")
    if periods != total:
        raise m.error("train.G_scheduler_periods", f"= {periods} differs from train.total_iter = {total}: only one "
                                                   f"cosine period over the whole run is supported (no restarts, no "
                                                   f"unfinished decay), {ours}")
    m.put("TRAIN.SCHED.TYPE", "cosine")
    m.put("TRAIN.SCHED.WARMUP_STEPS", 0)
    m.put("TRAIN.SCHED.MIN_LR", floor, "train.G_scheduler_eta_min")


def _map_validation_steps(m: _Mapping) -> None:
    """checkpoint_test: every N steps, or S-VRT's list of steps when it is every N steps to the end; none or 0 (no
    validation in S-VRT) validates once, at the end (ds_deblur always does)."""
    source = "train.checkpoint_test"
    steps, total = m.get(source), m.get("train.total_iter")
    if not m.has(source) or not m.wanted("LOG.VAL_EVERY_STEPS"):
        return
    if isinstance(steps, list) and steps:
        every = steps[0]
        evenly = isinstance(every, int) and every > 0 and steps == [every * (i + 1) for i in range(len(steps))]
        if not evenly or (isinstance(total, int) and steps[-1] < total):
            every = math.gcd(*steps) if all(isinstance(s, int) for s in steps) else every
            raise m.error(source, f"= {_shown(steps)} is not every N steps to train.total_iter: give one "
                                  f"number (validate every N steps and at the end), e.g. --set {source}={every}")
        steps = every
    if steps in (None, 0, []):
        steps = total
    m.put("LOG.VAL_EVERY_STEPS", steps, source)


def _map_paths(m: _Mapping) -> None:
    """S-VRT's run folder path.root/task as LOG.SAVE_DIR; its pretrained weights as MODEL.INIT_*."""
    root = m.get("path.root")
    if root and m.wanted("LOG.SAVE_DIR"):
        task = m.get("task")
        m.put("LOG.SAVE_DIR", os.path.join(str(root), str(task)) if task else str(root), "path.root")
    for option, target in (("pretrained_netG", "MODEL.INIT_WEIGHTS"), ("pretrained_netE", "MODEL.INIT_EMA_WEIGHTS")):
        source = f"path.{option}"
        weights = m.get(source)
        if weights is None or not m.wanted(target):
            continue
        if str(weights).strip().lower() == "auto":
            raise m.error(source, "'auto' (the newest checkpoint of the run folder) is not supported yet: it comes "
                                  "with S-VRT's recipe; resume with --resume, or give a weights file")
        m.put(target, weights, source)


def _map_tiles(m: _Mapping) -> None:
    """val.size_patch_testing: S-VRT validates in spatial patches of that size (0: whole frames)."""
    size = m.get("val.size_patch_testing")
    if m.has("val.size_patch_testing") and m.wanted("TRAIN.VAL_TILE_SIZE"):
        m.put("TRAIN.VAL_TILE_SIZE", size or None, "val.size_patch_testing")


def _shown(value: Any) -> str:
    """An option's value as the file writes it."""
    return json.dumps(value, default=str)


def _number(m: _Mapping, source: str, value: Any) -> float:
    """A non-negative number (numeric text too: YAML reads 1e-6 as text)."""
    number = comparable(value)
    if isinstance(number, bool) or not isinstance(number, (int, float)) or number < 0:
        raise m.error(source, f"must be a number >= 0, got {value!r}")
    return float(number)


def describe(source: Union[str, Path, dict]) -> str:
    """How errors and warnings name an option source: its path, or 'S-VRT options' for a dict."""
    return str(source) if isinstance(source, (str, Path)) else "S-VRT options"
