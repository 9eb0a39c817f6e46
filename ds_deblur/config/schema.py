"""The experiment schema: the original trainer's YAML sections and keys as dataclasses.

Sections and keys are upper-case as in the original trainer's files (``SEED, DATA, MODEL, DATALOADER, TRAIN,
LOSS, LOG, TEST``), so its files load unchanged. Every key declares its default, a one-line doc and its limits
(``key(default, doc, ge=..., choices=..., ...)``); ``checks.py`` enforces the limits with one loop and holds the
rules between keys, and ``reference.py`` turns the declarations into ``docs/config.md``.

Limits (skipped when the value is null; on a list, ``length`` counts it and the others apply to each entry):
``ge``/``gt``/``le``/``lt`` bounds, ``choices`` (``ignore_case`` to compare lower-cased), ``multiple_of`` (a
positive multiple), ``length``, ``nonempty`` (a non-empty string), ``required`` (must be given), ``why`` (the reason,
added to the error), ``fixed_on_resume`` (shapes the model, its inputs or the optimizer's layout: a resumed run must
keep it).
"""
from __future__ import annotations

import re
import warnings
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, Iterator, Optional, Union, get_args, get_origin, get_type_hints

MODEL_PRESETS = ("tiny", "base", "vrt_gopro")
VGG_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
OPTIMIZERS = ("adamw", "adamw8bit")
SPIKE_REPRS = ("voxel", "tfp", "raw_window")
FLOW_SPIKES = ("encoding25",)
IO_BACKENDS = ("disk", "lmdb")
SCHEDULES = ("cosine",)
FUSE_TYPES = ("TemporalCrossAttn",)
FUSED_SCALES = 4  # the model fuses spike features after VRT encoder stages 1-4
DEFAULT_WORKERS = 2
DEFAULT_TOTAL_STEPS = 300000
# DATALOADER.TOTAL_WORKERS as text: 'auto' (80% of the CPU cores), 'cpu*F' (F x the cores) or a number.
TOTAL_WORKERS_FORMAT = re.compile(r"auto|cpu\s*\*\s*(?P<factor>[0-9]*\.?[0-9]+)|(?P<count>[0-9]+)")
# Top-level key of a run's config.yaml holding the DeepSpeed JSON it ran with; informational only.
RECORD_KEY = "DEEPSPEED"

LIMITS = ("ge", "gt", "le", "lt", "choices", "ignore_case", "multiple_of", "length", "nonempty", "required", "why")


def key(default: Any, doc: str, *, fixed_on_resume: bool = False, **limits: Any) -> Any:
    """A config key: its default, one-line doc and limits (see the module doc)."""
    unknown = set(limits) - set(LIMITS)
    if unknown:
        raise TypeError(f"unknown limits {sorted(unknown)}")  # a schema bug, caught when the module is imported
    metadata = {"doc": doc, "fixed_on_resume": fixed_on_resume, "limits": limits}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def section(cls: type, doc: str) -> Any:
    return field(default_factory=cls, metadata={"doc": doc})


@dataclass
class NormConfig:
    MEAN: Optional[float] = key(None, "voxel normalisation (log1p(counts) - MEAN) / STD; null = ROOT/voxel_stats.json")
    STD: Optional[float] = key(None, "voxel normalisation std; null = ROOT/voxel_stats.json", gt=0)


