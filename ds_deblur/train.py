"""Train the VRT-spike model under a DeepSpeed engine: parse, build, train, close.

    deepspeed --num_gpus=4 ds_deblur/train.py --config CFG.yaml --deepspeed_config ds_configs/zero2_fp16.json
    torchrun --nproc_per_node=4 ds_deblur/train.py ...        python ds_deblur/train.py ...   (one process)

Without --deepspeed_config (the original trainer's command lines) a built-in engine config is used: ZeRO 2 with
fp16 dynamic loss scaling on CUDA, fp32 on CPU.
"""
import os
import sys

if __name__ == "__main__" and not __package__:
    # As a script, Python puts ds_deblur/ first on sys.path, where our inspect.py would shadow the standard
    # library's for every later import (torch's included): swap it for the repository root before importing.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    sys.path.insert(0, os.path.dirname(_here))

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Iterator, Optional  # noqa: E402

import torch  # noqa: E402

EXIT_DIVERGED = 3


def parse_args(argv: Optional[list] = None) -> argparse.Namespace:
    import deepspeed
    parser = argparse.ArgumentParser(
        prog="ds_deblur/train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="experiment YAML (ds_configs/tiny_synth.yaml, ...)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config key (repeatable), e.g. --set TRAIN.LR=2e-4")
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
    if args.reset_optimizer and not args.resume:
        parser.error("--reset-optimizer only makes sense with --resume")
    return args


@dataclass
class StepStats:
    """What one optimizer step did, summed over its micro-batches and agreed on by every rank."""
    micro: int = 0
    lr: float = 0.0
    loss: float = 0.0
    parts: Optional[dict] = None
    nonfinite: bool = False
    data_time: float = 0.0


class Trainer:
    """The train loop. Steps are optimizer steps; logging, validation and saving happen only on step
    boundaries, exactly once each, on every rank together."""

    def __init__(self, args: argparse.Namespace) -> None:
        from ds_deblur import checkpoint, distributed, engine as eng
        from ds_deblur.config import load_config, save_config
        from ds_deblur.data import build_dataloaders
        from ds_deblur.losses import DeblurLoss
        from ds_deblur.models import build_model

        self.args = args
        self.cfg = load_config(args.config, args.set)
        self.rank, self.world = distributed.init()
        self.save_dir = Path(self.cfg.LOG.SAVE_DIR)
        self.ckpt_dir = self.save_dir / "ckpts"
        self.ds = eng.engine_config(args.deepspeed_config, self.cfg, self.world, say=self._say)
        self.precision = eng.precision_of(self.ds)
        torch.manual_seed(self.cfg.SEED)
        self.train_loader, self.val_loader = build_dataloaders(self.cfg, self.rank, self.world)
        self.total_steps = self._total_steps()
        from ds_deblur.validate import input_metrics
        self.input_metrics = input_metrics(self.val_loader)
        model = build_model(self.cfg)
        if args.init_weights:
            self._init_weights(model, args.init_weights)
        restore = self._prepare_resume(model)  # weights that must be in the module before initialize
        self.multiple = model.size_multiple
        self.loss_fn = DeblurLoss.from_config(self.cfg).to(distributed.device())
        self.engine = eng.initialize(model, self.cfg, self.ds, self.total_steps)
        self.state = checkpoint.TrainState()
        if restore is not None:
            self._restore(restore())
        elif args.resume == "auto":
            self._say(f"[train] --resume auto: no complete checkpoint under {self.ckpt_dir}, starting a fresh run")
        if distributed.is_main():
            save_config(self.cfg, self.save_dir / "config.yaml", deepspeed=self.ds)
            (self.save_dir / "versions.json").write_text(json.dumps(checkpoint.versions(), indent=1))
        from ds_deblur.run_log import RunLogger
        self.log = RunLogger(self.save_dir, distributed.is_main(), self.total_steps, self.state.step,
                             tensorboard=self.cfg.LOG.TENSORBOARD)
        self.stop_requested = False
        self.min_scale_steps = 0
        self.skipped_in_a_row = 0
        from ds_deblur.faults import Injections
        self.faults = Injections.from_env()

    # --- set-up helpers ---------------------------------------------------------------------------------------

    def _total_steps(self) -> int:
        from ds_deblur.engine import total_steps
        return total_steps(self.cfg, len(self.train_loader))

    def _init_weights(self, model: torch.nn.Module, path: str) -> None:
        from ds_deblur.single_file import load_weights
        what = load_weights(model, path)
        self._say(f"[train] Initialised weights from {path} ({what}); new run from step 0")

    def _prepare_resume(self, model: torch.nn.Module) -> Optional[Callable[[], dict]]:
        """Find what ``--resume`` names, load what must precede ``deepspeed.initialize`` into ``model``, and
        return the step that completes the restore on the engine (None: a fresh run)."""
        from ds_deblur import checkpoint
        from ds_deblur.convert import fp32_state_dict, open_tag
        args = self.args
        if not args.resume:
            return None
        keep_optimizer = not args.reset_optimizer
        if checkpoint.is_single_file_path(args.resume):
            single = checkpoint.read_single(Path(args.resume))
            self._say(f"[train] Loading checkpoint {args.resume}")
            self._check_fits(single["config"])
            model.load_state_dict(single["state_dict"])  # every ZeRO stage then starts from these weights
            return lambda: checkpoint.load_single(self.engine, single, keep_optimizer)
        found = checkpoint.resolve_resume(args.resume, self.save_dir)
        if found is None:
            return None
        tag_dir = found[0] / found[1]
        self._say(f"[train] Loading checkpoint {tag_dir}")
        self._check_fits(open_tag(tag_dir).state["config"])
        if keep_optimizer:
            saved_world = checkpoint.saved_world_size(tag_dir)
            if saved_world != self.world:
                from ds_deblur import universal
                self._say(f"[train] {tag_dir} was saved on {saved_world} ranks, this run has {self.world}: "
                          f"loading it through DeepSpeed's universal checkpoint")
                universal.prepare(tag_dir)
                self.ds.setdefault("checkpoint", {})["load_universal"] = True
            return lambda: checkpoint.load(self.engine, *found)
        # Weights only: read them ourselves (DeepSpeed's ZeRO-3 load ignores the tag when it skips the optimizer
        # states, DeepSpeed issue #8499), which also works on any world size.
        model.load_state_dict(fp32_state_dict(tag_dir))
        return lambda: {**open_tag(tag_dir).state, "rng_restored": False}

    def _check_fits(self, saved_config: dict) -> None:
        """A changed model or data-shape key is an error before any weight is loaded (warnings come later)."""
        from ds_deblur import checkpoint
        checkpoint.check_config_change(saved_config, self.cfg.to_dict(), self.world, self.world, warn=lambda _: None)

    def _restore(self, saved: dict) -> None:
        """Adopt a loaded checkpoint's counters and data position, and say what was restored."""
        from ds_deblur import checkpoint, distributed
        checkpoint.check_config_change(saved["config"], self.cfg.to_dict(), saved["world_size"], self.world,
                                       warn=self._say)
        self.state = checkpoint.TrainState(saved["step"], saved["epoch"], saved["best_psnr"], saved["best_step"])
        same_batch = saved["world_size"] == self.world and \
            saved["config"]["TRAIN"]["BATCH_SIZE"] == self.cfg.TRAIN.BATCH_SIZE
        self.train_loader.load_state_dict(saved["data"])
        s = self.state
        self._say(f"[train] Resuming from step {s.step} (epoch {s.epoch}), best PSNR so far {s.best_psnr:.4f}")
        self._say("[train] ✓ Model weights loaded")
        if self.args.reset_optimizer:
            self._say("[train] ✓ Optimizer and LR schedule start fresh (--reset-optimizer)")
        else:
            self._say("[train] ✓ Optimizer state loaded (fp32 masters, Adam moments)")
            self._say("[train] ✓ LR scheduler state loaded")
            if self.precision == "fp16":
                self._say("[train] ✓ Loss scaler state loaded")
            self._say("[train] ✓ RNG state loaded" if saved["rng_restored"] else
                      "[train] RNG state not restored (world size changed, or a single file): data order and "
                      "augmentation still continue exactly; only random model ops (drop path) differ")
        self._say(f"[train] ✓ Data position: epoch {saved['data']['epoch']}, sample {saved['data']['position']}"
                  + ("" if same_batch else " (batch layout changed: the remaining order is the same, "
                                           "grouped into different batches)"))
        self._say(f"[train] Resume complete. Continuing from step {s.step}/{self.total_steps}")
        if self.cfg.LOG.EXPORT_SINGLE_FILE and distributed.is_main() and self.ckpt_dir.is_dir():
            from ds_deblur.convert import refresh_single_files
            for path in refresh_single_files(self.ckpt_dir):
                self._say(f"[train] Re-exported {path}: the previous run stopped between a save and its export")

    def _spike_input(self) -> dict:
        """The spike input as the data defined it (what inference must feed the model)."""
        dataset = self.train_loader.dataset
        return {"size": list(dataset.spike_size), "k": dataset.options.k, "mean": dataset.options.mean,
                "std": dataset.options.std}

    def _say(self, text: str) -> None:
        from ds_deblur import distributed
        if distributed.is_main():
            print(text, flush=True)

    # --- the loop ---------------------------------------------------------------------------------------------

    def fit(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.stats, self.step_started = StepStats(), time.perf_counter()
        from ds_deblur import checkpoint
        step = self.state.step
        final_unsaved = step >= self.total_steps and checkpoint.tag_problem(
            self.ckpt_dir / checkpoint.step_tag(step)) is not None  # killed in the final save, resumed from best
        if final_unsaved or (self.args.stop_at_step is not None and step >= self.args.stop_at_step):
            self._save(None)  # resumed at or past it: save at once (also re-shards a tag for this world size)
            return 0
        while self.state.step < self.total_steps:
            self.train_loader.set_epoch(self.state.epoch)
            code = self._run_epoch()
            if code is not None:
                return code
            self.state.epoch += 1
        return 0

    def _run_epoch(self) -> Optional[int]:
        """Train until the loader is exhausted (returns None) or the run ends (returns the exit code). A step
        whose micro-batches straddle two epochs carries its ``self.stats`` over."""
        accum = self.cfg.TRAIN.GRADIENT_ACCUMULATION_STEPS
        for batch, waited in _timed(self.train_loader):
            stats = self.stats
            boundary = self.engine.is_gradient_accumulation_boundary()
            if boundary:
                stats.lr = self.engine.get_lr()[0]  # the LR this step uses (engine.step advances the schedule)
            self._micro_step(batch, stats, accum)
            stats.data_time += waited
            if not boundary:
                continue
            self.state.step += 1
            self._after_step(stats, time.perf_counter() - self.step_started)
            code = self._boundary_actions()
            if code is not None:
                return code
            self.stats, self.step_started = StepStats(), time.perf_counter()
        return None

    def _micro_step(self, batch: dict, stats: StepStats, accum: int) -> None:
        from ds_deblur import distributed
        from ds_deblur.validate import model_dtype
        from ds_deblur import faults
        dtype, device = model_dtype(self.engine), self.engine.device
        blur = batch["blur"].to(device, dtype, non_blocking=True)
        spike = batch["spike_vox"].to(device, dtype, non_blocking=True)
        sharp = batch["sharp"].to(device, non_blocking=True)
        step, inject = self.state.step + 1, self.rank == 0 and stats.micro == 0
        if inject and self.faults.wants("batch", step):
            blur = faults.poison_batch(blur)
        loss, parts = self.loss_fn(self.engine(blur, spike).float(), sharp)
        if inject and self.faults.wants("loss", step):
            loss = loss * float("inf")
        # Agree on a bad micro-batch before backward: its non-finite gradients then make DeepSpeed discard the
        # whole step on every rank (its overflow check reduces over ranks); we count and log it.
        bad = distributed.any_rank(not bool(torch.isfinite(loss.detach())))
        stats.nonfinite |= bad
        hook = faults.nan_gradient(self.engine.module) if inject and self.faults.wants("grad", step) else None
        self.engine.backward(loss)
        if hook is not None:
            hook.remove()
        self.engine.step()
        stats.micro += 1
        stats.loss += distributed.mean_over_ranks(float(loss.detach())) / accum
        stats.parts = {k: (stats.parts or {}).get(k, 0.0) + distributed.mean_over_ranks(float(v)) / accum
                       for k, v in parts.items()}

    def _after_step(self, stats: StepStats, step_time: float) -> None:
        from ds_deblur import engine as eng
        from ds_deblur.run_log import memory_mb
        applied = self.engine.was_step_applied()
        if stats.nonfinite and applied:
            raise RuntimeError(
                f"step {self.state.step}: a non-finite loss was seen but DeepSpeed applied the step. This DeepSpeed "
                f"config does not guard non-finite gradients (ZeRO stage 0 without fp16?); use ZeRO >= 1, or for "
                f"bf16 set \"check_grad_overflow\": true in the bf16 section")
        scale = eng.loss_scale(self.engine)
        self.min_scale_steps = self.min_scale_steps + 1 if (
            self.precision == "fp16" and scale <= eng.min_loss_scale(self.engine) and not applied) else 0
        self.skipped_in_a_row = 0 if applied else self.skipped_in_a_row + 1
        grad_norm = self.engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None and applied else None
        samples = self.cfg.TRAIN.BATCH_SIZE * self.cfg.TRAIN.GRADIENT_ACCUMULATION_STEPS * self.world
        record = {"step": self.state.step, "epoch": self.state.epoch, "loss": stats.loss,
                  "lr": stats.lr, "loss_scale": scale, "grad_norm": grad_norm,
                  "skipped": int(self.engine.skipped_steps)}
        scalars = {}
        if self.state.step % self.cfg.LOG.LOG_EVERY_STEPS == 0 or self.state.step == 1:
            scalars = {"train/loss": stats.loss, "train/lr": record["lr"], "train/loss_scale": scale,
                       "train/skipped_steps": record["skipped"], "perf/samples_per_sec": samples / step_time,
                       "perf/step_time_ms": step_time * 1e3, "perf/data_time_ms": stats.data_time * 1e3,
                       "perf/memory_mb": memory_mb()}
            scalars.update({f"train/{k}": v for k, v in (stats.parts or {}).items()})
            if grad_norm is not None:
                scalars["train/grad_norm"] = grad_norm
        self.log.train_step(record, scalars)

    def _boundary_actions(self) -> Optional[int]:
        from ds_deblur import distributed
        step, cfg = self.state.step, self.cfg
        last = step >= self.total_steps
        if step % cfg.LOG.VAL_EVERY_STEPS == 0 or last:
            self._validate()
        diverged = self._divergence()
        if diverged:
            self._save(diverged)
            self._say(f"[train] Stopping: {diverged}, so training has diverged. Saved the last good state (the "
                      f"weights of step {step - self.skipped_in_a_row}; skipped steps change nothing) as "
                      f"{self.ckpt_dir}/step_{step:06d}. Lower TRAIN.LR, check the data"
                      + (", or use bf16 (ds_configs/zero2_bf16.json)." if self.precision == "fp16" else "."))
            return EXIT_DIVERGED
        stop = distributed.any_rank(self.stop_requested)
        cut = self.args.stop_at_step is not None and step >= self.args.stop_at_step
        if step % cfg.LOG.SAVE_EVERY_STEPS == 0 or last or stop or cut:
            self._save("signal" if stop else None)
        if stop:
            self._say(f"[train] Stopped by signal after step {step}; resume with --resume auto")
        return 0 if (last or stop or cut) else None

    def _divergence(self) -> Optional[str]:
        """Why the run has diverged (None: it has not): every step skipped for longer than the patience."""
        train = self.cfg.TRAIN
        if self.precision == "fp16" and self.min_scale_steps >= train.MIN_LOSS_SCALE_PATIENCE:
            return (f"the fp16 loss scale has sat at its minimum for {self.min_scale_steps} consecutive overflowing "
                    f"steps (TRAIN.MIN_LOSS_SCALE_PATIENCE)")
        if self.precision != "fp16" and self.skipped_in_a_row >= train.NONFINITE_PATIENCE:
            return (f"{self.skipped_in_a_row} consecutive steps had non-finite losses or gradients and were skipped "
                    f"(TRAIN.NONFINITE_PATIENCE)")
        return None

    def _validate(self) -> None:
        from ds_deblur import checkpoint, distributed
        from ds_deblur.validate import validate
        metrics, visual = validate(self.engine, self.val_loader, self.multiple, self.cfg.TRAIN.VAL_TILE_SIZE,
                                   self.cfg.TRAIN.VAL_TILE_OVERLAP, want_visual=distributed.is_main())
        improved = metrics["psnr_rgb"] > self.state.best_psnr
        if improved:
            self.state.best_psnr, self.state.best_step = metrics["psnr_rgb"], self.state.step
        metrics.update(best_psnr=self.state.best_psnr, best_step=self.state.best_step,
                       input_psnr_rgb=self.input_metrics["psnr_rgb"])
        self.log.validation(self.state.step, metrics, visual, self.rank)
        self.last_val = metrics
        if improved:
            self._save(None, tag=checkpoint.BEST)

    def _save(self, reason: Optional[str], tag: Optional[str] = None) -> None:
        from ds_deblur import checkpoint, distributed
        tag = tag or checkpoint.step_tag(self.state.step)
        state = checkpoint.client_state(self.state, self.train_loader.state_dict(), self.cfg.to_dict(),
                                        self.engine, self.precision, spike=self._spike_input())
        try:
            checkpoint.save(self.engine, self.ckpt_dir, tag, state)
            if distributed.is_main():
                if tag != checkpoint.BEST:
                    checkpoint.retain(self.ckpt_dir, self.cfg.LOG.KEEP_LAST)
                if self.cfg.LOG.EXPORT_SINGLE_FILE:
                    from ds_deblur.convert import export_single_file
                    name = "best.pth" if tag == checkpoint.BEST else "last.pth"
                    export_single_file(self.ckpt_dir, tag, self.ckpt_dir / name)
        except (OSError, RuntimeError) as err:  # a full disk (torch.save raises RuntimeError), a lost mount
            free = shutil.disk_usage(self.ckpt_dir).free / 2**20
            raise checkpoint.CheckpointError(
                f"saving checkpoint {tag} failed on rank {self.rank}: {type(err).__name__}: {err} ({free:.0f} MiB "
                f"free on the checkpoint disk). The newest complete checkpoint is "
                f"{checkpoint.read_latest(self.ckpt_dir) or 'none'} ('latest'), untouched, and last.pth/best.pth "
                f"are whole (written atomically); free space, then resume with --resume auto") from err
        distributed.barrier()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        # Finish the current step, save, exit 0: preemption-friendly. A second signal exits at once.
        if self.stop_requested:
            raise KeyboardInterrupt
        self.stop_requested = True

    def close(self, exit_code: int) -> None:
        from ds_deblur import distributed
        last = getattr(self, "last_val", None)
        if last is not None:
            self.log.hparams(_hparams(self.cfg, self.precision, self.ds, self.world),
                             {"hparam/psnr_rgb": last["psnr_rgb"], "hparam/best_psnr": self.state.best_psnr})
            self._say(f"[train] Final validation PSNR {last['psnr_rgb']:.3f} dB (best {self.state.best_psnr:.3f} "
                      f"at step {self.state.best_step}) vs blurry input {self.input_metrics['psnr_rgb']:.3f} dB; "
                      f"TensorBoard logs: {self.save_dir / 'tb'}")
        self.log.close()
        distributed.close()


def _hparams(cfg: Any, precision: str, ds: dict, world: int) -> dict:
    return {"preset": cfg.MODEL.PRESET, "use_spike": cfg.MODEL.USE_SPIKE, "lr": cfg.TRAIN.OPTIM.LR,
            "batch": cfg.TRAIN.BATCH_SIZE * cfg.TRAIN.GRADIENT_ACCUMULATION_STEPS * world,
            "clip_len": cfg.DATA.CLIP_LEN, "crop": cfg.DATA.CROP_SIZE, "precision": precision,
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
    from ds_deblur.checkpoint import CheckpointError
    from ds_deblur.config import ConfigError
    from ds_deblur.data import DatasetError
    from ds_deblur.engine import EngineConfigError
    from ds_deblur.single_file import CheckpointFormatError
    from ds_deblur.universal import UniversalError
    args = parse_args(argv)
    try:
        trainer = Trainer(args)
    except (ConfigError, DatasetError, EngineConfigError, CheckpointError, CheckpointFormatError, UniversalError,
            FileNotFoundError) as err:
        print(f"[train] error: {err}", file=sys.stderr, flush=True)
        from ds_deblur import distributed
        distributed.close()
        return 2
    code = 1
    try:
        code = trainer.fit()
    except CheckpointError as err:
        print(f"\n[train] error: {err}", file=sys.stderr, flush=True)  # below the progress bar's line
    finally:
        trainer.close(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
