"""The DeepSpeed engine: JSON + YAML -> one DeepSpeed config, AdamW, the original's LR schedule, and
``deepspeed.initialize``.

The DeepSpeed JSON owns engine settings (ZeRO stage, precision, offload, buckets). Batch size, accumulation,
clipping and the optimizer come from the YAML: the JSON may omit them or say "auto"; a JSON value that
contradicts the YAML is an error naming both. Without a JSON (no ``--deepspeed_config``, as the original
trainer's command lines) a built-in one is used: ZeRO 2 + fp16 dynamic loss scaling on CUDA; on CPU bf16 (engine or
autocast) for the presets whose step it makes faster when the CPU has bf16 instructions, else fp32.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Union

import deepspeed
import torch
from deepspeed.accelerator import get_accelerator
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

from ds_deblur.config import Config
from ds_deblur.errors import ConfigError, EngineConfigError
from ds_deblur.zero.staged import param_groups

CPU_FP16_OPT_IN = "DS_DEBLUR_ALLOW_CPU_FP16"
# The original trainer's warm-up: LinearLR from this fraction of the LR to the LR over WARMUP_STEPS.
WARMUP_START_FACTOR = 1e-3
_ZERO2_GPU = {"stage": 2, "allgather_partitions": True, "allgather_bucket_size": 200000000, "reduce_scatter": True,
              "reduce_bucket_size": 200000000, "overlap_comm": True, "contiguous_gradients": True}
_ZERO2_CPU = {"stage": 2, "allgather_bucket_size": 200000000, "reduce_bucket_size": 200000000,
              "overlap_comm": False, "contiguous_gradients": True}
# CPU presets and what they train in by default on a CPU with bf16 instructions, each measured faster than fp32 on 2
# ranks at the same learning (ds-deblur bench precision; docs/performance.md): base and vrt_gopro in DeepSpeed's bf16
# engine (1.40x, 1.47x); tiny in fp32 with its forward under bf16 autocast (1.12x; the bf16 engine was 0.96x: its
# casts of every weight cost more than the small products gain). S-VRT's family stays fp32 (not measured).
CPU_BF16_DEFAULTS = {"base": "bf16", "vrt_gopro": "bf16", "tiny": "autocast"}
# /proc/cpuinfo flags of native bf16 arithmetic (AVX512-BF16 dot products, AMX tiles); without them bf16 is emulated.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# The engine config sections of each CPU precision (cpu_fp32.json, zero2_bf16.json's bf16, cpu_autocast_bf16.json).
_CPU_SECTIONS = {"fp32": {}, "bf16": {"bf16": {"enabled": True, "check_grad_overflow": True}},
                 "autocast": {"torch_autocast": {"enabled": True, "dtype": "bfloat16"}}}
_FP16_DYNAMIC = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000,
                 "hysteresis": 2, "min_loss_scale": 1}


def read_ds_json(path: Union[str, Path]) -> dict:
    path = Path(path)
    if not path.is_file():
        raise EngineConfigError(f"DeepSpeed config not found: {path} (pass --deepspeed_config ds_configs/...json, "
                                f"or leave the flag out for the built-in engine config)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise EngineConfigError(f"DeepSpeed config {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise EngineConfigError(f"DeepSpeed config {path} must be a JSON object")
    return data


def cpu_has_bf16(cpuinfo: Union[str, Path] = "/proc/cpuinfo") -> bool:
    """Whether this CPU does bf16 arithmetic natively (one of CPU_BF16_FLAGS); False where cpuinfo is unreadable."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def _auto_and_quiet() -> dict:
    """What every built-in config holds: batch, accumulation and clipping from the YAML, DeepSpeed's prints off."""
    common = {key: "auto" for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                                      "train_batch_size", "gradient_clipping")}
    return {**common, "steps_per_print": 1000000000, "wall_clock_breakdown": False}


def cpu_engine_config(precision: str) -> dict:
    """ZeRO 2 on CPU ranks in ``precision``: fp32 (ds_configs/cpu_fp32.json), bf16 (DeepSpeed's bf16 engine) or
    autocast (fp32 engine, forward under bf16 autocast: ds_configs/cpu_autocast_bf16.json)."""
    return {**_auto_and_quiet(), **json.loads(json.dumps(_CPU_SECTIONS[precision])),
            "zero_optimization": dict(_ZERO2_CPU)}


