"""Real DeepSpeed tags written on CPU by gloo ranks (a toy model), shared by the convert and inspect tests.

References are recorded by the training ranks right before ``save_checkpoint`` (see tests/ckpt/test_convert.py)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.multiprocessing as mp
from torch import nn

from ds_deblur import distributed
from support.train_utils import free_port

REPO = Path(__file__).resolve().parents[2]
DS_JSON = {"fp32": REPO / "ds_configs" / "cpu_fp32.json", "fp16": REPO / "ds_configs" / "zero2_fp16.json",
           "bf16": REPO / "ds_configs" / "zero2_bf16.json"}
TRAIN_STEPS = 3
FP16_TRAIN_STEPS = 8
TOTAL_STEPS = 20
# name -> (world size, ZeRO stage, precision); the fp16 run starts at a loss scale that overflows, so its
# scaler has backed off and counted skipped steps by the time it saves.
TAGS = {
    "z1_w2": (2, 1, "fp32"), "z2_w2": (2, 2, "fp32"), "z3_w2": (2, 3, "fp32"),
    "z2_w1": (1, 2, "fp32"), "z3_w1": (1, 3, "fp32"), "z2_w2_fp16": (2, 2, "fp16"),
    "z3_w2_subgroups": (2, 3, "fp32"), "z1_w2_bf16": (2, 1, "bf16"),
}
# ZeRO 3 cuts its flat partitions into sub-groups of at most sub_group_size values, each with its own Adam state.
ZERO_EXTRA = {"z3_w2_subgroups": {"sub_group_size": 50}}
OVERRIDES = ["TRAIN.SCHED.WARMUP_STEPS=2", f"TRAIN.TOTAL_STEPS={TOTAL_STEPS}", "TRAIN.OPTIM.LR=0.01",
             "TRAIN.OPTIM.WEIGHT_DECAY=0.1"]


class Toy(nn.Module):
    """Two convs, a loose parameter and buffers (float, int, nested) so that the numel is odd: ZeRO pads."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor([0.5, 1.0, 2.0]))
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 3, 3, padding=1, bias=False)
        self.gain = nn.Parameter(torch.tensor([1.5]))
        self.conv2.register_buffer("index", torch.arange(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gain * self.conv2(torch.relu(self.conv1(x))) * self.scale.view(1, 3, 1, 1).to(x.dtype)


def batch(step: int, rank: int) -> torch.Tensor:
    return torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(1000 * step + rank))


def loss_fn(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (out.float() - x.flip(-1)).square().mean()


def make_config(world: int, stage: int, precision: str) -> tuple:
    from ds_deblur.config import load_config
    from ds_deblur.zero.setup import read_ds_json, resolve_ds_config
    cfg = load_config({"DATA": {"ROOT": "/unused"}}, overrides=OVERRIDES)
    ds = resolve_ds_config(read_ds_json(DS_JSON[precision]), cfg, world)
    ds["zero_optimization"]["stage"] = stage
    ds["zero_optimization"]["overlap_comm"] = False
    if precision == "fp16":
        ds["fp16"].update(initial_scale_power=17, loss_scale_window=2)
    return cfg, ds


# ------------------------------------------------------------------------------------------ writing real tags


def train_and_save(rank: int, world: int, port: int, root: str, names: list[str]) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), DS_DEBLUR_ALLOW_CPU_FP16="1")
    torch.set_num_threads(1)
    distributed.init()
    for name in names:
        save_tag(rank, Path(root), name)
    distributed.end_rank()


def tag_step(name: str) -> int:
    """The optimizer step at which tag ``name`` of TAGS is saved."""
    return FP16_TRAIN_STEPS if TAGS[name][2] == "fp16" else TRAIN_STEPS


def train_step(engine, step: int, rank: int, dtype: torch.dtype) -> None:
    x = batch(step, rank)
    engine.backward(loss_fn(engine(x.to(dtype)), x))
    engine.step()


def save_tag(rank: int, root: Path, name: str) -> None:
    """What the trainer does (engine, a few steps, save with client state, rng file, commit marker) + references."""
    from ds_deblur.zero.setup import initialize
    world, stage, precision = TAGS[name]
    cfg, ds = make_config(world, stage, precision)
    ds["zero_optimization"].update(ZERO_EXTRA.get(name, {}))
    torch.manual_seed(0)
    engine = initialize(Toy(), cfg, ds, TOTAL_STEPS)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    steps = tag_step(name)
    for step in range(steps):
        train_step(engine, step, rank, dtype)
    at_save = _reference(engine)
    state = {"format": 1, "step": steps, "epoch": 1, "best_psnr": 27.5, "best_step": 2,
             "data": {"epoch": 1, "position": 6, "seed": 42, "num_samples": 10, "shuffle": True},
             "config": cfg.to_dict(), "world_size": world, "zero_stage": stage, "precision": precision,
             "versions": {"torch": torch.__version__, "deepspeed": "0.19.8", "ds_deblur": "0.1.0"}}
    ckpts = root / "ckpts"
    engine.save_checkpoint(str(ckpts), tag=name, client_state={"ds_deblur": state}, save_latest=False)
    torch.save({"torch": torch.get_rng_state()}, ckpts / name / f"rng_rank{rank}.pt")
    torch.distributed.barrier()
    if rank == 0:
        files = {p.name: p.stat().st_size for p in sorted((ckpts / name).iterdir())}
        commit = {"tag": name, "step": steps, "world_size": world, "files": files}
        (ckpts / name / "COMMIT.json").write_text(json.dumps(commit))
    train_step(engine, steps, rank, dtype)
    after = _reference(engine)["weights"]
    if rank == 0:
        torch.save({"at_save": at_save, "after_next_step": after}, root / f"{name}.ref.pt")


def _reference(engine) -> dict:
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state
    ref = {"weights": {}, "exp_avg": {}, "exp_avg_sq": {}}
    for name, param in engine.module.named_parameters():  # collective under ZeRO 3: every rank calls
        ref["weights"][name] = safe_get_full_fp32_param(param).clone()
        for key in ("exp_avg", "exp_avg_sq"):
            ref[key][name] = safe_get_full_optimizer_state(param, key).clone()
    ref["buffers"] = {name: b.clone() for name, b in engine.module.named_buffers()}
    ref["adam_steps"] = engine.global_steps - engine.skipped_steps
    ref["skipped_steps"] = engine.skipped_steps
    ref["lr"] = engine.lr_scheduler.get_last_lr()
    scaler = getattr(engine.optimizer, "loss_scaler", None)
    ref["loss_scaler"] = {k: v for k, v in vars(scaler).items() if isinstance(v, (bool, int, float))}
    return ref


def build_tags(root: Path) -> Path:
    """All tags of TAGS under root/ckpts (once per session: both test files share the directory)."""
    if (root / "DONE").exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    for world in (2, 1):
        names = [name for name, (w, _, _) in TAGS.items() if w == world]
        mp.spawn(train_and_save, args=(world, free_port(), str(root), names), nprocs=world, join=True)
    (root / "ckpts" / "latest").write_text("z2_w2")
    (root / "DONE").touch()
    return root


def reference(tags: Path, name: str) -> dict:
    return torch.load(tags / f"{name}.ref.pt", weights_only=True)
