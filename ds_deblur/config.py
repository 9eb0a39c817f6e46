"""Experiment config: the original trainer's YAML schema as validated dataclasses.

Sections and keys are upper-case as in the original YAML files (``SEED, DATA, MODEL, DATALOADER, TRAIN, LOSS,
LOG, TEST``) so users' files keep working: the original's spelling is the canonical one (``TRAIN.OPTIM.LR``,
``LOG.VAL_EVERY_STEPS``, ...). Our earlier spellings of the same settings (``TRAIN.LR``, ...) stay accepted as
aliases (``ALIASES``: one table, resolved in one place) in YAML files, ``--set`` overrides and checkpoints' stored
configs, and read back as attributes (``cfg.TRAIN.LR``); both spellings with different values is an error.

Every key has a default and a one-line doc (the ``doc`` metadata below, shown by ``describe()``). ``load_config``
reads a YAML path or a dict (a checkpoint's stored ``config`` too), applies ``SECTION.KEY=VALUE`` overrides and
validates; any problem is a ``ConfigError`` naming the key as the user spelled it.
"""
from __future__ import annotations

import difflib
import os
import re
import warnings
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union, get_args, get_origin, get_type_hints

import yaml

from ds_deblur.errors import ConfigError

MODEL_PRESETS = ("tiny", "base", "vrt_gopro")
VGG_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
OPTIMIZERS = ("adamw", "adamw8bit")
SCHEDULES = ("cosine",)
FUSE_TYPES = ("TemporalCrossAttn",)
FUSED_SCALES = 4  # the model fuses spike features after VRT encoder stages 1-4
DEFAULT_WORKERS = 2
DEFAULT_TOTAL_STEPS = 300000