@dataclass
class DataConfig:
    ROOT: str = key("", "dataset root: {train,val}/SEQ/{blur,sharp,spike}, or GoPro's GOPRO_Large + "
                        "GOPRO_Large_spike_seq (the release's, or S-VRT's {split}_GT[_blurred]); required unless "
                        "GT_ROOT, LQ_ROOT and SPIKE_ROOT are given")
    TRAIN_SPLIT: str = key("train", "sub-folder of ROOT with the training sequences")
    VAL_SPLIT: str = key("val", "sub-folder of ROOT with the validation sequences")
    CLIP_LEN: int = key(5, "consecutive frames per training clip (T)", fixed_on_resume=True, ge=2,
                        why="temporal attention needs two frames")
    CROP_SIZE: Union[int, list[int]] = key(256, "training crop in RGB pixels: a square size, or [H, W] for a "
                                                "rectangular one; multiples of 8 (the model's window)")
    PHASE1_CROP_SIZE: Optional[Union[int, list[int]]] = key(None, "training crop during phase 1 (steps before "
                                                                  "TRAIN.FIX_ITER; S-VRT's first gt_size); null = "
                                                                  "CROP_SIZE")
    K: int = key(32, "spike bins per exposure: voxel bins (channels of spike_vox), or TFP images with SPIKE_REPR "
                     "tfp; also read as DATA.NUM_VOXEL_BINS", fixed_on_resume=True, ge=1)
    SPIKE_REPR: str = key("voxel", f"spike input per frame: {', '.join(SPIKE_REPRS)} (docs/data.md#spike-"
                                   f"representations)", fixed_on_resume=True, choices=SPIKE_REPRS)
    TFP_HALF_WIN_LENGTH: int = key(20, "SPIKE_REPR tfp: spike frames each side of a TFP image's centre (S-VRT's "
                                       "tfp_half_win_length)", fixed_on_resume=True, ge=0)
    RAW_WINDOW_LENGTH: Optional[int] = key(None, "SPIKE_REPR raw_window: raw 0/1 spike frames centred in the "
                                                 "exposure, odd; null = 2 x TFP_HALF_WIN_LENGTH + 1 (S-VRT's)",
                                           fixed_on_resume=True, ge=1)
    FLOW_SPIKE: Optional[str] = key(None, "extra spike input of the flow network: encoding25 (SCFlow's: "
                                          "FLOW_SPIKE_SUBFRAMES windows of 25 raw frames per exposure); null = none",
                                    fixed_on_resume=True, choices=FLOW_SPIKES)
    FLOW_SPIKE_DT: int = key(10, "FLOW_SPIKE encoding25: S-VRT's dt (names its encoding25_dt{dt} artifact folder)",
                             fixed_on_resume=True, ge=1)
    FLOW_SPIKE_SUBFRAMES: int = key(1, "FLOW_SPIKE encoding25: windows per exposure (S-VRT's subframes)",
                                    fixed_on_resume=True, ge=1)
    FLOW_SPIKE_POLICY: str = key("mean_windows", "FLOW_SPIKE encoding25 with several windows per exposure: SCFlow "
                                                 "runs on their mean (mean_windows) or chains the flows between "
                                                 "them (compose_subframes; S-VRT's spike_flow.collapse_policy)",
                                 fixed_on_resume=True, choices=("mean_windows", "compose_subframes"))
    SPIKE_SIZE: Optional[list[int]] = key(None, "spike sensor [H, W]; null = ROOT/meta.yaml or the release's "
                                                "config.yaml", fixed_on_resume=True, length=2, gt=0, why="[H, W]")
    USE_PRECOMPUTED_VOXELS: bool = key(False, "read SEQ/spike_vox/*.npy (ds_deblur.data.prepare) instead of .dat")
    NORM: NormConfig = section(NormConfig, "voxel normalisation")
    HFLIP: bool = key(True, "random horizontal flip of training clips (S-VRT's use_hflip)")
    VFLIP: bool = key(False, "random vertical flip of training clips")
    ROTATE: bool = key(False, "S-VRT's use_rot: a random vertical flip and a random transpose (90-degree rotation) "
                              "of training clips, frames and spikes alike")
    RANDOM_REVERSE: bool = key(False, "S-VRT's random_reverse: half the training clips in reverse frame order")
    VAL_MAX_FRAMES: Optional[int] = key(None, "validate at most this many frames per sequence; null = all", ge=1)
    SPIKE_ROOT: Optional[str] = key(None, "separate spike tree SPLIT/SEQ/spike (+ config.yaml), or a split's "
                                          "SEQ/spike as S-VRT's dataroot_spike ({split} = the split's name); null = "
                                          "the one in ROOT")
    SPIKE_DIR: str = key("spike", "a sequence's folder of .dat spike streams; not VOXEL_CACHE_DIRNAME", nonempty=True)
    VOXEL_CACHE_DIRNAME: str = key("spike_vox", "a sequence's voxel cache folder (ds-deblur prepare)")
    IMAGE_EXTS: list[str] = key([".png"], "extensions of the frame files in blur/ and sharp/ that count, with "
                                          "their dot; at least one")
    GT_ROOT: Optional[str] = key(None, "S-VRT's dataroot_gt: a split's sharp frames as SEQ/NNNNNN.png (or an LMDB "
                                       "with IO_BACKEND lmdb), {split} standing for the split's name; with LQ_ROOT "
                                       "and SPIKE_ROOT instead of ROOT's layout")
    LQ_ROOT: Optional[str] = key(None, "S-VRT's dataroot_lq: a split's blurry frames as SEQ/NNNNNN.png (or an "
                                       "LMDB), {split} standing for the split's name")
    META_INFO_FILE: Optional[str] = key(None, "KAIR meta_info file: one 'SEQ FRAMES (H,W,C) [START]' line per "
                                              "training sequence; only those sequences and frames are read (each "
                                              "split's file when the path holds {split})")
    IO_BACKEND: str = key("disk", "where frames are read: disk (image files) or lmdb (KAIR's LMDB: ROOT's frame "
                                  "folders, GT_ROOT and LQ_ROOT with .lmdb after them)", choices=IO_BACKENDS)

    @property
    def crop_hw(self) -> tuple[int, int]:
        """CROP_SIZE as (height, width)."""
        size = self.CROP_SIZE
        return (size, size) if isinstance(size, int) else (size[0], size[1])

    def phase_crop_hw(self, phase: int) -> tuple[int, int]:
        """The training crop of phase 1 or 2 as (height, width)."""
        size = self.PHASE1_CROP_SIZE if phase == 1 and self.PHASE1_CROP_SIZE is not None else self.CROP_SIZE
        return (size, size) if isinstance(size, int) else (size[0], size[1])

    @property
    def spike_channels(self) -> int:
        """Channels of one frame's spike input: the model's spike input width."""
        return self.RAW_WINDOW_LENGTH if self.SPIKE_REPR == "raw_window" else self.K


