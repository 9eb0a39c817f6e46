"""Experiment config: the original trainer's YAML schema as validated dataclasses.

Sections and keys are upper-case as in the original YAML files (``SEED, DATA, MODEL, DATALOADER, TRAIN, LOSS,
LOG``) so users' files keep working. Every key has a default and a one-line doc (the ``doc`` metadata below, shown
by ``describe()``). ``load_config`` reads a YAML path or a dict (a checkpoint's stored ``config`` too), applies
``SECTION.KEY=VALUE`` overrides and validates; any problem is a ``ConfigError`` naming the key.
"""
from __future__ import annotations

import difflib
import warnings
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Union, get_args, get_origin, get_type_hints

import yaml

from ds_deblur.errors import ConfigError

MODEL_PRESETS = ("tiny", "base", "vrt_gopro")
VGG_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")


def doc(default: Any, text: str) -> Any:
    """A dataclass field with a default and its one-line documentation."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


def section(cls: type, text: str) -> Any:
    return field(default_factory=cls, metadata={"doc": text})


@dataclass
class DataConfig:
    ROOT: str = doc("", "dataset root holding {train,val}/SEQ/{blur,sharp,spike}; required")
    TRAIN_SPLIT: str = doc("train", "sub-folder of ROOT with the training sequences")
    VAL_SPLIT: str = doc("val", "sub-folder of ROOT with the validation sequences")
    CLIP_LEN: int = doc(5, "consecutive frames per training clip (T)")
    CROP_SIZE: int = doc(256, "square training crop in RGB pixels; a multiple of 8")
    K: int = doc(32, "spike voxel bins per exposure (channels of spike_vox)")
    SPIKE_SIZE: Optional[list[int]] = doc(None, "spike sensor [H, W]; null = read ROOT/meta.yaml")
    USE_PRECOMPUTED_VOXELS: bool = doc(False, "read SEQ/spike_vox/*.npy (ds_deblur.data.prepare) instead of .dat")
    SPIKE_MEAN: Optional[float] = doc(None, "voxel normalisation mean; null = ROOT/voxel_stats.json")
    SPIKE_STD: Optional[float] = doc(None, "voxel normalisation std; null = ROOT/voxel_stats.json")
    HFLIP: bool = doc(True, "random horizontal flip of training clips")
    VFLIP: bool = doc(False, "random vertical flip of training clips")
    VAL_MAX_FRAMES: Optional[int] = doc(None, "validate at most this many frames per sequence; null = all")
    SPIKE_ROOT: Optional[str] = doc(None, "separate spike tree SPLIT/SEQ/spike (+ config.yaml); null = the one in ROOT")
    SPIKE_DIR: str = doc("spike", "a sequence's folder of .dat spike streams")
    VOXEL_CACHE_DIRNAME: str = doc("spike_vox", "a sequence's voxel cache folder (python -m ds_deblur.data.prepare)")
    IMAGE_EXTS: list[str] = doc([".png"], "extensions of the frame files in blur/ and sharp/ that count")

    def validate(self) -> None:
        _require(bool(self.ROOT), "DATA.ROOT", "is missing: set it in the YAML or with --set DATA.ROOT=/path/to/data")
        _require(self.CLIP_LEN >= 2, "DATA.CLIP_LEN", f"must be >= 2 (temporal attention needs two frames), "
                                                      f"got {self.CLIP_LEN}")
        _require(self.CROP_SIZE > 0 and self.CROP_SIZE % 8 == 0, "DATA.CROP_SIZE",
                 f"must be a positive multiple of 8 (the model's window), got {self.CROP_SIZE}")
        _require(self.K >= 1, "DATA.K", f"must be >= 1, got {self.K}")
        if self.SPIKE_SIZE is not None:
            _require(len(self.SPIKE_SIZE) == 2 and min(self.SPIKE_SIZE) > 0, "DATA.SPIKE_SIZE",
                     f"must be [H, W] with positive sizes, got {self.SPIKE_SIZE}")
        if self.SPIKE_STD is not None:
            _require(self.SPIKE_STD > 0, "DATA.SPIKE_STD", f"must be > 0, got {self.SPIKE_STD}")
        if self.VAL_MAX_FRAMES is not None:
            _require(self.VAL_MAX_FRAMES >= 1, "DATA.VAL_MAX_FRAMES", f"must be >= 1, got {self.VAL_MAX_FRAMES}")
        _require(bool(self.IMAGE_EXTS) and all(e.startswith(".") for e in self.IMAGE_EXTS), "DATA.IMAGE_EXTS",
                 f"must list extensions with their dot, e.g. ['.png'], got {self.IMAGE_EXTS}")
        _require(bool(self.SPIKE_DIR) and self.SPIKE_DIR != self.VOXEL_CACHE_DIRNAME, "DATA.SPIKE_DIR",
                 f"must be a folder name other than DATA.VOXEL_CACHE_DIRNAME, got {self.SPIKE_DIR!r}")


@dataclass
class VRTConfig:
    EMBED_DIMS: Optional[list[int]] = doc(None, "channels per VRT stage; null = the preset's")
    DEPTHS: Optional[list[int]] = doc(None, "TMSA blocks per VRT stage; null = the preset's")
    NUM_HEADS: Optional[list[int]] = doc(None, "attention heads per VRT stage; null = the preset's")
    WINDOW_SIZE: Optional[list[int]] = doc(None, "attention window [T, H, W]; null = the preset's")
    PA_FRAMES: Optional[int] = doc(None, "frames aligned by parallel warping; null = the preset's")
    DEFORMABLE_GROUPS: Optional[int] = doc(None, "groups of the flow-guided deformable conv; null = the preset's")
    INDEP_RECONSTS: Optional[list[int]] = doc(None, "stages reconstructing frames independently; null = preset's")
    MLP_RATIO: Optional[float] = doc(None, "feed-forward expansion; null = the preset's")
    SPYNET_PATH: Optional[str] = doc(None, "local SpyNet weights (spynet_sintel_final); never downloaded")
    USE_CHECKPOINT_ATTN: bool = doc(False, "activation checkpointing of attention (less memory, more compute)")
    USE_CHECKPOINT_FFN: bool = doc(False, "activation checkpointing of feed-forward layers")

    def validate(self) -> None:
        for key in ("EMBED_DIMS", "DEPTHS", "NUM_HEADS", "WINDOW_SIZE", "INDEP_RECONSTS"):
            value = getattr(self, key)
            if value is not None:
                _require(min(value, default=1) >= 1 or key == "INDEP_RECONSTS", f"MODEL.VRT.{key}",
                         f"entries must be >= 1, got {value}")
        if self.WINDOW_SIZE is not None:
            _require(len(self.WINDOW_SIZE) == 3, "MODEL.VRT.WINDOW_SIZE", f"must be [T, H, W], got {self.WINDOW_SIZE}")


@dataclass
class AttnConfig:
    HEADS: int = doc(4, "attention heads")
    MLP_RATIO: float = doc(2.0, "feed-forward expansion after attention")
    CHUNK_PIXELS: int = doc(16384, "pixels per attention chunk: bounds memory of per-pixel attention")

    def validate(self, prefix: str) -> None:
        _require(self.HEADS >= 1, f"{prefix}.HEADS", f"must be >= 1, got {self.HEADS}")
        _require(self.MLP_RATIO > 0, f"{prefix}.MLP_RATIO", f"must be > 0, got {self.MLP_RATIO}")
        _require(self.CHUNK_PIXELS >= 1, f"{prefix}.CHUNK_PIXELS", f"must be >= 1, got {self.CHUNK_PIXELS}")


@dataclass
class ModelConfig:
    PRESET: str = doc("base", f"model preset: one of {', '.join(MODEL_PRESETS)}")
    USE_SPIKE: bool = doc(True, "fuse the spike branch; false = plain VRT (ablation)")
    IDENTITY_INIT: Optional[bool] = doc(None, "start as the identity (zero last conv: output = blurry input); "
                                              "null = the preset's (tiny: true, others: false, VRT's own init)")
    CHANNELS_PER_SCALE: Optional[list[int]] = doc(None, "spike encoder channels at scales 1, 1/2, 1/4, 1/8; "
                                                        "null = the preset's VRT widths of stages 1-4")
    VRT: VRTConfig = section(VRTConfig, "VRT backbone overrides")
    SPIKE_TSA: AttnConfig = section(AttnConfig, "per-pixel temporal self attention of spike features")
    FUSE: AttnConfig = section(AttnConfig, "temporal cross attention fusing spike into RGB features")

    def validate(self) -> None:
        _require(self.PRESET in MODEL_PRESETS, "MODEL.PRESET",
                 f"must be one of {', '.join(MODEL_PRESETS)}, got {self.PRESET!r}")
        if self.CHANNELS_PER_SCALE is not None:
            _require(len(self.CHANNELS_PER_SCALE) == 4 and min(self.CHANNELS_PER_SCALE) >= 1,
                     "MODEL.CHANNELS_PER_SCALE", f"must be 4 positive channel counts, got {self.CHANNELS_PER_SCALE}")
        self.VRT.validate()
        self.SPIKE_TSA.validate("MODEL.SPIKE_TSA")
        self.FUSE.validate("MODEL.FUSE")


@dataclass
class DataLoaderConfig:
    NUM_WORKERS: int = doc(2, "loader worker processes per rank")
    PIN_MEMORY: bool = doc(True, "page-locked host batches (faster copies to the GPU)")
    PERSISTENT_WORKERS: bool = doc(True, "keep workers alive between epochs")
    PREFETCH_FACTOR: int = doc(2, "batches each worker prepares ahead")

    def validate(self) -> None:
        _require(self.NUM_WORKERS >= 0, "DATALOADER.NUM_WORKERS", f"must be >= 0, got {self.NUM_WORKERS}")
        _require(self.PREFETCH_FACTOR >= 1, "DATALOADER.PREFETCH_FACTOR", f"must be >= 1, got {self.PREFETCH_FACTOR}")


@dataclass
class TrainConfig:
    BATCH_SIZE: int = doc(1, "micro-batch per rank (DeepSpeed train_micro_batch_size_per_gpu)")
    GRADIENT_ACCUMULATION_STEPS: int = doc(1, "micro-batches per optimizer step")
    LR: float = doc(1e-4, "peak learning rate of AdamW")
    BETAS: list[float] = doc([0.9, 0.99], "AdamW betas")
    WEIGHT_DECAY: float = doc(1e-4, "AdamW decoupled weight decay")
    WARMUP_STEPS: int = doc(256, "optimizer steps of linear warm-up from 0 to LR (step 1 already trains)")
    MIN_LR: float = doc(1e-7, "learning rate at the end of the cosine decay")
    TOTAL_STEPS: Optional[int] = doc(300000, "length of the run in optimizer steps (wins over EPOCHS)")
    EPOCHS: Optional[int] = doc(None, "length of the run in epochs when TOTAL_STEPS is null")
    CLIP_GRAD_NORM: float = doc(1.0, "global gradient-norm clipping; 0 = off")
    VAL_EVERY_STEPS: int = doc(1000, "validate every N optimizer steps (and at the end)")
    VAL_TILE_SIZE: Optional[int] = doc(None, "validate full frames in spatial tiles of this size; null = whole")
    VAL_TILE_OVERLAP: int = doc(32, "overlap of validation tiles in pixels")
    MIN_LOSS_SCALE_PATIENCE: int = doc(100, "fp16: stop (after saving) when the loss scale sits at its minimum "
                                            "for this many consecutive steps")
    NONFINITE_PATIENCE: int = doc(50, "bf16/fp32: stop (after saving) when this many consecutive steps were skipped "
                                      "for non-finite losses or gradients: the run has diverged")

    def validate(self) -> None:
        _require(self.BATCH_SIZE >= 1, "TRAIN.BATCH_SIZE", f"must be >= 1, got {self.BATCH_SIZE}")
        _require(self.GRADIENT_ACCUMULATION_STEPS >= 1, "TRAIN.GRADIENT_ACCUMULATION_STEPS",
                 f"must be >= 1, got {self.GRADIENT_ACCUMULATION_STEPS}")
        _require(self.LR > 0, "TRAIN.LR", f"must be > 0, got {self.LR}")
        _require(0 <= self.MIN_LR <= self.LR, "TRAIN.MIN_LR", f"must be in [0, TRAIN.LR={self.LR}], got {self.MIN_LR}")
        _require(len(self.BETAS) == 2 and all(0 <= b < 1 for b in self.BETAS), "TRAIN.BETAS",
                 f"must be two numbers in [0, 1), got {self.BETAS}")
        _require(self.WEIGHT_DECAY >= 0, "TRAIN.WEIGHT_DECAY", f"must be >= 0, got {self.WEIGHT_DECAY}")
        _require(self.WARMUP_STEPS >= 0, "TRAIN.WARMUP_STEPS", f"must be >= 0, got {self.WARMUP_STEPS}")
        _require(self.TOTAL_STEPS is not None or self.EPOCHS is not None, "TRAIN.TOTAL_STEPS",
                 "and TRAIN.EPOCHS are both null: set one to say how long to train")
        if self.TOTAL_STEPS is not None:
            _require(self.TOTAL_STEPS >= 1, "TRAIN.TOTAL_STEPS", f"must be >= 1, got {self.TOTAL_STEPS}")
        if self.EPOCHS is not None:
            _require(self.EPOCHS >= 1, "TRAIN.EPOCHS", f"must be >= 1, got {self.EPOCHS}")
        _require(self.CLIP_GRAD_NORM >= 0, "TRAIN.CLIP_GRAD_NORM", f"must be >= 0, got {self.CLIP_GRAD_NORM}")
        _require(self.VAL_EVERY_STEPS >= 1, "TRAIN.VAL_EVERY_STEPS", f"must be >= 1, got {self.VAL_EVERY_STEPS}")
        if self.VAL_TILE_SIZE is not None:
            _require(self.VAL_TILE_SIZE > 0 and self.VAL_TILE_SIZE % 8 == 0, "TRAIN.VAL_TILE_SIZE",
                     f"must be a positive multiple of 8, got {self.VAL_TILE_SIZE}")
            _require(0 <= self.VAL_TILE_OVERLAP < self.VAL_TILE_SIZE, "TRAIN.VAL_TILE_OVERLAP",
                     f"must be in [0, TRAIN.VAL_TILE_SIZE={self.VAL_TILE_SIZE}), got {self.VAL_TILE_OVERLAP}")
        _require(self.MIN_LOSS_SCALE_PATIENCE >= 1, "TRAIN.MIN_LOSS_SCALE_PATIENCE",
                 f"must be >= 1, got {self.MIN_LOSS_SCALE_PATIENCE}")
        _require(self.NONFINITE_PATIENCE >= 1, "TRAIN.NONFINITE_PATIENCE", f"must be >= 1, got {self.NONFINITE_PATIENCE}")


@dataclass
class LossConfig:
    CHARBONNIER_DELTA: float = doc(1e-3, "delta of the Charbonnier loss sqrt((x-y)^2 + delta^2)")
    VGG_WEIGHT: float = doc(0.0, "weight of the VGG16 perceptual loss; > 0 needs LOSS.VGG_PATH")
    VGG_LAYER: str = doc("relu3_3", f"VGG16 layer compared: one of {', '.join(VGG_LAYERS)}")
    VGG_PATH: Optional[str] = doc(None, "local VGG16 weights (torchvision's vgg16-397923af.pth); never downloaded")

    def validate(self) -> None:
        _require(self.CHARBONNIER_DELTA > 0, "LOSS.CHARBONNIER_DELTA", f"must be > 0, got {self.CHARBONNIER_DELTA}")
        _require(self.VGG_WEIGHT >= 0, "LOSS.VGG_WEIGHT", f"must be >= 0, got {self.VGG_WEIGHT}")
        _require(self.VGG_LAYER in VGG_LAYERS, "LOSS.VGG_LAYER",
                 f"must be one of {', '.join(VGG_LAYERS)}, got {self.VGG_LAYER!r}")


@dataclass
class LogConfig:
    SAVE_DIR: str = doc("outputs", "run directory: config.yaml, ckpts/, tb/, metrics/, visuals/")
    LOG_EVERY_STEPS: int = doc(10, "write train scalars every N optimizer steps")
    SAVE_EVERY_STEPS: int = doc(1000, "save a checkpoint tag every N optimizer steps (and at the end)")
    KEEP_LAST: int = doc(3, "step tags kept on disk (the newest complete one and best are never removed)")
    EXPORT_SINGLE_FILE: bool = doc(True, "refresh ckpts/last.pth and best.pth after each save")

    def validate(self) -> None:
        _require(bool(self.SAVE_DIR), "LOG.SAVE_DIR", "must not be empty")
        _require(self.LOG_EVERY_STEPS >= 1, "LOG.LOG_EVERY_STEPS", f"must be >= 1, got {self.LOG_EVERY_STEPS}")
        _require(self.SAVE_EVERY_STEPS >= 1, "LOG.SAVE_EVERY_STEPS", f"must be >= 1, got {self.SAVE_EVERY_STEPS}")
        _require(self.KEEP_LAST >= 1, "LOG.KEEP_LAST", f"must be >= 1, got {self.KEEP_LAST}")


@dataclass
class Config:
    SEED: int = doc(42, "seed of model init, data order and augmentation")
    DATA: DataConfig = section(DataConfig, "dataset and clip sampling")
    MODEL: ModelConfig = section(ModelConfig, "VRT-spike architecture")
    DATALOADER: DataLoaderConfig = section(DataLoaderConfig, "torch DataLoader settings")
    TRAIN: TrainConfig = section(TrainConfig, "optimisation, schedule, validation")
    LOSS: LossConfig = section(LossConfig, "training loss")
    LOG: LogConfig = section(LogConfig, "outputs: checkpoints, TensorBoard, metrics")

    def validate(self) -> None:
        _require(self.SEED >= 0, "SEED", f"must be >= 0, got {self.SEED}")
        for part in (self.DATA, self.MODEL, self.DATALOADER, self.TRAIN, self.LOSS, self.LOG):
            part.validate()

    def to_dict(self) -> dict:
        """Plain nested dict (YAML/JSON/checkpoint friendly); ``load_config`` reads it back."""
        return asdict(self)


# Top-level key of a run's config.yaml holding the DeepSpeed JSON it ran with; informational only.
RECORD_KEY = "DEEPSPEED"
# Keys of the original trainer that mean nothing under DeepSpeed: accepted with a warning that says why.
IGNORED_KEYS = {
    "TRAIN.AMP_ENABLED": "precision is set by the DeepSpeed JSON (fp16/bf16 sections)",
    "TRAIN.AMP_OPT_LEVEL": "precision is set by the DeepSpeed JSON (fp16/bf16 sections)",
    "TRAIN.MIXED_PRECISION": "precision is set by the DeepSpeed JSON (fp16/bf16 sections)",
    "TRAIN.COMPILE_MODEL": "torch.compile is not applied under the DeepSpeed engine",
    "TRAIN.DISTRIBUTED": "the launcher (deepspeed/torchrun) decides the world size",
    "TRAIN.NUM_GPUS": "the launcher (deepspeed --num_gpus / torchrun --nproc_per_node) decides the world size",
    "DATA.USE_RAM_CACHE": "per-worker RAM caches multiplied host memory; use DATA.USE_PRECOMPUTED_VOXELS",
    "MODEL.SPIKE_TSA.ADAPTIVE_CHUNK": "chunking is always on; MODEL.SPIKE_TSA.CHUNK_PIXELS sets its size",
    "MODEL.FUSE.ADAPTIVE_CHUNK": "chunking is always on; MODEL.FUSE.CHUNK_PIXELS sets its size",
}
# Keys of the original trainer renamed here: their value is used, with a warning naming the new key.
RENAMED_KEYS = {"TRAIN.ACCUMULATE_GRAD": "TRAIN.GRADIENT_ACCUMULATION_STEPS"}


def load_config(source: Union[str, Path, dict, Config], overrides: Iterable[str] = ()) -> Config:
    """Read a YAML file or a dict (e.g. a checkpoint's ``config``), apply ``SECTION.KEY=VALUE`` overrides,
    validate and return the config. Raises ``ConfigError`` naming the offending key."""
    if isinstance(source, Config):
        source = source.to_dict()
    raw = _read_yaml(Path(source)) if isinstance(source, (str, Path)) else _deep_copy(source)
    for item in overrides:
        key, value = parse_override(item)
        _set_path(raw, key, value)
    _apply_legacy_keys(raw)
    raw.pop(RECORD_KEY, None)
    cfg = _build(Config, raw, "")
    cfg.validate()
    return cfg


def parse_override(item: str) -> tuple[str, Any]:
    """``'TRAIN.LR=2e-4'`` -> ``('TRAIN.LR', 2e-4)``; the value is parsed as YAML (lists, null, numbers)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. --set TRAIN.LR=2e-4")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({err})") from None
    return key.strip(), value


