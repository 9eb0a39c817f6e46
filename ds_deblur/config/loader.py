"""Reading configs: YAML files, S-VRT's option files (``kair``), dicts and checkpoints' stored configs, ``--set
SECTION.KEY=VALUE`` overrides, coercion to the schema's types, and writing the resolved config back. Any problem is a
``ConfigError`` naming the key as the user spelled it."""
from __future__ import annotations

import difflib
import re
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Union, get_args, get_origin, get_type_hints

import yaml

from ds_deblur.config import kair, legacy
from ds_deblur.config.checks import validate
from ds_deblur.config.raw import deep_copy, set_path
from ds_deblur.config.schema import RECORD_KEY, Config, follow_defaults
from ds_deblur.errors import ConfigError


def load_config(source: Union[str, Path, dict, Config], overrides: Iterable[str] = ()) -> Config:
    """Read a YAML file or a dict in the schema's (or the original trainer's) spelling, or an S-VRT option file
    (``.json``, or a dict with ``netG``), apply ``SECTION.KEY=VALUE`` overrides, validate and return the config."""
    if isinstance(source, Config):
        source = source.to_dict()
    if kair.is_option_source(source):
        raw, spelled, overrides = _read_options(source, overrides)
        origin = f"{kair.describe(source)}: "
    else:
        raw = _read_yaml(Path(source)) if isinstance(source, (str, Path)) else deep_copy(source)
        raw.pop(RECORD_KEY, None)
        spelled, origin = legacy.translate(raw), ""
    _apply_overrides(raw, overrides, spelled)
    _resolve_length(raw)
    try:
        cfg = _build(Config, raw, "")
        follow_defaults(cfg)
        validate(cfg)
    except ConfigError as err:
        raise _respelled(err, spelled, origin) from None
    return cfg


def load_stored_config(config: dict) -> Config:
    """A checkpoint's stored ``config``, whichever key names the ds_deblur that wrote it used."""
    return load_config(legacy.from_stored(config))


def canonical_dict(config: dict) -> dict:
    """A checkpoint's stored config as the current schema writes it: what to compare a run's ``cfg.to_dict()``
    with."""
    return load_stored_config(config).to_dict()


def parse_override(item: str) -> tuple[str, Any]:
    """``'TRAIN.OPTIM.LR=2e-4'`` -> ``('TRAIN.OPTIM.LR', 2e-4)``; the value is parsed as YAML (lists, null,
    numbers)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. --set TRAIN.OPTIM.LR=2e-4")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({err})") from None
    return key.strip(), value


def save_config(cfg: Config, path: Union[str, Path], deepspeed: Optional[dict] = None) -> None:
    """Write the resolved config as YAML in the canonical spelling, with the run's DeepSpeed JSON under
    ``DEEPSPEED`` for the record (``load_config`` skips that key, so the file can be passed back as ``--config``)."""
    data = cfg.to_dict()
    if deepspeed is not None:
        data[RECORD_KEY] = deepspeed
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))


def load_two_run(source: Union[str, Path], overrides: Iterable[str] = ()) -> Optional[tuple[Config, Config]]:
    """The configs of the two runs of an S-VRT option file with ``train.two_run.enable`` (``kair.two_run_options``;
    both get ``overrides``), or None for any other source."""
    if not kair.is_option_source(source):
        return None
    options, ours = _options_with_overrides(source, overrides)
    runs = kair.two_run_options(options, kair.describe(source))
    return None if runs is None else (load_config(runs[0], ours), load_config(runs[1], ours))


def _options_with_overrides(source: Union[str, Path, dict], overrides: Iterable[str]) -> tuple[dict, list[str]]:
    """S-VRT's options with the overrides of its own keys (``netG.fusion.operator=gated``) applied, and ours."""
    options = kair.read_option_file(Path(source)) if isinstance(source, (str, Path)) else deep_copy(source)
    theirs, ours = [], []
    for item in overrides:
        key, value = parse_override(item)
        if kair.is_option_key(key, options):
            theirs.append((key, value))
        else:
            ours.append(item)
    kair.apply_overrides(options, theirs)
    return options, ours


