"""Train the VRT-spike model under a DeepSpeed engine: parse, build, train, close.

    deepspeed --num_gpus=4 ds_deblur/train.py --config CFG.yaml --deepspeed_config ds_configs/zero2_fp16.json
    torchrun --nproc_per_node=4 ds_deblur/train.py ...        python ds_deblur/train.py ...   (one process)

Without --deepspeed_config (the original trainer's command lines) a built-in engine config is used: ZeRO 2 with
fp16 dynamic loss scaling on CUDA; on CPU fp32, or bf16 (DeepSpeed's bf16 engine or autocast) for the presets it
makes faster on CPUs with bf16 instructions.
"""
import argparse
import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import deepspeed
import torch

from ds_deblur import distributed, two_run
from ds_deblur.ckpt import CheckpointManager, CheckpointOptions
from ds_deblur.ckpt.state import versions
from ds_deblur.ckpt.tags import BEST
from ds_deblur.config import Config, load_config, save_config
from ds_deblur.data import build_dataloaders
from ds_deblur.divergence import DivergenceWatch
from ds_deblur.errors import DsDeblurError
from ds_deblur.evaluate import input_metrics, model_dtype, validate
from ds_deblur.losses import DeblurLoss
from ds_deblur.models import build_model
from ds_deblur.phases import Phases
from ds_deblur.run_log import RunLogger, memory_mb
from ds_deblur.testing.faults import Injections
from ds_deblur.testing.host_syncs import SyncCounter
from ds_deblur.zero.ema import ShardedEMA
from ds_deblur.zero.setup import engine_config, initialize, loss_scale, min_loss_scale, precision_of, total_steps
from ds_deblur.zero.staged import FIXED_GROUP, FixedPhase, freeze

EXIT_DIVERGED = 3


def parse_args(argv: Optional[list] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ds_deblur/train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="experiment YAML (ds_configs/tiny_synth.yaml, ...) or an "
                                                         "S-VRT option file (options/*.json, docs/svrt.md)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config key (repeatable), e.g. --set TRAIN.OPTIM.LR=2e-4; for an S-VRT "
                             "option file also its own keys, e.g. --set netG.fusion.operator=gated")
    parser.add_argument("--resume", default=None, metavar="auto|CKPT_DIR|CKPT_DIR/TAG|FILE.pth",
                        help="continue a run: 'auto' = newest complete checkpoint under LOG.SAVE_DIR/ckpts (or a "
                             "fresh start), a checkpoint dir (its 'latest'), a tag, or a last.pth/best.pth")
    parser.add_argument("--reset-optimizer", action="store_true",
                        help="with --resume: restore weights and counters only; fresh optimizer and LR schedule "
                             "(e.g. to change the learning rate)")
    parser.add_argument("--init-weights", default=None, metavar="FILE",
                        help="start a new run from these model weights (last.pth/best.pth, a weights export or "
                             "an official VRT release file keyed 'params')")
    parser.add_argument("--stop-at-step", type=int, default=None, metavar="N",
                        help="save and exit after optimizer step N without changing the schedule (at once when a resumed "
                             "run is already there: re-saves a checkpoint for this world size and ZeRO stage)")
    parser.add_argument("--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", 0)),
                        help="set by the launcher")
    deepspeed.add_config_arguments(parser)
    args = parser.parse_args(argv)
    if args.resume and args.init_weights:
        parser.error("--resume and --init-weights exclude each other: resume continues a run, "
                     "init-weights starts a new one")
    return args


def say(text: str) -> None:
    if distributed.is_main():
        print(text, flush=True)