def save_config(cfg: Config, path: Union[str, Path], deepspeed: Optional[dict] = None) -> None:
    """Write the resolved config as YAML, with the run's DeepSpeed JSON under ``DEEPSPEED`` for the record
    (``load_config`` skips that key, so the file can be passed back as ``--config``)."""
    data = cfg.to_dict()
    if deepspeed is not None:
        data[RECORD_KEY] = deepspeed
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))


def describe(cls: type = Config, prefix: str = "") -> list[str]:
    """One line per key: ``SECTION.KEY = default  # doc`` (the reference printed in the README)."""
    lines = []
    for f in fields(cls):
        name = f"{prefix}{f.name}"
        if is_dataclass(f.default_factory if f.default is MISSING else None):
            lines += describe(f.default_factory, name + ".")
            continue
        default = f.default if f.default is not MISSING else f.default_factory()
        lines.append(f"{name} = {default!r}  # {f.metadata.get('doc', '')}")
    return lines


# --- internals -----------------------------------------------------------------------------------------------

def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key} {message}")


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


def _deep_copy(data: dict) -> dict:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def _set_path(raw: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {part} is not a section")
    node[leaf] = value


def _pop_path(raw: dict, dotted: str) -> tuple[bool, Any]:
    *parents, leaf = dotted.split(".")
    node = raw
    for part in parents:
        node = node.get(part)
        if not isinstance(node, dict):
            return False, None
    if leaf not in node:
        return False, None
    return True, node.pop(leaf)


def _apply_legacy_keys(raw: dict) -> None:
    for key, why in IGNORED_KEYS.items():
        found, _ = _pop_path(raw, key)
        if found:
            warnings.warn(f"config key {key} is ignored under DeepSpeed: {why}", UserWarning, stacklevel=3)
    for old, new in RENAMED_KEYS.items():
        found, value = _pop_path(raw, old)
        if found:
            warnings.warn(f"config key {old} is renamed {new}; using its value {value!r}", UserWarning, stacklevel=3)
            _set_path(raw, new, value)


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
            raise ConfigError(_unknown_key_message(prefix + str(key), str(key), names, prefix))
        hint = hints[key]
        kwargs[key] = (_build(hint, value, f"{prefix}{key}.") if is_dataclass(hint)
                       else _coerce(value, hint, prefix + key))
    return cls(**kwargs)


def _unknown_key_message(full: str, key: str, names: list[str], prefix: str) -> str:
    close = difflib.get_close_matches(key.upper(), names, n=1, cutoff=0.5)
    hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(prefix + n for n in names)}"
    return f"unknown config key {full}{hint}"


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if origin is Union:  # Optional[X]
        if value is None:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), key)
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
    raise ConfigError(f"{key}: unsupported type {hint}")  # a schema bug, not a user error
