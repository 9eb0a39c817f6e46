"""VRT's training recipe (EMA, FIX_ITER/FIX_KEYS/FIX_LR_MUL, FREEZE) on the toy model of tests/support/tag_factory.py, run by
spawned gloo ranks through the trainer's own pieces: CheckpointManager (prepare, restore, save), ShardedEMA,
FixedPhase, staged.freeze and engine.initialize. Shared by tests/zero/test_recipe.py.

Per run name (world size, ZeRO stage, precision) the ranks write under ROOT:
- NAME.straight.pt (rank 0): per step the whole fp32 weights (``safe_get_full_fp32_param``; frozen parameters as
  the module holds them), their Adam moments, whether DeepSpeed applied the step, and a plain PyTorch EMA of those
  weights at each saved step; the outputs of a forward pass inside ``ShardedEMA.swapped_in`` and whether every rank's
  state came back bit for bit.
- NAME/ckpts/step_000001, step_000003: tags saved by the manager (FIX_ITER = 2 lies between them).
- NAME.{straight,resumed}.rank{r}.pt: each rank's own state after the last step (fp32 partitions, EMA partitions,
  Adam state, group settings) of the uninterrupted run and of a run resumed from step_000001 in a fresh engine.
- On 1 rank, RESHARDED: the 2-rank tags at step 3 resumed through DeepSpeed's universal checkpoint and through their
  single file, and saved again at once (RUN_universal/ckpts/step_000003, RUN_single/...).
"""
from __future__ import annotations

import os
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import deepspeed
import torch
from deepspeed.utils import safe_get_full_fp32_param

from ds_deblur import distributed
from ds_deblur.ckpt import CheckpointManager, CheckpointOptions, TrainState
from ds_deblur.ckpt.single_file import single_file_dict
from ds_deblur.config import load_config
from ds_deblur.errors import ConfigError
from ds_deblur.zero import partitions
from ds_deblur.zero.ema import ShardedEMA
from ds_deblur.zero.setup import initialize
from ds_deblur.zero.staged import FixedPhase, freeze
from support.tag_factory import OVERRIDES, TOTAL_STEPS, Toy, batch, make_config, train_step

DECAY, FIX_ITER, STEPS, SAVED = 0.8, 2, 5, (1, 3)
FIXED, FROZEN = "conv1.bias", "gain"
RECIPE = [f"TRAIN.EMA_DECAY={DECAY}", f"TRAIN.FIX_KEYS=[{FIXED}]", f"TRAIN.FIX_ITER={FIX_ITER}",
          "TRAIN.FIX_LR_MUL=0.5", f"TRAIN.FREEZE=[{FROZEN}]", "LOG.EXPORT_SINGLE_FILE=false"]
RUNS = {"z1_w2": (2, 1, "fp32"), "z2_w2": (2, 2, "fp32"), "z3_w2": (2, 3, "fp32"), "z2_w2_fp16": (2, 2, "fp16"),
        "z3_w2_fp16": (2, 3, "fp16"), "z1_w2_bf16": (2, 1, "bf16"), "z1_w1": (1, 1, "fp32"), "z2_w1": (1, 2, "fp32"),
        "z3_w1": (1, 3, "fp32")}
RESHARDED = ("z1_w2", "z2_w2", "z3_w2")  # resumed on 1 rank
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Run:
    manager: CheckpointManager
    engine: Any
    ema: ShardedEMA
    fixed: FixedPhase
    state: TrainState
    dtype: torch.dtype


def build(name: str, root: Path, save_as: str, resume: Optional[Path] = None) -> Run:
    """What the trainer builds: manager.prepare, freeze, initialize, EMA, manager.restore, FixedPhase (on this
    world size, with the run's ZeRO stage and precision)."""
    _, stage, precision = RUNS[name]
    world = torch.distributed.get_world_size()
    _, ds = make_config(world, stage, precision)
    cfg = load_config({"DATA": {"ROOT": "/unused"}}, [*OVERRIDES, *RECIPE, f"LOG.SAVE_DIR={root / save_as}"])
    manager = CheckpointManager(CheckpointOptions.from_config(cfg), cfg, None, world, precision, lambda _: None)
    torch.manual_seed(0 if resume is None else 1)
    model = Toy()
    if resume is not None:
        model.gain.data.fill_(9.0)  # a frozen weight the resume must bring back
    manager.prepare(Namespace(resume=str(resume) if resume else None, init_weights=None, reset_optimizer=False),
                    model, ds)
    freeze(model, cfg)
    engine = initialize(model, cfg, ds, TOTAL_STEPS)
    ema = ShardedEMA.from_config(engine, cfg)
    state = manager.restore(engine, ema)
    fixed = FixedPhase(engine, cfg)
    fixed.apply(state.step)
    return Run(manager, engine, ema, fixed, state, DTYPES[precision])


def full_weights(engine: Any) -> dict[str, torch.Tensor]:
    """Whole fp32 weights (collective under ZeRO 3): the masters of trained parameters, the module's frozen ones."""
    out = {}
    for name, param in engine.module.named_parameters():
        if param.requires_grad:
            out[name] = safe_get_full_fp32_param(param).clone()
        else:
            with deepspeed.zero.GatheredParameters([param]):
                out[name] = param.data.float().clone()
    return out