@dataclass
class VRTConfig:
    EMBED_DIMS: Optional[list[int]] = key(None, "channels per VRT stage; null = the preset's", fixed_on_resume=True,
                                          ge=1)
    DEPTHS: Optional[list[int]] = key(None, "TMSA blocks per VRT stage; null = the preset's", fixed_on_resume=True,
                                      ge=1)
    NUM_HEADS: Optional[list[int]] = key(None, "attention heads per VRT stage; null = the preset's",
                                         fixed_on_resume=True, ge=1)
    WINDOW_SIZE: Optional[list[int]] = key(None, "attention window [T, H, W]; null = MODEL.VRT_CFG's, else the "
                                                 "preset's", fixed_on_resume=True, length=3, ge=1, why="[T, H, W]")
    PA_FRAMES: Optional[int] = key(None, "frames aligned by parallel warping; null = the preset's",
                                   fixed_on_resume=True)
    DEFORMABLE_GROUPS: Optional[int] = key(None, "groups of the flow-guided deformable conv; null = the preset's",
                                           fixed_on_resume=True)
    INDEP_RECONSTS: Optional[list[int]] = key(None, "stages reconstructing frames independently; null = preset's",
                                              fixed_on_resume=True)
    MLP_RATIO: Optional[float] = key(None, "feed-forward expansion; null = the preset's", fixed_on_resume=True)
    SPYNET_PATH: Optional[str] = key(None, "local SpyNet weights (spynet_sintel_final); never downloaded")
    USE_CHECKPOINT_ATTN: bool = key(False, "activation checkpointing of attention (less memory, more compute)")
    USE_CHECKPOINT_FFN: bool = key(False, "activation checkpointing of feed-forward layers")