class RunEnded(Exception):
    """The run stops here (end of training, --stop-at-step, a signal, divergence) with this exit code."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class StepStats:
    """What one optimizer step did, summed over its micro-batches. The loss, its parts and a non-finite flag stay
    on the device until the step's end, where :meth:`agree` makes them every rank's in one all-reduce and one read."""
    started: float = field(default_factory=time.perf_counter)
    micro: int = 0
    lr: float = 0.0
    lr_fixed: Optional[float] = None  # the TRAIN.FIX_KEYS group's LR, when there is one
    data_time: float = 0.0
    sums: Optional[torch.Tensor] = None  # float64: loss, the parts, non-finite micro-batches
    keys: list = field(default_factory=list)
    loss: float = 0.0  # these, after agree(): means over ranks and micro-batches
    parts: dict = field(default_factory=dict)
    nonfinite: bool = False
    grad_norm: Optional[float] = None

    def add(self, loss: torch.Tensor, parts: dict, waited: float) -> None:
        loss = loss.detach()
        values = torch.stack([loss.double(), *(torch.as_tensor(v, device=loss.device).double() for v in parts.values()),
                              (~torch.isfinite(loss)).double()])
        self.sums = values if self.sums is None else self.sums + values
        self.keys, self.micro, self.data_time = list(parts), self.micro + 1, self.data_time + waited

    def agree(self, world: int, stop: bool, grad_norm: Any) -> bool:
        """Average the sums over ranks and micro-batches and read them, with DeepSpeed's gradient norm (a tensor, a
        float or None), on the host at once; returns whether any rank asked to stop."""
        flag = torch.tensor([float(stop)], dtype=torch.float64, device=self.sums.device)
        values = distributed.sum_over_ranks(torch.cat([self.sums, flag]))
        norm_on_device = isinstance(grad_norm, torch.Tensor)
        if norm_on_device:
            values = torch.cat([values, grad_norm.detach().reshape(1).to(values)])
        read = values.tolist()
        grad_norm = read.pop() if norm_on_device else grad_norm
        *sums, nonfinite, stop_votes = read
        scale = world * self.micro
        self.loss = sums[0] / scale
        self.parts = {key: value / scale for key, value in zip(self.keys, sums[1:])}
        self.nonfinite = nonfinite > 0
        self.grad_norm = None if grad_norm is None else float(grad_norm)
        return stop_votes > 0


class Trainer:
    """The train loop. Steps are optimizer steps; logging, validation and saving happen only on step
    boundaries, exactly once each, on every rank together. Checkpoints are the CheckpointManager's."""

    def __init__(self, args: argparse.Namespace, cfg: Optional[Config] = None) -> None:
        """``cfg``: the run's config when the caller has it (one run of a two-run training), else ``--config``."""
        self.args = args
        self.cfg = cfg = cfg or load_config(args.config, args.set)
        self.rank, self.world = distributed.init()
        self.save_dir = Path(cfg.LOG.SAVE_DIR)
        self.ds = engine_config(args.deepspeed_config, cfg, self.world, say=say)
        torch.manual_seed(cfg.SEED)
        self.train_loader, self.val_loader = build_dataloaders(cfg, self.rank, self.world)
        self.total_steps = total_steps(cfg, len(self.train_loader))  # before a restore moves the sampler
        self.input_metrics = input_metrics(self.val_loader)
        model = build_model(cfg)
        self.multiple = model.size_multiple
        self.ckpt = CheckpointManager(CheckpointOptions.from_config(cfg), cfg, self.train_loader, self.world,
                                      precision_of(self.ds), say)
        # weights and engine settings that must precede initialize
        self.ckpt.prepare(args, model, self.ds, builtin_engine=args.deepspeed_config is None)
        self.precision = self.ckpt.precision  # the built-in engine config keeps a resumed run's
        frozen = freeze(model, cfg)  # before initialize: DeepSpeed then keeps them out of the optimizer
        self.loss_fn = DeblurLoss.from_config(cfg, say).to(distributed.device())
        self.engine = initialize(model, cfg, self.ds, self.total_steps)
        self.ema = ShardedEMA.from_config(self.engine, cfg)
        self.state = self.ckpt.restore(self.engine, self.ema)
        self.fixed = FixedPhase(self.engine, cfg)
        self.fixed.apply(self.state.step)
        self.phases = Phases(cfg, self.engine.module, self.train_loader, self.loss_fn)
        self._say_recipe(model, frozen)
        if self.state.step:
            say(f"[train] Resume complete. Continuing from step {self.state.step}/{self.total_steps}")
        if distributed.is_main():
            save_config(cfg, self.save_dir / "config.yaml", deepspeed=self.ds)
            (self.save_dir / "versions.json").write_text(json.dumps(versions(), indent=1))
        self.log = RunLogger(self.save_dir, distributed.is_main(), self.total_steps, self.state.step,
                             tensorboard=cfg.LOG.TENSORBOARD)
        self.watch = DivergenceWatch(self.precision, cfg.TRAIN.MIN_LOSS_SCALE_PATIENCE, cfg.TRAIN.NONFINITE_PATIENCE)
        self.faults = Injections.from_env(self.rank)
        self.syncs = SyncCounter.from_env(self.rank)
        self.stop_requested = False
        self.last_val: Optional[dict] = None
        self.stats = StepStats()

    def _say_recipe(self, model: torch.nn.Module, frozen: list[str]) -> None:
        train = self.cfg.TRAIN
        params = dict(model.named_parameters())
        if frozen:
            say(f"[train] TRAIN.FREEZE {train.FREEZE}: {len(frozen)} parameters "
                f"({sum(params[n].numel() for n in frozen):,} values) never train")
        for group in self.fixed.groups:
            names = group.names
            wait = f"fixed until step {group.start}, then " if self.state.step < group.start else ""
            say(f"[train] {group.why}: {len(names)} parameters ({sum(params[n].numel() for n in names):,} values) "
                f"{wait}trained at LR x {group.lr_mul}")
        if self.phases.active:
            say(self.phases.describe())
        if self.ema is not None:
            say(f"[train] EMA of the weights, decay {self.ema.decay}: {self.ema.numel():,} fp32 values on this rank "
                f"({self.ema.numel() * 4 / 2**20:.1f} MiB); validation uses the "
                f"{'EMA' if self.cfg.LOG.VAL_USE_EMA else 'trained'} weights")

    # --- the loop ---------------------------------------------------------------------------------------------

    def fit(self) -> int:
        """Train until the last step, --stop-at-step, a signal (exit code 0) or divergence (EXIT_DIVERGED)."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            if self._at_the_end():
                return 0
            while True:
                loader = self.phases.loader(self.state.step)
                loader.set_epoch(self.state.epoch)
                for batch, waited in _timed(loader):
                    if self._micro_step(batch, waited):
                        self._end_step()
                        if self.syncs is not None:
                            self.syncs.step_done(self.state.step)
                        self.stats = StepStats()  # timed from here: the next step's time excludes this one's save
                        if self.phases.loader(self.state.step) is not loader:
                            break  # the next phase's sizes, from the same sampler position
                else:
                    self.state.epoch += 1  # a step straddling two epochs keeps its accumulated stats
        except RunEnded as end:
            if end.message:
                say(end.message)
            return end.code

    def _at_the_end(self) -> bool:
        """True when a resumed run is already at its last step or at --stop-at-step. It then saves at once when
        cut there (re-sharding the tag for this world size and ZeRO stage) or when the final tag is missing (a kill
        in the final save, resumed from best)."""
        step = self.state.step
        cut = self.args.stop_at_step is not None and step >= self.args.stop_at_step
        if step < self.total_steps and not cut:
            return False
        if cut or not self.ckpt.has_complete_tag(step):
            self.ckpt.save(self.state)
        return True

    def _micro_step(self, batch: dict, waited: float) -> bool:
        """Forward, backward and ``engine.step`` of one micro-batch; True when it completed an optimizer step."""
        boundary = self.engine.is_gradient_accumulation_boundary()
        if boundary:  # the LRs this step uses (engine.step advances the schedule)
            lrs = self.engine.get_lr()
            self.stats.lr, self.stats.lr_fixed = lrs[0], lrs[FIXED_GROUP] if self.fixed.params else None
        dtype, device = model_dtype(self.engine), self.engine.device
        blur = batch["blur"].to(device, dtype, non_blocking=True)
        spike = batch["spike_vox"].to(device, dtype, non_blocking=True)
        sharp = batch["sharp"].to(device, non_blocking=True)
        flow = batch.get("flow_spike") if self.phases.needs_flow(self.state.step) else None  # SCFlow's input
        flow = None if flow is None else flow.to(device, dtype, non_blocking=True)
        loss, parts = self.faults.around(self.state.step + 1, self._forward_loss)(blur, spike, sharp, flow)
        # A non-finite loss gives non-finite gradients, and DeepSpeed's overflow check (reduced over ranks) then
        # skips the step on every rank; the loss stays on the device until the step's end, where we count it.
        self.engine.backward(loss)
        self.engine.step()
        self.stats.add(loss, parts, waited)
        return boundary

    def _forward_loss(self, blur: torch.Tensor, spike: torch.Tensor, sharp: torch.Tensor,
                      flow_spike: Optional[torch.Tensor]) -> tuple:
        with self.phases.training_forward(self.state.step):
            return self.phases.loss(self.engine(blur, spike, flow_spike), sharp, blur, self.state.step)

    def _end_step(self) -> None:
        """After an optimizer step: log it, validate, save; raises RunEnded when the run stops here."""
        self.state.step += 1
        stats = self.stats
        applied = self.engine.was_step_applied()
        stop = stats.agree(self.world, self.stop_requested, self.engine.get_global_grad_norm() if applied else None)
        if stats.nonfinite and applied:
            raise RuntimeError(
                f"step {self.state.step}: a non-finite loss was seen but DeepSpeed applied the step. This DeepSpeed "
                f"config does not guard non-finite gradients (ZeRO stage 0 without fp16?); use ZeRO >= 1, or for "
                f"bf16 set \"check_grad_overflow\": true in the bf16 section")
        diverged = self.watch.update(applied, loss_scale(self.engine), min_loss_scale(self.engine))
        if self.ema is not None:
            self.ema.after_step()  # averages applied steps only
        self._log_step(stats)
        step, last = self.state.step, self.state.step >= self.total_steps
        for group in self.fixed.after_step(step):
            say(f"[train] Step {step}: the {group.why} parameters train from here, at LR x {group.lr_mul}, from a "
                f"fresh Adam state")
        if step % self.cfg.LOG.VAL_EVERY_STEPS == 0 or last:
            self._validate()
        if diverged:
            self.ckpt.save(self.state)
            raise RunEnded(EXIT_DIVERGED, self._diverged_message(diverged))
        cut = self.args.stop_at_step is not None and step >= self.args.stop_at_step
        if self.ckpt.due(step) or last or stop or cut:
            self.ckpt.save(self.state)
        if stop:
            raise RunEnded(0, f"[train] Stopped by signal after step {step}; resume with --resume auto")
        if last or cut:
            raise RunEnded(0)

    def _log_step(self, stats: StepStats) -> None:
        step_time = time.perf_counter() - stats.started
        scale, grad_norm = loss_scale(self.engine), stats.grad_norm
        record = {"step": self.state.step, "epoch": self.state.epoch, "loss": stats.loss, "lr": stats.lr,
                  "loss_scale": scale, "grad_norm": grad_norm, "skipped": int(self.engine.skipped_steps)}
        phase = self.phases.phase(self.state.step - 1)
        if self.phases.active:
            record["phase"] = phase
        if stats.lr_fixed is not None:
            record["lr_fixed"] = stats.lr_fixed
        scalars = {}
        if self.state.step % self.cfg.LOG.LOG_EVERY_STEPS == 0 or self.state.step == 1:
            samples = self.phases.batch[phase] * self.cfg.TRAIN.GRADIENT_ACCUMULATION_STEPS * self.world
            scalars = {"train/loss": stats.loss, "train/lr": stats.lr, "train/loss_scale": scale,
                       "train/skipped_steps": record["skipped"], "perf/samples_per_sec": samples / step_time,
                       "perf/step_time_ms": step_time * 1e3, "perf/data_time_ms": stats.data_time * 1e3,
                       "perf/memory_mb": memory_mb(), **{f"train/{k}": v for k, v in stats.parts.items()}}
            if grad_norm is not None:
                scalars["train/grad_norm"] = grad_norm
            if stats.lr_fixed is not None:
                scalars["train/lr_fixed"] = stats.lr_fixed
            if self.phases.active:
                scalars["train/phase"] = phase
        self.log.train_step(record, scalars)

    def _diverged_message(self, why: str) -> str:
        step = self.state.step
        return (f"[train] Stopping: {why}, so training has diverged. Saved the last good state (the weights of step "
                f"{step - self.watch.skipped_in_a_row}; skipped steps change nothing) as "
                f"{self.ckpt.dir}/step_{step:06d}. Lower TRAIN.OPTIM.LR, check the data"
                + (", or use bf16 (ds_configs/zero2_bf16.json)." if self.precision == "fp16" else "."))

    def _validate(self) -> None:
        use_ema = self.ema is not None and self.cfg.LOG.VAL_USE_EMA
        with self.ema.swapped_in() if use_ema else contextlib.nullcontext():  # the EMA weights, no full copy
            metrics, visual = validate(self.engine, self.val_loader, self.multiple, self.cfg.TRAIN.VAL_TILE_SIZE,
                                       self.cfg.TRAIN.VAL_TILE_OVERLAP, want_visual=distributed.is_main())
        metrics["weights"] = "ema" if use_ema else "trained"
        improved = metrics["psnr_rgb"] > self.state.best_psnr
        if improved:
            self.state.best_psnr, self.state.best_step = metrics["psnr_rgb"], self.state.step
        metrics.update(best_psnr=self.state.best_psnr, best_step=self.state.best_step,
                       **{f"input_{name}": self.input_metrics[name] for name in ("psnr_rgb", "psnr_y", "ssim_y")})
        self.log.validation(self.state.step, metrics, visual, self.rank)
        self.last_val = metrics
        if improved:
            self.ckpt.save(self.state, tag=BEST)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        # Finish the current step, save, exit 0: preemption-friendly. A second signal exits at once.
        if self.stop_requested:
            raise KeyboardInterrupt
        self.stop_requested = True

    @property
    def finished(self) -> bool:
        """Whether the run has reached its last step."""
        return self.state.step >= self.total_steps

    def close(self, keep_group: bool = False) -> None:
        """Finish the background export and the logs; ``keep_group``: leave the process group for another run."""
        self.ckpt.close()
        if self.last_val is not None:
            self.log.hparams(_hparams(self.cfg, self.precision, self.ds, self.world),
                             {"hparam/psnr_rgb": self.last_val["psnr_rgb"], "hparam/best_psnr": self.state.best_psnr})
            say(f"[train] Final validation PSNR {self.last_val['psnr_rgb']:.3f} dB (best {self.state.best_psnr:.3f} "
                f"at step {self.state.best_step}) vs blurry input {self.input_metrics['psnr_rgb']:.3f} dB; "
                f"TensorBoard logs: {self.save_dir / 'tb'}")
        self.log.close()
        if not keep_group:
            distributed.close()


def _hparams(cfg: Config, precision: str, ds: dict, world: int) -> dict:
    height, width = cfg.DATA.crop_hw
    return {"preset": cfg.MODEL.PRESET, "use_spike": cfg.MODEL.USE_SPIKE, "lr": cfg.TRAIN.OPTIM.LR,
            "batch": cfg.TRAIN.BATCH_SIZE * cfg.TRAIN.GRADIENT_ACCUMULATION_STEPS * world,
            "clip_len": cfg.DATA.CLIP_LEN, "crop": height if height == width else f"{height}x{width}",
            "spike_repr": cfg.DATA.SPIKE_REPR, "precision": precision,
            "zero_stage": int(ds.get("zero_optimization", {}).get("stage", 0))}


def _timed(loader: Any) -> Iterator[tuple[Any, float]]:
    """Yield (batch, seconds spent waiting for it): the real data wait, not time spent elsewhere."""
    iterator = iter(loader)
    while True:
        started = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            return
        yield batch, time.perf_counter() - started


def main(argv: Optional[list] = None) -> int:
    args = parse_args(argv)
    try:
        runs = two_run.plan(args)
    except DsDeblurError as err:
        print(f"[train] error: {err}", file=sys.stderr, flush=True)
        return 2
    if runs is None:
        return train_one(args)[0]
    code = two_run.train(args, runs, lambda run_args, cfg: train_one(run_args, cfg, keep_group=True), say)
    distributed.close()
    return code


def train_one(args: argparse.Namespace, cfg: Optional[Config] = None, keep_group: bool = False) -> tuple[int, bool]:
    """Build, train and close one run: (exit code, whether it reached its last step)."""
    try:
        trainer = Trainer(args, cfg)
    except DsDeblurError as err:
        print(f"[train] error: {err}", file=sys.stderr, flush=True)
        distributed.close()
        return 2, False
    code = 1
    try:
        code = trainer.fit()
    except DsDeblurError as err:
        print(f"\n[train] error: {err}", file=sys.stderr, flush=True)  # below the progress bar's line
    finally:
        trainer.close(keep_group)
    return code, trainer.finished


if __name__ == "__main__":
    sys.exit(main())