def cpu_precision_of(ds: dict) -> Optional[str]:
    """Which of the CPU precisions (fp32, bf16, autocast) a DeepSpeed config trains in; None for fp16."""
    precision = precision_of(ds)
    if precision == "fp32" and ds.get("torch_autocast", {}).get("enabled") is True:
        return "autocast" if ds["torch_autocast"].get("dtype") in ("bfloat16", "bf16", "torch.bfloat16") else None
    return None if precision == "fp16" else precision


_SAID = {"fp32": "fp32", "bf16": "bf16", "autocast": "fp32 with the forward under bf16 autocast"}


def builtin_ds_config(cuda: Optional[bool] = None, cfg: Optional[Config] = None,
                      cpu_bf16: Optional[bool] = None) -> tuple[dict, str]:
    """The engine config used without ``--deepspeed_config`` and a line saying which: ZeRO 2 with fp16 dynamic
    loss scaling on CUDA (the original trained with AMP fp16; = ds_configs/zero2_fp16.json); on CPU, ZeRO 2 in
    CPU_BF16_DEFAULTS' precision for ``cfg``'s preset when the CPU has bf16 instructions (``cpu_bf16``, default:
    read from the CPU), else ZeRO 2 fp32 (= ds_configs/cpu_fp32.json)."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cuda:
        return ({**_auto_and_quiet(), "fp16": dict(_FP16_DYNAMIC), "zero_optimization": dict(_ZERO2_GPU)},
                "ZeRO 2, fp16 with dynamic loss scaling (CUDA; as ds_configs/zero2_fp16.json)")
    preset = cfg.MODEL.PRESET if cfg is not None and cfg.MODEL.NETG is None else None
    if preset in CPU_BF16_DEFAULTS and (cpu_has_bf16() if cpu_bf16 is None else cpu_bf16):
        precision = CPU_BF16_DEFAULTS[preset]
        return (cpu_engine_config(precision),
                f"ZeRO 2, {_SAID[precision]} (a CPU with bf16 instructions and the {preset} preset: faster than "
                f"fp32, docs/performance.md; --deepspeed_config ds_configs/cpu_fp32.json keeps fp32)")
    return cpu_engine_config("fp32"), "ZeRO 2, fp32 (no CUDA device; as ds_configs/cpu_fp32.json)"


def follow_resumed_precision(ds: dict, saved: dict) -> Optional[str]:
    """The built-in CPU config ``ds`` resuming a run whose DeepSpeed config was ``saved`` takes the run's CPU
    precision (fp32, bf16 or autocast: a run keeps the precision it started with; a JSON says otherwise). Returns a
    line saying so, or None when nothing changed."""
    mine, theirs = cpu_precision_of(ds), cpu_precision_of(saved)
    if mine == theirs or None in (mine, theirs):
        return None
    for section in ("bf16", "torch_autocast"):
        ds.pop(section, None)
    ds.update(json.loads(json.dumps(_CPU_SECTIONS[theirs])))
    return (f"[train] The run being resumed trained in {_SAID[theirs]}: the built-in engine config keeps it "
            f"(--deepspeed_config chooses)")


def engine_config(path: Optional[Union[str, Path]], cfg: Config, world_size: int,
                  say: Callable[[str], None] = print) -> dict:
    """The resolved DeepSpeed config of a run: ``path`` (``--deepspeed_config``) or, when None, the built-in one
    (saying which)."""
    if path is not None:
        return resolve_ds_config(read_ds_json(path), cfg, world_size, source=str(path))
    ds, which = builtin_ds_config(cfg=cfg)
    say(f"[train] No --deepspeed_config: using the built-in engine config: {which}")
    return resolve_ds_config(ds, cfg, world_size, source="the built-in engine config")


def resolve_ds_config(ds: dict, cfg: Config, world_size: int, source: str = "DeepSpeed JSON") -> dict:
    """Fill batch, accumulation and clipping from the YAML into a copy of the DeepSpeed JSON."""
    ds = json.loads(json.dumps(ds))
    for section in ("optimizer", "scheduler"):
        if section in ds:
            raise EngineConfigError(
                f"{source} has an '{section}' section; remove it: ds_deblur builds AdamW and the warm-up + cosine "
                f"schedule from the YAML (TRAIN.OPTIM.LR, TRAIN.OPTIM.BETAS, TRAIN.OPTIM.WEIGHT_DECAY, "
                f"TRAIN.SCHED.WARMUP_STEPS, TRAIN.SCHED.MIN_LR)")
    micro, accum = cfg.TRAIN.BATCH_SIZE, cfg.TRAIN.GRADIENT_ACCUMULATION_STEPS
    wanted = {
        "train_micro_batch_size_per_gpu": (micro, "TRAIN.BATCH_SIZE"),
        "gradient_accumulation_steps": (accum, "TRAIN.GRADIENT_ACCUMULATION_STEPS"),
        "train_batch_size": (micro * accum * world_size,
                             f"TRAIN.BATCH_SIZE x TRAIN.GRADIENT_ACCUMULATION_STEPS x world size {world_size}"),
        "gradient_clipping": (cfg.TRAIN.MAX_GRAD_NORM, "TRAIN.MAX_GRAD_NORM"),
    }
    for key, (value, yaml_key) in wanted.items():
        given = ds.get(key, "auto")
        if given != "auto" and given != value:
            hint = ""
            if key == "train_batch_size" and isinstance(given, int) and given % (micro * world_size):
                hint = (f" ({given} samples cannot be split over {world_size} ranks x micro-batch {micro}: use a "
                        f"multiple of {micro * world_size})")
            raise EngineConfigError(f"{source} sets {key}={given!r} but the YAML gives {yaml_key} = {value!r}{hint}; "
                                    f"remove the key from the JSON (or write \"auto\") or change the YAML")
        ds[key] = value
    _check_precision(ds, source)
    return ds


def precision_of(ds: dict) -> str:
    if ds.get("fp16", {}).get("enabled") is True:
        return "fp16"
    if ds.get("bf16", {}).get("enabled") is True:
        return "bf16"
    return "fp32"


def zero_stage_of(ds: dict) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))


def _check_precision(ds: dict, source: str) -> None:
    if precision_of(ds) != "fp16" or torch.cuda.is_available():
        return
    if os.environ.get(CPU_FP16_OPT_IN) != "1":
        raise EngineConfigError(
            f"{source} enables fp16, which DeepSpeed does not run on CPU. Use ds_configs/zero2_bf16.json or "
            f"ds_configs/cpu_fp32.json here (the fp16 path is for GPUs; tests opt in with {CPU_FP16_OPT_IN}=1)")
    _allow_cpu_fp16()


def _allow_cpu_fp16() -> None:
    # Test-only: PyTorch's CPU kernels compute in float16, DeepSpeed's CPU accelerator just says no.
    accelerator = get_accelerator()
    accelerator.is_fp16_supported = lambda: True
    accelerator.supported_dtypes = lambda: [torch.float, torch.bfloat16, torch.float16]
    # float16 subnormals take a slow path on x86 CPUs (many times slower); flushing them is what GPUs' fast
    # paths do anyway.
    torch.set_flush_denormal(True)


def build_optimizer(model: nn.Module, cfg: Config, ds: dict) -> torch.optim.Optimizer:
    """AdamW: torch's (``fused=True`` on CUDA: no JIT-built extension on the default path); DeepSpeed's CPU Adam
    only under optimizer offload, where ZeRO-Offload needs it (a failed build is an ``EngineConfigError``). The
    parameters that train, in one group or, with TRAIN.FIX_KEYS, two (``ds_deblur.zero.staged.param_groups``)."""
    params = param_groups(model, cfg)
    optim = cfg.TRAIN.OPTIM
    if optim.TYPE.lower() == "adamw8bit":
        warnings.warn("TRAIN.OPTIM.TYPE adamw8bit: using AdamW (as the original trainer did without bitsandbytes; "
                      "8-bit states do not partition under ZeRO)", UserWarning, stacklevel=2)
    kwargs = dict(lr=optim.LR, betas=tuple(optim.BETAS), weight_decay=optim.WEIGHT_DECAY, eps=1e-8)
    if ds.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none") == "cpu":
        return _cpu_adam(params, kwargs)
    fused = True if torch.cuda.is_available() else None  # None: torch's default (foreach) on CPU
    return torch.optim.AdamW(params, fused=fused, **kwargs)


def _cpu_adam(params: list, kwargs: dict) -> torch.optim.Optimizer:
    from deepspeed.ops.adam import DeepSpeedCPUAdam  # only offload runs need DeepSpeed's op builders
    try:
        return DeepSpeedCPUAdam(params, adamw_mode=True, **kwargs)
    except Exception as err:  # the JIT build fails in many ways (no compiler, no ninja, a CUDA/torch mismatch)
        raise EngineConfigError(
            f"offload_optimizer needs DeepSpeed's CPU Adam, which could not be built here ({type(err).__name__}: "
            f"{err}). Install a C++ compiler and ninja (or reinstall deepspeed with DS_BUILD_CPU_ADAM=1), or remove "
            f"offload_optimizer from the DeepSpeed JSON") from err


def lr_factor(step: int, cfg: Config, total_steps: int) -> float:
    """Multiplier of TRAIN.OPTIM.LR for the optimizer step that follows ``step`` completed steps, in closed form:
    what ``build_scheduler`` gives there (the original's schedule; equal up to rounding)."""
    warmup, lr = cfg.TRAIN.SCHED.WARMUP_STEPS, cfg.TRAIN.OPTIM.LR
    floor = cfg.TRAIN.SCHED.MIN_LR / lr
    if 0 < warmup < total_steps:
        if step < warmup:
            return WARMUP_START_FACTOR + (1.0 - WARMUP_START_FACTOR) * step / warmup
        step, total_steps = step - warmup, total_steps - warmup
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Config, total_steps: int) -> LRScheduler:
    """The original trainer's schedule (SCHED.TYPE cosine), built from torch's own schedulers: with
    0 < WARMUP_STEPS < total, LinearLR from 1e-3 x LR over the warm-up then CosineAnnealingLR to MIN_LR over the
    rest (SequentialLR); otherwise CosineAnnealingLR over the whole run."""
    warmup, floor = cfg.TRAIN.SCHED.WARMUP_STEPS, cfg.TRAIN.SCHED.MIN_LR
    if 0 < warmup < total_steps:
        linear = LinearLR(optimizer, start_factor=WARMUP_START_FACTOR, end_factor=1.0, total_iters=warmup)
        cosine = CosineAnnealingLR(optimizer, T_max=total_steps - warmup, eta_min=floor)
        return SequentialLR(optimizer, [linear, cosine], milestones=[warmup])
    return CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=floor)