@dataclass
class AttnConfig:
    HEADS: int = key(4, "attention heads", fixed_on_resume=True, ge=1)
    MLP_RATIO: float = key(2.0, "feed-forward expansion after attention", fixed_on_resume=True, gt=0)
    CHUNK_PIXELS: int = key(16384, "pixels per attention chunk: bounds memory of per-pixel attention "
                                   "(the original's MAX_BATCH_TOKENS)", ge=1)


@dataclass
class FuseConfig(AttnConfig):
    TYPE: str = key("TemporalCrossAttn", "fusion module; TemporalCrossAttn is the one the model has",
                    choices=FUSE_TYPES, why="the only fusion this model has")
    FRAME_DISTANCE_PENALTY: float = key(0.0, "subtracted from the fusion's attention logits per frame between an "
                                             "RGB frame and a spike frame: 0 = the original (frames told apart by "
                                             "content only), .inf = each frame fuses its own exposure's spikes", ge=0)


@dataclass
class ModelConfig:
    PRESET: str = key("base", f"model preset: one of {', '.join(MODEL_PRESETS)}", fixed_on_resume=True,
                      choices=MODEL_PRESETS)
    USE_SPIKE: bool = key(True, "fuse the spike branch; false = plain VRT (ablation)", fixed_on_resume=True)
    NETG: Optional[dict] = key(None, "S-VRT's netG options (from an S-VRT option file): selects S-VRT's network "
                                     "family; null = MODEL.PRESET's model", fixed_on_resume=True)
    INIT_WEIGHTS: Optional[str] = key(None, "a local weights file the model starts from in a new run (S-VRT's "
                                            "path.pretrained_netG); --init-weights wins")
    INIT_EMA_WEIGHTS: Optional[str] = key(None, "a local weights file the EMA weights start from in a new run "
                                                "(S-VRT's path.pretrained_netE); null = INIT_WEIGHTS")
    INIT_PARTIAL: bool = key(False, "load from INIT_WEIGHTS / --init-weights only the tensors whose names and shapes "
                                    "match the model and report the rest (S-VRT's train.partial_load); false = "
                                    "every key must fit")
    LORA_RANK: int = key(0, "rank of LoRA adapters on the backbone's linear layers named by LORA_TARGETS (S-VRT's "
                            "lora_rank with use_lora); 0 = no adapters", fixed_on_resume=True, ge=0)
    LORA_ALPHA: float = key(16.0, "LoRA scale numerator: an adapter adds (LORA_ALPHA / LORA_RANK) B(A(x)) (S-VRT's "
                                  "lora_alpha)", fixed_on_resume=True, gt=0)
    LORA_TARGETS: list[str] = key(["qkv", "proj"], "substrings of the linear layers' own names that get adapters "
                                                   "(S-VRT's lora_target_modules); never in the fusion module, the "
                                                   "flow net or the alignment", fixed_on_resume=True, nonempty=True,
                                  why="an empty string would match every linear layer")
    LORA_FREEZE_BASE: bool = key(True, "keep the adapted layers' own weights out of the optimizer (S-VRT trains them "
                                       "too unless train.freeze_backbone)", fixed_on_resume=True)
    IDENTITY_INIT: Optional[bool] = key(None, "start as the identity (zero last conv: output = blurry input); "
                                              "null = the preset's (tiny: true, others: false, VRT's own init)")
    VRT_CFG: Optional[str] = key(None, "a VRT options YAML (KAIR style, netG section): its img_size and "
                                       "window_size replace the preset's; a missing file warns and is skipped")
    CHANNELS_PER_SCALE: Optional[list[int]] = key(None, "spike encoder channels at scales 1, 1/2, 1/4, 1/8; "
                                                        "null = the preset's VRT widths of stages 1-4",
                                                  fixed_on_resume=True, length=FUSED_SCALES, ge=1)
    LAYERS: int = key(FUSED_SCALES, "fused scales (VRT encoder stages 1-4); 4 is the only value the model has",
                      choices=(FUSED_SCALES,), why="the spike branch is fused after VRT encoder stages 1-4, the "
                                                   "only layout this model has")
    VRT: VRTConfig = section(VRTConfig, "VRT backbone overrides")
    SPIKE_TSA: AttnConfig = section(AttnConfig, "per-pixel temporal self attention of spike features")
    FUSE: FuseConfig = section(FuseConfig, "temporal cross attention fusing spike into RGB features")


