"""The DeepSpeed engine: JSON + YAML -> one DeepSpeed config, AdamW, warm-up + cosine LR, ``deepspeed.initialize``.

The DeepSpeed JSON owns engine settings (ZeRO stage, precision, offload, buckets). Batch size, accumulation,
clipping and the optimizer come from the YAML: the JSON may omit them or say "auto"; a JSON value that
contradicts the YAML is an error naming both.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from ds_deblur.config import Config
from ds_deblur.errors import EngineConfigError

CPU_FP16_OPT_IN = "DS_DEBLUR_ALLOW_CPU_FP16"


def read_ds_json(path: Union[str, Path]) -> dict:
    path = Path(path)
    if not path.is_file():
        raise EngineConfigError(f"DeepSpeed config not found: {path} (pass --deepspeed_config ds_configs/...json)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise EngineConfigError(f"DeepSpeed config {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise EngineConfigError(f"DeepSpeed config {path} must be a JSON object")
    return data


def resolve_ds_config(ds: dict, cfg: Config, world_size: int, source: str = "DeepSpeed JSON") -> dict:
    """Fill batch, accumulation and clipping from the YAML into a copy of the DeepSpeed JSON."""
    ds = json.loads(json.dumps(ds))
    for section in ("optimizer", "scheduler"):
        if section in ds:
            raise EngineConfigError(
                f"{source} has an '{section}' section; remove it: ds_deblur builds AdamW and the warm-up + cosine "
                f"schedule from the YAML (TRAIN.LR, TRAIN.BETAS, TRAIN.WEIGHT_DECAY, TRAIN.WARMUP_STEPS, TRAIN.MIN_LR)")
    micro, accum = cfg.TRAIN.BATCH_SIZE, cfg.TRAIN.GRADIENT_ACCUMULATION_STEPS
    wanted = {
        "train_micro_batch_size_per_gpu": (micro, "TRAIN.BATCH_SIZE"),
        "gradient_accumulation_steps": (accum, "TRAIN.GRADIENT_ACCUMULATION_STEPS"),
        "train_batch_size": (micro * accum * world_size,
                             f"TRAIN.BATCH_SIZE x TRAIN.GRADIENT_ACCUMULATION_STEPS x world size {world_size}"),
        "gradient_clipping": (cfg.TRAIN.CLIP_GRAD_NORM, "TRAIN.CLIP_GRAD_NORM"),
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
    # Test-only (DESIGN §8): PyTorch's CPU kernels compute in float16, DeepSpeed's CPU accelerator just says no.
    from deepspeed.accelerator import get_accelerator
    accelerator = get_accelerator()
    accelerator.is_fp16_supported = lambda: True
    accelerator.supported_dtypes = lambda: [torch.float, torch.bfloat16, torch.float16]
    # float16 subnormals take a slow path on x86 CPUs (many times slower); flushing them is what GPUs' fast
    # paths do anyway.
    torch.set_flush_denormal(True)


def build_optimizer(model: nn.Module, cfg: Config, ds: dict) -> torch.optim.Optimizer:
    """AdamW: DeepSpeed's fused Adam (adam_w_mode) on GPU, its CPU Adam under optimizer offload, torch's on CPU."""
    params = [p for p in model.parameters() if p.requires_grad]
    kwargs = dict(lr=cfg.TRAIN.LR, betas=tuple(cfg.TRAIN.BETAS), weight_decay=cfg.TRAIN.WEIGHT_DECAY, eps=1e-8)
    offload = ds.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none") == "cpu"
    if torch.cuda.is_available() and offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        return DeepSpeedCPUAdam(params, adamw_mode=True, **kwargs)
    if torch.cuda.is_available():
        from deepspeed.ops.adam import FusedAdam
        return FusedAdam(params, adam_w_mode=True, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def lr_factor(step: int, cfg: Config, total_steps: int) -> float:
    """Multiplier of TRAIN.LR for the optimizer step that follows ``step`` completed steps.

    Linear warm-up that already trains on the first step (LR/WARMUP, 2 LR/WARMUP, ... LR), then cosine decay to
    TRAIN.MIN_LR at ``total_steps``."""
    warmup, floor = cfg.TRAIN.WARMUP_STEPS, cfg.TRAIN.MIN_LR / cfg.TRAIN.LR
    if step < warmup:
        return (step + 1) / warmup
    decay_steps = max(total_steps - warmup, 1)
    progress = min((step - warmup) / decay_steps, 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Config, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg, total_steps))


def initialize(model: nn.Module, cfg: Config, ds: dict, total_steps: int) -> Any:
    """``deepspeed.initialize`` with our optimizer and schedule; returns the engine."""
    import deepspeed
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
