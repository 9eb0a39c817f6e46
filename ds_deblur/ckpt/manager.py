"""The one object the trainer calls for checkpoints: what to restore before and after ``deepspeed.initialize``,
saving tags on a schedule with retention, and single-file exports in the background.

    ckpt = CheckpointManager(CheckpointOptions.from_config(cfg), cfg, train_loader, world, precision, say)
    ckpt.prepare(args, model, ds_config)   # --resume / --init-weights: what must be in the module before the engine
    engine = deepspeed.initialize(...)
    state = ckpt.restore(engine, ema)      # -> TrainState (a fresh one when nothing is resumed); ema: None or the
                                           #    run's ShardedEMA, restored too and saved in every tag
    ckpt.save(state)                       # every rank; rank 0 then exports last.pth in the background
    ckpt.close()                           # waits for the last export
"""
from __future__ import annotations

import shutil
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ds_deblur import distributed
from ds_deblur.ckpt import universal
from ds_deblur.ckpt.atomic import remove_temporaries
from ds_deblur.ckpt.compat import check_config_change
from ds_deblur.ckpt.export import LAST_FILE, BackgroundExporter, stale_exports
from ds_deblur.ckpt.gather import fp32_state_dict, frozen_names, has_legacy_names, open_tag
from ds_deblur.ckpt.retention import retain
from ds_deblur.ckpt.single_file import load_single_file, single_file_dict, svrt_in_module_order
from ds_deblur.ckpt.state import TrainState, client_state
from ds_deblur.ckpt.tag_io import load_single, load_tag, load_tag_ema, save_tag
from ds_deblur.ckpt.tags import (BEST, Location, newest_complete, read_latest, resolve, saved_world_size, step_tag,
                                 tag_problem)
from ds_deblur.ckpt.weights import load_state_dict_strict, load_weights, read_weights
from ds_deblur.config import Config, canonical_dict
from ds_deblur.errors import CheckpointError, CheckpointFormatError, ConfigError, DsDeblurError
from ds_deblur.zero.ema import ShardedEMA
from ds_deblur.zero.setup import follow_resumed_precision

Say = Callable[[str], None]


@dataclass(frozen=True)
class CheckpointOptions:
    """Where and how often a run saves (the config's LOG section)."""
    ckpt_dir: Path  # LOG.SAVE_DIR/ckpts
    save_every: int  # LOG.SAVE_EVERY_STEPS: a tag every N optimizer steps (and at the end)
    keep_last: int  # LOG.KEEP_LAST: step tags kept (the newest complete one and best are never removed)
    export_single_file: bool  # LOG.EXPORT_SINGLE_FILE: last.pth / best.pth after each save

    @classmethod
    def from_config(cls, cfg: Config) -> "CheckpointOptions":
        log = cfg.LOG
        return cls(Path(log.SAVE_DIR) / "ckpts", log.SAVE_EVERY_STEPS, log.KEEP_LAST, log.EXPORT_SINGLE_FILE)


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