@dataclass
class DataLoaderConfig:
    NUM_WORKERS: Optional[int] = key(None, "loader worker processes per rank; null = TOTAL_WORKERS split over the "
                                           f"ranks, or {DEFAULT_WORKERS} when that is null too; not with "
                                           "TOTAL_WORKERS", ge=0)
    TOTAL_WORKERS: Optional[Union[int, str]] = key(None, "workers of all ranks on a node: a number, 'auto' (80% of "
                                                         "the CPU cores) or 'cpu*F'; split over the ranks, at least "
                                                         "one each; null = NUM_WORKERS per rank")
    PIN_MEMORY: bool = key(True, "page-locked host batches (faster copies to the GPU)")
    PERSISTENT_WORKERS: bool = key(True, "keep workers alive between epochs")
    PREFETCH_FACTOR: int = key(2, "batches each worker prepares ahead", ge=1)
    TRAIN_PREFETCH_FACTOR: Optional[int] = key(None, "PREFETCH_FACTOR of the training loader; null = PREFETCH_FACTOR",
                                               ge=1)
    VAL_PREFETCH_FACTOR: Optional[int] = key(None, "PREFETCH_FACTOR of the validation loader; null = PREFETCH_FACTOR",
                                             ge=1)


@dataclass
class OptimConfig:
    TYPE: str = key("adamw", "optimizer: adamw (adamw8bit warns and uses AdamW, as the original without "
                             "bitsandbytes)", choices=OPTIMIZERS, ignore_case=True)
    LR: float = key(1e-4, "peak learning rate of AdamW", gt=0)
    BETAS: list[float] = key([0.9, 0.99], "AdamW betas", length=2, ge=0, lt=1)
    WEIGHT_DECAY: float = key(1e-4, "AdamW decoupled weight decay", ge=0)


@dataclass
class SchedConfig:
    TYPE: str = key("cosine", "LR schedule: cosine = LinearLR from 1e-3 x LR over WARMUP_STEPS, then "
                              "CosineAnnealingLR to MIN_LR (the original's, torch's own schedulers)",
                    choices=SCHEDULES, ignore_case=True)
    WARMUP_STEPS: int = key(256, "optimizer steps of linear warm-up from 1e-3 x LR to LR", ge=0)
    MIN_LR: float = key(0.0, "learning rate at the end of the cosine decay (eta_min); at most TRAIN.OPTIM.LR", ge=0)