def fixed_moments_zero(engine: Any) -> bool:
    """Adam's moments of the FIX_KEYS group are exactly 0 on every rank (or not created yet)."""
    state = partitions.base_optimizer(engine).state
    nonzero = any(state[flat][key].any() for flat in partitions.group_flats(engine)[1] if flat in state
                  for key in ("exp_avg", "exp_avg_sq"))
    return not distributed.any_rank(nonzero)


def module_weights(engine: Any) -> dict[str, torch.Tensor]:
    """The module's own (low-precision) weights, whole (collective under ZeRO 3)."""
    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params):
        return {name: p.data.clone() for name, p in engine.module.named_parameters()}


def local_state(run: Run) -> dict:
    """This rank's partitions: what exact resume must reproduce bit for bit."""
    base = partitions.base_optimizer(run.engine)
    flats = partitions.master_flats(run.engine)
    return {"masters": [m.clone() for m in flats], "shadow": [s.clone() for s in run.ema.shadow],
            "adam": [{k: v.clone() if torch.is_tensor(v) else v for k, v in base.state[f].items()} for f in flats],
            "groups": [{k: v for k, v in g.items() if k != "params"} for g in base.param_groups],
            "fixed_hooks": run.fixed.fixed}


def step(run: Run, number: int, rank: int) -> bool:
    train_step(run.engine, number - 1, rank, run.dtype)
    run.ema.after_step()
    run.fixed.after_step(number)
    run.state.step = number
    return bool(run.engine.was_step_applied())


def straight(name: str, rank: int, root: Path) -> None:
    run = build(name, root, name)
    weights = full_weights(run.engine)
    ema = dict(weights)
    record: dict = {"initial": weights, "steps": [], "ema_at": {}}
    for number in range(1, STEPS + 1):
        applied = step(run, number, rank)
        weights = full_weights(run.engine)
        if applied:  # a plain PyTorch EMA of the whole weights, of the applied steps
            ema = {k: ema[k] * DECAY + weights[k] * (1 - DECAY) for k in ema}
        record["steps"].append({"weights": weights, "fixed_moments_zero": fixed_moments_zero(run.engine),
                                "applied": applied})
        if number in SAVED:
            run.manager.save(run.state)
            record["ema_at"][number] = ema
        if number == 4:
            record["swap"] = swap_check(run, ema)
    run.manager.close()
    torch.save(local_state(run), root / f"{name}.straight.rank{rank}.pt")
    if rank == 0:
        torch.save(record, root / f"{name}.straight.pt")


def swap_check(run: Run, ema: dict) -> dict:
    """A forward pass with the EMA weights swapped in, as the trainer validates (no gathering before it: ZeRO 3
    keeps small parameters whole between steps, and those must follow the swap too), and whether everything came
    back bit for bit."""
    before, module_before = local_state(run), module_tensors(run.engine)
    x = batch(99, 0)
    run.engine.eval()
    with torch.no_grad(), run.ema.swapped_in():
        out = run.engine(x.to(run.dtype)).float()
        inside = module_weights(run.engine)
    run.engine.train()
    after, module_after = local_state(run), module_tensors(run.engine)
    same = all(torch.equal(a, b) for key in ("masters", "shadow") for a, b in zip(before[key], after[key]))
    same &= all(torch.equal(a, b) for a, b in zip(module_before, module_after))
    return {"out": out, "x": x, "ema": ema, "inside": inside, "restored": same}


def module_tensors(engine: Any) -> list[torch.Tensor]:
    """What this rank's module holds, without a collective: each parameter's data (ZeRO 3: its partition, the one
    lasting copy; a gathered whole one comes and goes)."""
    return [(p.ds_tensor if hasattr(p, "ds_tensor") else p).data.clone() for p in engine.module.parameters()]


def resumed(name: str, rank: int, root: Path) -> None:
    """A fresh engine resumed from step 1 (before FIX_ITER), trained to the end with the same batches."""
    run = build(name, root, f"{name}_resumed", resume=root / name / "ckpts" / "step_000001")
    assert run.state.step == 1
    for number in range(2, STEPS + 1):
        step(run, number, rank)
    torch.save(local_state(run), root / f"{name}.resumed.rank{rank}.pt")


def reshard(name: str, rank: int, root: Path, how: str) -> None:
    """A 2-rank tag at step 3 resumed here (another world size) and saved again at once."""
    tag = root / name / "ckpts" / "step_000003"
    source = tag
    if how == "single":
        source = root / f"{name}.step3.pth"
        if rank == 0:
            torch.save(single_file_dict(tag), source)
        torch.distributed.barrier()
    run = build(name, root, f"{name}_{how}", resume=source)
    run.manager.save(run.state)
    run.manager.close()


def rank_main(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), DS_DEBLUR_ALLOW_CPU_FP16="1")
    torch.set_num_threads(1)
    distributed.init()
    root = Path(root)
    for name, (run_world, _, _) in RUNS.items():
        if run_world == world:
            straight(name, rank, root)
            resumed(name, rank, root)
    if world == 1:
        for name in RESHARDED:
            for how in ("universal", "single"):
                reshard(name, rank, root, how)
        (root / "zero0_error.txt").write_text(ema_without_zero())
    distributed.end_rank()


def ema_without_zero() -> str:
    """The error a ZeRO-0 engine gives for TRAIN.EMA_DECAY (there are no fp32 partitions to follow)."""
    cfg, ds = make_config(1, 0, "fp32")
    engine = initialize(Toy(), cfg, ds, TOTAL_STEPS)
    try:
        ShardedEMA(engine, DECAY)
    except ConfigError as err:
        return str(err)
    return "no error"