def doc(default: Any, text: str) -> Any:
    """A dataclass field with a default and its one-line documentation."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


def section(cls: type, text: str) -> Any:
    return field(default_factory=cls, metadata={"doc": text})


@dataclass
class NormConfig:
    MEAN: Optional[float] = doc(None, "voxel normalisation (log1p(counts) - MEAN) / STD; null = ROOT/voxel_stats.json")
    STD: Optional[float] = doc(None, "voxel normalisation std; null = ROOT/voxel_stats.json")

    def validate(self) -> None:
        if self.STD is not None:
            _require(self.STD > 0, "DATA.NORM.STD", f"must be > 0, got {self.STD}")


@dataclass
class DataConfig:
    ROOT: str = doc("", "dataset root: {train,val}/SEQ/{blur,sharp,spike}, or the GoPro spike release (GOPRO_Large + "
                                 "GOPRO_Large_spike_seq); required")
    TRAIN_SPLIT: str = doc("train", "sub-folder of ROOT with the training sequences")
    VAL_SPLIT: str = doc("val", "sub-folder of ROOT with the validation sequences")
    CLIP_LEN: int = doc(5, "consecutive frames per training clip (T)")
    CROP_SIZE: int = doc(256, "square training crop in RGB pixels; a multiple of 8")
    K: int = doc(32, "spike voxel bins per exposure (channels of spike_vox); also read as DATA.NUM_VOXEL_BINS")
    SPIKE_SIZE: Optional[list[int]] = doc(None, "spike sensor [H, W]; null = ROOT/meta.yaml or the release's config.yaml")
    USE_PRECOMPUTED_VOXELS: bool = doc(False, "read SEQ/spike_vox/*.npy (ds_deblur.data.prepare) instead of .dat")
    NORM: NormConfig = section(NormConfig, "voxel normalisation")
    HFLIP: bool = doc(True, "random horizontal flip of training clips")
    VFLIP: bool = doc(False, "random vertical flip of training clips")
    VAL_MAX_FRAMES: Optional[int] = doc(None, "validate at most this many frames per sequence; null = all")
    SPIKE_ROOT: Optional[str] = doc(None, "separate spike tree SPLIT/SEQ/spike (+ config.yaml); null = the one in ROOT")
    SPIKE_DIR: str = doc("spike", "a sequence's folder of .dat spike streams")
    VOXEL_CACHE_DIRNAME: str = doc("spike_vox", "a sequence's voxel cache folder (ds-deblur prepare)")
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
        self.NORM.validate()
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
    WINDOW_SIZE: Optional[list[int]] = doc(None, "attention window [T, H, W]; null = MODEL.VRT_CFG's, else the "
                                                 "preset's")
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
    CHUNK_PIXELS: int = doc(16384, "pixels per attention chunk: bounds memory of per-pixel attention "
                                   "(the original's MAX_BATCH_TOKENS)")

    def validate(self, prefix: str) -> None:
        _require(self.HEADS >= 1, f"{prefix}.HEADS", f"must be >= 1, got {self.HEADS}")
        _require(self.MLP_RATIO > 0, f"{prefix}.MLP_RATIO", f"must be > 0, got {self.MLP_RATIO}")
        _require(self.CHUNK_PIXELS >= 1, f"{prefix}.CHUNK_PIXELS", f"must be >= 1, got {self.CHUNK_PIXELS}")


@dataclass
class FuseConfig(AttnConfig):
    TYPE: str = doc("TemporalCrossAttn", "fusion module; TemporalCrossAttn is the one the model has")
    FRAME_DISTANCE_PENALTY: float = doc(0.0, "subtracted from the fusion's attention logits per frame between an "
                                             "RGB frame and a spike frame: 0 = the original (frames told apart by "
                                             "content only), .inf = each frame fuses its own exposure's spikes")

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        _require(self.FRAME_DISTANCE_PENALTY >= 0, f"{prefix}.FRAME_DISTANCE_PENALTY",
                 f"must be >= 0 (or .inf), got {self.FRAME_DISTANCE_PENALTY}")
        _require(self.TYPE in FUSE_TYPES, f"{prefix}.TYPE", f"must be {' or '.join(FUSE_TYPES)} (the only fusion "
                                                            f"this model has), got {self.TYPE!r}")


@dataclass
class ModelConfig:
    PRESET: str = doc("base", f"model preset: one of {', '.join(MODEL_PRESETS)}")
    USE_SPIKE: bool = doc(True, "fuse the spike branch; false = plain VRT (ablation)")
    IDENTITY_INIT: Optional[bool] = doc(None, "start as the identity (zero last conv: output = blurry input); "
                                              "null = the preset's (tiny: true, others: false, VRT's own init)")
    VRT_CFG: Optional[str] = doc(None, "a VRT options YAML (KAIR style, netG section): its img_size and "
                                       "window_size replace the preset's; a missing file warns and is skipped")
    CHANNELS_PER_SCALE: Optional[list[int]] = doc(None, "spike encoder channels at scales 1, 1/2, 1/4, 1/8; "
                                                        "null = the preset's VRT widths of stages 1-4")
    LAYERS: int = doc(FUSED_SCALES, "fused scales (VRT encoder stages 1-4); 4 is the only value the model has")
    VRT: VRTConfig = section(VRTConfig, "VRT backbone overrides")
    SPIKE_TSA: AttnConfig = section(AttnConfig, "per-pixel temporal self attention of spike features")
    FUSE: FuseConfig = section(FuseConfig, "temporal cross attention fusing spike into RGB features")

    def validate(self) -> None:
        _require(self.PRESET in MODEL_PRESETS, "MODEL.PRESET",
                 f"must be one of {', '.join(MODEL_PRESETS)}, got {self.PRESET!r}")
        _require(self.LAYERS == FUSED_SCALES, "MODEL.LAYERS",
                 f"must be {FUSED_SCALES}: the spike branch is fused after VRT encoder stages 1-4, the only layout "
                 f"this model has; got {self.LAYERS}")
        if self.CHANNELS_PER_SCALE is not None:
            _require(len(self.CHANNELS_PER_SCALE) == FUSED_SCALES and min(self.CHANNELS_PER_SCALE) >= 1,
                     "MODEL.CHANNELS_PER_SCALE", f"must be 4 positive channel counts, got {self.CHANNELS_PER_SCALE}")
        self.VRT.validate()
        self.SPIKE_TSA.validate("MODEL.SPIKE_TSA")
        self.FUSE.validate("MODEL.FUSE")


@dataclass
class DataLoaderConfig:
    NUM_WORKERS: Optional[int] = doc(None, "loader worker processes per rank; null = TOTAL_WORKERS split over the "
                                           f"ranks, or {DEFAULT_WORKERS} when that is null too")
    TOTAL_WORKERS: Optional[Union[int, str]] = doc(None, "workers of all ranks on a node: a number, 'auto' (80% of "
                                                         "the CPU cores) or 'cpu*F'; split over the ranks, at least "
                                                         "one each; null = NUM_WORKERS per rank")
    PIN_MEMORY: bool = doc(True, "page-locked host batches (faster copies to the GPU)")
    PERSISTENT_WORKERS: bool = doc(True, "keep workers alive between epochs")
    PREFETCH_FACTOR: int = doc(2, "batches each worker prepares ahead")
    TRAIN_PREFETCH_FACTOR: Optional[int] = doc(None, "PREFETCH_FACTOR of the training loader; null = PREFETCH_FACTOR")
    VAL_PREFETCH_FACTOR: Optional[int] = doc(None, "PREFETCH_FACTOR of the validation loader; null = PREFETCH_FACTOR")

    def validate(self) -> None:
        if self.NUM_WORKERS is not None:
            _require(self.NUM_WORKERS >= 0, "DATALOADER.NUM_WORKERS", f"must be >= 0, got {self.NUM_WORKERS}")
            _require(self.TOTAL_WORKERS is None, "DATALOADER.NUM_WORKERS",
                     f"= {self.NUM_WORKERS} and DATALOADER.TOTAL_WORKERS = {self.TOTAL_WORKERS!r} both set the "
                     f"loader workers: give one of them (set the other to null)")
        if self.TOTAL_WORKERS is not None:
            total_workers(self.TOTAL_WORKERS, cpu_count=1)  # raises on a malformed value
        for key in ("PREFETCH_FACTOR", "TRAIN_PREFETCH_FACTOR", "VAL_PREFETCH_FACTOR"):
            value = getattr(self, key)
            if value is not None:
                _require(value >= 1, f"DATALOADER.{key}", f"must be >= 1, got {value}")

    def workers_per_rank(self, world_size: int, cpu_count: Optional[int] = None) -> int:
        """Loader workers of each rank: NUM_WORKERS, or TOTAL_WORKERS split over the ranks (at least one each,
        as the original trainer did; an explicit total of 0 loads in the main process)."""
        if self.NUM_WORKERS is not None:
            return self.NUM_WORKERS
        if self.TOTAL_WORKERS is None:
            return DEFAULT_WORKERS
        total = total_workers(self.TOTAL_WORKERS, cpu_count or os.cpu_count() or 1)
        return 0 if total == 0 else max(1, total // max(world_size, 1))

    def prefetch(self, training: bool) -> int:
        """Batches each worker prepares ahead in the training (or validation) loader."""
        own = self.TRAIN_PREFETCH_FACTOR if training else self.VAL_PREFETCH_FACTOR
        return self.PREFETCH_FACTOR if own is None else own


def total_workers(value: Union[int, str], cpu_count: int) -> int:
    """DATALOADER.TOTAL_WORKERS as a number: an integer, 'auto' (80% of the cores) or 'cpu*F' (F x the cores)."""
    if isinstance(value, int) and not isinstance(value, bool):
        _require(value >= 0, "DATALOADER.TOTAL_WORKERS", f"must be >= 0, got {value}")
        return value
    text = str(value).strip().lower()
    match = re.fullmatch(r"cpu\s*\*\s*([0-9]*\.?[0-9]+)", text)
    if text == "auto":
        return max(1, int(cpu_count * 0.8))
    if match:
        return max(1, int(cpu_count * float(match.group(1))))
    if text.isdigit():
        return int(text)
    raise ConfigError(f"DATALOADER.TOTAL_WORKERS must be a number, 'auto' (80% of the CPU cores) or 'cpu*F' "
                      f"(e.g. 'cpu*0.9'), got {value!r}")


@dataclass
class OptimConfig:
    TYPE: str = doc("adamw", "optimizer: adamw (adamw8bit warns and uses AdamW, as the original without "
                             "bitsandbytes)")
    LR: float = doc(1e-4, "peak learning rate of AdamW")
    BETAS: list[float] = doc([0.9, 0.99], "AdamW betas")
    WEIGHT_DECAY: float = doc(1e-4, "AdamW decoupled weight decay")

    def validate(self) -> None:
        _require(self.TYPE.lower() in OPTIMIZERS, "TRAIN.OPTIM.TYPE",
                 f"must be one of {', '.join(OPTIMIZERS)}, got {self.TYPE!r}")
        _require(self.LR > 0, "TRAIN.OPTIM.LR", f"must be > 0, got {self.LR}")
        _require(len(self.BETAS) == 2 and all(0 <= b < 1 for b in self.BETAS), "TRAIN.OPTIM.BETAS",
                 f"must be two numbers in [0, 1), got {self.BETAS}")
        _require(self.WEIGHT_DECAY >= 0, "TRAIN.OPTIM.WEIGHT_DECAY", f"must be >= 0, got {self.WEIGHT_DECAY}")


@dataclass
class SchedConfig:
    TYPE: str = doc("cosine", "LR schedule: cosine = LinearLR from 1e-3 x LR over WARMUP_STEPS, then "
                              "CosineAnnealingLR to MIN_LR (the original's, torch's own schedulers)")
    WARMUP_STEPS: int = doc(256, "optimizer steps of linear warm-up from 1e-3 x LR to LR")
    MIN_LR: float = doc(0.0, "learning rate at the end of the cosine decay (eta_min)")

    def validate(self, lr: float) -> None:
        _require(self.TYPE.lower() in SCHEDULES, "TRAIN.SCHED.TYPE",
                 f"must be one of {', '.join(SCHEDULES)}, got {self.TYPE!r}")
        _require(self.WARMUP_STEPS >= 0, "TRAIN.SCHED.WARMUP_STEPS", f"must be >= 0, got {self.WARMUP_STEPS}")
        _require(0 <= self.MIN_LR <= lr, "TRAIN.SCHED.MIN_LR",
                 f"must be in [0, TRAIN.OPTIM.LR={lr}], got {self.MIN_LR}")


@dataclass
class TrainConfig:
    BATCH_SIZE: int = doc(1, "micro-batch per rank (DeepSpeed train_micro_batch_size_per_gpu)")
    VAL_BATCH_SIZE: int = doc(1, "validation clips per rank and forward pass; only 1 (whole frames differ in size)")
    GRADIENT_ACCUMULATION_STEPS: int = doc(1, "micro-batches per optimizer step")
    OPTIM: OptimConfig = section(OptimConfig, "optimizer")
    SCHED: SchedConfig = section(SchedConfig, "learning-rate schedule")
    TOTAL_STEPS: Optional[int] = doc(DEFAULT_TOTAL_STEPS, "length of the run in optimizer steps (wins over EPOCHS; "
                                                          "null when a file gives EPOCHS and not this key)")
    EPOCHS: Optional[int] = doc(None, "length of the run in epochs when TOTAL_STEPS is null: EPOCHS x (batches per "
                                      "rank per epoch // GRADIENT_ACCUMULATION_STEPS) optimizer steps")
    MAX_GRAD_NORM: float = doc(1.0, "global gradient-norm clipping; 0 = off")
    VAL_TILE_SIZE: Optional[int] = doc(None, "validate full frames in spatial tiles of this size; null = whole")
    VAL_TILE_OVERLAP: int = doc(32, "overlap of validation tiles in pixels")
    MIN_LOSS_SCALE_PATIENCE: int = doc(100, "fp16: stop (after saving) when the loss scale sits at its minimum "
                                            "for this many consecutive steps")
    NONFINITE_PATIENCE: int = doc(50, "bf16/fp32: stop (after saving) when this many consecutive steps were skipped "
                                      "for non-finite losses or gradients: the run has diverged")
    RESUME_FROM_CHECKPOINT: bool = doc(False, "resume without --resume: from CHECKPOINT_PATH, or the newest "
                                              "checkpoint under LOG.SAVE_DIR (a fresh start when there is none)")
    CHECKPOINT_PATH: Optional[str] = doc(None, "what RESUME_FROM_CHECKPOINT resumes (as --resume takes it); "
                                               "null = the newest under LOG.SAVE_DIR/ckpts")
    EMA_DECAY: float = doc(0.0, "exponential moving average of the weights after every applied step, "
                                "ema = d x ema + (1 - d) x weights (KAIR's E_decay, e.g. 0.999); 0 = off. Sharded like "
                                "the fp32 master weights (ZeRO 1/2/3)")
    FIX_ITER: int = doc(0, "optimizer steps during which the parameters matching FIX_KEYS are not updated "
                           "(KAIR's fix_iter); 0 = none")
    FIX_KEYS: list[str] = doc([], "name substrings of the parameters fixed for FIX_ITER steps, then trained at "
                                  "LR x FIX_LR_MUL in their own optimizer group (KAIR's fix_keys, e.g. "
                                  "[spynet, deform])")
    FIX_LR_MUL: float = doc(1.0, "learning-rate multiplier of the FIX_KEYS parameters' group (KAIR's fix_lr_mul)")
    FREEZE: list[str] = doc([], "name substrings of parameters that never train (e.g. ['vrt.']: the spike branch "
                                "and fusion train on a frozen backbone); they stay out of the optimizer")

    def validate(self) -> None:
        _require(self.BATCH_SIZE >= 1, "TRAIN.BATCH_SIZE", f"must be >= 1, got {self.BATCH_SIZE}")
        _require(self.VAL_BATCH_SIZE >= 1, "TRAIN.VAL_BATCH_SIZE", f"must be >= 1, got {self.VAL_BATCH_SIZE}")
        _require(self.GRADIENT_ACCUMULATION_STEPS >= 1, "TRAIN.GRADIENT_ACCUMULATION_STEPS",
                 f"must be >= 1, got {self.GRADIENT_ACCUMULATION_STEPS}")
        self.OPTIM.validate()
        self.SCHED.validate(self.OPTIM.LR)
        _require(self.TOTAL_STEPS is not None or self.EPOCHS is not None, "TRAIN.TOTAL_STEPS",
                 "and TRAIN.EPOCHS are both null: set one to say how long to train")
        if self.TOTAL_STEPS is not None:
            _require(self.TOTAL_STEPS >= 1, "TRAIN.TOTAL_STEPS", f"must be >= 1, got {self.TOTAL_STEPS}")
        if self.EPOCHS is not None:
            _require(self.EPOCHS >= 1, "TRAIN.EPOCHS", f"must be >= 1, got {self.EPOCHS}")
        _require(self.MAX_GRAD_NORM >= 0, "TRAIN.MAX_GRAD_NORM", f"must be >= 0, got {self.MAX_GRAD_NORM}")
        if self.VAL_TILE_SIZE is not None:
            _require(self.VAL_TILE_SIZE > 0 and self.VAL_TILE_SIZE % 8 == 0, "TRAIN.VAL_TILE_SIZE",
                     f"must be a positive multiple of 8, got {self.VAL_TILE_SIZE}")
            _require(0 <= self.VAL_TILE_OVERLAP < self.VAL_TILE_SIZE, "TRAIN.VAL_TILE_OVERLAP",
                     f"must be in [0, TRAIN.VAL_TILE_SIZE={self.VAL_TILE_SIZE}), got {self.VAL_TILE_OVERLAP}")
        _require(self.MIN_LOSS_SCALE_PATIENCE >= 1, "TRAIN.MIN_LOSS_SCALE_PATIENCE",
                 f"must be >= 1, got {self.MIN_LOSS_SCALE_PATIENCE}")
        _require(self.NONFINITE_PATIENCE >= 1, "TRAIN.NONFINITE_PATIENCE",
                 f"must be >= 1, got {self.NONFINITE_PATIENCE}")
        self._validate_recipe()

    def _validate_recipe(self) -> None:
        """EMA and staged fine-tuning (KAIR's E_decay, fix_iter, fix_keys, fix_lr_mul) and FREEZE."""
        _require(0 <= self.EMA_DECAY < 1, "TRAIN.EMA_DECAY", f"must be in [0, 1) (0 = off), got {self.EMA_DECAY}")
        _require(self.FIX_ITER >= 0, "TRAIN.FIX_ITER", f"must be >= 0, got {self.FIX_ITER}")
        _require(self.FIX_LR_MUL > 0, "TRAIN.FIX_LR_MUL", f"must be > 0, got {self.FIX_LR_MUL}")
        _require(self.FIX_ITER == 0 or bool(self.FIX_KEYS), "TRAIN.FIX_ITER",
                 f"= {self.FIX_ITER} fixes nothing: TRAIN.FIX_KEYS is empty (give the name substrings of the "
                 f"parameters to fix, e.g. [spynet, deform])")
        for key in ("FIX_KEYS", "FREEZE"):
            _require(all(getattr(self, key)), f"TRAIN.{key}",
                     f"must not hold an empty string (it would match every parameter), got {getattr(self, key)}")


@dataclass
class CharbonnierConfig:
    DELTA: float = doc(1e-3, "delta of the Charbonnier loss sqrt((x-y)^2 + delta^2)")
    WEIGHT: float = doc(1.0, "weight of the Charbonnier loss")

    def validate(self) -> None:
        _require(self.DELTA > 0, "LOSS.CHARBONNIER.DELTA", f"must be > 0, got {self.DELTA}")
        _require(self.WEIGHT >= 0, "LOSS.CHARBONNIER.WEIGHT", f"must be >= 0, got {self.WEIGHT}")


@dataclass
class PerceptualConfig:
    LAYERS: list[str] = doc(["relu3_3"], f"VGG16 layer compared (one of {', '.join(VGG_LAYERS)}), as a list")
    WEIGHT: float = doc(0.0, "weight of the VGG16 perceptual loss; > 0 needs the VGG16 file (LOSS.VGG_PATH)")

    def validate(self) -> None:
        _require(all(layer in VGG_LAYERS for layer in self.LAYERS), "LOSS.VGG_PERCEPTUAL.LAYERS",
                 f"must be one of {', '.join(VGG_LAYERS)}, got {self.LAYERS}")
        _require(len(self.LAYERS) == 1, "LOSS.VGG_PERCEPTUAL.LAYERS",
                 f"must list exactly one layer (the perceptual loss compares one VGG16 layer), got {self.LAYERS}")
        _require(self.WEIGHT >= 0, "LOSS.VGG_PERCEPTUAL.WEIGHT", f"must be >= 0, got {self.WEIGHT}")


@dataclass
class LossConfig:
    CHARBONNIER: CharbonnierConfig = section(CharbonnierConfig, "Charbonnier pixel loss")
    VGG_PERCEPTUAL: PerceptualConfig = section(PerceptualConfig, "VGG16 perceptual loss (L1 of features)")
    VGG_PATH: Optional[str] = doc(None, "local VGG16 weights (torchvision's vgg16-397923af.pth); null = that file "
                                        "in torch's hub cache if there; never downloaded")

    def validate(self) -> None:
        self.CHARBONNIER.validate()
        self.VGG_PERCEPTUAL.validate()


@dataclass
class LogConfig:
    SAVE_DIR: str = doc("outputs", "run directory: config.yaml, ckpts/, tb/, metrics/, visuals/")
    TENSORBOARD: bool = doc(True, "write TensorBoard event files under SAVE_DIR/tb; false = none")
    LOG_EVERY_STEPS: int = doc(10, "write train scalars every N optimizer steps")
    VAL_EVERY_STEPS: int = doc(1000, "validate every N optimizer steps (and at the end)")
    SAVE_EVERY_STEPS: Optional[int] = doc(None, "save a checkpoint tag every N optimizer steps (and at the end); "
                                                "null = VAL_EVERY_STEPS (a save at each validation, as the original)")
    KEEP_LAST: int = doc(3, "step tags kept on disk (the newest complete one and best are never removed)")
    EXPORT_SINGLE_FILE: bool = doc(True, "refresh ckpts/last.pth and best.pth after each save")
    VAL_USE_EMA: Optional[bool] = doc(None, "validate, pick best and run inference with the EMA weights; null = "
                                            "true when TRAIN.EMA_DECAY > 0")

    def validate(self) -> None:
        _require(bool(self.SAVE_DIR), "LOG.SAVE_DIR", "must not be empty")
        _require(self.LOG_EVERY_STEPS >= 1, "LOG.LOG_EVERY_STEPS", f"must be >= 1, got {self.LOG_EVERY_STEPS}")
        _require(self.VAL_EVERY_STEPS >= 1, "LOG.VAL_EVERY_STEPS", f"must be >= 1, got {self.VAL_EVERY_STEPS}")
        if self.SAVE_EVERY_STEPS is not None:
            _require(self.SAVE_EVERY_STEPS >= 1, "LOG.SAVE_EVERY_STEPS", f"must be >= 1, got {self.SAVE_EVERY_STEPS}")
        _require(self.KEEP_LAST >= 1, "LOG.KEEP_LAST", f"must be >= 1, got {self.KEEP_LAST}")
        root = getattr(self, "_root", None)
        if self.VAL_USE_EMA and root is not None:
            _require(root.TRAIN.EMA_DECAY > 0, "LOG.VAL_USE_EMA",
                     "is true but TRAIN.EMA_DECAY is 0: there are no EMA weights (set TRAIN.EMA_DECAY, e.g. 0.999)")


@dataclass
class InferenceConfig:
    BATCH_SIZE: int = doc(1, "ds-deblur infer: temporal windows per forward pass; only 1 (others warn)")
    NUM_WORKERS: int = doc(2, "ds-deblur infer: threads reading and voxelising frames ahead of the model")

    def validate(self) -> None:
        _require(self.BATCH_SIZE >= 1, "TEST.BATCH_SIZE", f"must be >= 1, got {self.BATCH_SIZE}")
        _require(self.NUM_WORKERS >= 0, "TEST.NUM_WORKERS", f"must be >= 0, got {self.NUM_WORKERS}")


@dataclass
class Config:
    SEED: int = doc(42, "seed of model init, data order and augmentation")
    DATA: DataConfig = section(DataConfig, "dataset and clip sampling")
    MODEL: ModelConfig = section(ModelConfig, "VRT-spike architecture")
    DATALOADER: DataLoaderConfig = section(DataLoaderConfig, "torch DataLoader settings")
    TRAIN: TrainConfig = section(TrainConfig, "optimisation, schedule, length")
    LOSS: LossConfig = section(LossConfig, "training loss")
    LOG: LogConfig = section(LogConfig, "outputs: checkpoints, TensorBoard, metrics, validation")
    TEST: InferenceConfig = section(InferenceConfig, "inference (ds-deblur infer)")

    def __post_init__(self) -> None:
        # Sections read aliases that live in another section (cfg.TRAIN.VAL_EVERY_STEPS) through their root.
        for f in fields(self):
            part = getattr(self, f.name)
            if is_dataclass(part):
                object.__setattr__(part, "_root", self)

    def validate(self) -> None:
        _require(self.SEED >= 0, "SEED", f"must be >= 0, got {self.SEED}")
        for part in (self.DATA, self.MODEL, self.DATALOADER, self.TRAIN, self.LOSS, self.LOG, self.TEST):
            part.validate()

    def to_dict(self) -> dict:
        """Plain nested dict in the original spelling (YAML/JSON/checkpoint friendly); ``load_config`` reads it
        back."""
        return asdict(self)


# Top-level key of a run's config.yaml holding the DeepSpeed JSON it ran with; informational only.
RECORD_KEY = "DEEPSPEED"


@dataclass(frozen=True)
class Alias:
    """Another spelling of the canonical key ``key``; ``to_key`` turns its value into the canonical one and
    ``from_key`` back (for attribute reads); ``warn``: accepted with a warning naming the canonical key."""
    key: str
    to_key: Callable[[Any], Any] = lambda value: value
    from_key: Callable[[Any], Any] = lambda value: value
    warn: bool = False


def _one_layer(layers: Any) -> Any:
    return layers[0] if isinstance(layers, list) and len(layers) == 1 else layers


def _as_list(value: Any) -> Any:
    return value if isinstance(value, list) else [value]


# The one table of spellings: alias -> canonical key. Both given with different values is an error naming both.
ALIASES = {
    # our earlier spellings of the original trainer's settings
    "TRAIN.LR": Alias("TRAIN.OPTIM.LR"),
    "TRAIN.BETAS": Alias("TRAIN.OPTIM.BETAS"),
    "TRAIN.WEIGHT_DECAY": Alias("TRAIN.OPTIM.WEIGHT_DECAY"),
    "TRAIN.WARMUP_STEPS": Alias("TRAIN.SCHED.WARMUP_STEPS"),
    "TRAIN.MIN_LR": Alias("TRAIN.SCHED.MIN_LR"),
    "TRAIN.CLIP_GRAD_NORM": Alias("TRAIN.MAX_GRAD_NORM"),
    "TRAIN.VAL_EVERY_STEPS": Alias("LOG.VAL_EVERY_STEPS"),
    "LOSS.CHARBONNIER_DELTA": Alias("LOSS.CHARBONNIER.DELTA"),
    "LOSS.VGG_WEIGHT": Alias("LOSS.VGG_PERCEPTUAL.WEIGHT"),
    "LOSS.VGG_LAYER": Alias("LOSS.VGG_PERCEPTUAL.LAYERS", to_key=_as_list, from_key=_one_layer),
    "DATA.SPIKE_MEAN": Alias("DATA.NORM.MEAN"),
    "DATA.SPIKE_STD": Alias("DATA.NORM.STD"),
    # the original trainer's second names of a setting
    "DATA.NUM_VOXEL_BINS": Alias("DATA.K"),
    "MODEL.SPIKE_TSA.MAX_BATCH_TOKENS": Alias("MODEL.SPIKE_TSA.CHUNK_PIXELS"),
    "MODEL.FUSE.MAX_BATCH_TOKENS": Alias("MODEL.FUSE.CHUNK_PIXELS"),
    # older spellings of the original trainer, read with a warning
    "TRAIN.ACCUMULATE_GRAD": Alias("TRAIN.GRADIENT_ACCUMULATION_STEPS", warn=True),
}
# Keys renamed here whose value is used with a warning naming the new key (kept for scripts that read it).
RENAMED_KEYS = {old: alias.key for old, alias in ALIASES.items() if alias.warn}

_PRECISION = "precision is set by the DeepSpeed JSON (fp16/bf16 sections; without --deepspeed_config: fp16 on CUDA)"
_CHUNKS = "attention is chunked by pixel count: {0}.CHUNK_PIXELS (the original's {0}.MAX_BATCH_TOKENS) sets its size"
_TIMING = ("the perf/step_time_ms, perf/data_time_ms and perf/samples_per_sec TensorBoard tags (every "
           "LOG.LOG_EVERY_STEPS) replace the original's timing log")
# Keys of the original trainer that mean nothing here: accepted with a warning that says why.
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


def load_config(source: Union[str, Path, dict, Config], overrides: Iterable[str] = ()) -> Config:
    """Read a YAML file or a dict (e.g. a checkpoint's ``config``), apply ``SECTION.KEY=VALUE`` overrides,
    validate and return the config. Raises ``ConfigError`` naming the offending key."""
    if isinstance(source, Config):
        source = source.to_dict()
    raw = _read_yaml(Path(source)) if isinstance(source, (str, Path)) else _deep_copy(source)
    raw.pop(RECORD_KEY, None)
    spelled = _canonicalise(raw)
    _apply_overrides(raw, overrides, spelled)
    _resolve_length(raw)
    try:
        cfg = _build(Config, raw, "")
        _resolve(cfg)
        cfg.validate()
    except ConfigError as err:
        raise _respelled(err, spelled) from None
    return cfg


def canonical_dict(config: dict) -> dict:
    """A stored config (a checkpoint's ``config``, any spelling) in the canonical spelling, as the current
    schema writes it: what to compare a run's ``cfg.to_dict()`` with."""
    return load_config(config).to_dict()


def parse_override(item: str) -> tuple[str, Any]:
    """``'TRAIN.LR=2e-4'`` -> ``('TRAIN.LR', 2e-4)``; the value is parsed as YAML (lists, null, numbers)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. --set TRAIN.OPTIM.LR=2e-4")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({err})") from None
    return key.strip(), value


def save_config(cfg: Config, path: Union[str, Path], deepspeed: Optional[dict] = None) -> None:
    """Write the resolved config as YAML in the original spelling, with the run's DeepSpeed JSON under
    ``DEEPSPEED`` for the record (``load_config`` skips that key, so the file can be passed back as ``--config``)."""
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


def describe_aliases() -> list[str]:
    """One line per accepted other spelling: ``ALIAS -> CANONICAL``."""
    return [f"{old} -> {alias.key}" + (" (with a warning)" if alias.warn else "") for old, alias in ALIASES.items()]


def resume_request(cfg: Config, cli_resume: Optional[str], cli_init_weights: Optional[str] = None) -> tuple[
        Optional[str], Optional[str]]:
    """What to resume (a ``--resume`` value, or None for a new run) and a line saying why, from the command line
    and TRAIN.RESUME_FROM_CHECKPOINT / TRAIN.CHECKPOINT_PATH. The command line wins: ``--resume`` over the
    config, and ``--init-weights`` (a new run) over a config that asks to resume. ``'auto'`` = the newest
    complete checkpoint under LOG.SAVE_DIR/ckpts, or a fresh start when there is none."""
    train = cfg.TRAIN
    if cli_resume:
        return cli_resume, None
    if not train.RESUME_FROM_CHECKPOINT:
        return None, None
    if cli_init_weights:
        return None, ("[train] TRAIN.RESUME_FROM_CHECKPOINT is true but --init-weights starts a new run: not "
                      "resuming")
    target = train.CHECKPOINT_PATH or "auto"
    where = train.CHECKPOINT_PATH or f"the newest checkpoint under {Path(cfg.LOG.SAVE_DIR) / 'ckpts'}"
    return target, f"[train] TRAIN.RESUME_FROM_CHECKPOINT: resuming from {where}"


# --- internals -----------------------------------------------------------------------------------------------

def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        err = ConfigError(f"{key} {message}")
        err.key = key
        raise err


def _respelled(err: ConfigError, spelled: dict[str, str]) -> ConfigError:
    """The error naming the key as the user wrote it (an alias), with the canonical name beside it."""
    message = str(err)
    for key, alias in spelled.items():
        if re.match(re.escape(key) + r"(?![A-Za-z0-9_])", message):
            return ConfigError(f"{alias}{message[len(key):]} ({alias} is read as {key})")
    return err


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
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {part} is not a section")
    node[leaf] = value


def _parent(raw: dict, dotted: str) -> tuple[Optional[dict], str]:
    """The section holding ``dotted`` (None when a section on the way is missing) and the key's last part."""
    *parents, leaf = dotted.split(".")
    node: Any = raw
    for part in parents:
        node = node.get(part)
        if not isinstance(node, dict):
            return None, leaf
    return node, leaf


def _pop_path(raw: dict, dotted: str) -> tuple[bool, Any]:
    node, leaf = _parent(raw, dotted)
    return (True, node.pop(leaf)) if node is not None and leaf in node else (False, None)


def _get_path(raw: dict, dotted: str) -> tuple[bool, Any]:
    node, leaf = _parent(raw, dotted)
    return (True, node[leaf]) if node is not None and leaf in node else (False, None)


def _comparable(value: Any) -> Any:
    """A raw YAML value made comparable across spellings: numeric text is a number (PyYAML reads 1e-4 as text)."""
    if isinstance(value, (list, tuple)):
        return [_comparable(v) for v in value]
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _conflict(first: str, first_value: Any, second: str, second_value: Any, canonical: str) -> ConfigError:
    alias = second if first == canonical else first
    first_value, second_value = _comparable(first_value), _comparable(second_value)
    return ConfigError(f"{first} = {first_value!r} and {second} = {second_value!r} are the same setting ({alias} is "
                       f"read as {canonical}) with different values: give only one of them")


def _canonicalise(raw: dict) -> dict[str, str]:
    """Rewrite a raw config in place: warn about ignored keys, move aliases to their canonical keys (an error
    when both are given with different values). Returns canonical key -> the alias the file used."""
    _warn_ignored([key for key in IGNORED_KEYS if _pop_path(raw, key)[0]])
    spelled = {}
    for old, alias in ALIASES.items():
        found, value = _pop_path(raw, old)
        if not found:
            continue
        value = alias.to_key(value)
        given, current = _get_path(raw, alias.key)
        if given and _comparable(current) != _comparable(value):
            raise _conflict(old, value, alias.key, current, alias.key)
        if alias.warn:
            warnings.warn(f"config key {old} is renamed {alias.key}; using its value {value!r}", UserWarning,
                          stacklevel=4)
        _set_path(raw, alias.key, value)
        if not given:
            spelled[alias.key] = old
    return spelled


def _warn_ignored(keys: list[str]) -> None:
    """One warning per reason, naming every key it covers."""
    by_reason: dict[str, list[str]] = {}
    for key in keys:
        by_reason.setdefault(IGNORED_KEYS[key], []).append(key)
    for why, names in by_reason.items():
        what = f"config key {names[0]} is" if len(names) == 1 else f"config keys {', '.join(names)} are"
        warnings.warn(f"{what} ignored under DeepSpeed: {why}", UserWarning, stacklevel=5)


def _apply_overrides(raw: dict, overrides: Iterable[str], spelled: dict[str, str]) -> None:
    """Apply ``--set`` items (an alias sets its canonical key; two spellings of one key with different values
    are an error); ``spelled`` (canonical key -> the alias used) follows the last spelling of each key."""
    seen: dict[str, tuple[str, Any]] = {}
    for item in overrides:
        key, value = parse_override(item)
        if key in IGNORED_KEYS:
            _warn_ignored([key])
            continue
        alias = ALIASES.get(key)
        canonical, value = (alias.key, alias.to_key(value)) if alias else (key, value)
        earlier = seen.get(canonical)
        if earlier and earlier[0] != key and _comparable(earlier[1]) != _comparable(value):
            raise _conflict(earlier[0], earlier[1], key, value, canonical)
        seen[canonical] = (key, value)
        _set_path(raw, canonical, value)
        if alias:
            spelled[canonical] = key
        else:
            spelled.pop(canonical, None)


def _resolve_length(raw: dict) -> None:
    """A file that gives TRAIN.EPOCHS and not TRAIN.TOTAL_STEPS trains for EPOCHS (the original's length)."""
    train = raw.get("TRAIN")
    if isinstance(train, dict) and train.get("EPOCHS") is not None and "TOTAL_STEPS" not in train:
        train["TOTAL_STEPS"] = None


def _resolve(cfg: Config) -> None:
    """Defaults that follow other keys."""
    if cfg.LOG.SAVE_EVERY_STEPS is None:
        cfg.LOG.SAVE_EVERY_STEPS = cfg.LOG.VAL_EVERY_STEPS
    if cfg.LOG.VAL_USE_EMA is None:
        cfg.LOG.VAL_USE_EMA = cfg.TRAIN.EMA_DECAY > 0
    if cfg.TRAIN.VAL_BATCH_SIZE != 1:
        warnings.warn(f"TRAIN.VAL_BATCH_SIZE = {cfg.TRAIN.VAL_BATCH_SIZE} is not used: validation runs one whole "
                      f"clip per rank at a time (frames of different sequences may differ in size)", UserWarning,
                      stacklevel=3)


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
    others = {old[len(prefix):]: alias.key for old, alias in ALIASES.items()
              if old.startswith(prefix) and "." not in old[len(prefix):]}
    close = difflib.get_close_matches(key.upper(), names + list(others), n=1, cutoff=0.5)
    if close and close[0] in others:
        return f"unknown config key {full}; did you mean {prefix}{close[0]} (read as {others[close[0]]})?"
    if close:
        return f"unknown config key {full}; did you mean {prefix}{close[0]}?"
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
    raise ConfigError(f"{key}: unsupported type {hint}")  # a schema bug, not a user error


def _section_type(dotted: str) -> type:
    """The dataclass of the section ``dotted`` ('TRAIN', 'MODEL.FUSE', ...)."""
    cls: type = Config
    for part in dotted.split("."):
        cls = get_type_hints(cls)[part]
    return cls


def _alias_property(old: str, alias: Alias) -> property:
    """A read-only attribute ``old`` (e.g. cfg.TRAIN.LR) reading the canonical key."""
    parent = old.rsplit(".", 1)[0] + "."
    local = alias.key.startswith(parent)
    path = alias.key[len(parent):] if local else alias.key

    def read(section_obj: Any) -> Any:
        node = section_obj if local else getattr(section_obj, "_root", None)
        if node is None:
            raise AttributeError(f"{old} is read as {alias.key}, which lives in another section: read it from a "
                                 f"Config made by load_config")
        for part in path.split("."):
            node = getattr(node, part)
        return alias.from_key(node)

    return property(read, doc=f"{old}: the older spelling of {alias.key} (read-only)")


def _install_alias_properties() -> None:
    for old, alias in ALIASES.items():
        section_path, leaf = old.rsplit(".", 1)
        cls = _section_type(section_path)
        if leaf not in {f.name for f in fields(cls)} and not alias.warn:
            setattr(cls, leaf, _alias_property(old, alias))


_install_alias_properties()