@dataclass
class TrainConfig:
    BATCH_SIZE: int = key(1, "micro-batch per rank (DeepSpeed train_micro_batch_size_per_gpu)", ge=1)
    VAL_BATCH_SIZE: int = key(1, "validation clips per rank and forward pass; only 1 (whole frames differ in size)",
                              ge=1)
    GRADIENT_ACCUMULATION_STEPS: int = key(1, "micro-batches per optimizer step", ge=1)
    OPTIM: OptimConfig = section(OptimConfig, "optimizer")
    SCHED: SchedConfig = section(SchedConfig, "learning-rate schedule")
    TOTAL_STEPS: Optional[int] = key(DEFAULT_TOTAL_STEPS, "length of the run in optimizer steps (wins over EPOCHS; "
                                                          "null when a file gives EPOCHS and not this key)", ge=1)
    EPOCHS: Optional[int] = key(None, "length of the run in epochs when TOTAL_STEPS is null: EPOCHS x (batches per "
                                      "rank per epoch // GRADIENT_ACCUMULATION_STEPS) optimizer steps", ge=1)
    MAX_GRAD_NORM: float = key(1.0, "global gradient-norm clipping; 0 = off", ge=0)
    VAL_TILE_SIZE: Optional[int] = key(None, "validate full frames in spatial tiles of this size; null = whole",
                                       multiple_of=8)
    VAL_TILE_OVERLAP: int = key(32, "overlap of validation tiles in pixels; less than VAL_TILE_SIZE", ge=0)
    MIN_LOSS_SCALE_PATIENCE: int = key(100, "fp16: stop (after saving) when the loss scale sits at its minimum "
                                            "for this many consecutive steps", ge=1)
    NONFINITE_PATIENCE: int = key(50, "bf16/fp32: stop (after saving) when this many consecutive steps were skipped "
                                      "for non-finite losses or gradients: the run has diverged", ge=1)
    RESUME_FROM_CHECKPOINT: bool = key(False, "resume without --resume: from CHECKPOINT_PATH, or the newest "
                                              "checkpoint under LOG.SAVE_DIR (a fresh start when there is none)")
    CHECKPOINT_PATH: Optional[str] = key(None, "what RESUME_FROM_CHECKPOINT resumes (as --resume takes it); "
                                               "null = the newest under LOG.SAVE_DIR/ckpts")
    EMA_DECAY: float = key(0.0, "exponential moving average of the weights after every applied step, "
                                "ema = d x ema + (1 - d) x weights (KAIR's E_decay, e.g. 0.999); 0 = off. Sharded like "
                                "the fp32 master weights (ZeRO 1/2/3)", ge=0, lt=1, why="0 = off")
    FIX_ITER: int = key(0, "optimizer steps during which the parameters matching FIX_KEYS are not updated "
                           "(KAIR's fix_iter), and with FUSION_FIRST the steps of phase 1; 0 = none; > 0 needs "
                           "FIX_KEYS or FUSION_FIRST", ge=0)
    # FIX_KEYS and FREEZE decide which parameters the optimizer holds, in which groups: the saved optimizer state
    # has that layout.
    FIX_KEYS: list[str] = key([], "name substrings of the parameters fixed for FIX_ITER steps, then trained at "
                                  "LR x FIX_LR_MUL in their own optimizer group (KAIR's fix_keys, e.g. "
                                  "[spynet, deform])", fixed_on_resume=True, nonempty=True,
                              why="an empty string would match every parameter")
    FIX_LR_MUL: float = key(1.0, "learning-rate multiplier of the FIX_KEYS parameters' group (KAIR's fix_lr_mul)",
                            gt=0)
    FUSION_FIRST: bool = key(False, "S-VRT's phase 1 for FIX_ITER steps: only the fusion module trains, on the fused "
                                    "frames (LOSS.FUSION), without the backbone's forward; then phase 2 trains "
                                    "everything not frozen. Needs MODEL.NETG with early or hybrid fusion",
                             fixed_on_resume=True)
    HEAD_ONLY_STEPS: int = key(0, "with FUSION_FIRST: the first N steps train only the fusion operator's write-back "
                                  "head (S-VRT's fusion_warmup.head_only_iters); at most FIX_ITER count",
                               fixed_on_resume=True, ge=0)
    PHASE1_BATCH_SIZE: Optional[int] = key(None, "micro-batch per rank during phase 1 (steps before FIX_ITER; S-VRT's "
                                                 "first dataloader_batch_size); null = BATCH_SIZE", ge=1)
    FREEZE_BACKBONE: bool = key(False, "train only the fusion module, the LoRA adapters and the FIX_KEYS "
                                       "parameters: every other one stays out of the optimizer (S-VRT's "
                                       "freeze_backbone)", fixed_on_resume=True)
    FREEZE: list[str] = key([], "name substrings of parameters that never train (e.g. ['vrt.']: the spike branch "
                                "and fusion train on a frozen backbone); they stay out of the optimizer",
                            fixed_on_resume=True, nonempty=True, why="an empty string would match every parameter")