class CheckpointManager:
    def __init__(self, options: CheckpointOptions, cfg: Config, loader: Optional[Any], world: int, precision: str,
                 say: Say = print) -> None:
        """``loader``: the training loader whose position and spike input the tags record (None: a run without
        data, such as the checkpoint benchmark)."""
        self.options, self.cfg, self.loader, self.world, self.precision = options, cfg, loader, world, precision
        self.dir, self.say = options.ckpt_dir, say
        self.engine: Any = None
        self.ema: Optional[ShardedEMA] = None  # saved in every tag when the run keeps one
        self._complete: Optional[Callable[[Any], dict]] = None  # the restore step that needs the engine
        self._reset_optimizer = False
        self._source: Optional[Path] = None  # what is being restored
        self._init_ema: Optional[str] = None  # MODEL.INIT_EMA_WEIGHTS of a new run
        main = distributed.is_main() and options.export_single_file
        self.exporter = BackgroundExporter(self.dir, say) if main else None

    # --- restoring ------------------------------------------------------------------------------------------

    def prepare(self, args: Namespace, model: torch.nn.Module, ds_config: dict,
                builtin_engine: bool = False) -> None:
        """Before ``deepspeed.initialize``: load ``--init-weights``, or find what ``--resume`` (else the config's
        TRAIN.RESUME_FROM_CHECKPOINT / CHECKPOINT_PATH) names (auto: the newest complete tag, or a fresh start),
        check that it fits this run and put into ``model`` and ``ds_config`` what the engine must be built with
        (``builtin_engine``: ``ds_config`` is the built-in one, which takes a resumed run's CPU precision)."""
        resume, why = resume_request(self.cfg, args.resume, args.init_weights)
        if why:
            self.say(why)
        if args.reset_optimizer and not resume:
            raise ConfigError("--reset-optimizer only makes sense when resuming (--resume, or "
                              "TRAIN.RESUME_FROM_CHECKPOINT: true)")
        location = self._locate(resume) if resume and not args.init_weights else None
        if resume and location is None:
            self.say(f"[train] --resume auto: no complete checkpoint under {self.dir}, starting a fresh run")
        if args.init_weights or (self.cfg.MODEL.INIT_WEIGHTS and location is None):
            init = args.init_weights or self.cfg.MODEL.INIT_WEIGHTS
            what, report = load_weights(model, init, partial=self.cfg.MODEL.INIT_PARTIAL)
            self.say(f"[train] Initialised weights from {init} ({what}); new run from step 0")
            if report:
                self.say(f"[train] {report}")
            if not args.init_weights:  # --init-weights starts from its file alone, EMA included
                self._init_ema = self.cfg.MODEL.INIT_EMA_WEIGHTS
            return
        if location is None:
            return
        self._reset_optimizer = args.reset_optimizer
        self._source = location.path
        self.say(f"[train] Loading checkpoint {location.path}")
        if location.kind == "file":
            self._prepare_single_file(load_single_file(location.path), model)
        else:
            self._prepare_tag(location.path, model, ds_config, builtin_engine)

    def _locate(self, resume: str) -> Optional[Location]:
        """What ``--resume`` names; ``auto``: the newest complete tag, else a ``last.pth`` alone (what the original
        trainer leaves in LOG.SAVE_DIR/ckpts), else None (a fresh start)."""
        if resume != "auto":
            return resolve(resume)
        tag = newest_complete(self.dir)
        if tag:
            return Location("tag", self.dir / tag)
        return Location("file", self.dir / LAST_FILE) if (self.dir / LAST_FILE).is_file() else None

    def _prepare_single_file(self, single: dict, model: torch.nn.Module) -> None:
        if single["meta"].get("format") == "svrt":
            self._say_svrt_continuation(single, model)
        elif single["config"] is None:
            self.say("[train] A checkpoint of the original S-VRT trainer: it stores no config, so this run's config "
                     "must describe the same model (as the original's guide asks); the weights load strictly")
        else:
            self._check_fits(single["config"])
        load_state_dict_strict(model, single["state_dict"], self._source)  # every ZeRO stage starts from these
        self._complete = lambda engine: load_single(engine, single, not self._reset_optimizer, self.ema)

    def _say_svrt_continuation(self, single: dict, model: torch.nn.Module) -> None:
        """What an S-VRT run's files carry over, in one line; its Adam state must number this model's parameters."""
        optimizer, step = single["optimizer"], single["step"]
        carried = ["weights"] + ["EMA"] * (single.get("state_dict_ema") is not None) + ["Adam moments"] * bool(
            optimizer)
        if optimizer:
            names = [name for name, _ in model.named_parameters()]
            saved, source = sum(len(g["params"]) for g in optimizer["param_groups"]), single["meta"]["optimizer_file"]
            if saved != len(names):
                raise CheckpointFormatError(f"{source} holds Adam state for {saved} parameters, this model has "
                                            f"{len(names)}: not this network's optimizer")
            single["optimizer"] = svrt_in_module_order(optimizer, names, self.cfg.TRAIN.FIX_KEYS, source)
        missing = "" if optimizer else f", Adam moments (no {step}_optimizerG.pth)"
        self.say(f"[train] S-VRT's iteration {step}: {', '.join(carried)} carried over; not in its files, so started "
                 f"afresh: LR schedule (stepped to {step}), data order, RNG state{missing}")

    def _prepare_tag(self, tag_dir: Path, model: torch.nn.Module, ds_config: dict, builtin_engine: bool) -> None:
        tag = open_tag(tag_dir)
        kept = follow_resumed_precision(ds_config, tag.header["ds_config"]) if builtin_engine else None
        if kept:
            self.say(kept)
            self.precision = tag.precision
        if has_legacy_names(tag):
            self.say(f"[train] {tag_dir} has the parameter names of an earlier ds_deblur: loading it through its "
                     f"single-file form (any world size; per-rank RNG streams are not restored)")
            self._prepare_single_file(single_file_dict(tag_dir), model)
            return
        self._check_fits(tag.state["config"])
        if self._reset_optimizer:
            # Weights only: read them ourselves (DeepSpeed's ZeRO-3 load ignores the tag when it skips the optimizer
            # states), which also works on any world size.
            model.load_state_dict(fp32_state_dict(tag_dir))
            self._complete = lambda engine: {**open_tag(tag_dir).state, "rng_restored": False,
                                             "ema_restored": load_tag_ema(self.ema, tag_dir)}
            return
        saved_world = saved_world_size(tag_dir)
        if saved_world != self.world:
            self.say(f"[train] {tag_dir} was saved on {saved_world} ranks, this run has {self.world}: loading it "
                     f"through DeepSpeed's universal checkpoint")
            universal.prepare(tag_dir)
            ds_config.setdefault("checkpoint", {})["load_universal"] = True
            if frozen_names(tag):
                # DeepSpeed's universal load leaves frozen parameters (TRAIN.FREEZE) as the module has them: give
                # the module the tag's weights before the engine is built.
                model.load_state_dict(fp32_state_dict(tag_dir))
        self._complete = lambda engine: load_tag(engine, tag_dir, self.ema)

    def _check_fits(self, saved_config: dict) -> None:
        """A changed model or data-shape key is an error before any weight is loaded (warnings come later)."""
        check_config_change(canonical_dict(saved_config), self.cfg.to_dict(), self.world, self.world,
                            warn=lambda _: None)

    def restore(self, engine: Any, ema: Optional[ShardedEMA] = None) -> TrainState:
        """After ``deepspeed.initialize``: complete the restore on the engine, the EMA (``ema``: the run's, saved in
        every tag from here on; it restarts at the restored weights when the checkpoint has none) and the data
        loader, say what was restored, and re-export single files a killed run left behind. Returns the state to
        continue from."""
        self.engine, self.ema = engine, ema
        if self._complete is None:
            if self._init_ema and ema is not None:
                ema.load_full(read_weights(self._init_ema, ema=None).state_dict)  # a checkpoint's own EMA, if kept
                self.say(f"[train] EMA weights initialised from {self._init_ema} (MODEL.INIT_EMA_WEIGHTS)")
            return TrainState()
        saved = self._complete(engine)
        if ema is not None and not saved.get("ema_restored"):
            ema.reset()
        if saved["config"] is not None:
            check_config_change(canonical_dict(saved["config"]), self.cfg.to_dict(), saved["world_size"],
                                self.world, warn=self.say)
        state = TrainState(saved["step"], saved["epoch"], saved["best_psnr"], saved["best_step"])
        if self.loader is not None:
            # The original trainer kept no position inside an epoch: its epoch starts over.
            self.loader.load_state_dict(saved["data"] or {**self.loader.state_dict(), "epoch": saved["epoch"],
                                                          "position": 0})
        self._report(state, saved)
        if self.exporter is not None and self.dir.is_dir():  # resumed into a new run directory: nothing to redo
            remove_temporaries(self.dir)
            for tag, name in stale_exports(self.dir):
                self.say(f"[train] Re-exporting {self.dir / name} from {tag} in the background: the previous run "
                         f"stopped between a save and its export")
                self.exporter.submit(tag, name)
        return state

    def _report(self, state: TrainState, saved: dict) -> None:
        say = self.say
        say(f"[train] Resuming from step {state.step} (epoch {state.epoch}), best PSNR so far {state.best_psnr:.4f}")
        say("[train] ✓ Model weights loaded")
        if self._reset_optimizer:
            say("[train] ✓ Optimizer and LR schedule start fresh (--reset-optimizer)")
        else:
            self._report_optimizer(saved.get("restored"))
            say("[train] ✓ RNG state loaded" if saved["rng_restored"] else
                "[train] RNG state not restored (world size changed, or a single file): data order and "
                "augmentation still continue exactly; only random model ops (drop path) differ")
        if self.ema is not None:
            say(f"[train] ✓ EMA weights loaded ({self.ema.updates} updates, decay {self.ema.decay})"
                if saved.get("ema_restored") else
                "[train] EMA weights start from the restored weights (the checkpoint holds none)")
        if saved["data"]:
            same_batch = saved["world_size"] == self.world and \
                saved["config"]["TRAIN"]["BATCH_SIZE"] == self.cfg.TRAIN.BATCH_SIZE
            say(f"[train] ✓ Data position: epoch {saved['data']['epoch']}, sample {saved['data']['position']}"
                + ("" if same_batch else " (batch layout changed: the remaining order is the same, grouped into "
                                         "different batches)"))
        elif self.loader is not None:
            say(f"[train] ✓ Data position: epoch {state.epoch} from its start (the checkpoint records no position "
                f"inside the epoch)")

    def _report_optimizer(self, restored: Optional[dict]) -> None:
        """What a tag (``restored`` None: everything) or a single file gave the optimizer, schedule and scaler."""
        restored = restored or {"optimizer": True, "scheduler": "loaded", "loss_scaler": True}
        self.say("[train] ✓ Optimizer state loaded (fp32 masters, Adam moments)" if restored["optimizer"] else
                 "[train] Optimizer starts fresh: the checkpoint holds no optimizer state (the original trainer's "
                 "last.pth keeps only the step and the weights)")
        self.say("[train] ✓ LR scheduler state loaded" if restored["scheduler"] == "loaded" else
                 f"[train] ✓ LR schedule positioned at step {self.engine.lr_scheduler.last_epoch} (this run's "
                 f"schedule; the checkpoint holds none of its kind)")
        if self.precision == "fp16":
            self.say("[train] ✓ Loss scaler state loaded" if restored["loss_scaler"] else
                     "[train] Loss scaler starts at the DeepSpeed config's initial scale (none in the checkpoint)")

    # --- saving ---------------------------------------------------------------------------------------------

    def due(self, step: int) -> bool:
        return step % self.options.save_every == 0

    def has_complete_tag(self, step: int) -> bool:
        return tag_problem(self.dir / step_tag(step)) is None

    def save(self, state: TrainState, tag: Optional[str] = None) -> None:
        """Save and commit a tag on every rank (all must call; default: the step's tag), apply retention, and
        have rank 0 export its single file in the background. Returns once the tag is committed."""
        tag = tag or step_tag(state.step)
        if self.exporter is not None:
            self.exporter.wait(tag)  # a tag saved again (best) is swapped in: never while an export reads it
        data = self.loader.state_dict() if self.loader is not None else {}
        client = client_state(state, data, self.cfg.to_dict(), self.engine, self.precision, self.world,
                              spike=self.spike_input())
        try:
            save_tag(self.engine, self.dir, tag, client, self.ema)
            if distributed.is_main() and tag != BEST:
                retain(self.dir, self.options.keep_last, in_use=self.exporter.in_use() if self.exporter else ())
        except DsDeblurError:
            raise
        except (OSError, RuntimeError) as err:  # a full disk (torch.save raises RuntimeError), a lost mount
            raise self._save_failed(tag, err) from err
        if self.exporter is not None:
            self.exporter.submit(tag)
        distributed.barrier()

    def _save_failed(self, tag: str, err: Exception) -> CheckpointError:
        free = shutil.disk_usage(self.dir).free / 2**20
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        return CheckpointError(
            f"saving checkpoint {tag} failed on rank {rank}: {type(err).__name__}: {err} ({free:.0f} MiB free on "
            f"the checkpoint disk). The newest complete checkpoint is {read_latest(self.dir) or 'none'} "
            f"('latest'), untouched, and last.pth/best.pth are whole (written atomically); free space, then "
            f"resume with --resume auto")

    def spike_input(self) -> Optional[dict]:
        """The spike input as the data defined it (what inference must feed the model)."""
        if self.loader is None:
            return None
        dataset = self.loader.dataset
        return {"size": list(dataset.spike_size), "k": dataset.options.k, "mean": dataset.options.mean,
                "std": dataset.options.std}

    def close(self) -> None:
        """Wait for the exports still running (rank 0), so that last.pth/best.pth match the last tags."""
        if self.exporter is not None:
            if self.exporter.in_use():
                self.say("[train] Waiting for the background export of last.pth/best.pth to finish")
            self.exporter.wait()