def _read_options(source: Union[str, Path, dict], overrides: Iterable[str]) -> tuple[dict, dict[str, str], list[str]]:
    """An S-VRT option file mapped onto the schema: the raw config, our key -> the option it came from, and our own
    overrides, still to apply. Overrides of S-VRT options (``netG.fusion.operator=gated``, ``train.total_iter=10``)
    change the options before they are mapped; ours (``TRAIN.TOTAL_STEPS=10``) apply after, and win: the options
    that would set the same keys are not mapped."""
    origin = kair.describe(source)
    options, ours = _options_with_overrides(source, overrides)
    given = [_canonical(parse_override(item)[0]) for item in ours]
    mapped = kair.to_config(options, origin, given)
    kair.warn_ignored(origin, mapped.ignored)
    return mapped.raw, mapped.spelled, ours


def _canonical(key: str) -> str:
    """The schema's name of a --set key (the original trainer's other spellings included)."""
    spelling = legacy.SPELLINGS.get(key)
    return spelling.key if spelling else key


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"Config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"Config file {path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of sections (DATA:, MODEL:, ...), "
                          f"got {type(data).__name__}")
    return data


def _apply_overrides(raw: dict, overrides: Iterable[str], spelled: dict[str, str]) -> None:
    """Apply ``--set`` items; two spellings of one key with different values are an error. ``spelled`` (canonical
    key -> the other spelling used) follows the last spelling of each key."""
    seen: dict[str, tuple[str, Any]] = {}
    for item in overrides:
        key, value = parse_override(item)
        canonical, value = legacy.translate_override(key, value)
        if canonical is None:
            continue
        earlier = seen.get(canonical)
        if earlier and earlier[0] != key and legacy.comparable(earlier[1]) != legacy.comparable(value):
            raise legacy.conflict(earlier[0], earlier[1], key, value, canonical)
        seen[canonical] = (key, value)
        set_path(raw, canonical, value)
        if canonical != key:
            spelled[canonical] = key
        else:
            spelled.pop(canonical, None)


def _resolve_length(raw: dict) -> None:
    """A file that gives TRAIN.EPOCHS and not TRAIN.TOTAL_STEPS trains for EPOCHS (the original's length)."""
    train = raw.get("TRAIN")
    if isinstance(train, dict) and train.get("EPOCHS") is not None and "TOTAL_STEPS" not in train:
        train["TOTAL_STEPS"] = None


def _respelled(err: ConfigError, spelled: dict[str, str], origin: str = "") -> ConfigError:
    """The error naming the key as the user wrote it (another spelling; ``origin``: the file that spells it so),
    with the canonical name beside it."""
    message = str(err)
    for key, other in spelled.items():
        if re.match(re.escape(key) + r"(?![A-Za-z0-9_])", message):
            return ConfigError(f"{origin}{other}{message[len(key):]} ({other} is read as {key})")
    return err


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping of keys, got {raw!r}")
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            raise ConfigError(_unknown_key_message(str(key), names, prefix))
        hint = hints[key]
        kwargs[key] = (_build(hint, value, f"{prefix}{key}.") if is_dataclass(hint)
                       else _coerce(value, hint, prefix + key))
    return cls(**kwargs)


def _unknown_key_message(key: str, names: list[str], prefix: str) -> str:
    """Names the nearest key of the section, or the canonical key of a near earlier ds_deblur name."""
    earlier = {old[len(prefix):]: new for old, new in legacy.EARLIER_KEYS.items()
               if old.startswith(prefix) and "." not in old[len(prefix):]}
    close = difflib.get_close_matches(key.upper(), names + list(earlier), n=1, cutoff=0.5)
    full = prefix + key
    if close:
        suggestion = prefix + close[0] if close[0] in names else earlier[close[0]]
        return f"unknown config key {full}; did you mean {suggestion}?"
    return f"unknown config key {full}; valid keys: {', '.join(prefix + n for n in names)}"


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if origin is Union:  # Optional[X], Union[X, Y]
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options[:-1]:
            try:
                return _coerce(value, option, key)
            except ConfigError:
                pass
        return _coerce(value, options[-1], key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        # PyYAML reads `1e-4` (no dot) as a string: accept numeric text for float keys.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    if hint is dict:  # options kept verbatim for another reader (MODEL.NETG)
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return deep_copy(value)
    raise ConfigError(f"{key}: unsupported type {hint}")  # a schema bug, not a user error