@dataclass
class CharbonnierConfig:
    DELTA: float = key(1e-3, "delta of the Charbonnier loss sqrt((x-y)^2 + delta^2)", gt=0)
    WEIGHT: float = key(1.0, "weight of the Charbonnier loss", ge=0)


@dataclass
class PerceptualConfig:
    LAYERS: list[str] = key(["relu3_3"], f"VGG16 layers compared (of {', '.join(VGG_LAYERS)}); the term is the mean "
                                         f"of their L1 distances, as the original's", choices=VGG_LAYERS)
    WEIGHT: float = key(0.0, "weight of the VGG16 perceptual loss; > 0 needs the VGG16 file (LOSS.VGG_PATH)", ge=0)


@dataclass
class FusionLossConfig:
    PHASE1_WEIGHT: float = key(0.0, "phase 1: weight of the Charbonnier loss of the fused frames against the sharp "
                                    "ones (S-VRT's phase1_fusion_aux_loss_weight)", ge=0)
    PASSTHROUGH_START: float = key(0.0, "phase 1: weight of the Charbonnier loss of the fused frames against the "
                                        "blurry ones, START + (END - START) x n / TRAIN.FIX_ITER at step n (S-VRT's "
                                        "fusion_warmup.passthrough_weight_start)", ge=0)
    PASSTHROUGH_END: float = key(0.0, "phase 1: that weight at the last phase-1 step (S-VRT's "
                                      "fusion_warmup.passthrough_weight_end)", ge=0)
    UPDATE_PENALTY: float = key(0.0, "phase 1: weight of the mean |fused - blurry| (S-VRT's "
                                     "fusion_warmup.update_penalty_weight)", ge=0)
    PHASE2_WEIGHT: float = key(0.0, "phase 2: weight of the fused frames' Charbonnier loss against the sharp ones, "
                                    "added to the output's (S-VRT's phase2_fusion_aux_loss_weight)", ge=0)


@dataclass
class LossConfig:
    CHARBONNIER: CharbonnierConfig = section(CharbonnierConfig, "Charbonnier pixel loss")
    FUSION: FusionLossConfig = section(FusionLossConfig, "S-VRT's losses on the fused frames (MODEL.NETG with early "
                                                         "or hybrid fusion); all Charbonnier with "
                                                         "LOSS.CHARBONNIER.DELTA, unweighted by its WEIGHT")
    VGG_PERCEPTUAL: PerceptualConfig = section(PerceptualConfig, "VGG16 perceptual loss (L1 of features)")
    VGG_PATH: Optional[str] = key(None, "local VGG16 weights file; null = torch's hub cache: "
                                        "vgg16_features-amdegroot-88682ab5.pth (the original's IMAGENET1K_FEATURES), "
                                        "then vgg16-397923af.pth; never downloaded")


