"""Running the real trainer from tests: the `deepspeed` launcher with 2 CPU ranks (gloo), or one process."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import torch

from ds_deblur.config import Config, load_config
from ds_deblur.data.synth import SynthConfig, generate
from ds_deblur.distributed import free_port

REPO = Path(__file__).resolve().parents[2]
DEEPSPEED = Path(sys.executable).with_name("deepspeed")
# 64x64 frames: whole validation frames need no padding for the tiny preset's 64-pixel multiple.
SYNTH = SynthConfig.first_generator(seed=5, train_seqs=2, val_seqs=2, frames=5, size=(64, 64), subframes=8,
                                     objects=(1, 2))
BASE_SETS = ["MODEL.PRESET=tiny", "DATA.K=4", "DATA.CLIP_LEN=2", "DATA.CROP_SIZE=64", "DATA.NORM.MEAN=0.2",
             "DATA.NORM.STD=0.4", "DATALOADER.NUM_WORKERS=0", "TRAIN.OPTIM.LR=2e-3", "TRAIN.SCHED.WARMUP_STEPS=1",
             "TRAIN.TOTAL_STEPS=4", "LOG.VAL_EVERY_STEPS=2", "LOG.SAVE_EVERY_STEPS=2", "LOG.LOG_EVERY_STEPS=1",
             "SEED=3", "MODEL.IDENTITY_INIT=false",  # from VRT's own init the loss visibly falls within steps
             "TRAIN.FREEZE=[]"]  # every parameter trains (the demo's recipe freezes SpyNet)
# Validation of one frame per sequence, for fp16 runs (fp16 convolutions are slow on CPU) whose checks need
# validation to happen, on every rank, but not its figures.
ONE_VAL_FRAME = ["DATA.VAL_MAX_FRAMES=1"]


def make_dataset(root: Path) -> Path:
    return generate(root, SYNTH)


def train_command(data: Path, out: Path, ds_json: Optional[str], sets=(), ranks: int = 2, extra=(),
                  base_sets=BASE_SETS) -> list[str]:
    script = [str(REPO / "ds_deblur/train.py"), "--config", str(REPO / "ds_configs/tiny_synth.yaml")]
    if ds_json is not None:
        script += ["--deepspeed_config", ds_json if os.path.isabs(ds_json) else str(REPO / ds_json)]
    for item in [f"DATA.ROOT={data}", f"LOG.SAVE_DIR={out}", *base_sets, *sets]:
        script += ["--set", item]
    script += list(extra)
    if ranks == 0:  # a plain single python process
        return [sys.executable, *script]
    return [str(DEEPSPEED), "--num_gpus", str(ranks), "--master_port", str(free_port()), *script]


def run_train(data: Path, out: Path, ds_json: Optional[str] = "ds_configs/cpu_fp32.json", sets=(), ranks: int = 2,
              extra=(), env: Optional[dict] = None, timeout: int = 600,
              base_sets=BASE_SETS) -> subprocess.CompletedProcess:
    """The trainer on ``data``; ``base_sets`` () trains ds_configs/tiny_synth.yaml as the demo does; ``ds_json``
    None: the built-in engine config."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(train_command(data, out, ds_json, sets, ranks, extra, base_sets), cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def shm_buffers() -> set[Path]:
    """DeepSpeed's CPU shared-memory all-reduce buffers now in /dev/shm (RAM that outlives a run unless unlinked)."""
    return set(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*"))


def model_from_sets(sets, seed: int = 0) -> torch.nn.Module:
    """``build_model`` of the schema's defaults with ``sets`` (no data read), from ``seed``."""
    from ds_deblur.models import build_model
    torch.manual_seed(seed)
    return build_model(load_config({"DATA": {"ROOT": "/unused"}}, sets))


def config_for(data: Path, out: Path, sets=()) -> Config:
    return load_config(REPO / "ds_configs/tiny_synth.yaml",
                       [f"DATA.ROOT={data}", f"LOG.SAVE_DIR={out}", *BASE_SETS, *sets])


def output_of(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"


def model_and_val_loader(cfg: Config, state_dict: Optional[dict]) -> tuple[torch.nn.Module, Any]:
    """The model in eval mode (initial weights, or ``state_dict``) and the whole validation set in one process."""
    from ds_deblur.data import build_dataloaders
    from ds_deblur.models import build_model
    torch.manual_seed(cfg.SEED)
    model = build_model(cfg).eval()
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model, build_dataloaders(cfg, num_workers=0)[1]


def fixed_batch_loss(cfg: Config, state_dict: Optional[dict]) -> float:
    """Charbonnier loss of the model (initial weights, or ``state_dict``) on the first validation clip."""
    from ds_deblur.losses import charbonnier_loss
    model, val = model_and_val_loader(cfg, state_dict)
    batch = next(iter(val))
    with torch.no_grad():
        return float(charbonnier_loss(model(batch["blur"], batch["spike_vox"]), batch["sharp"]))


def validation_psnr(cfg: Config, state_dict: dict) -> float:
    """Mean RGB PSNR over the validation frames the trainer scores (each frame once, no padding clip) of the model
    with ``state_dict``, computed here without the trainer's metric code: clamp to [0, 1], 10 log10(1 / MSE) per
    frame in float64, the mean over frames."""
    model, val = model_and_val_loader(cfg, state_dict)
    per_frame = []
    with torch.no_grad():
        for batch in val:
            restored = model(batch["blur"], batch["spike_vox"]).clamp(0.0, 1.0).double()
            keep = batch["meta"]["scored"] & ~torch.as_tensor(batch["meta"]["pad"], dtype=torch.bool)[:, None]
            mse = (restored[keep] - batch["sharp"][keep].double()).square().mean(dim=(1, 2, 3))
            per_frame += (10.0 * torch.log10(1.0 / mse)).tolist()
    return sum(per_frame) / len(per_frame)


def ds_json(tmp: Path, base: str, stage: Optional[int] = None, **sections) -> str:
    """A copy of a shipped DeepSpeed JSON with another ZeRO stage and/or replaced top-level sections."""
    import json
    data = json.loads((REPO / base).read_text())
    if stage is not None:
        data["zero_optimization"] = {"stage": stage}
    data.update(sections)
    path = tmp / f"ds_{stage}_{len(sections)}.json"
    path.write_text(json.dumps(data))
    return str(path)