def total_steps(cfg: Config, batches_per_epoch: int) -> int:
    """Length of the run in optimizer steps: TRAIN.TOTAL_STEPS, or as the original counted it, TRAIN.EPOCHS x
    (batches per rank per epoch // GRADIENT_ACCUMULATION_STEPS)."""
    train = cfg.TRAIN
    if train.TOTAL_STEPS is not None:
        return train.TOTAL_STEPS
    per_epoch = batches_per_epoch // train.GRADIENT_ACCUMULATION_STEPS
    if per_epoch < 1:
        raise ConfigError(f"TRAIN.EPOCHS = {train.EPOCHS} gives no optimizer step: an epoch has {batches_per_epoch} "
                          f"batches per rank, fewer than TRAIN.GRADIENT_ACCUMULATION_STEPS = "
                          f"{train.GRADIENT_ACCUMULATION_STEPS}; set TRAIN.TOTAL_STEPS or accumulate less")
    return train.EPOCHS * per_epoch


def initialize(model: nn.Module, cfg: Config, ds: dict, total_steps: int) -> Any:
    """``deepspeed.initialize`` with our optimizer and schedule; returns the engine."""
    optimizer = build_optimizer(model, cfg, ds)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds)
    _keep_running_at_min_scale(engine)
    return engine


def _keep_running_at_min_scale(engine: Any) -> None:
    # DeepSpeed raises "Current loss scale already at minimum" on the next overflow; the train loop instead counts
    # steps at the minimum (TRAIN.MIN_LOSS_SCALE_PATIENCE), saves the last good state and stops with a message.
    scaler = getattr(engine.optimizer, "loss_scaler", None)
    if scaler is not None and hasattr(scaler, "raise_error_at_min_scale"):
        scaler.raise_error_at_min_scale = False


def loss_scale(engine: Any) -> float:
    """Current fp16 loss scale (1.0 for bf16/fp32)."""
    scaler = getattr(engine.optimizer, "loss_scaler", None)
    return float(getattr(scaler, "cur_scale", 1.0)) if engine.fp16_enabled() else 1.0


def min_loss_scale(engine: Any) -> float:
    scaler = getattr(engine.optimizer, "loss_scaler", None)
    return float(getattr(scaler, "min_scale", 1.0))