@dataclass
class LogConfig:
    SAVE_DIR: str = key("outputs", "run directory: config.yaml, ckpts/, tb/, metrics/, visuals/", nonempty=True)
    TENSORBOARD: bool = key(True, "write TensorBoard event files under SAVE_DIR/tb; false = none")
    LOG_EVERY_STEPS: int = key(10, "write train scalars every N optimizer steps", ge=1)
    VAL_EVERY_STEPS: int = key(1000, "validate every N optimizer steps (and at the end)", ge=1)
    SAVE_EVERY_STEPS: Optional[int] = key(None, "save a checkpoint tag every N optimizer steps (and at the end); "
                                                "null = VAL_EVERY_STEPS (a save at each validation, as the original)",
                                          ge=1)
    KEEP_LAST: int = key(3, "step tags kept on disk (the newest complete one and best are never removed)", ge=1)
    EXPORT_SINGLE_FILE: bool = key(True, "refresh ckpts/last.pth and best.pth after each save")
    VAL_USE_EMA: Optional[bool] = key(None, "validate, pick best and run inference with the EMA weights; null = "
                                            "true when TRAIN.EMA_DECAY > 0 (true needs it)")


@dataclass
class InferenceConfig:
    BATCH_SIZE: int = key(1, "ds-deblur infer: temporal windows per forward pass; only 1 (others warn)", ge=1)
    NUM_WORKERS: int = key(2, "ds-deblur infer: threads reading and voxelising frames ahead of the model", ge=0)


@dataclass
class Config:
    SEED: int = key(42, "seed of model init, data order and augmentation", ge=0)
    DATA: DataConfig = section(DataConfig, "dataset and clip sampling")
    MODEL: ModelConfig = section(ModelConfig, "VRT-spike architecture")
    DATALOADER: DataLoaderConfig = section(DataLoaderConfig, "torch DataLoader settings")
    TRAIN: TrainConfig = section(TrainConfig, "optimisation, schedule, length")
    LOSS: LossConfig = section(LossConfig, "training loss")
    LOG: LogConfig = section(LogConfig, "outputs: checkpoints, TensorBoard, metrics, validation")
    TEST: InferenceConfig = section(InferenceConfig, "inference (ds-deblur infer)")

    def to_dict(self) -> dict:
        """Plain nested dict in the canonical spelling (YAML/JSON/checkpoint friendly); ``load_config`` reads it
        back."""
        return asdict(self)


def is_section(f: Any) -> bool:
    """Whether the dataclass field ``f`` is a section (a nested dataclass) rather than a key."""
    return is_dataclass(f.default_factory)


def walk(cls: type = Config, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """Every key of the schema, depth first in declaration order: (dotted name, dataclass field, type)."""
    hints = get_type_hints(cls)
    for f in fields(cls):
        if is_section(f):
            yield from walk(f.default_factory, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, f, hints[f.name]


def is_list(hint: Any) -> bool:
    """Whether a key of type ``hint`` holds a list (``list[X]`` or ``Optional[list[X]]``)."""
    return get_origin(hint) is list or any(get_origin(arg) is list for arg in get_args(hint))


def value_of(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def fixed_on_resume() -> tuple[str, ...]:
    """The keys a resumed run must keep: they shape the model, its inputs or the optimizer's parameter groups."""
    return tuple(name for name, f, _ in walk() if f.metadata["fixed_on_resume"])


def follow_defaults(cfg: Config) -> None:
    """Fill the keys whose null default follows another key, and warn about values that have no effect."""
    if cfg.DATA.RAW_WINDOW_LENGTH is None:
        cfg.DATA.RAW_WINDOW_LENGTH = 2 * cfg.DATA.TFP_HALF_WIN_LENGTH + 1
    if cfg.LOG.SAVE_EVERY_STEPS is None:
        cfg.LOG.SAVE_EVERY_STEPS = cfg.LOG.VAL_EVERY_STEPS
    if cfg.LOG.VAL_USE_EMA is None:
        cfg.LOG.VAL_USE_EMA = cfg.TRAIN.EMA_DECAY > 0
    if cfg.TRAIN.VAL_BATCH_SIZE != 1:
        warnings.warn(f"TRAIN.VAL_BATCH_SIZE = {cfg.TRAIN.VAL_BATCH_SIZE} is not used: validation runs one whole "
                      f"clip per rank at a time (frames of different sequences may differ in size)", UserWarning,
                      stacklevel=3)
