"""What a run leaves to read: TensorBoard scalars/images (unless LOG.TENSORBOARD is false),
``metrics/train_log.jsonl``, ``metrics/val_step_N.json``, ``visuals/step_N.png`` and a tqdm bar. Rank 0 writes;
other ranks hold a logger that does nothing."""
from __future__ import annotations

import json
import resource
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as make_hparams
from tqdm import tqdm

from ds_deblur.ckpt.atomic import write_atomic

TRAIN_LOG = "metrics/train_log.jsonl"


class RunLogger:
    def __init__(self, save_dir: Path, enabled: bool, total_steps: int, start_step: int,
                 tensorboard: bool = True) -> None:
        self.save_dir, self.enabled = Path(save_dir), enabled
        self.writer = None
        self.bar = None
        if not enabled:
            return
        for sub in ("metrics", "visuals"):
            (self.save_dir / sub).mkdir(parents=True, exist_ok=True)
        for log in (self.save_dir / "metrics").glob("*.jsonl"):
            truncate_jsonl(log, start_step)
        if tensorboard:
            (self.save_dir / "tb").mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(str(self.save_dir / "tb"), purge_step=start_step + 1 if start_step else None)
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def train_step(self, record: dict, scalars: dict) -> None:
        """One optimizer step: a line in train_log.jsonl, the bar; TensorBoard ``scalars`` when given."""
        if not self.enabled:
            return
        with open(self.save_dir / TRAIN_LOG, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", refresh=False)
        if self.writer is not None:
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, record["step"])

    def validation(self, step: int, metrics: dict, visual: Optional[np.ndarray], rank: int) -> None:
        # Every rank records what it computed (metrics/val_rank{r}.jsonl): the ranks must agree, and this shows it.
        (self.save_dir / "metrics").mkdir(parents=True, exist_ok=True)
        with open(self.save_dir / "metrics" / f"val_rank{rank}.jsonl", "a") as handle:
            handle.write(json.dumps({"step": step, **metrics}) + "\n")
        if not self.enabled:
            return
        path = self.save_dir / "metrics" / f"val_step_{step:06d}.json"
        path.write_text(json.dumps({"step": step, **metrics}, indent=1))
        if visual is not None:
            Image.fromarray(visual).save(self.save_dir / "visuals" / f"step_{step:06d}.png")
        if self.writer is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)):  # not "weights" (which weights were validated: ema or trained)
                    self.writer.add_scalar(f"val/{key}", value, step)
            if visual is not None:
                self.writer.add_image("val/visual", visual, step, dataformats="HWC")
            self.writer.flush()
        weights = " (EMA weights)" if metrics.get("weights") == "ema" else ""
        self.bar.write(f"[val] step {step}{weights}: PSNR {metrics['psnr_rgb']:.3f} dB (Y {metrics['psnr_y']:.3f}), "
                       f"SSIM-Y {metrics['ssim_y']:.4f}, best {metrics['best_psnr']:.3f}")

    def hparams(self, hparams: dict, final: dict) -> None:
        if self.writer is None:
            return
        for event in make_hparams(hparams, final):
            self.writer.file_writer.add_summary(event)

    def message(self, text: str) -> None:
        if self.enabled:
            (self.bar.write if self.bar is not None else print)(text)

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            try:
                if self.writer is not None:
                    self.writer.close()
            except OSError as err:  # a full disk: say so, and let the run's own exit code stand
                print(f"[train] warning: TensorBoard events could not be flushed to {self.save_dir / 'tb'}: {err}")


def truncate_jsonl(path: Path, step: int) -> None:
    """Keep one timeline on resume: drop lines past the step the run resumes from, and a last line torn by a
    killed run. Rewritten atomically, so a kill leaves the old file or the new one."""
    kept = [line for line in path.read_text().splitlines() if (record := _parsed(line)) and record["step"] <= step]
    write_atomic(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept)))


def _parsed(line: str) -> Optional[dict]:
    try:
        return json.loads(line)
    except ValueError:
        return None


def read_train_log(save_dir: Path) -> list[dict]:
    path = Path(save_dir) / TRAIN_LOG
    return [record for line in path.read_text().splitlines() if (record := _parsed(line))]


def memory_mb() -> float:
    """Peak CUDA memory allocated on this device, or this process's peak RSS on CPU, in MiB."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def visual_strip(blur: torch.Tensor, restored: torch.Tensor, sharp: torch.Tensor) -> np.ndarray:
    """blur | restored | sharp of one frame (3,H,W each) as an HxWx3 uint8 image."""
    row = torch.cat([t.detach().float().clamp(0, 1).cpu() for t in (blur, restored, sharp)], dim=-1)
    return (row.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)

